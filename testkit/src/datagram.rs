//! A Unix datagram socket a process under test writes to (syslog, systemd's notify
//! socket), with every datagram it received kept in order and every wait bounded.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::process::{scratch_dir, LIMIT};

/// A bound socket and the datagrams received so far, as text.
pub struct Datagrams {
    socket: UnixDatagram,
    /// Where the socket is bound: give it to the process under test.
    pub path: PathBuf,
    /// Every datagram received, in arrival order.
    pub seen: Vec<String>,
}

impl Datagrams {
    /// Binds `NAME.sock` in a fresh scratch directory.
    pub fn bind(name: &str) -> Datagrams {
        let path = scratch_dir(name).join(format!("{name}.sock"));
        let socket = UnixDatagram::bind(&path).unwrap();
        // Short reads, so the deadline below is checked often.
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Datagrams {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Receives (bounded) until a datagram at index `from` or later contains
    /// `wanted`; returns that datagram's index in [`Datagrams::seen`].
    pub fn wait_from(&mut self, from: usize, wanted: &str) -> usize {
        let deadline = Instant::now() + LIMIT;
        let mut buf = [0u8; 8192];
        loop {
            if let Some(at) = self.seen.iter().skip(from).position(|m| m.contains(wanted)) {
                return from + at;
            }
            assert!(
                Instant::now() < deadline,
                "no {wanted:?} in {:?}",
                self.seen
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// The first datagram containing `wanted`, waited for (bounded).
    pub fn wait(&mut self, wanted: &str) -> &str {
        let at = self.wait_from(0, wanted);
        &self.seen[at]
    }
}
