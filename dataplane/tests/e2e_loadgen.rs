//! smtpgate-loadgen send → smtpgate → smtpgate-loadgen sink, with SHA-256 digests of
//! every message on both ends: nothing lost, nothing altered, through the inspecting
//! and the exempt path, with DATA and with BDAT (CHUNKING), pipelined.

mod common;
mod e2e_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use e2e_support::*;

/// `cargo test --workspace` builds every binary of the workspace into one directory.
/// A missing binary fails the test: `cargo test -p smtpgate` alone does not build it.
fn loadgen() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_smtpgate")).with_file_name("smtpgate-loadgen");
    assert!(
        path.exists(),
        "{} not built: run the workspace's tests (scripts/test, or cargo test --workspace)",
        path.display()
    );
    path
}

struct Sink {
    child: Child,
    addr: SocketAddr,
    digests: PathBuf,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sink(loadgen: &PathBuf) -> Sink {
    let dir = scratch_dir("lg-sink");
    let addr = local(free_port());
    let digests = dir.join("received.sha256");
    let child = Command::new(loadgen)
        .args([
            "sink",
            "--cores",
            "1",
            "--listen",
            &addr.to_string(),
            "--digest-log",
        ])
        .arg(&digests)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sink.err")).unwrap())
        .spawn()
        .unwrap();
    wait_for_listener(addr, Duration::from_secs(10));
    Sink {
        child,
        addr,
        digests,
    }
}

fn sorted_lines(path: &PathBuf) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Sends `messages` through `target` with `extra` flags and checks the digests match.
fn send_and_compare(
    loadgen: &PathBuf,
    sink: &Sink,
    target: SocketAddr,
    messages: usize,
    extra: &[&str],
) {
    let dir = scratch_dir("lg-send");
    let sent = dir.join("sent.sha256");
    let out = run_bounded(
        Command::new(loadgen)
            .args(["send", "--quiet", "--cores", "1", "--connections", "8"])
            .args([
                "--target",
                &target.to_string(),
                "--messages",
                &messages.to_string(),
            ])
            .args(["--size", "1k:60,10k:30,100k:10", "--recipients", "3"])
            .args(extra)
            .arg("--digest-log")
            .arg(&sent),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "send {extra:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = sorted_lines(&sent);
    assert_eq!(sent.len(), messages, "sender logged {} digests", sent.len());
    // The sink's log accumulates across sends and is flushed in batches, so wait
    // (bounded) until every digest of this send is in it.
    let missing = |received: &[String]| -> Option<String> {
        sent.iter()
            .find(|d| received.binary_search(d).is_err())
            .cloned()
    };
    let lost = wait_until(Duration::from_secs(10), || {
        missing(&sorted_lines(&sink.digests))
            .is_none()
            .then_some(())
    });
    if lost.is_none() {
        let digest = missing(&sorted_lines(&sink.digests)).unwrap_or_default();
        panic!("message {digest} lost or altered ({extra:?})");
    }
}

fn two_listener_config(inspect: SocketAddr, exempt: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{}\"\n\n\
         [[listener]]\nlisten = \"{inspect}\"\nupstream = \"{upstream}\"\npolicy = \"default\"\n\n\
         [[listener]]\nlisten = \"{exempt}\"\nupstream = \"{upstream}\"\npolicy = \"none\"\n",
        free_port()
    )
}

#[test]
fn loadgen_messages_survive_inspection_and_exemption_byte_for_byte() {
    let loadgen = loadgen();
    let sink = start_sink(&loadgen);
    let inspect = local(free_port());
    let exempt = local(free_port());
    let _gate = Gate::start(&two_listener_config(inspect, exempt, sink.addr));

    send_and_compare(&loadgen, &sink, inspect, 600, &[]);
    send_and_compare(&loadgen, &sink, inspect, 600, &["--pipelining"]);
    send_and_compare(&loadgen, &sink, inspect, 600, &["--pipelining", "--bdat"]);
    send_and_compare(&loadgen, &sink, inspect, 200, &["--per-connection"]);
    send_and_compare(&loadgen, &sink, exempt, 600, &["--pipelining", "--bdat"]);
}
