//! The real `smtpgate` binary under test: a running `smtpgate run` (killed on drop)
//! whose bound addresses come from its readiness line, its admin endpoint (`/status`,
//! `/metrics`, bounded waits on both), and one-shot subcommands.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{binary, free_port, local, run_bounded, scratch_dir, signal, LIMIT};
use crate::ready::{smtpgate_ready, Ready};
use crate::upstream::Upstream;

/// A config with one listener and the admin endpoint, both on port 0 (the bound
/// ports are on [`Gate::listen`] and [`Gate::admin`]); `extra` is inserted before the
/// listener (limits, timeouts, policies).
pub fn config_text(upstream: SocketAddr, listener_lines: &str, extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{extra}\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{listener_lines}\n"
    )
}

/// Like [`config_text`] but on ports picked before smtpgate starts, for tests that
/// need the address up front (see [`free_port`]); returns the text and the listen
/// address. Prefer [`config_text`] and [`Gate::listen`].
pub fn config(upstream: SocketAddr, listener_lines: &str, extra: &str) -> (String, SocketAddr) {
    let listen = local(free_port());
    let admin = local(free_port());
    let text = format!(
        "[admin]\nlisten = \"{admin}\"\n\n{extra}\n\n[[listener]]\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n{listener_lines}\n"
    );
    (text, listen)
}

/// A recording [`Upstream`] offering `keywords` and smtpgate in front of it, one
/// listener with `listener_lines` (its policy, options) and `extra` config sections:
/// the set-up of most inspection tests.
pub fn gated_upstream(keywords: &[&str], listener_lines: &str, extra: &str) -> (Upstream, Gate) {
    let upstream = Upstream::start(keywords);
    let gate = Gate::start(&config_text(upstream.addr, listener_lines, extra));
    (upstream, gate)
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
        Gate::start_command(config, args, |_, _| {})
    }

    /// Like [`Gate::start_with`], with `customise` given the command before it is
    /// spawned and the scratch directory (its `stdout` file already made): for an
    /// environment variable or a stdout other than that file. Stderr stays the file
    /// the readiness line is read from.
    pub fn start_command(
        config: &str,
        args: &[&str],
        customise: impl FnOnce(&mut Command, &Path),
    ) -> Gate {
        let mut gate = Gate::spawn_command(config, args, customise);
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
        Gate::spawn_command(config, args, |_, _| {})
    }

    /// [`Gate::spawn`] with `customise` as in [`Gate::start_command`].
    pub fn spawn_command(
        config: &str,
        args: &[&str],
        customise: impl FnOnce(&mut Command, &Path),
    ) -> Gate {
        let dir = scratch_dir("gate");
        let config_path = dir.join("smtpgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(binary("smtpgate"));
        command
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .args(["--cores", "2"])
            .args(args)
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
        customise(&mut command, &dir);
        let child = command.spawn().expect("spawn smtpgate");
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

    /// `/status` as JSON (the answer must be 200).
    pub fn status(&self) -> serde_json::Value {
        let response = http_get(self.admin(), "/status");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        serde_json::from_str(http_body(&response)).unwrap()
    }

    /// Waits (bounded) until `/status` satisfies `done`; returns it.
    pub fn wait_status(&self, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{status}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `/metrics` text (the answer must be 200).
    pub fn metrics(&self) -> String {
        let response = http_get(self.admin(), "/metrics");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        http_body(&response).to_string()
    }

    /// Waits (bounded) until the sample `series` reaches `at_least`; returns the
    /// metrics text it did in.
    pub fn wait_metric(&self, series: &str, at_least: f64) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let text = self.metrics();
            if metric_value(&text, series) >= at_least {
                return text;
            }
            assert!(Instant::now() < deadline, "{series} < {at_least}:\n{text}");
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

/// Writes `text` to `path` and runs `smtpgate check -c PATH` on it (the file's name is
/// part of what check reports); returns (exit code, stdout, stderr).
pub fn check_config(path: &Path, text: &str) -> (Option<i32>, String, String) {
    std::fs::write(path, text).unwrap();
    smtpgate(&["check", "-c", path.to_str().unwrap()])
}

/// A tiny HTTP GET (the admin endpoint), bounded; the whole response.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    http_request(addr, "GET", path, "")
}

/// One HTTP/1.1 request with extra `headers` (each line ending in CRLF), bounded; the
/// whole response (the admin endpoint closes after answering).
pub fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, LIMIT).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The body of an HTTP response: what follows the blank line.
pub fn http_body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {response:?}"))
        .1
}

/// The value of the Prometheus sample whose name and labels are exactly `series`.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_found_by_its_exact_name_and_labels() {
        let text = "a_total 3\na_total{x=\"1\"} 4.5\na_total_more 9\n";
        assert_eq!(metric_value(text, "a_total"), 3.0);
        assert_eq!(metric_value(text, "a_total{x=\"1\"}"), 4.5);
    }

    #[test]
    fn the_body_follows_the_blank_line() {
        assert_eq!(http_body("HTTP/1.1 200 OK\r\nA: b\r\n\r\nok\n"), "ok\n");
    }
}
