//! The real `smtpgate` binary under test: a running `smtpgate run` (killed on drop)
//! whose bound addresses come from its readiness line, and one-shot subcommands.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{binary, free_port, local, run_bounded, scratch_dir, signal, LIMIT};
use crate::ready::{smtpgate_ready, Ready};

/// A config with one listener and the admin endpoint, both on port 0 (the bound
/// ports are on [`Gate::listen`] and [`Gate::admin`]); `extra` is inserted before the
/// listener (limits, timeouts, policies).
pub fn config_text(upstream: SocketAddr, listener_lines: &str, extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{extra}\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{listener_lines}\n"
    )
}

/// Like [`config_text`] but on ports picked before smtpgate starts, for tests that
/// need the address up front; returns the text and the listen address. Racy (another
/// process may take the port first): prefer [`config_text`] and [`Gate::listen`].
pub fn config(upstream: SocketAddr, listener_lines: &str, extra: &str) -> (String, SocketAddr) {
    let listen = local(free_port());
    let admin = local(free_port());
    let text = format!(
        "[admin]\nlisten = \"{admin}\"\n\n{extra}\n\n[[listener]]\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n{listener_lines}\n"
    );
    (text, listen)
}

/// A running `smtpgate run`, killed on drop. Its stdout and stderr are files in `dir`.
pub struct Gate {
    pub child: Child,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    ready: Option<Ready>,
}

impl Gate {
    /// Starts smtpgate on two cores and waits for its readiness line.
    pub fn start(config: &str) -> Gate {
        Gate::start_with(config, &[])
    }

    /// Like [`Gate::start`] with extra command-line arguments.
    pub fn start_with(config: &str, args: &[&str]) -> Gate {
        let mut gate = Gate::spawn(config, args);
        let deadline = Instant::now() + LIMIT;
        loop {
            let err = gate.stderr();
            if let Some(ready) = smtpgate_ready(&err) {
                gate.ready = Some(ready);
                return gate;
            }
            // A line still being written (stderr is unbuffered) is not judged yet.
            let complete = &err[..err.rfind('\n').map_or(0, |end| end + 1)];
            assert!(
                !complete.contains("smtpgate: listening on"),
                "testkit cannot read smtpgate's readiness line (did its format change?):\n{err}"
            );
            if let Ok(Some(status)) = gate.child.try_wait() {
                panic!("smtpgate exited ({status}) before it was ready:\n{err}");
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
        let child = Command::new(binary("smtpgate"))
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
            ready: None,
        }
    }

    fn ready(&self) -> &Ready {
        self.ready
            .as_ref()
            .expect("Gate::start waits for the readiness line; Gate::spawn does not")
    }

    /// The first listener's bound address.
    pub fn listen(&self) -> SocketAddr {
        self.listener(0)
    }

    /// Listener `index`'s bound address (config order).
    pub fn listener(&self, index: usize) -> SocketAddr {
        self.ready().listeners[index]
    }

    /// The admin endpoint's bound address; panics when the config turned it off.
    pub fn admin(&self) -> SocketAddr {
        self.ready().admin.expect("the admin endpoint is off")
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Waits (bounded) until `pattern` appears in stdout or stderr; returns both.
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

    pub fn signal(&self, number: i32) {
        signal(self.child.id(), number);
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

/// Runs `smtpgate ARGS` to completion (bounded); returns (exit code, stdout, stderr).
pub fn smtpgate(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run_bounded(Command::new(binary("smtpgate")).args(args), LIMIT);
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
