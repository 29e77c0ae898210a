//! Client-side SMTP for tests: a raw client over a std socket (every read bounded),
//! optionally from a chosen loopback source address, and the small pieces of the
//! protocol tests assert on: reply codes, dot-stuffing, BDAT commands, command lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use crate::process::{run_bounded, LIMIT};

/// A raw SMTP client over a std socket, every read bounded.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect_timeout(&addr, LIMIT).expect("connect"))
    }

    /// Connects and reads the greeting, whatever it is.
    pub fn after_greeting(addr: SocketAddr) -> Client {
        let mut client = Client::connect(addr);
        client.reply();
        client
    }

    /// Connects, reads the greeting, says `hello` (e.g. `EHLO client.test`) and reads
    /// its reply, whatever they are: for tests about what comes after.
    pub fn greeted(addr: SocketAddr, hello: &str) -> Client {
        let mut client = Client::after_greeting(addr);
        client.send(format!("{hello}\r\n").as_bytes());
        client.reply();
        client
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2 for an exempt client).
    pub fn connect_from(source: &str, addr: SocketAddr) -> Client {
        let socket = socket_from(source);
        Client::from_stream(socket.connect_timeout_to(addr))
    }

    fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// One whole reply (all continuation lines), exact bytes.
    pub fn reply(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line).unwrap_or(0);
            all.extend_from_slice(&line);
            if n == 0 || line.len() < 4 || line[3] != b'-' {
                return all;
            }
        }
    }

    /// One whole reply, which must start with `prefix` (e.g. `b"421 4.7.0 "`); the
    /// failure shows the reply.
    pub fn reply_starting(&mut self, prefix: &[u8]) -> Vec<u8> {
        let reply = self.reply();
        assert!(
            reply.starts_with(prefix),
            "expected a reply starting {:?}, got {:?}",
            text(prefix),
            text(&reply)
        );
        reply
    }

    /// The next `count` replies, each whole.
    pub fn replies(&mut self, count: usize) -> Vec<Vec<u8>> {
        (0..count).map(|_| self.reply()).collect()
    }

    /// Everything until the peer closes (bounded by the read timeout).
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let _ = self.reader.read_to_end(&mut all);
        all
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }
}

/// A std socket bound to `source` before connecting (libc, no extra crates).
pub struct BoundSocket(std::os::fd::OwnedFd);

pub fn socket_from(source: &str) -> BoundSocket {
    use std::os::fd::FromRawFd;
    let ip: std::net::Ipv4Addr = source.parse().unwrap();
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(
            fd,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "bind {source}");
        BoundSocket(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

impl BoundSocket {
    fn connect_timeout_to(self, addr: SocketAddr) -> TcpStream {
        use std::os::fd::{AsRawFd, IntoRawFd};
        let SocketAddr::V4(v4) = addr else {
            panic!("v4 only")
        };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = unsafe {
            libc::connect(
                self.0.as_raw_fd(),
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "connect from bound socket: {}",
            std::io::Error::last_os_error()
        );
        use std::os::fd::FromRawFd;
        unsafe { TcpStream::from_raw_fd(self.0.into_raw_fd()) }
    }
}

/// Bytes as text for assertion messages (invalid UTF-8 shown as U+FFFD).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The three-digit code of a reply (its first line), or `None` when it has none.
pub fn reply_code(reply: &[u8]) -> Option<u16> {
    let digits = reply.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Content as a DATA client puts it on the wire: every line's leading dot doubled
/// (RFC 5321 4.5.2), without the terminating `.` line.
pub fn dot_stuffed(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 16);
    let mut at_line_start = true;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// A BDAT command line for a chunk of `size` octets (RFC 3030).
pub fn bdat(size: usize, last: bool) -> Vec<u8> {
    let last = if last { " LAST" } else { "" };
    format!("BDAT {size}{last}\r\n").into_bytes()
}

/// The lines a session sent whose verb is `verb` (e.g. "RCPT"), without CRLF.
pub fn command_lines(wire: &[u8], verb: &str) -> Vec<String> {
    String::from_utf8_lossy(wire)
        .split("\r\n")
        .filter(|line| line.len() >= verb.len() && line[..verb.len()].eq_ignore_ascii_case(verb))
        .map(str::to_owned)
        .collect()
}

/// Runs `python3 -c SCRIPT` with `args` (smtplib as a foreign client), bounded.
pub fn python(script: &str, args: &[String], limit: Duration) -> Output {
    run_bounded(
        Command::new(crate::process::peer("python3"))
            .arg("-c")
            .arg(script)
            .args(args),
        limit,
    )
}

/// [`python`] for a script that must exit 0; its stdout.
pub fn python_stdout(script: &str, args: &[String], limit: Duration) -> String {
    let out = python(script, args, limit);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// How Python's smtplib gets to TLS in [`smtplib_over_tls`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtplibTls {
    /// Plaintext, STARTTLS (which must be offered), EHLO again (STARTTLS must not be
    /// offered again inside TLS).
    Starttls,
    /// TLS from the first byte (`SMTP_SSL`; STARTTLS must not be offered).
    Implicit,
}

const SMTPLIB_OVER_TLS: &str = r#"
import hashlib, smtplib, ssl, sys
host, port, mode, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
context = ssl._create_unverified_context()
if mode == "implicit":
    s = smtplib.SMTP_SSL(host, port, context=context, timeout=20)
    s.ehlo("python.test")
    assert not s.has_extn("starttls"), "no STARTTLS inside implicit TLS"
else:
    s = smtplib.SMTP(host, port, timeout=20)
    s.ehlo("python.test")
    assert s.has_extn("starttls"), "STARTTLS offered"
    s.starttls(context=context)
    s.ehlo("python.test")
    assert not s.has_extn("starttls"), "STARTTLS offered again inside TLS"
with s:
    for path in paths:
        m = open(path, "rb").read()
        assert not s.sendmail("a@python.test", ["b@example.test"], m)
        print(hashlib.sha256(m).hexdigest())
"#;

/// Python's smtplib (a foreign TLS client, certificate not verified) sends each of
/// `messages` to the server at `addr` over TLS, every recipient accepted; returns the
/// SHA-256 of each (hex, in sending order), as the load generator's sink logs them.
pub fn smtplib_over_tls(addr: SocketAddr, tls: SmtplibTls, messages: &[&[u8]]) -> Vec<String> {
    // Files, not arguments: a message may be larger than one argument may be.
    let dir = crate::process::scratch_dir("smtplib-tls");
    let mut args = host_port(addr);
    args.push(match tls {
        SmtplibTls::Starttls => "starttls".to_string(),
        SmtplibTls::Implicit => "implicit".to_string(),
    });
    for (i, message) in messages.iter().enumerate() {
        let path = dir.join(format!("message-{i}.eml"));
        std::fs::write(&path, message).unwrap();
        args.push(path.display().to_string());
    }
    let out = python_stdout(SMTPLIB_OVER_TLS, &args, Duration::from_secs(60));
    out.lines().map(str::to_owned).collect()
}

/// A server address as the two arguments `HOST PORT` of the scripts above.
pub fn host_port(addr: SocketAddr) -> Vec<String> {
    vec![addr.ip().to_string(), addr.port().to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_are_three_digits_or_none() {
        assert_eq!(reply_code(b"250-first\r\n250 last\r\n"), Some(250));
        assert_eq!(reply_code(b"421"), Some(421));
        assert_eq!(reply_code(b"2x0 no\r\n"), None);
        assert_eq!(reply_code(b"25"), None);
    }

    #[test]
    fn dot_stuffing_doubles_only_leading_dots() {
        assert_eq!(
            dot_stuffed(b".a\r\nb.c\r\n..\r\n"),
            b"..a\r\nb.c\r\n...\r\n"
        );
    }

    #[test]
    fn bdat_commands_carry_size_and_last() {
        assert_eq!(bdat(5, false), b"BDAT 5\r\n");
        assert_eq!(bdat(0, true), b"BDAT 0 LAST\r\n");
    }

    #[test]
    fn command_lines_match_the_verb_case_insensitively() {
        let wire = b"EHLO x\r\nrcpt TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n";
        assert_eq!(
            command_lines(wire, "RCPT"),
            ["rcpt TO:<a@x>", "RCPT TO:<b@x>"]
        );
    }
}
