//! End to end: `send` against `sink`, both as real processes on 127.0.0.1,
//! plus Python's smtplib as a foreign client of the sink. (`compare` and
//! `merge` are tested in report.rs.)

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::{
    host_port, peer, pem_body, presented_certificate, python_stdout, run_bounded, scratch_dir,
    self_signed, smtplib_over_tls, sorted_lines, PostfixSink, Sink, SmtplibTls,
};

const LOADGEN: &str = env!("CARGO_BIN_EXE_smtpgate-loadgen");

struct Sent {
    status: i32,
    report: Value,
    digests: Vec<String>,
    stdout: String,
}

fn send(dir: &Path, target: SocketAddr, args: &[&str]) -> Sent {
    let json = dir.join("report.json");
    let digests = dir.join("sent.sha256");
    let out = run_bounded(
        Command::new(LOADGEN)
            .args(["send", "--quiet", "--cores", "1", "--target"])
            .arg(target.to_string())
            .args(args)
            .arg("--json")
            .arg(&json)
            .arg("--digest-log")
            .arg(&digests),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let report = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout {stdout}\nstderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Sent {
        status: out.status.code().unwrap_or(-1),
        report: serde_json::from_str(&report).unwrap(),
        digests: sorted_lines(&digests),
        stdout,
    }
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn every_message_arrives_unaltered_on_every_path() {
    let cases: &[&[&str]] = &[
        &[],
        &["--pipelining"],
        &["--bdat"],
        &["--bdat", "--pipelining"],
        &["--per-connection"],
    ];
    for flags in cases {
        let dir = scratch_dir("paths");
        let sink = Sink::start(&dir, &[]);
        let mut args = vec![
            "--connections",
            "4",
            "--messages",
            "300",
            "--recipients",
            "2",
            // 100k messages are sent as two BDAT chunks.
            "--size",
            "1k:50,10k:30,100k:20",
        ];
        args.extend_from_slice(flags);
        let sent = send(&dir, sink.addr, &args);
        let (counters, received) = sink.stop();
        assert_eq!(sent.status, 0, "{flags:?}: {}", sent.stdout);
        assert_eq!(u(&sent.report, "messages_ok"), 300, "{flags:?}");
        assert_eq!(sent.digests.len(), 300, "{flags:?}");
        // Multisets: same digests, same number of times each.
        assert_eq!(sent.digests, received, "{flags:?}: lost or altered mail");
        assert_eq!(counters["messages"], 300);
        assert_eq!(counters["bytes"], u(&sent.report, "bytes_ok"), "{flags:?}");
        let expected_connections = if flags.contains(&"--per-connection") {
            300
        } else {
            4
        };
        assert_eq!(counters["connections"], expected_connections, "{flags:?}");
        assert_eq!(
            u(&sent.report, "connections_opened"),
            expected_connections,
            "{flags:?}"
        );
    }
}

#[test]
fn json_report_is_complete_and_consistent() {
    let dir = scratch_dir("json");
    let sink = Sink::start(&dir, &[]);
    let sent = send(
        &dir,
        sink.addr,
        &[
            "--connections",
            "3",
            "--messages",
            "200",
            "--recipients",
            "3",
        ],
    );
    drop(sink);
    assert_eq!(sent.status, 0);
    let r = &sent.report;
    assert_eq!(u(r, "messages_attempted"), 200);
    assert_eq!(u(r, "messages_ok") + u(r, "messages_failed"), 200);
    assert_eq!(u(r, "bytes_ok"), 200 * 1024);
    assert!(r["errors"].as_object().unwrap().is_empty());
    let elapsed = r["elapsed_s"].as_f64().unwrap();
    let rate = r["msgs_per_s"].as_f64().unwrap();
    assert!((rate * elapsed - 200.0).abs() < 1.0, "{rate} x {elapsed}");
    let mbs = r["mb_per_s"].as_f64().unwrap();
    assert!((mbs * elapsed * 1e6 - 200.0 * 1024.0).abs() < 1000.0);
    let latency = &r["latency_us"];
    let count = |step: &str| u(&latency[step], "count");
    assert_eq!(count("connect"), 3);
    assert_eq!(count("ehlo"), 3);
    assert_eq!(count("mail"), 200);
    assert_eq!(count("rcpt"), 600);
    assert_eq!(count("data_command"), 200);
    assert_eq!(count("end_of_data"), 200);
    assert_eq!(count("message"), 200);
    for step in ["connect", "mail", "end_of_data", "message"] {
        let p = &latency[step];
        let (p50, p90, p99, p999, max) = (
            u(p, "p50"),
            u(p, "p90"),
            u(p, "p99"),
            u(p, "p99_9"),
            u(p, "max"),
        );
        assert!(
            p50 > 0 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
            "{step}: {p}"
        );
    }
    // The text report carries the same numbers.
    assert!(
        sent.stdout.contains("messages ok 200  failed 0"),
        "{}",
        sent.stdout
    );
    assert!(sent.stdout.contains("end_of_data"));
}

#[test]
fn injected_failures_are_counted_by_step_and_code() {
    let dir = scratch_dir("faults");
    let sink = Sink::start(&dir, &["--tempfail-rate", "0.1", "--permfail-rate", "0.1"]);
    let sent = send(
        &dir,
        sink.addr,
        &["--connections", "4", "--messages", "1000", "--pipelining"],
    );
    let (counters, received) = sink.stop();
    assert_eq!(sent.status, 1, "a failed message must fail the exit status");
    let r = &sent.report;
    let failed = u(r, "messages_failed");
    assert_eq!(u(r, "messages_ok") + failed, 1000);
    assert_eq!(failed, counters["tempfail"] + counters["permfail"]);
    assert!((100..300).contains(&failed), "{failed} of 1000 at 20%");
    let errors = r["errors"].as_object().unwrap();
    for key in ["MAIL 451", "MAIL 550", "end-of-data 451", "end-of-data 554"] {
        assert!(errors.contains_key(key), "{key} missing in {errors:?}");
    }
    let by_code = r["errors_by_code"].as_object().unwrap();
    let total: u64 = by_code.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, failed);
    assert_eq!(
        by_code["451"].as_u64().unwrap(),
        counters["tempfail"],
        "{by_code:?}"
    );
    // Only accepted mail is logged, on both sides.
    assert_eq!(sent.digests, received);
    assert_eq!(received.len() as u64, u(r, "messages_ok"));
}

#[test]
fn open_loop_keeps_the_schedule() {
    let dir = scratch_dir("rate");
    let sink = Sink::start(&dir, &[]);
    let sent = send(
        &dir,
        sink.addr,
        &["--connections", "4", "--rate", "200", "--duration", "1s"],
    );
    drop(sink);
    assert_eq!(sent.status, 0);
    let r = &sent.report;
    assert_eq!(r["mode"], "open-loop");
    // 200/s for 1 s, in 4 staggered schedules.
    let ok = u(r, "messages_ok");
    assert!((195..=205).contains(&ok), "{ok}");
    let elapsed = r["elapsed_s"].as_f64().unwrap();
    assert!((0.9..3.0).contains(&elapsed), "{elapsed}");
}

#[test]
fn sink_delay_shows_in_end_of_data_latency_only() {
    let dir = scratch_dir("delay");
    let sink = Sink::start(&dir, &["--delay", "40ms"]);
    let sent = send(&dir, sink.addr, &["--connections", "2", "--messages", "6"]);
    drop(sink);
    assert_eq!(sent.status, 0);
    let latency = &sent.report["latency_us"];
    assert!(u(&latency["end_of_data"], "p50") >= 40_000, "{latency}");
    assert!(u(&latency["mail"], "p50") < 40_000, "{latency}");
}

#[test]
fn a_stopped_sink_turns_into_counted_connect_errors() {
    let dir = scratch_dir("down");
    let sink = Sink::start(&dir, &[]);
    let addr = sink.addr;
    drop(sink);
    let sent = send(&dir, addr, &["--connections", "2", "--messages", "4"]);
    assert_eq!(sent.status, 1);
    assert_eq!(u(&sent.report, "messages_failed"), 4);
    // Refused, or reset while the dead sink's io_uring still holds the
    // listening socket (the kernel tears rings down asynchronously).
    let errors = sent.report["errors"].as_object().unwrap();
    assert!(
        errors
            .keys()
            .all(|k| k.starts_with("io connect Connection")),
        "{errors:?}"
    );
    let total: u64 = errors.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 4);
    assert_eq!(sent.report["errors_by_code"]["io"], 4);
}

/// A server that accepts and then goes silent: before the greeting, or
/// after EHLO. Both must end as counted timeouts, not a hang.
#[test]
fn a_silent_server_turns_into_counted_timeouts() {
    use std::io::{Read, Write};
    for greet in [false, true] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for mut stream in listener.incoming().map_while(Result::ok) {
                if greet {
                    let _ = stream.write_all(b"220 silent\r\n");
                    let mut ehlo = [0u8; 256];
                    let _ = stream.read(&mut ehlo);
                    let _ = stream.write_all(b"250 silent\r\n");
                }
                held.push(stream);
            }
        });
        let dir = scratch_dir("silent");
        let sent = send(
            &dir,
            addr,
            &[
                "--connections",
                "1",
                "--messages",
                "2",
                "--timeout",
                "300ms",
            ],
        );
        assert_eq!(sent.status, 1);
        let expected = if greet {
            "io transaction TimedOut"
        } else {
            "io connect TimedOut"
        };
        assert_eq!(
            sent.report["errors"][expected], 2,
            "{}",
            sent.report["errors"]
        );
    }
}

#[test]
fn postfix_smtp_source_delivers_to_the_sink() {
    let smtp_source = peer("smtp-source");
    let dir = scratch_dir("smtp-source");
    let sink = Sink::start(&dir, &[]);
    let out = run_bounded(
        Command::new(smtp_source)
            .args(["-s", "4", "-l", "2000", "-m", "100", "-r", "2", "-d"])
            .arg(sink.addr.to_string()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (counters, received) = sink.stop();
    assert_eq!(counters["messages"], 100);
    assert_eq!(counters["connections"], 4);
    assert_eq!(received.len(), 100);
}

/// Postfix's smtp-sink as a foreign server for send, on every path.
#[test]
fn send_delivers_to_postfix_smtp_sink() {
    let server = PostfixSink::start(&[], 100);
    let addr = server.addr;
    let dir = scratch_dir("smtp-sink");
    for flags in [&[][..], &["--pipelining"], &["--bdat", "--pipelining"]] {
        let mut args = vec![
            "--connections",
            "4",
            "--messages",
            "200",
            "--recipients",
            "2",
        ];
        args.extend_from_slice(flags);
        let sent = send(&dir, addr, &args);
        assert_eq!(sent.status, 0, "{flags:?}: {}", sent.stdout);
        assert_eq!(u(&sent.report, "messages_ok"), 200);
    }
}

/// smtplib is a real, independent SMTP client: the sink must speak to it,
/// and hash what it delivered exactly as delivered.
#[test]
fn python_smtplib_delivers_to_the_sink() {
    let dir = scratch_dir("smtplib");
    let sink = Sink::start(&dir, &[]);
    let script = r#"
import hashlib, smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
messages = [
    b"Subject: one\r\n\r\nhello\r\n",
    b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlast\r\n",
    b"Subject: eight bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "gr\u00fc\u00dfe\r\n".encode(),
]
with smtplib.SMTP(host, port) as s:
    code, caps = s.ehlo("python.test")
    assert code == 250
    for ext in ["pipelining", "8bitmime", "chunking", "size", "smtputf8", "enhancedstatuscodes"]:
        assert s.has_extn(ext), ext
    for m in messages:
        refused = s.sendmail("a@python.test", ["b@sink.test", "c@sink.test"], m)
        assert not refused
        print(hashlib.sha256(m).hexdigest())
    assert s.noop()[0] == 250
    assert s.rset()[0] == 250
    code, _ = s.docmd("VRFY", "someone")
    assert code == 252
    code, _ = s.docmd("XFOO")
    assert 500 <= code < 600
"#;
    let out = python_stdout(script, &host_port(sink.addr), Duration::from_secs(20));
    let mut expected: Vec<String> = out.lines().map(str::to_owned).collect();
    expected.sort();
    let (counters, received) = sink.stop();
    assert_eq!(counters["messages"], 3);
    assert_eq!(received, expected);
}

/// A sink offering STARTTLS with this certificate and key.
fn tls_sink(dir: &Path, cert: &Path, key: &Path) -> Sink {
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    Sink::start(dir, &["--tls-cert", cert, "--tls-key", key])
}

/// STARTTLS between the two halves of the load generator: with the sink's
/// in-memory certificate, and with a given one the sender verifies; a sender
/// trusting another CA delivers nothing.
#[test]
fn send_starttls_delivers_unaltered_and_verifies_when_told() {
    let dir = scratch_dir("starttls");
    let sink = Sink::start(&dir, &["--starttls"]);
    let args = [
        "--connections",
        "2",
        "--messages",
        "100",
        "--size",
        "1k:50,100k:50",
    ];
    let sent = send(
        &dir,
        sink.addr,
        &[&args[..], &["--starttls", "--pipelining"]].concat(),
    );
    let (counters, received) = sink.stop();
    assert_eq!(sent.status, 0, "{}", sent.stdout);
    assert_eq!(sent.digests.len(), 100);
    assert_eq!(sent.digests, received, "lost or altered mail over TLS");
    assert_eq!(counters["connections"], 2);

    let dir = scratch_dir("starttls-verify");
    let (cert, key) = self_signed(&dir, "sink", &["127.0.0.1"]);
    let (stranger, _) = self_signed(&dir, "stranger", &["127.0.0.1"]);
    let sink = tls_sink(&dir, &cert, &key);
    let ca = ["--tls-ca", cert.to_str().unwrap()];
    let sent = send(
        &dir,
        sink.addr,
        &[&args[..], &["--starttls", "--bdat"], &ca].concat(),
    );
    assert_eq!(sent.status, 0, "{}", sent.stdout);
    assert_eq!(u(&sent.report, "messages_ok"), 100);
    let wrong = ["--tls-ca", stranger.to_str().unwrap(), "--messages", "4"];
    let refused = send(
        &dir,
        sink.addr,
        &[&["--connections", "1", "--starttls"][..], &wrong].concat(),
    );
    let (counters, _) = sink.stop();
    assert_eq!(refused.status, 1, "{}", refused.stdout);
    assert_eq!(u(&refused.report, "messages_ok"), 0);
    assert_eq!(
        counters["messages"], 100,
        "nothing delivered past a failed verification"
    );
}

/// Foreign TLS clients see the sink's certificate and deliver through STARTTLS.
#[test]
fn openssl_and_smtplib_use_the_sinks_starttls() {
    let dir = scratch_dir("starttls-peers");
    let (cert, key) = self_signed(&dir, "sink", &["sink.example.test"]);
    let sink = tls_sink(&dir, &cert, &key);
    assert_eq!(
        presented_certificate(sink.addr),
        pem_body(&cert),
        "openssl saw another certificate"
    );

    let sent = smtplib_over_tls(
        sink.addr,
        SmtplibTls::Starttls,
        &[b"Subject: tls\r\n\r\nover TLS\r\n"],
    );
    let (counters, received) = sink.stop();
    assert_eq!(counters["messages"], 1);
    assert_eq!(received, sent);
}
