//! The PROXY protocol v2 header (haproxy.org proxy-protocol.txt, section 2.2), sent to
//! the upstream first when a listener has `proxy_protocol = true`, so the mail server
//! sees the real client address.

use std::net::SocketAddr;

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;

/// The header for a connection from `client` to `local` (our listening address).
pub fn header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + 36);
    h.extend_from_slice(&SIGNATURE);
    h.push(VERSION_PROXY);
    match (client, local) {
        (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
            h.push(TCP_OVER_IPV4);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&src.ip().octets());
            h.extend_from_slice(&dst.ip().octets());
        }
        _ => {
            // Mixed families (e.g. a v4 client on a dual-stack v6 listener): send both as v6.
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                SocketAddr::V6(v6) => *v6.ip(),
            };
            h.push(TCP_OVER_IPV6);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(client).octets());
            h.extend_from_slice(&v6(local).octets());
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&local.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_bytes() {
        let h = header(
            "192.0.2.1:40000".parse().unwrap(),
            "10.0.0.1:25".parse().unwrap(),
        );
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        expected.extend_from_slice(&[192, 0, 2, 1, 10, 0, 0, 1]);
        expected.extend_from_slice(&40000u16.to_be_bytes());
        expected.extend_from_slice(&25u16.to_be_bytes());
        assert_eq!(h, expected);
    }

    #[test]
    fn ipv6_header_length() {
        let h = header(
            "[2001:db8::1]:1234".parse().unwrap(),
            "[::1]:25".parse().unwrap(),
        );
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
    }
}
