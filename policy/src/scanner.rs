//! Line framing with memchr over whole read buffers, incremental across reads.
//!
//! Two framers, both push parsers that borrow the buffer and return offsets
//! (`Partial` is a normal result, as in httparse):
//! - [`line_end`]: command and reply lines end at LF (CRLF, or a bare LF as lenient
//!   servers accept it, so the inspector never frames a line differently from them).
//! - [`ContentScanner`]: DATA content, where only CRLF ends a line (RFC 5321 §2.3.8)
//!   and a bare CR or bare LF is reported at its offset, so the caller can stop
//!   forwarding before it (SMTP smuggling defence). A CR at the very end of a read is
//!   held back until the next read says whether an LF follows.
//!
//! Neither buffers a line: they count its length, so an overlong line costs nothing.
//! They know nothing of SMTP verbs, dots or MIME.

use memchr::{memchr, memchr2};

/// Offset just past the next LF in `buf`, if any.
#[inline]
pub fn line_end(buf: &[u8]) -> Option<usize> {
    memchr(b'\n', buf).map(|i| i + 1)
}

/// Length of a framed line's content: the line without its CRLF or bare LF.
#[inline]
pub fn content_len(line: &[u8]) -> usize {
    match line {
        [rest @ .., b'\r', b'\n'] => rest.len(),
        [rest @ .., b'\n'] => rest.len(),
        _ => line.len(),
    }
}

/// One step of [`ContentScanner::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// A line ended with CRLF; `end` is just past the LF, `len` the line's content
    /// length across reads (CRLF excluded).
    Line { end: usize, len: u64 },
    /// A bare CR (not followed by LF) or bare LF (not preceded by CR). The bytes before
    /// `at` are clean; the bare byte is content and scanning resumes at `resume`.
    /// `held` means the bare byte is the CR held back at the end of the previous read
    /// (then `at == resume` and the caller still owes that CR downstream).
    Bare {
        at: usize,
        resume: usize,
        cr: bool,
        held: bool,
    },
    /// No line end in the rest of the buffer; `len` is the line's length so far. When
    /// `holds_cr`, the buffer's last byte is a CR that must not be forwarded yet.
    Partial { len: u64, holds_cr: bool },
}

/// Strict CRLF framing for message content with bare CR / LF detection.
#[derive(Clone, Copy, Debug, Default)]
pub struct ContentScanner {
    /// Content bytes of the current line seen so far.
    line_len: u64,
    /// The previous read ended with a CR we have not judged yet.
    held_cr: bool,
}

impl ContentScanner {
    pub fn new() -> ContentScanner {
        ContentScanner::default()
    }

    /// True when the previous read's last byte (a CR) was held back.
    pub fn holds_cr(&self) -> bool {
        self.held_cr
    }

    /// Length of the current line so far.
    pub fn line_len(&self) -> u64 {
        self.line_len
    }

    /// Scans `buf` from `pos` to the next event.
    #[inline]
    pub fn next(&mut self, buf: &[u8], pos: usize) -> Scan {
        if self.held_cr {
            match buf.get(pos) {
                None => {
                    return Scan::Partial {
                        len: self.line_len,
                        holds_cr: false,
                    }
                }
                Some(b'\n') => {
                    self.held_cr = false;
                    let len = self.line_len;
                    self.line_len = 0;
                    return Scan::Line { end: pos + 1, len };
                }
                Some(_) => {
                    self.held_cr = false;
                    self.line_len += 1;
                    return Scan::Bare {
                        at: pos,
                        resume: pos,
                        cr: true,
                        held: true,
                    };
                }
            }
        }
        let rest = &buf[pos..];
        match memchr2(b'\r', b'\n', rest) {
            None => {
                self.line_len += rest.len() as u64;
                Scan::Partial {
                    len: self.line_len,
                    holds_cr: false,
                }
            }
            Some(i) if rest[i] == b'\r' => match rest.get(i + 1) {
                Some(b'\n') => {
                    let len = self.line_len + i as u64;
                    self.line_len = 0;
                    Scan::Line {
                        end: pos + i + 2,
                        len,
                    }
                }
                Some(_) => {
                    self.line_len += i as u64 + 1;
                    Scan::Bare {
                        at: pos + i,
                        resume: pos + i + 1,
                        cr: true,
                        held: false,
                    }
                }
                None => {
                    self.line_len += i as u64;
                    self.held_cr = true;
                    Scan::Partial {
                        len: self.line_len,
                        holds_cr: true,
                    }
                }
            },
            Some(i) => {
                // An LF with no CR before it: a CR at rest[i-1] would have been found first.
                self.line_len += i as u64 + 1;
                Scan::Bare {
                    at: pos + i,
                    resume: pos + i + 1,
                    cr: false,
                    held: false,
                }
            }
        }
    }

    /// Forget the current line (a new message starts).
    pub fn reset(&mut self) {
        *self = ContentScanner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the scanner over `reads` and renders every event.
    fn scan_all(reads: &[&[u8]]) -> Vec<String> {
        let mut s = ContentScanner::new();
        let mut events = Vec::new();
        for buf in reads {
            let mut pos = 0;
            loop {
                match s.next(buf, pos) {
                    Scan::Line { end, len } => {
                        events.push(format!("line {len}"));
                        pos = end;
                    }
                    Scan::Bare {
                        resume, cr, held, ..
                    } => {
                        events.push(format!("bare {} {held}", if cr { "cr" } else { "lf" }));
                        pos = resume;
                    }
                    Scan::Partial { .. } => break,
                }
            }
        }
        events
    }

    #[test]
    fn crlf_lines_across_reads() {
        assert_eq!(
            scan_all(&[b"ab\r\ncd", b"e\r", b"\nf", b"\r\n"]),
            ["line 2", "line 3", "line 1"]
        );
    }

    #[test]
    fn bare_lf_and_bare_cr_are_reported_not_framed() {
        assert_eq!(
            scan_all(&[b"a\nb\rc\r\n"]),
            ["bare lf false", "bare cr false", "line 5"]
        );
    }

    #[test]
    fn held_cr_judged_by_next_read() {
        assert_eq!(scan_all(&[b"x\r", b".\r\n"]), ["bare cr true", "line 3"]);
        let mut s = ContentScanner::new();
        assert_eq!(
            s.next(b"x\r", 0),
            Scan::Partial {
                len: 1,
                holds_cr: true
            }
        );
        assert!(s.holds_cr());
    }

    #[test]
    fn overlong_line_is_counted_not_buffered() {
        let chunk = [b'a'; 4096];
        let mut s = ContentScanner::new();
        for _ in 0..1000 {
            assert!(matches!(s.next(&chunk, 0), Scan::Partial { .. }));
        }
        assert_eq!(s.line_len(), 4096 * 1000);
        assert_eq!(
            s.next(b"\r\n", 0),
            Scan::Line {
                end: 2,
                len: 4096 * 1000
            }
        );
    }

    #[test]
    fn line_end_and_content_len() {
        assert_eq!(line_end(b"NOOP\r\nQUIT"), Some(6));
        assert_eq!(line_end(b"NOOP"), None);
        assert_eq!(content_len(b"NOOP\r\n"), 4);
        assert_eq!(content_len(b"NOOP\n"), 4);
        assert_eq!(content_len(b"NOOP"), 4);
    }
}
