//! smtpgate-loadgen send → smtpgate → smtpgate-loadgen sink, with SHA-256 digests of
//! every message on both ends: nothing lost, nothing altered, through the inspecting
//! and the exempt path, with DATA and with BDAT (CHUNKING), pipelined.

mod common;
mod e2e_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use e2e_support::*;

/// Sends `messages` through `target` with `extra` flags and checks the digests match.
fn send_and_compare(
    loadgen: &Path,
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
        missing(&sink.received()).is_none().then_some(())
    });
    if lost.is_none() {
        let digest = missing(&sink.received()).unwrap_or_default();
        panic!("message {digest} lost or altered ({extra:?})");
    }
}

/// Two listeners in front of `upstream`, inspecting then exempt, on ports the kernel
/// picks (read back from smtpgate's readiness line).
fn two_listener_config(upstream: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\npolicy = \"default\"\n\n\
         [[listener]]\nlisten = \"127.0.0.2:0\"\nupstream = \"{upstream}\"\npolicy = \"none\"\n"
    )
}

#[test]
fn loadgen_messages_survive_inspection_and_exemption_byte_for_byte() {
    let loadgen = binary("smtpgate-loadgen");
    let sink = Sink::start(&scratch_dir("lg-sink"), &[]);
    let gate = Gate::start(&two_listener_config(sink.addr));
    let (inspect, exempt) = (gate.listener(0), gate.listener(1));

    send_and_compare(&loadgen, &sink, inspect, 600, &[]);
    send_and_compare(&loadgen, &sink, inspect, 600, &["--pipelining"]);
    send_and_compare(&loadgen, &sink, inspect, 600, &["--pipelining", "--bdat"]);
    send_and_compare(&loadgen, &sink, inspect, 200, &["--per-connection"]);
    send_and_compare(&loadgen, &sink, exempt, 600, &["--pipelining", "--bdat"]);
}
