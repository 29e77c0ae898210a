//! STARTTLS terminated by smtpgate (`starttls = "inspect"`) and implicit TLS, end to
//! end with real TLS clients (Python's smtplib, swaks, openssl s_client) and real TLS
//! upstreams (`smtpgate-loadgen sink --starttls`, which logs a SHA-256 per message, so
//! delivery through both TLS legs is checked byte for byte). Rules are checked inside
//! TLS against the recording upstream, which sees the decrypted dialogue.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A self-signed certificate for `mx.example.test` and 127.0.0.1, written to `dir`.
fn certificate(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    self_signed(dir, stem, &["mx.example.test", "127.0.0.1"])
}

/// Runs a Python script with `args`; returns its stdout (it must exit 0).
fn python(script: &str, args: &[String]) -> String {
    python_stdout(script, args, LIMIT)
}

#[test]
fn smtplib_starttls_delivers_byte_exact_through_both_tls_legs() {
    let dir = scratch_dir("tls-inspect-smtplib");
    let (cert, key) = certificate(&dir, "mx");
    let sink = Sink::start(&dir, &["--starttls"]);
    let gate = Gate::start(&config_text(sink.addr, "", &tls_section(&cert, &key)));
    // A 70-octet line, then 3,000 lines of 70 digits: about 210 kB.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.extend([b'x'; 70]);
    big.extend(b"\r\n");
    let digits = [b"0123456789".repeat(7), b"\r\n".to_vec()].concat();
    big.extend(digits.repeat(3000));
    let messages: [&[u8]; 3] = [
        b"Subject: one\r\n\r\nhello over TLS\r\n",
        b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nlast\r\n",
        &big,
    ];
    let mut sent = smtplib_over_tls(gate.listen(), SmtplibTls::Starttls, &messages);
    assert_eq!(sent.len(), 3);
    sent.sort();
    let log = gate.wait_log("side=client");
    assert!(log.contains("TLS established"), "{log}");
    assert!(log.contains("side=upstream version=TLSv1_3"), "{log}");
    let metrics = http_get(gate.admin(), "/metrics");
    assert!(
        metrics.contains("smtpgate_tls_established_total{side=\"client\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smtpgate_tls_established_total{side=\"upstream\"} 1"),
        "{metrics}"
    );
    let (counters, received) = sink.stop();
    assert_eq!(counters["messages"], 3);
    assert_eq!(
        received, sent,
        "every byte of every message arrives unchanged"
    );
}

#[test]
fn openssl_s_client_sees_smtpgates_certificate_and_swaks_delivers() {
    let dir = scratch_dir("tls-inspect-openssl");
    let (cert, key) = certificate(&dir, "mx");
    let sink = Sink::start(&dir, &["--starttls"]);
    let gate = Gate::start(&config_text(sink.addr, "", &tls_section(&cert, &key)));
    assert_eq!(presented_certificate(gate.listen()), pem_body(&cert));

    let swaks = run_bounded(
        Command::new(peer("swaks"))
            .args(["--server", &gate.listen().to_string(), "--tls"])
            .args(["--from", "a@swaks.test", "--to", "b@example.test"])
            .args(["--helo", "swaks.test", "--timeout", "20"]),
        LIMIT,
    );
    let transcript = String::from_utf8_lossy(&swaks.stdout);
    assert!(swaks.status.success(), "swaks: {transcript}");
    assert!(
        transcript.contains("220 2.0.0 Ready to start TLS"),
        "{transcript}"
    );
    let (counters, _) = sink.stop();
    assert_eq!(counters["messages"], 1);
}

/// Inside TLS: an unknown verb reaches the upstream as X's, a 101st RCPT is refused by
/// the gate, an overlong header line ends the session and the upstream never sees that
/// message end.
const SMTPLIB_RULES: &str = r#"
import smtplib, ssl, sys
host, port, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = smtplib.SMTP(host, port, timeout=20)
s.ehlo("python.test")
s.starttls(context=ssl._create_unverified_context())
s.ehlo("python.test")
if case == "verb":
    print(s.docmd("XYZZY", "now")[0])
    print(s.noop()[0])
elif case == "rcpt":
    s.mail("a@python.test")
    try:
        for i in range(101):
            code, _ = s.rcpt(f"r{i}@example.test")
        print(code)
    except smtplib.SMTPServerDisconnected:
        print("disconnected")
elif case == "header":
    try:
        s.sendmail("a@python.test", ["b@example.test"], b"Subject: " + b"h" * 1200 + b"\r\n\r\nbody\r\n")
        print("delivered")
    except smtplib.SMTPResponseException as e:
        print(e.smtp_code)
    except smtplib.SMTPServerDisconnected:
        print("disconnected")
"#;

#[test]
fn rules_apply_to_the_decrypted_dialogue() {
    let dir = scratch_dir("tls-inspect-rules");
    let (cert, key) = certificate(&dir, "mx");
    // A plaintext upstream (no STARTTLS): the client leg is TLS, the recording
    // upstream sees exactly what smtpgate forwards after decrypting.
    let upstream = Upstream::start(&["PIPELINING"]);
    let gate = Gate::start(&config_text(upstream.addr, "", &tls_section(&cert, &key)));
    let args = |case: &str| {
        let mut a = host_port(gate.listen());
        a.push(case.to_string());
        a
    };

    let out = python(SMTPLIB_RULES, &args("verb"));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["500", "250"], "{out}");
    let wire = upstream.wait_wire(0, |w| w.ends_with(b"noop\r\n"));
    let wire = String::from_utf8_lossy(&wire);
    assert!(
        !wire.to_ascii_lowercase().contains("starttls") && !wire.contains("\r\nXXXXXXXX\r\n"),
        "STARTTLS answered by the gate, unseen by a plaintext upstream: {wire}"
    );
    assert!(
        wire.contains("\r\nXXXXXXXXX\r\n"),
        "the unknown verb X-ed inside TLS: {wire}"
    );
    assert_eq!(wire.matches("ehlo python.test").count(), 2, "{wire}");

    // `cmd RCPT count gt 100 reject`: the gate answers the 101st RCPT itself.
    let out = python(SMTPLIB_RULES, &args("rcpt"));
    assert_eq!(out.trim(), "452", "{out}");
    let metrics = http_get(gate.admin(), "/metrics");
    let matched = metrics
        .lines()
        .find(|l| l.starts_with("smtpgate_rule_matches_total") && l.contains("RCPT count gt 100"))
        .unwrap_or_else(|| panic!("no RCPT rule counter in {metrics}"));
    assert!(matched.ends_with(" 1"), "{matched}");
    // smtplib writes its verbs in lower case.
    let wire = upstream.wait_wire(1, |w| w.contains_subsequence(b"rcpt TO:<r99@"));
    let wire = String::from_utf8_lossy(&wire);
    assert!(wire.contains("<r99@"), "100 RCPTs pass: {wire}");
    assert!(!wire.contains("<r100@"), "the 101st RCPT never passes");

    let out = python(SMTPLIB_RULES, &args("header"));
    assert!(out.trim() == "421" || out.trim() == "disconnected", "{out}");
    gate.wait_log("header line length gt 998");
    assert!(
        upstream.messages().is_empty(),
        "no message end reached the upstream"
    );
}

trait Contains {
    fn contains_subsequence(&self, needle: &[u8]) -> bool;
}

impl Contains for [u8] {
    fn contains_subsequence(&self, needle: &[u8]) -> bool {
        self.windows(needle.len()).any(|w| w == needle)
    }
}

#[test]
fn implicit_tls_is_tls_from_the_first_byte() {
    let dir = scratch_dir("tls-implicit");
    let (cert, key) = certificate(&dir, "mx");
    let sink = Sink::start(&dir, &[]);
    let gate = Gate::start(&config_text(
        sink.addr,
        "implicit_tls = true",
        &tls_section(&cert, &key),
    ));
    let sent = smtplib_over_tls(
        gate.listen(),
        SmtplibTls::Implicit,
        &[b"Subject: implicit\r\n\r\nsubmissions over TLS\r\n"],
    );
    let (counters, received) = sink.stop();
    assert_eq!(counters["messages"], 1);
    assert_eq!(received, sent);
}

#[test]
fn verify_against_a_wrong_ca_refuses_with_421_and_delivers_nothing() {
    let dir = scratch_dir("tls-verify");
    let (cert, key) = certificate(&dir, "mx");
    let (stranger, _) = certificate(&dir, "stranger");
    // The sink's certificate is made in memory at its start: no CA of ours signed it.
    let sink = Sink::start(&dir, &["--starttls"]);
    let listener = format!(
        "upstream_tls = \"verify\"\nupstream_ca = \"{}\"",
        stranger.display()
    );
    let gate = Gate::start(&config_text(
        sink.addr,
        &listener,
        &tls_section(&cert, &key),
    ));
    let script = r#"
import smtplib, ssl, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=20)
s.ehlo("python.test")
try:
    s.starttls(context=ssl._create_unverified_context())
    print("TLS started")
except smtplib.SMTPResponseException as e:
    # The reply to STARTTLS itself: TLS to the upstream is checked first.
    print(e.smtp_code, e.smtp_error.decode())
"#;
    let out = python(script, &host_port(gate.listen()));
    assert!(out.starts_with("421 4.7.0"), "{out}");
    let log = gate.wait_log("TLS failed");
    assert!(
        log.contains("side=upstream reason=bad_certificate"),
        "{log}"
    );
    let metrics = http_get(gate.admin(), "/metrics");
    assert!(
        metrics.contains(
            "smtpgate_tls_handshake_failures_total{side=\"upstream\",reason=\"bad_certificate\"} 1"
        ),
        "{metrics}"
    );
    let (counters, _) = sink.stop();
    assert_eq!(counters["messages"], 0);
}

#[test]
fn sighup_serves_a_new_certificate_and_keeps_it_when_the_next_pair_is_bad() {
    let dir = scratch_dir("tls-reload");
    let (cert, key) = certificate(&dir, "mx");
    let first = pem_body(&cert);
    let sink = Sink::start(&dir, &[]);
    let gate = Gate::start(&config_text(sink.addr, "", &tls_section(&cert, &key)));
    assert_eq!(presented_certificate(gate.listen()), first);

    let (new_cert, new_key) = certificate(&dir, "next");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    gate.signal(libc::SIGHUP);
    gate.wait_log("SIGHUP: reloaded");
    let second = pem_body(&cert);
    assert_ne!(first, second);
    assert_eq!(
        presented_certificate(gate.listen()),
        second,
        "new handshakes use the new pair"
    );

    // A key of another certificate: the current pair stays, and the log says why.
    let (_, other_key) = certificate(&dir, "other");
    std::fs::copy(&other_key, &key).unwrap();
    gate.signal(libc::SIGHUP);
    let log = gate.wait_log("keeping the current TLS certificates");
    assert!(
        log.contains("this key does not belong to the certificate"),
        "{log}"
    );
    assert_eq!(presented_certificate(gate.listen()), second);
}

#[test]
fn sni_serves_the_certificate_for_the_name_the_client_asks_for() {
    let dir = scratch_dir("tls-sni");
    let (cert, key) = certificate(&dir, "mx");
    let (mx2_cert, mx2_key) = self_signed(&dir, "mx2", &["mx2.example.test"]);
    let (mx3_cert, mx3_key) = self_signed(&dir, "mx3", &["mx3.example.test"]);
    let sni = format!(
        "{}\n[[tls.sni]]\nnames = [\"mx2.example.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[tls.sni]]\nnames = [\"MX3.Example.Test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        tls_section(&cert, &key),
        mx2_cert.display(),
        mx2_key.display(),
        mx3_cert.display(),
        mx3_key.display()
    );
    let sink = Sink::start(&dir, &[]);
    let gate = Gate::start(&config_text(sink.addr, "", &sni));
    let served = |name| presented_certificate_for(gate.listen(), name);
    assert_eq!(served(Some("mx2.example.test")), pem_body(&mx2_cert));
    assert_eq!(served(Some("mx3.example.test")), pem_body(&mx3_cert));
    assert_eq!(
        served(Some("MX2.EXAMPLE.TEST")),
        pem_body(&mx2_cert),
        "names are case-insensitive"
    );
    assert_eq!(
        served(Some("other.example.test")),
        pem_body(&cert),
        "an unknown name gets the [tls] certificate"
    );
    assert_eq!(
        served(None),
        pem_body(&cert),
        "no name gets the [tls] certificate"
    );
    let log = gate.wait_log("sni=mx3.example.test");
    assert!(log.contains("sni=mx2.example.test"), "{log}");
}

/// openssl s_client's summary line for a STARTTLS session forced to one TLS version
/// (`-tls1_2`, `-tls1_3`): "New, TLSv1.2, Cipher is ..." when a handshake was made.
fn s_client_session(addr: std::net::SocketAddr, version: &str) -> String {
    let out = run_with_input(
        Command::new(peer("openssl"))
            .args(["s_client", "-starttls", "smtp", version, "-connect"])
            .arg(addr.to_string()),
        b"QUIT\n",
        LIMIT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|line| line.starts_with("New, "))
        .unwrap_or_else(|| panic!("no session line in openssl's output:\n{text}"))
        .to_string()
}

#[test]
fn tls_protocols_limit_the_versions_a_client_may_use() {
    let dir = scratch_dir("tls-protocols");
    let (cert, key) = certificate(&dir, "mx");
    let tls = format!("{}protocols = [\"TLSv1.2\"]\n", tls_section(&cert, &key));
    let sink = Sink::start(&dir, &[]);
    let gate = Gate::start(&config_text(sink.addr, "", &tls));
    let tls12 = s_client_session(gate.listen(), "-tls1_2");
    assert!(
        tls12.starts_with("New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{tls12}"
    );
    let tls13 = s_client_session(gate.listen(), "-tls1_3");
    assert!(
        tls13.contains("Cipher is (NONE)"),
        "no TLS 1.3 handshake: {tls13}"
    );
    let log = gate.wait_log("side=client version=TLSv1_2");
    assert!(!log.contains("version=TLSv1_3"), "{log}");
    let metrics = http_get(gate.admin(), "/metrics");
    assert!(
        metrics.contains(
            "smtpgate_tls_handshake_failures_total{side=\"client\",reason=\"no_common_parameters\"} 1"
        ),
        "{metrics}"
    );
}

/// Python's smtplib (OpenSSL, Nagle's algorithm on) writes its EHLO after STARTTLS in
/// a write of its own, which the kernel holds until the client's TLS Finished is
/// acknowledged. With nothing sent back to that Finished (smtpgate keeps the TLS 1.3
/// ticket for the EHLO's reply) the acknowledgement would wait for the delayed-ACK
/// timer, 40 ms at least, in every session; the fastest of five must not.
const EHLO_AFTER_STARTTLS: &str = r#"
import smtplib, ssl, sys, time
port = int(sys.argv[1])
fastest = None
for _ in range(5):
    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
    s.ehlo("python.test")
    s.starttls(context=ssl._create_unverified_context())
    start = time.monotonic()
    s.ehlo("python.test")
    took = (time.monotonic() - start) * 1000
    fastest = took if fastest is None else min(fastest, took)
    s.quit()
print(f"{fastest:.1f}")
"#;

#[test]
fn an_openssl_clients_ehlo_after_starttls_does_not_wait_for_a_delayed_ack() {
    let dir = scratch_dir("tls-ehlo-latency");
    let (cert, key) = certificate(&dir, "mx");
    let sink = Sink::start(&dir, &[]);
    let gate = Gate::start(&config_text(sink.addr, "", &tls_section(&cert, &key)));
    let fastest: f64 = python(EHLO_AFTER_STARTTLS, &[gate.listen().port().to_string()])
        .trim()
        .parse()
        .unwrap();
    assert!(
        fastest < 20.0,
        "the fastest EHLO after STARTTLS took {fastest} ms: the client's Finished waited for a delayed ACK"
    );
}
