//! Shared harness for the end-to-end tests: a real `smtpgate` process, a recording
//! SMTP upstream that keeps exact wire bytes, and helpers to run foreign peers
//! (Python's smtplib, swaks, Postfix's smtp-source / smtp-sink).
//!
//! Everything listens on 127.0.0.1 with ports picked at run time, and every wait is
//! bounded so a broken build fails a test instead of hanging CI.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A port free right now on 127.0.0.1 (the listener is dropped before returning).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until something accepts on `addr`, or panics after `limit`.
pub fn wait_for_listener(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on {addr} after {limit:?}");
}

/// A path to a tool from a Debian package, or `None` (the caller prints why it skips;
/// `.ci/run` installs them, so CI always has them).
pub fn tool(name: &str) -> Option<PathBuf> {
    [
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib/postfix/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|p| p.exists())
}

/// A running `smtpgate run -c FILE`, killed on drop.
pub struct Gate {
    child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Gate {
    /// Starts smtpgate with `config` and waits until every `listeners` address accepts.
    pub fn start(config: &str, listeners: &[SocketAddr]) -> Gate {
        let dir = scratch_dir("gate");
        let conf = dir.join("smtpgate.toml");
        std::fs::write(&conf, config).unwrap();
        let log = dir.join("smtpgate.log");
        let child = Command::new(env!("CARGO_BIN_EXE_smtpgate"))
            .args(["run", "-c"])
            .arg(&conf)
            .args(["--cores", "2"])
            .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn smtpgate");
        let gate = Gate { child, dir, log };
        for addr in listeners {
            wait_for_listener(*addr, Duration::from_secs(15));
        }
        gate
    }

    /// Everything smtpgate logged so far (stdout and stderr).
    pub fn logs(&self) -> String {
        let mut all = std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default();
        all.push_str(&std::fs::read_to_string(&self.log).unwrap_or_default());
        all
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn scratch_dir(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("smtpgate-e2e-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A minimal config: one listener, admin off, the given policy.
pub fn one_listener_config(listen: SocketAddr, upstream: SocketAddr, policy: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{}\"\n\n[[listener]]\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\npolicy = \"{policy}\"\n",
        free_port()
    )
}

/// One message as the recording upstream received it.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The DATA content exactly as it came off the wire (still dot-stuffed), without
    /// the terminating `.\r\n`.
    pub data: Vec<u8>,
}

/// What the recording upstream saw.
#[derive(Default)]
pub struct Record {
    /// Every byte received from smtpgate, all sessions concatenated in arrival order.
    pub wire: Vec<u8>,
    /// Completed messages (end of data seen).
    pub messages: Vec<Received>,
    /// Command lines received (without CRLF), all sessions.
    pub commands: Vec<String>,
}

/// A small SMTP server on 127.0.0.1 that records exact wire bytes. It answers the
/// greeting `220 mx.upstream.test ESMTP recorder`, advertises `ehlo_keywords`, 250 to
/// MAIL/RCPT/RSET/NOOP/HELO, 354 to DATA, 221 to QUIT and `500 5.5.1` to anything else
/// (which is what an X-ed verb must get).
pub struct Recorder {
    pub addr: SocketAddr,
    pub record: Arc<Mutex<Record>>,
}

pub const RECORDER_BANNER: &str = "220 mx.upstream.test ESMTP recorder";

impl Recorder {
    pub fn start(ehlo_keywords: &[&str]) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let keywords: Vec<String> = ehlo_keywords.iter().map(|k| k.to_string()).collect();
        let shared = record.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = shared.clone();
                let keywords = keywords.clone();
                thread::spawn(move || serve_recorded_session(stream, &keywords, &record));
            }
        });
        Recorder { addr, record }
    }

    /// Waits (bounded) until `n` messages have been completed.
    pub fn wait_messages(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.record.lock().unwrap().messages.clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wire(&self) -> Vec<u8> {
        self.record.lock().unwrap().wire.clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.record.lock().unwrap().commands.clone()
    }
}

fn serve_recorded_session(stream: TcpStream, keywords: &[String], record: &Mutex<Record>) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let _ = write!(writer, "{RECORDER_BANNER}\r\n");
    let mut current = Received::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        record.lock().unwrap().wire.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        record.lock().unwrap().commands.push(text.clone());
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => {
                let mut r = String::from("250-mx.upstream.test\r\n");
                for (i, k) in keywords.iter().enumerate() {
                    let sep = if i + 1 == keywords.len() { ' ' } else { '-' };
                    r.push_str(&format!("250{sep}{k}\r\n"));
                }
                if keywords.is_empty() {
                    r = "250 mx.upstream.test\r\n".into();
                }
                r
            }
            "HELO" => "250 mx.upstream.test\r\n".into(),
            "MAIL" => {
                current = Received {
                    mail_from: text[5..].to_string(),
                    ..Received::default()
                };
                "250 2.1.0 Ok\r\n".into()
            }
            "RCPT" => {
                current.rcpt_to.push(text[5..].to_string());
                "250 2.1.5 Ok\r\n".into()
            }
            "RSET" | "NOOP" => "250 2.0.0 Ok\r\n".into(),
            "QUIT" => {
                let _ = writer.write_all(b"221 2.0.0 Bye\r\n");
                return;
            }
            "DATA" => {
                let _ = writer.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return, // closed mid-message: nothing delivered
                        Ok(_) => {}
                    }
                    record.lock().unwrap().wire.extend_from_slice(&line);
                    if line == b".\r\n" {
                        break;
                    }
                    current.data.extend_from_slice(&line);
                }
                record
                    .lock()
                    .unwrap()
                    .messages
                    .push(std::mem::take(&mut current));
                "250 2.0.0 Ok: queued\r\n".into()
            }
            _ => "500 5.5.1 Command unrecognized\r\n".into(),
        };
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Runs `python3 -c SCRIPT` with `args`, bounded by `limit`.
pub fn python(script: &str, args: &[String], limit: Duration) -> Output {
    run_bounded(
        Command::new("python3").arg("-c").arg(script).args(args),
        limit,
    )
}

/// Runs a command with a deadline; a command still running then is killed and the
/// test fails with what it printed so far.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} still running after {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}
