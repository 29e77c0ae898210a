//! Reading the PROXY protocol header (v1 text or v2 binary, haproxy.org
//! proxy-protocol.txt) that an L4 balancer listed in a listener's `accept_proxy` sends
//! before anything else, so the real client's address is known.
//!
//! Only sources in `accept_proxy` are read this way; from anyone else a PROXY header is
//! just bytes the inspector sees (and a mail server rejects). The header is read
//! exactly, never past its end, so the session starts at the client's first byte.
//! `LOCAL` (v2) and `UNKNOWN` (v1) headers, a balancer's own health checks, leave the
//! connection's own address as the client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use futures_lite::io::AsyncReadExt;
use glommio::net::TcpStream;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes with its CRLF.
const V1_MAX: usize = 107;
/// Longest v2 address block accepted (addresses plus TLVs a balancer may add).
const V2_MAX_BODY: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("no PROXY header (the connection did not start with one)")]
    Missing,
    #[error("malformed PROXY v1 header")]
    BadV1,
    #[error("malformed PROXY v2 header")]
    BadV2,
    #[error("connection closed before the PROXY header was complete")]
    Truncated,
}

/// Reads the header from `stream`; returns the client it names, or `peer` for a
/// balancer's own (LOCAL / UNKNOWN) connection.
pub async fn read(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyHeaderError> {
    let mut head = [0u8; 16];
    read_exact(stream, &mut head[..8]).await?;
    if head[..8] == V2_SIGNATURE[..8] {
        read_exact(stream, &mut head[8..]).await?;
        let length = v2_body_length(&head)?;
        let mut body = vec![0u8; length];
        read_exact(stream, &mut body).await?;
        return Ok(parse_v2(&head, &body)?.unwrap_or(peer));
    }
    if &head[..6] != b"PROXY " {
        return Err(ProxyHeaderError::Missing);
    }
    // v1: byte by byte up to the LF, so nothing after the header is consumed.
    let mut line = head[..8].to_vec();
    while line.last() != Some(&b'\n') {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::BadV1);
        }
        let mut byte = [0u8; 1];
        read_exact(stream, &mut byte).await?;
        line.push(byte[0]);
    }
    Ok(parse_v1(&line)?.unwrap_or(peer))
}

async fn read_exact(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), ProxyHeaderError> {
    stream
        .read_exact(buf)
        .await
        .map_err(|_| ProxyHeaderError::Truncated)
}

/// The length of the v2 address block, from the 16-byte fixed part.
fn v2_body_length(head: &[u8; 16]) -> Result<usize, ProxyHeaderError> {
    if head[..12] != V2_SIGNATURE || head[12] >> 4 != 2 {
        return Err(ProxyHeaderError::BadV2);
    }
    let length = u16::from_be_bytes([head[14], head[15]]) as usize;
    if length > V2_MAX_BODY {
        return Err(ProxyHeaderError::BadV2);
    }
    Ok(length)
}

/// The source address of a v2 header; `None` for LOCAL or an unspecified family.
fn parse_v2(head: &[u8; 16], body: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match head[12] & 0x0f {
        0x0 => return Ok(None), // LOCAL
        0x1 => {}               // PROXY
        _ => return Err(ProxyHeaderError::BadV2),
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match head[13] {
        // TCP over IPv4: src, dst, src port, dst port.
        0x11 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(8))))
        }
        0x21 if body.len() >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().expect("16 bytes");
            let ip = Ipv6Addr::from(octets);
            Ok(Some(SocketAddr::new(IpAddr::V6(ip), port(32))))
        }
        0x11 | 0x21 => Err(ProxyHeaderError::BadV2),
        // UNSPEC, UDP or UNIX: no client address to take.
        _ => Ok(None),
    }
}

/// The source address of a v1 line (with its CRLF); `None` for `UNKNOWN`.
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let line = line
        .strip_suffix(b"\r\n")
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or(ProxyHeaderError::BadV1)?;
    let mut words = line.split(' ');
    if words.next() != Some("PROXY") {
        return Err(ProxyHeaderError::BadV1);
    }
    let family = words.next().ok_or(ProxyHeaderError::BadV1)?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let fields: Vec<&str> = words.collect();
    let [source, _destination, source_port, _destination_port] = fields[..] else {
        return Err(ProxyHeaderError::BadV1);
    };
    let ip: IpAddr = source.parse().map_err(|_| ProxyHeaderError::BadV1)?;
    let port: u16 = source_port.parse().map_err(|_| ProxyHeaderError::BadV1)?;
    match (family, ip) {
        ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(Some(SocketAddr::new(ip, port))),
        _ => Err(ProxyHeaderError::BadV1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_line_names_its_source() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\n"),
            Ok(Some("192.0.2.7:40000".parse().unwrap()))
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n"),
            Ok(Some("[2001:db8::7]:40000".parse().unwrap()))
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(None));
    }

    #[test]
    fn a_malformed_v1_line_is_refused() {
        for line in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 25\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 70000 25\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 25\n",
        ] {
            assert_eq!(parse_v1(line), Err(ProxyHeaderError::BadV1), "{line:?}");
        }
    }

    #[test]
    fn the_v2_header_we_send_reads_back_as_its_client() {
        let client: SocketAddr = "192.0.2.9:1234".parse().unwrap();
        let sent = crate::proxy_v2::header(client, "10.0.0.1:25".parse().unwrap());
        let head: [u8; 16] = sent[..16].try_into().unwrap();
        let length = v2_body_length(&head).unwrap();
        assert_eq!(length, sent.len() - 16);
        assert_eq!(parse_v2(&head, &sent[16..]), Ok(Some(client)));

        let client6: SocketAddr = "[2001:db8::9]:1234".parse().unwrap();
        let sent = crate::proxy_v2::header(client6, "[::1]:25".parse().unwrap());
        let head: [u8; 16] = sent[..16].try_into().unwrap();
        assert_eq!(parse_v2(&head, &sent[16..]), Ok(Some(client6)));
    }

    #[test]
    fn a_v2_local_header_keeps_the_connection_address_and_a_bad_one_is_refused() {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(&V2_SIGNATURE);
        head[12] = 0x20;
        assert_eq!(parse_v2(&head, &[]), Ok(None));
        head[12] = 0x11; // version 1 in the binary form
        assert_eq!(v2_body_length(&head), Err(ProxyHeaderError::BadV2));
        head[12] = 0x21;
        head[13] = 0x11;
        head[14..].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(parse_v2(&head, &[1, 2, 3, 4]), Err(ProxyHeaderError::BadV2));
    }
}
