//! Logs an operator can rely on, through the real binary: a log reader that stops
//! reading never stalls the relay, JSON lines carry level, session id and peers, every
//! session ends with one summary line, a session's event lines are capped, and a
//! client refused by a limit is logged.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use testkit::{wait_until, Datagrams};

/// A policy that logs every NOOP: one event line per command, traffic goes on.
const LOUD: &str = "[policy.loud]\nextends = \"default\"\nrules = [\"match cmd verb NOOP log\"]";

/// One session that sends `noops` pipelined NOOPs and QUIT, reading every reply.
fn noisy_session(listen: SocketAddr, noops: usize) {
    let mut c = Client::connect(listen);
    assert!(c.reply().starts_with(b"220"));
    let mut batch = b"NOOP\r\n".repeat(noops);
    batch.extend_from_slice(b"QUIT\r\n");
    c.send(&batch);
    for _ in 0..noops {
        assert!(c.reply().starts_with(b"250"));
    }
    assert!(c.reply().starts_with(b"221"));
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

#[test]
fn a_stalled_stdout_reader_does_not_stall_new_sessions_and_healthz_stays_honest() {
    let up = Upstream::start(&[]);
    let conf = config_text(up.addr, "policy = \"loud\"", LOUD);
    // stdout is a pipe this test holds open and never reads: it fills at 64 KiB.
    let mut gate = Gate::start_command(&conf, &[], |command, _| {
        command.stdout(Stdio::piped());
    });
    let _unread_stdout = gate.child.stdout.take();
    let (listen, admin) = (gate.listen(), gate.admin());

    // 16 event lines and a summary per session, ~250 bytes each: ~1.2 MB, far past
    // the pipe's 64 KiB and the writer's 4096 queued lines.
    let workers: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || (0..75).for_each(|_| noisy_session(listen, 16))))
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }

    let started = Instant::now();
    let mut fresh = Client::connect(listen);
    let banner = fresh.reply();
    let waited = started.elapsed();
    assert!(banner.starts_with(b"220"), "{banner:?}");
    assert!(
        waited < Duration::from_secs(1),
        "a new session waited {waited:?} for its banner behind a stalled log reader"
    );
    noisy_session(listen, 4);

    let health = http_get(admin, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http_get(admin, "/metrics");
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("smtpgate_log_dropped_total "))
        .expect("smtpgate_log_dropped_total exported")
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 0, "lines past the queue are dropped and counted");
}

#[test]
fn json_lines_carry_level_session_peers_and_a_summary_per_session() {
    let up = Upstream::start(&[]);
    let gate = Gate::start_with(
        &config_text(up.addr, "policy = \"loud\"", LOUD),
        &["--log-format", "json"],
    );
    let listen = gate.listen();

    let mut c = Client::after_greeting(listen);
    c.send(b"EHLO client.example\r\nNOOP\r\nMAIL FROM:<\"odd\"@example.org>\r\n");
    c.reply();
    c.reply();
    c.reply();
    let mut long = b"RCPT TO:<".to_vec();
    long.extend(std::iter::repeat_n(b'a', 600));
    long.extend_from_slice(b"@x>\r\n");
    c.send(&long);
    assert!(c.reply().starts_with(b"421 4.7.0"));
    assert_eq!(c.read_to_end(), b"");

    gate.wait_log("\"type\":\"session\"");
    let lines = json_lines(&gate.stdout());
    let client = c.stream.local_addr().unwrap().to_string();
    let events: Vec<_> = lines.iter().filter(|l| l["type"] == "event").collect();
    assert_eq!(events.len(), 2, "{lines:?}");
    let noop = events[0];
    assert_eq!(noop["level"], "warning");
    assert_eq!(noop["message_id"], 108005);
    assert_eq!(noop["rule"], "match cmd verb NOOP log");
    assert_eq!(noop["text"], "NOOP", "the offending line, without CRLF");
    assert_eq!(noop["client"], client);
    assert_eq!(noop["server"], up.addr.to_string());
    assert_eq!(noop["listener"], listen.to_string());
    let drop = events[1];
    assert_eq!(drop["level"], "error");
    assert_eq!(drop["session"], noop["session"], "one id per session");
    let text = drop["text"].as_str().unwrap();
    assert_eq!(text.len(), 64, "bounded: {text}");
    assert!(text.starts_with("RCPT TO:<aaaa"), "{text}");

    let summary = lines
        .iter()
        .find(|l| l["type"] == "session")
        .expect("a summary line");
    assert_eq!(summary["session"], noop["session"]);
    assert_eq!(summary["level"], "info");
    assert_eq!(summary["message_id"], 302014);
    assert_eq!(summary["result"], "dropped");
    assert_eq!(summary["rule_hits"], 3, "banner mask, NOOP log, long line");
    assert!(summary["bytes_from_client"].as_u64().unwrap() > 600);
    assert!(summary["bytes_from_upstream"].as_u64().unwrap() > 0);
    assert!(summary["duration_ms"].is_u64());
    assert_eq!(summary["helo"], "client.example");
    assert_eq!(summary["sender"], "\"odd\"@example.org");
    assert_eq!(noop["helo"], "client.example", "known by the NOOP");
}

#[test]
fn a_session_logs_at_most_sixteen_events_and_its_summary_counts_the_rest() {
    let (_up, gate) = gated_upstream(&[], "policy = \"loud\"", LOUD);
    noisy_session(gate.listen(), 40);
    let all = gate.wait_log("302014");
    let events = all.matches("%SMTPGATE-4-108005").count();
    assert_eq!(events, 16, "{all}");
    assert!(all.contains("suppressed=24"), "{all}");
    assert!(all.contains("result=finished"), "{all}");
}

#[test]
fn a_client_refused_by_a_connection_limit_is_logged() {
    let (_up, gate) = gated_upstream(&[], "policy = \"default\"", "[limits]\nmax_connections = 1");
    let listen = gate.listen();
    let _first = Client::after_greeting(listen);
    let mut refused = Client::connect(listen);
    assert!(refused.reply().starts_with(b"421 4.7.0"));
    let refused_addr = refused.stream.local_addr().unwrap();
    let all = gate.wait_log("201011");
    assert!(
        all.contains(&format!(
            "%SMTPGATE-4-201011: limit=max_connections client={refused_addr} listener={listen}"
        )),
        "{all}"
    );
}

#[test]
fn syslog_target_sends_rfc5424_with_mail_facility_and_severity() {
    let up = Upstream::start(&[]);
    let conf = config_text(up.addr, "policy = \"loud\"", LOUD);
    let mut syslog = Datagrams::bind("syslog");
    let path = syslog.path.to_str().unwrap().to_string();
    let gate = Gate::spawn(&conf, &["--log-target", "syslog", "--syslog-socket", &path]);
    let pid = gate.child.id();
    // <PRI>1 TIMESTAMP HOST smtpgate PID - - MSG; PRI = mail (2) * 8 + severity.
    let ready = syslog.wait("listening on").to_string();
    assert!(ready.starts_with("<21>1 "), "notice: {ready}");
    let header = format!(" smtpgate {pid} - - ");
    let (_, message) = ready
        .split_once(&header)
        .unwrap_or_else(|| panic!("no {header:?} in {ready}"));
    let listen = smtpgate_ready(&format!("{message}\n"))
        .unwrap_or_else(|| panic!("not a readiness line: {message}"))
        .listeners[0];
    noisy_session(listen, 1);
    syslog.wait("302014");
    let event = syslog.wait("108005");
    assert!(event.starts_with("<20>1 "), "warning: {event}");
    let summary = syslog.wait("302014");
    assert!(summary.starts_with("<22>1 "), "info: {summary}");
}

#[test]
fn under_journald_each_line_carries_its_priority_prefix() {
    let up = Upstream::start(&[]);
    let conf = config_text(up.addr, "policy = \"loud\"", LOUD);
    // systemd names the journal stream it connected as dev:inode in JOURNAL_STREAM.
    let gate = Gate::start_command(&conf, &[], |command, dir| {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir.join("stdout")).unwrap();
        command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    });
    noisy_session(gate.listen(), 1);
    let out = wait_until(LIMIT, || {
        Some(gate.stdout()).filter(|out| out.contains("302014"))
    })
    .unwrap_or_else(|| panic!("no session summary on stdout:\n{}", gate.stdout()));
    let event = out.lines().find(|l| l.contains("108005")).unwrap();
    assert!(event.starts_with("<4>"), "{event}");
    let summary = out.lines().find(|l| l.contains("302014")).unwrap();
    assert!(summary.starts_with("<6>"), "{summary}");
    // stderr is not the journal stream here: no prefixes there.
    let stderr = gate.stderr();
    assert!(stderr.starts_with("smtpgate: "), "{stderr}");
}
