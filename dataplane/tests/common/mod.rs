//! Harness for the dataplane's integration tests: the real `smtpgate` binary, a fake
//! SMTP upstream that records exact wire bytes, and a raw SMTP client. Loopback only,
//! ports picked at run time, every wait bounded.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for any single wait in these tests.
pub const LIMIT: Duration = Duration::from_secs(20);

pub const UPSTREAM_BANNER: &[u8] = b"220 mx.upstream.test ESMTP fake\r\n";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn scratch_dir(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("smtpgate-dp-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config with one listener on a fresh port; `extra` is appended (limits, timeouts,
/// policies). Returns the text and the listen address.
pub fn config(upstream: SocketAddr, listener_lines: &str, extra: &str) -> (String, SocketAddr) {
    let listen = local(free_port());
    let admin = local(free_port());
    let text = format!(
        "[admin]\nlisten = \"{admin}\"\n\n{extra}\n\n[[listener]]\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n{listener_lines}\n"
    );
    (text, listen)
}

/// A running `smtpgate run`, killed on drop.
pub struct Gate {
    pub child: Child,
    pub dir: PathBuf,
    pub config_path: PathBuf,
}

impl Gate {
    /// Starts smtpgate and waits for its readiness line.
    pub fn start(config: &str) -> Gate {
        Gate::start_with(config, &[])
    }

    pub fn start_with(config: &str, args: &[&str]) -> Gate {
        let gate = Gate::spawn(config, args);
        let deadline = Instant::now() + LIMIT;
        loop {
            let err = gate.stderr();
            if err.contains("listening on") {
                return gate;
            }
            assert!(Instant::now() < deadline, "smtpgate did not start:\n{err}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawns without waiting for readiness (for start-up failure tests).
    pub fn spawn(config: &str, args: &[&str]) -> Gate {
        let dir = scratch_dir("gate");
        let config_path = dir.join("smtpgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_smtpgate"))
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .args(["--cores", "2"])
            .args(args)
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("spawn smtpgate");
        Gate {
            child,
            dir,
            config_path,
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Waits (bounded) until `pattern` appears in stdout or stderr.
    pub fn wait_log(&self, pattern: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let all = format!("{}{}", self.stdout(), self.stderr());
            if all.contains(pattern) {
                return all;
            }
            assert!(Instant::now() < deadline, "no {pattern:?} in logs:\n{all}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: i32) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the fake upstream saw, all sessions.
#[derive(Default)]
pub struct Seen {
    /// Every byte received, per session, in accept order.
    pub sessions: Vec<Vec<u8>>,
    /// Messages whose end of data (`.` line) arrived.
    pub messages: Vec<Vec<u8>>,
    pub accepted: usize,
}

/// A fake SMTP server recording exact wire bytes. It greets with [`UPSTREAM_BANNER`],
/// answers EHLO with `keywords`, 250/354/221 as usual and `500 5.5.1` to unknown verbs,
/// and closes after replying 221 to QUIT.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
}

impl Upstream {
    pub fn start(keywords: &[&str]) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let keywords: Vec<String> = keywords.iter().map(|k| k.to_string()).collect();
        let shared = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let index = {
                    let mut s = shared.lock().unwrap();
                    s.accepted += 1;
                    s.sessions.push(Vec::new());
                    s.sessions.len() - 1
                };
                let (seen, keywords) = (shared.clone(), keywords.clone());
                thread::spawn(move || serve(stream, index, &keywords, &seen));
            }
        });
        Upstream { addr, seen }
    }

    pub fn wire(&self, session: usize) -> Vec<u8> {
        self.seen
            .lock()
            .unwrap()
            .sessions
            .get(session)
            .cloned()
            .unwrap_or_default()
    }

    pub fn accepted(&self) -> usize {
        self.seen.lock().unwrap().accepted
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().messages.clone()
    }

    /// Waits (bounded) until session `index`'s wire bytes satisfy `done`.
    pub fn wait_wire(&self, index: usize, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let wire = self.wire(index);
            if done(&wire) || Instant::now() > deadline {
                return wire;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve(stream: TcpStream, index: usize, keywords: &[String], seen: &Mutex<Seen>) {
    stream.set_read_timeout(Some(LIMIT)).ok();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let _ = writer.write_all(UPSTREAM_BANNER);
    let mut line = Vec::new();
    let mut in_data = false;
    let mut message = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        seen.lock().unwrap().sessions[index].extend_from_slice(&line);
        if in_data {
            if line == b".\r\n" {
                in_data = false;
                seen.lock()
                    .unwrap()
                    .messages
                    .push(std::mem::take(&mut message));
                let _ = writer.write_all(b"250 2.0.0 Ok: queued\r\n");
            } else {
                message.extend_from_slice(&line);
            }
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let verb = text
            .split([' ', '\r', '\n'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: Vec<u8> = match verb.as_str() {
            "EHLO" => {
                let mut r = b"250-mx.upstream.test\r\n".to_vec();
                for (i, k) in keywords.iter().enumerate() {
                    let sep = if i + 1 == keywords.len() { ' ' } else { '-' };
                    r.extend_from_slice(format!("250{sep}{k}\r\n").as_bytes());
                }
                if keywords.is_empty() {
                    r = b"250 mx.upstream.test\r\n".to_vec();
                }
                r
            }
            "HELO" => b"250 mx.upstream.test\r\n".to_vec(),
            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n".to_vec(),
            "DATA" => {
                in_data = true;
                b"354 End data with <CR><LF>.<CR><LF>\r\n".to_vec()
            }
            "QUIT" => {
                let _ = writer.write_all(b"221 2.0.0 Bye\r\n");
                return;
            }
            "STARTTLS" => {
                // No real TLS: from here on echo every byte back, recording it, so a
                // test can check both directions are relayed opaquely.
                let _ = writer.write_all(b"220 2.0.0 Ready to start TLS\r\n");
                let mut chunk = [0u8; 4096];
                loop {
                    match reader.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            seen.lock().unwrap().sessions[index].extend_from_slice(&chunk[..n]);
                            if writer.write_all(&chunk[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            "BDAT" => {
                let mut words = text.split_whitespace().skip(1);
                let size: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                let mut chunk = vec![0u8; size];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                seen.lock().unwrap().sessions[index].extend_from_slice(&chunk);
                message.extend_from_slice(&chunk);
                if last {
                    seen.lock()
                        .unwrap()
                        .messages
                        .push(std::mem::take(&mut message));
                }
                format!("250 2.0.0 {size} octets received\r\n").into_bytes()
            }
            _ => b"500 5.5.1 Command unrecognized\r\n".to_vec(),
        };
        if writer.write_all(&reply).is_err() {
            return;
        }
    }
}

/// A raw SMTP client over a std socket, every read bounded.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect_timeout(&addr, LIMIT).expect("connect"))
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

/// Runs `smtpgate ARGS` to completion (bounded); returns (exit code, stdout, stderr).
pub fn smtpgate(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smtpgate"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("smtpgate {args:?} did not finish");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tiny HTTP GET (the admin endpoint), bounded.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, LIMIT).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
