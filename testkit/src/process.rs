//! Processes and the files around them: bounded waits, scratch directories, the
//! peers a test drives and the workspace's own binaries. A missing peer or binary
//! panics with what provides it: a test that cannot run fails, it never passes.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for any single wait in these tests.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Where Debian installs the peers; /usr/sbin is often not on a user's PATH.
const TOOL_DIRS: [&str; 4] = [
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib/postfix/sbin",
    "/usr/local/bin",
];

/// A peer that is not installed, and the Debian package that provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingPeer {
    pub command: String,
    pub package: &'static str,
}

impl std::fmt::Display for MissingPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} not found: install the Debian package {} (scripts/test installs every peer)",
            self.command, self.package
        )
    }
}

/// The Debian package that provides `command`.
fn package_of(command: &str) -> &'static str {
    match command {
        "smtp-source" | "smtp-sink" | "postfix" | "postqueue" => "postfix",
        "swaks" => "swaks",
        "haproxy" => "haproxy",
        "openssl" => "openssl",
        "python3" => "python3",
        "nginx" => "nginx",
        "promtool" => "prometheus",
        "cc" | "gcc" => "gcc",
        "git" => "git",
        _ => "(unknown: add it to testkit's package list and to scripts/test)",
    }
}

/// The path of a peer, or which package is missing.
pub fn find_peer(command: &str) -> Result<PathBuf, MissingPeer> {
    TOOL_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(command))
        .find(|path| path.is_file())
        .ok_or_else(|| MissingPeer {
            command: command.to_string(),
            package: package_of(command),
        })
}

/// The path of a peer the test drives; a missing one fails the test.
pub fn peer(command: &str) -> PathBuf {
    find_peer(command).unwrap_or_else(|missing| panic!("{missing}"))
}

/// A binary of this workspace: `cargo test --workspace` builds them all into the
/// directory above the test executable's `deps/`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/PROFILE/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not built: run the workspace's tests (scripts/test, or cargo test --workspace)",
        path.display()
    );
    path
}

/// A fresh empty directory under the system's temp dir, unique per process and call.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("smtpgate-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 127.0.0.1:`port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A port that was free a moment ago, for peers that cannot bind port 0 and report
/// it (Postfix, HAProxy, a restart that must rebind the same port) or for an address
/// nothing must listen on; servers of this workspace bind port 0 and print the port.
/// It is taken from below the kernel's ephemeral range, so no other process's port-0
/// bind or outgoing connection can take it before the peer binds it, and the ports
/// one test process hands out are distinct.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST).max(1_000);
    // Test binaries run one after another; the pid spreads their starting points.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let port = (LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 between {LOWEST} and {ephemeral_low}")
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

/// Runs a command with a deadline; a command still running then is killed and the
/// test fails with what it printed so far.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    run_with_input(cmd, &[], limit)
}

/// [`run_bounded`] with `input` written to the command's stdin, then closed.
pub fn run_with_input(cmd: &mut Command, input: &[u8], limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Input is written and pipes drained on threads, so neither side blocks the other.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_child(&mut child, limit);
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    if status.is_none() {
        panic!(
            "{cmd:?} still running after {limit:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    }
    Output {
        status: status.unwrap(),
        stdout,
        stderr,
    }
}

fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut all = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut all);
        }
        all
    })
}

/// Waits for `child` to exit for at most `limit`; kills it and returns `None` then.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (e.g. `libc::SIGTERM`) to process `pid`.
pub fn signal(pid: u32, signal: i32) {
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        rc,
        0,
        "kill -{signal} {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// The lines of a file, sorted (digest logs are written in completion order).
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_peer_names_its_debian_package() {
        let missing = find_peer("smtp-source-that-does-not-exist").unwrap_err();
        assert!(missing.to_string().contains("not found"), "{missing}");
        assert_eq!(package_of("smtp-sink"), "postfix");
        assert_eq!(package_of("promtool"), "prometheus");
    }

    #[test]
    #[should_panic(expected = "install the Debian package")]
    fn a_test_whose_peer_is_missing_fails() {
        peer("no-such-peer-anywhere");
    }

    #[test]
    fn a_command_past_its_limit_is_killed_and_fails_the_test() {
        let outcome = std::panic::catch_unwind(|| {
            run_bounded(Command::new("sleep").arg("5"), Duration::from_millis(200))
        });
        assert!(outcome.is_err());
    }

    #[test]
    fn run_bounded_returns_what_the_command_printed() {
        let out = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            LIMIT,
        );
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
    }
}
