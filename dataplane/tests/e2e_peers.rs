//! End to end against real peers: Python's smtplib and swaks as clients, a recording
//! upstream that keeps exact wire bytes, and Postfix's smtp-source → smtp-sink soak.

mod common;
mod e2e_support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use e2e_support::*;
use testkit::self_signed;

/// Waits (bounded) for the upstream to complete `n` messages.
fn wait_messages(upstream: &Upstream, n: usize) -> Vec<Vec<u8>> {
    wait_until(LIMIT, || Some(upstream.messages()).filter(|m| m.len() >= n))
        .unwrap_or_else(|| upstream.messages())
}

/// A DKIM-signed message with the features that break classic inspection: a folded
/// DKIM-Signature header, lines starting with '.', a 990-octet line, a MIME attachment.
/// `dots` is what stands before the two dotted lines: "" for the message itself, "."
/// for it as a DATA client must send it (a line's leading dot doubled).
fn dkim_signed_message(dots: &str) -> Vec<u8> {
    let mut m = String::new();
    m.push_str("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;\r\n");
    m.push_str(" s=sel1; h=from:to:subject:date:message-id:mime-version;\r\n");
    m.push_str(" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n");
    m.push_str(" b=dzdVyOfAKCdLXdJOc9G2q8LoXSlEniSbav+yuU4zGeeruD00lszZVoG4ZHRNiYzR\r\n");
    m.push_str("From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n");
    m.push_str("Subject: quarterly report\r\nMessage-ID: <e2e-1@example.org>\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str("Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n");
    m.push_str("--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    m.push_str(&format!(
        "{dots}.a line that starts with a dot\r\n{dots}..and one with two\r\n"
    ));
    m.push_str(&"x".repeat(990));
    m.push_str("\r\n--b1\r\nContent-Type: application/pdf\r\n");
    m.push_str("Content-Transfer-Encoding: base64\r\n");
    m.push_str("Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n");
    for _ in 0..40 {
        m.push_str("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx");
        m.push_str("MjM0\r\n");
    }
    m.push_str("--b1--\r\n");
    m.into_bytes()
}

const SMTPLIB_SEND: &str = r#"
import smtplib, sys
port, path = int(sys.argv[1]), sys.argv[2]
s = smtplib.SMTP()
code, banner = s.connect("127.0.0.1", port)
print("BANNER", code, banner.decode())
code, _ = s.ehlo("client.example.org")
print("EHLO", code, " ".join(sorted(s.esmtp_features)))
s.sendmail("alice@example.org", ["bob@example.net"], open(path, "rb").read())
print("SENT")
s.quit()
"#;

#[test]
fn smtplib_dkim_signed_mail_arrives_unchanged_with_banner_and_keywords_masked() {
    let upstream = Upstream::start(&[
        "PIPELINING",
        "8BITMIME",
        "SIZE 10240000",
        "VRFY",
        "X-EXPS GSSAPI",
        "CHUNKING",
    ]);
    let gate = Gate::start(&config_text(
        upstream.addr,
        "policy = \"default\"\nbanner_name = \"mx.edge.test\"",
        "",
    ));

    let dir = scratch_dir("smtplib");
    let msg = dkim_signed_message("");
    std::fs::write(dir.join("msg.eml"), &msg).unwrap();
    let out = python(
        SMTPLIB_SEND,
        &[
            gate.listen().port().to_string(),
            dir.join("msg.eml").display().to_string(),
        ],
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smtplib failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Banner: the upstream's name and software hidden behind the edge's name.
    assert!(
        stdout.contains("BANNER 220 mx.edge.test ESMTP ready\n"),
        "{stdout}"
    );

    // EHLO: allowed keywords pass, VRFY and the unknown X-EXPS become same-length X's.
    let ehlo = stdout
        .lines()
        .find(|l| l.starts_with("EHLO 250"))
        .expect(&stdout);
    let features: Vec<&str> = ehlo.split(' ').skip(2).collect();
    for kept in ["pipelining", "8bitmime", "size", "chunking"] {
        assert!(features.contains(&kept), "{kept} missing from {ehlo}");
    }
    assert!(
        !features.contains(&"vrfy") && !features.contains(&"x-exps"),
        "{ehlo}"
    );
    assert!(
        features.contains(&"xxxx") && features.contains(&"xxxxxx"),
        "{ehlo}"
    );

    // Every byte of the message reached the server as the client sent it.
    let got = wait_messages(&upstream, 1);
    assert_eq!(got.len(), 1);
    let wire = upstream.wire(0);
    // smtplib adds SIZE= because the server advertises SIZE.
    let mail = command_lines(&wire, "MAIL");
    assert!(
        mail.len() == 1 && mail[0].starts_with("mail FROM:<alice@example.org>"),
        "{mail:?}"
    );
    assert_eq!(command_lines(&wire, "RCPT"), ["rcpt TO:<bob@example.net>"]);
    assert_eq!(
        String::from_utf8_lossy(&got[0]),
        String::from_utf8_lossy(&dkim_signed_message("."))
    );
}

/// swaks from alice@example.org to `to` (comma-separated) through `server`, with
/// `options`; bounded.
fn swaks(server: SocketAddr, to: &str, options: &[&str]) -> std::process::Output {
    let server = server.to_string();
    run_bounded(
        Command::new(peer("swaks"))
            .args([
                "--server",
                &server,
                "--from",
                "alice@example.org",
                "--to",
                to,
            ])
            .args(options)
            .args(["--timeout", "10"]),
        LIMIT,
    )
}

#[test]
fn swaks_pipelined_transaction_is_delivered() {
    let (upstream, gate) = gated_upstream(&["PIPELINING", "8BITMIME"], "policy = \"default\"", "");
    let out = swaks(
        gate.listen(),
        "bob@example.net,carol@example.net",
        &["--pipeline", "--body", "pipelined hello"],
    );
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{transcript}");
    let got = wait_messages(&upstream, 1);
    assert_eq!(got.len(), 1, "{transcript}");
    assert_eq!(command_lines(&upstream.wire(0), "RCPT").len(), 2);
    assert!(String::from_utf8_lossy(&got[0]).contains("pipelined hello"));
}

#[test]
fn swaks_over_100_recipients_is_dropped_before_any_data_under_asa_compat() {
    let (upstream, gate) = gated_upstream(&["PIPELINING"], "policy = \"asa-compat\"", "");
    let rcpts: Vec<String> = (0..101).map(|i| format!("user{i}@example.net")).collect();
    let out = swaks(gate.listen(), &rcpts.join(","), &[]);
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "swaks should fail:\n{transcript}");
    assert!(
        transcript.contains("421 4.7.0"),
        "no 421 4.7.0 in:\n{transcript}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let wire = upstream.wire(0);
    assert_eq!(
        command_lines(&wire, "RCPT").len(),
        100,
        "the 101st RCPT must not be forwarded"
    );
    assert!(command_lines(&wire, "DATA").is_empty());
    assert!(upstream.messages().is_empty());
    gate.wait_log("108004");
}

/// The issue's soak: 10,000 messages from Postfix's smtp-source through smtpgate
/// (policy default) into Postfix's smtp-sink, none lost.
#[test]
fn soak_10000_messages_smtp_source_to_smtp_sink_none_lost() {
    let source = peer("smtp-source");
    let sink = PostfixSink::start(&["-c"], 256);
    let gate = Gate::start(&config_text(sink.addr, "policy = \"default\"", ""));
    let listen = gate.listen();

    let out = run_bounded(
        Command::new(source).args([
            "-s",
            "20",
            "-m",
            "10000",
            "-l",
            "1024",
            "-d",
            &listen.to_string(),
        ]),
        Duration::from_secs(240),
    );
    assert!(
        out.status.success(),
        "smtp-source failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // smtp-sink -c prints "sess=N quit=N mesg=N" after each event; wait for the last.
    let delivered = wait_until(Duration::from_secs(10), || {
        let n = sink.messages();
        (n >= 10_000).then_some(n)
    })
    .unwrap_or_else(|| sink.messages());
    assert_eq!(delivered, 10_000, "smtp-sink counted {delivered} messages");
}

/// `smtpgate check -c path` must accept the file.
fn assert_check_passes(path: &std::path::Path) {
    let (code, _, stderr) = smtpgate(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{} fails check:\n{stderr}", path.display());
}

#[test]
fn shipped_example_configs_pass_check() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            assert_check_passes(&path);
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected the shipped examples, found {checked}"
    );
}

#[test]
fn readme_config_sample_passes_check() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let start = readme.find("```toml\n").expect("README has a toml sample") + "```toml\n".len();
    let sample = &readme[start..start + readme[start..].find("```").unwrap()];
    // The sample names the edge's certificate under /etc/smtpgate, and `check` reads
    // and validates it: put a real pair there in a scratch copy.
    let dir = scratch_dir("readme");
    let (cert_path, key_path) = self_signed(&dir, "mx", &["mx.example.test"]);
    assert!(
        sample.contains("\"/etc/smtpgate/mx.pem\"") && sample.contains("\"/etc/smtpgate/mx.key\""),
        "the README sample no longer names /etc/smtpgate/mx.pem and mx.key"
    );
    let sample = sample
        .replace("/etc/smtpgate/mx.pem", &cert_path.display().to_string())
        .replace("/etc/smtpgate/mx.key", &key_path.display().to_string());
    let path = dir.join("readme.toml");
    std::fs::write(&path, sample).unwrap();
    assert_check_passes(&path);
}
