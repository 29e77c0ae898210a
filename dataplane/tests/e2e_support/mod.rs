//! What the end-to-end tests need beyond `common` (smtpgate and the recording
//! upstream live there): running foreign peers — Python, swaks, Postfix's tools, the
//! load generator — with every wait bounded so a broken build fails instead of hanging.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The path of a peer the test drives; a missing peer fails the test, naming the
/// Debian package that provides it (`scripts/test` installs every peer).
pub fn peer(name: &str) -> PathBuf {
    tool(name).unwrap_or_else(|| {
        let package = match name {
            "smtp-source" | "smtp-sink" => "postfix",
            "promtool" => "prometheus",
            "cc" => "gcc",
            other => other,
        };
        panic!("{name} not found: install the Debian package {package} (scripts/test installs every peer)")
    })
}

/// A path to a tool from a Debian package, or `None`. Tests use [`peer`], which fails
/// when the tool is missing; this is for code that has a fallback.
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

/// Polls until something accepts on `addr` (a peer we started), or panics after `limit`.
pub fn wait_for_listener(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on {addr} after {limit:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `probe` until it returns `Some`, or returns `None` after `limit`.
pub fn wait_until<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
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

/// The lines a session sent the upstream whose verb is `verb` (e.g. "RCPT").
pub fn command_lines(wire: &[u8], verb: &str) -> Vec<String> {
    String::from_utf8_lossy(wire)
        .split("\r\n")
        .filter(|line| line.len() >= verb.len() && line[..verb.len()].eq_ignore_ascii_case(verb))
        .map(str::to_owned)
        .collect()
}
