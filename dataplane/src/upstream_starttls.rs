//! STARTTLS towards the upstream before an implicit-TLS session's dialogue starts.
//!
//! A client on an implicit-TLS listener never sends STARTTLS, so nothing in its
//! dialogue tells smtpgate when to encrypt the upstream leg. With `upstream_tls` on,
//! smtpgate does it first, on the session's behalf: it reads the upstream's greeting
//! (kept, and relayed to the client as if just read), sends `EHLO <banner name>`, and
//! when the reply offers STARTTLS sends it and completes the TLS handshake. The
//! client's own EHLO then starts the dialogue inside TLS, which RFC 3207 requires
//! after STARTTLS anyway. An upstream that does not offer STARTTLS stays plaintext
//! under `opportunistic` (it saw one extra EHLO, which resets nothing it had);
//! under `verify` the session ends.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use rustls::ClientConfig;
use smtpgate_policy::config::UpstreamTls;

use crate::tls::{Established, TlsFailure, TlsLayer};

/// A reply longer than this is not an SMTP greeting or EHLO reply worth waiting for.
const MAX_REPLY: usize = 64 * 1024;

/// The upstream leg after the prelude.
pub struct Prelude {
    /// The upstream's greeting, exactly as it sent it (before any TLS).
    pub greeting: Bytes,
    /// TLS is on towards the upstream (the handshake is complete).
    pub tls: Option<(TlsLayer, Established)>,
}

/// Why the prelude ended the session.
pub enum PreludeError {
    /// The upstream closed, stalled past the limit or spoke no SMTP.
    Upstream(io::Error),
    /// `verify`: the upstream did not offer STARTTLS or refused it.
    NotOffered,
    /// The TLS handshake failed.
    Tls(TlsFailure),
}

/// Runs the prelude within `limit` (the listener's `upstream_connect`).
pub async fn start(
    server: &mut TcpStream,
    mode: UpstreamTls,
    config: &Arc<ClientConfig>,
    address: IpAddr,
    ehlo_name: &[u8],
    limit: Duration,
) -> Result<Prelude, PreludeError> {
    let run = prelude(server, mode, config, address, ehlo_name);
    future::or(run, async {
        sleep(limit).await;
        Err(PreludeError::Upstream(io::ErrorKind::TimedOut.into()))
    })
    .await
}

async fn prelude(
    server: &mut TcpStream,
    mode: UpstreamTls,
    config: &Arc<ClientConfig>,
    address: IpAddr,
    ehlo_name: &[u8],
) -> Result<Prelude, PreludeError> {
    let greeting = read_reply(server).await?;
    let plaintext = |greeting| match mode {
        UpstreamTls::Verify => Err(PreludeError::NotOffered),
        _ => Ok(Prelude {
            greeting,
            tls: None,
        }),
    };
    if !greeting.starts_with(b"220") {
        // A 554 or 421 greeting goes to the client as it is; nothing to encrypt.
        return Ok(Prelude {
            greeting,
            tls: None,
        });
    }
    let mut ehlo = Vec::with_capacity(ehlo_name.len() + 7);
    ehlo.extend_from_slice(b"EHLO ");
    ehlo.extend_from_slice(ehlo_name);
    ehlo.extend_from_slice(b"\r\n");
    write(server, &ehlo).await?;
    let reply = read_reply(server).await?;
    if !reply.starts_with(b"250") || !offers_starttls(&reply) {
        return plaintext(greeting);
    }
    write(server, b"STARTTLS\r\n").await?;
    if !read_reply(server).await?.starts_with(b"220") {
        return plaintext(greeting);
    }
    let mut layer = TlsLayer::client(config, address);
    handshake(server, &mut layer).await?;
    let established = layer
        .take_established()
        .expect("a completed handshake reports once");
    Ok(Prelude {
        greeting,
        tls: Some((layer, established)),
    })
}

/// Drives the client handshake over the socket until it completes.
async fn handshake(server: &mut TcpStream, layer: &mut TlsLayer) -> Result<(), PreludeError> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut plaintext = BytesMut::new();
    loop {
        if let Some(out) = layer.take_ciphertext() {
            write(server, &out).await?;
        }
        if !layer.is_handshaking() {
            return Ok(());
        }
        let n = server
            .read(&mut buf)
            .await
            .map_err(PreludeError::Upstream)?;
        if n == 0 {
            return Err(PreludeError::Tls(layer.eof().expect_err("mid-handshake")));
        }
        if let Err(failure) = layer.receive(&buf[..n], &mut plaintext) {
            // The alert saying why goes out before the close.
            if let Some(alert) = layer.take_ciphertext() {
                let _ = server.write_all(&alert).await;
            }
            return Err(PreludeError::Tls(failure));
        }
    }
}

async fn write(server: &mut TcpStream, bytes: &[u8]) -> Result<(), PreludeError> {
    server
        .write_all(bytes)
        .await
        .map_err(PreludeError::Upstream)
}

/// Reads one complete reply (through its last line, `NNN ` or `NNN\r\n`). The
/// upstream sends nothing unasked between replies, so no byte of the next is read.
async fn read_reply(server: &mut TcpStream) -> Result<Bytes, PreludeError> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = server
            .read(&mut buf)
            .await
            .map_err(PreludeError::Upstream)?;
        if n == 0 {
            return Err(PreludeError::Upstream(io::ErrorKind::UnexpectedEof.into()));
        }
        reply.extend_from_slice(&buf[..n]);
        if is_complete(&reply) {
            return Ok(Bytes::from(reply));
        }
        if reply.len() > MAX_REPLY {
            return Err(PreludeError::Upstream(io::ErrorKind::InvalidData.into()));
        }
    }
}

/// `reply` ends with a last line: three digits, then a space or the line end.
fn is_complete(reply: &[u8]) -> bool {
    let Some(body) = reply.strip_suffix(b"\n") else {
        return false;
    };
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = &body[start..];
    line.len() >= 3
        && line[..3].iter().all(u8::is_ascii_digit)
        && matches!(line.get(3), None | Some(b' ') | Some(b'\r'))
}

/// A line of an EHLO reply is the STARTTLS keyword.
fn offers_starttls(reply: &[u8]) -> bool {
    reply.split(|&b| b == b'\n').any(|line| {
        let keyword = line.get(4..).unwrap_or(b"");
        let keyword = keyword.strip_suffix(b"\r").unwrap_or(keyword);
        keyword.eq_ignore_ascii_case(b"STARTTLS")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_complete_at_its_last_line() {
        assert!(is_complete(b"220 mx ESMTP\r\n"));
        assert!(is_complete(b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n"));
        assert!(is_complete(b"250\r\n"));
        assert!(!is_complete(b"250-mx\r\n"));
        assert!(!is_complete(b"250-mx\r\n250 STA"));
        assert!(!is_complete(b""));
    }

    #[test]
    fn starttls_is_found_as_a_whole_keyword_in_any_case() {
        assert!(offers_starttls(
            b"250-mx\r\n250-starttls\r\n250 SIZE 10\r\n"
        ));
        assert!(offers_starttls(b"250-mx\r\n250 STARTTLS\r\n"));
        assert!(!offers_starttls(b"250-mx\r\n250 XSTARTTLS\r\n"));
        assert!(!offers_starttls(b"250 mx says STARTTLS\r\n"));
    }
}
