//! `/metrics` as a dashboard needs it, through the real binary: promtool accepts the
//! text; build, process and reload facts are there; per-listener messages,
//! transactions, connections and bytes count (bytes while the session is still open);
//! the latency histograms observe connects, ends of data and sessions.

mod common;

use std::process::Command;

use common::*;
use testkit::{peer, run_with_input};

#[test]
fn promtool_accepts_the_metrics_text() {
    let (_up, gate) = gated_upstream(&[], "policy = \"default\"", "");
    let mut c = Client::after_greeting(gate.listen());
    c.send(b"QUIT\r\n");
    c.reply();
    let text = gate.wait_metric("smtpgate_session_duration_seconds_count", 1.0);
    let out = run_with_input(
        Command::new(peer("promtool")).args(["check", "metrics"]),
        text.as_bytes(),
        LIMIT,
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{text}");
    assert!(said.trim().is_empty(), "promtool has remarks: {said}");
}

#[test]
fn a_relayed_message_moves_listener_counters_and_histograms() {
    let (_up, gate) = gated_upstream(&[], "policy = \"default\"", "");
    let listen = gate.listen();

    let mut c = Client::after_greeting(listen);
    c.send(b"EHLO client.example\r\n");
    c.reply();
    // Open session: the per-listener bytes already count, the end-of-session total not.
    let live = gate.wait_metric(
        &format!("smtpgate_listener_bytes_total{{listener=\"{listen}\",from=\"client\"}}"),
        21.0,
    );
    assert_eq!(
        metric_value(&live, "smtpgate_bytes_total{from=\"client\"}"),
        0.0
    );
    assert_eq!(
        metric_value(
            &live,
            &format!("smtpgate_listener_connections_total{{listener=\"{listen}\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric_value(&live, "smtpgate_upstream_connect_seconds_count"),
        1.0
    );

    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    for _ in 0..3 {
        c.reply();
    }
    c.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with(b"250"));
    c.send(b"QUIT\r\n");
    c.reply();
    let text = gate.wait_metric("smtpgate_session_duration_seconds_count", 1.0);
    let per_listener =
        |name: &str| metric_value(&text, &format!("{name}{{listener=\"{listen}\"}}"));
    assert_eq!(per_listener("smtpgate_listener_messages_total"), 1.0);
    assert_eq!(per_listener("smtpgate_listener_transactions_total"), 1.0);
    assert_eq!(
        metric_value(&text, "smtpgate_end_of_data_turnaround_seconds_count"),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "smtpgate_end_of_data_turnaround_seconds_bucket{le=\"+Inf\"}"
        ),
        1.0
    );
    assert!(metric_value(&text, "smtpgate_bytes_total{from=\"client\"}") > 21.0);
}

#[test]
fn build_process_and_reload_facts_are_exported() {
    let (_up, gate) = gated_upstream(&[], "policy = \"default\"", "");
    let text = gate.metrics();
    let build = text
        .lines()
        .find(|l| l.starts_with("smtpgate_build_info{"))
        .expect("build info");
    assert!(
        build.starts_with(&format!(
            "smtpgate_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{build}"
    );
    assert!(!build.contains("commit=\"\""), "{build}");
    let started = metric_value(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - started).abs() < 120.0, "{started} vs {now}");
    assert!(metric_value(&text, "process_resident_memory_bytes") > 1e6);
    assert!(metric_value(&text, "process_open_fds") >= 3.0);
    assert!(metric_value(&text, "process_max_fds") >= metric_value(&text, "process_open_fds"));
    assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
    assert_eq!(
        metric_value(&text, "smtpgate_config_last_reload_successful"),
        1.0
    );

    gate.signal(1);
    let text = gate.wait_metric("smtpgate_config_reloads_total{result=\"success\"}", 1.0);
    assert_eq!(
        metric_value(&text, "smtpgate_config_last_reload_successful"),
        1.0
    );
    std::fs::write(&gate.config_path, "[[listener]]\nbroken = true\n").unwrap();
    gate.signal(1);
    let text = gate.wait_metric("smtpgate_config_reloads_total{result=\"failure\"}", 1.0);
    assert_eq!(
        metric_value(&text, "smtpgate_config_last_reload_successful"),
        0.0
    );
}
