//! `/metrics` as a dashboard needs it, through the real binary: promtool accepts the
//! text; build, process and reload facts are there; per-listener messages,
//! transactions, connections and bytes count (bytes while the session is still open);
//! the latency histograms observe connects, ends of data and sessions.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn admin_addr(conf: &str) -> SocketAddr {
    let line = conf.lines().nth(1).unwrap(); // `listen = "..."` under [admin]
    line.trim_start_matches("listen = \"")
        .trim_end_matches('"')
        .parse()
        .unwrap()
}

fn metrics(admin: SocketAddr) -> String {
    let response = http_get(admin, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response.split("\r\n\r\n").nth(1).unwrap().to_string()
}

/// The value of the sample whose name-and-labels is exactly `series`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

/// Waits (bounded) until `series` reaches `at_least`; returns the metrics text.
fn wait_for(admin: SocketAddr, series: &str, at_least: f64) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = metrics(admin);
        if value(&text, series) >= at_least {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} < {at_least}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn promtool_accepts_the_metrics_text() {
    let up = Upstream::start(&[]);
    let (conf, listen) = config(up.addr, "policy = \"default\"", "");
    let _gate = Gate::start(&conf);
    let mut c = Client::connect(listen);
    c.reply();
    c.send(b"QUIT\r\n");
    c.reply();
    let text = wait_for(
        admin_addr(&conf),
        "smtpgate_session_duration_seconds_count",
        1.0,
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed; scripts/test installs it");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
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
    let up = Upstream::start(&[]);
    let (conf, listen) = config(up.addr, "policy = \"default\"", "");
    let _gate = Gate::start(&conf);
    let admin = admin_addr(&conf);

    let mut c = Client::connect(listen);
    c.reply();
    c.send(b"EHLO client.example\r\n");
    c.reply();
    // Open session: the per-listener bytes already count, the end-of-session total not.
    let live = wait_for(
        admin,
        &format!("smtpgate_listener_bytes_total{{listener=\"{listen}\",from=\"client\"}}"),
        21.0,
    );
    assert_eq!(value(&live, "smtpgate_bytes_total{from=\"client\"}"), 0.0);
    assert_eq!(
        value(
            &live,
            &format!("smtpgate_listener_connections_total{{listener=\"{listen}\"}}")
        ),
        1.0
    );
    assert_eq!(value(&live, "smtpgate_upstream_connect_seconds_count"), 1.0);

    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    for _ in 0..3 {
        c.reply();
    }
    c.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with(b"250"));
    c.send(b"QUIT\r\n");
    c.reply();
    let text = wait_for(admin, "smtpgate_session_duration_seconds_count", 1.0);
    let per_listener = |name: &str| value(&text, &format!("{name}{{listener=\"{listen}\"}}"));
    assert_eq!(per_listener("smtpgate_listener_messages_total"), 1.0);
    assert_eq!(per_listener("smtpgate_listener_transactions_total"), 1.0);
    assert_eq!(
        value(&text, "smtpgate_end_of_data_turnaround_seconds_count"),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "smtpgate_end_of_data_turnaround_seconds_bucket{le=\"+Inf\"}"
        ),
        1.0
    );
    assert!(value(&text, "smtpgate_bytes_total{from=\"client\"}") > 21.0);
}

#[test]
fn build_process_and_reload_facts_are_exported() {
    let up = Upstream::start(&[]);
    let (conf, _) = config(up.addr, "policy = \"default\"", "");
    let gate = Gate::start(&conf);
    let admin = admin_addr(&conf);
    let text = metrics(admin);
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
    let started = value(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - started).abs() < 120.0, "{started} vs {now}");
    assert!(value(&text, "process_resident_memory_bytes") > 1e6);
    assert!(value(&text, "process_open_fds") >= 3.0);
    assert!(value(&text, "process_max_fds") >= value(&text, "process_open_fds"));
    assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
    assert_eq!(value(&text, "smtpgate_config_last_reload_successful"), 1.0);

    gate.signal(1);
    let text = wait_for(
        admin,
        "smtpgate_config_reloads_total{result=\"success\"}",
        1.0,
    );
    assert_eq!(value(&text, "smtpgate_config_last_reload_successful"), 1.0);
    std::fs::write(&gate.config_path, "[[listener]]\nbroken = true\n").unwrap();
    gate.signal(1);
    let text = wait_for(
        admin,
        "smtpgate_config_reloads_total{result=\"failure\"}",
        1.0,
    );
    assert_eq!(value(&text, "smtpgate_config_last_reload_successful"), 0.0);
}
