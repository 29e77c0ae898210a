//! A running `smtpgate-loadgen sink` on port 0: its address from the readiness line,
//! its digest log, and at stop the counters of its summary line.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{binary, signal, sorted_lines, wait_child};
use crate::ready::sink_ready;

/// The sink, killed on drop.
pub struct Sink {
    pub child: Child,
    pub addr: SocketAddr,
    /// SHA-256 per accepted message, one a line, in completion order.
    pub digests: PathBuf,
}

impl Sink {
    /// Starts a one-core sink logging digests into `dir`; `extra` are more flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Sink {
        let digests = dir.join("received.sha256");
        let mut child = Command::new(binary("smtpgate-loadgen"))
            .args(["sink", "--listen", "127.0.0.1:0", "--cores", "1"])
            .arg("--digest-log")
            .arg(&digests)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn smtpgate-loadgen sink");
        // The readiness line is the first line on stderr; a sink that dies first
        // closes the pipe and the read returns nothing.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let addr =
            sink_ready(&line).unwrap_or_else(|| panic!("unexpected readiness line {line:?}"));
        // Keep draining stderr so a chatty sink never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Sink {
            child,
            addr,
            digests,
        }
    }

    /// The digests logged so far, sorted.
    pub fn received(&self) -> Vec<String> {
        sorted_lines(&self.digests)
    }

    /// SIGTERM, then the summary line's counters and the digest log, sorted.
    pub fn stop(mut self) -> (BTreeMap<String, u64>, Vec<String>) {
        signal(self.child.id(), libc::SIGTERM);
        let mut stdout = self.child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut all);
            all
        });
        assert!(
            wait_child(&mut self.child, Duration::from_secs(10)).is_some(),
            "the sink did not stop within 10 s of SIGTERM"
        );
        let stdout = reader.join().unwrap();
        let summary = stdout
            .lines()
            .find(|l| l.starts_with("sink: connections="))
            .unwrap_or_else(|| panic!("no summary in {stdout:?}"));
        let counters = summary
            .trim_start_matches("sink: ")
            .split(' ')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect();
        (counters, self.received())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
