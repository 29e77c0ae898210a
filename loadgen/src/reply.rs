//! Client-side SMTP reply reading (RFC 5321 §4.2): a reply is one or more
//! lines "ddd-text" ending with "ddd text" (or a bare "ddd"). Replies may
//! arrive several per read (pipelining) or split across reads; the reader
//! keeps unconsumed bytes for the next call.

use futures_lite::io::{AsyncRead, AsyncReadExt};
use std::io;

pub struct ReplyReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// EHLO keywords the sender acts on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extensions {
    pub pipelining: bool,
    pub chunking: bool,
    pub starttls: bool,
}

const MAX_REPLY_LINE: usize = 64 * 1024;

impl Default for ReplyReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyReader {
    pub fn new() -> Self {
        ReplyReader {
            buf: vec![0; 8192],
            start: 0,
            end: 0,
        }
    }

    /// Reads one complete reply and returns its code; `on_line` sees the
    /// text of each line (after "ddd-"/"ddd ").
    pub async fn read_with<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        mut on_line: impl FnMut(&[u8]),
    ) -> io::Result<u16> {
        loop {
            while let Some(pos) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = &self.buf[self.start..self.start + pos];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                self.start += pos + 1;
                if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed reply line {:?}", String::from_utf8_lossy(line)),
                    ));
                }
                let code = u16::from(line[0] - b'0') * 100
                    + u16::from(line[1] - b'0') * 10
                    + u16::from(line[2] - b'0');
                on_line(line.get(4..).unwrap_or(b""));
                if line.get(3) != Some(&b'-') {
                    return Ok(code);
                }
            }
            self.fill(stream).await?;
        }
    }

    /// Bytes were received beyond the replies read so far.
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    pub async fn read<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> io::Result<u16> {
        self.read_with(stream, |_| {}).await
    }

    /// Reads an EHLO reply, noting the extensions we use.
    pub async fn read_ehlo<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> io::Result<(u16, Extensions)> {
        let mut ext = Extensions::default();
        let code = self
            .read_with(stream, |text| {
                let keyword = text.split(|&b| b == b' ').next().unwrap_or(b"");
                if keyword.eq_ignore_ascii_case(b"PIPELINING") {
                    ext.pipelining = true;
                } else if keyword.eq_ignore_ascii_case(b"CHUNKING") {
                    ext.chunking = true;
                } else if keyword.eq_ignore_ascii_case(b"STARTTLS") {
                    ext.starttls = true;
                }
            })
            .await?;
        Ok((code, ext))
    }

    async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> io::Result<()> {
        if self.start == self.end {
            // Everything was consumed (the usual case): nothing to move.
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_REPLY_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "reply line too long",
                ));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        futures_lite::future::block_on(f)
    }

    #[test]
    fn reads_pipelined_and_multiline_replies() {
        let mut input: &[u8] =
            b"250-host\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 2.1.0 ok\r\n354 go\r\n";
        let mut reader = ReplyReader::new();
        let (code, ext) = block_on(reader.read_ehlo(&mut input)).unwrap();
        assert_eq!(code, 250);
        assert!(ext.pipelining && ext.chunking);
        assert_eq!(block_on(reader.read(&mut input)).unwrap(), 250);
        assert_eq!(block_on(reader.read(&mut input)).unwrap(), 354);
        assert!(block_on(reader.read(&mut input)).is_err());
    }

    #[test]
    fn rejects_garbage() {
        let mut input: &[u8] = b"hello\r\n";
        assert!(block_on(ReplyReader::new().read(&mut input)).is_err());
    }
}
