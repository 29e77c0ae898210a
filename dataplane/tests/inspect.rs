//! The inspected path through the real binary: masking, X-ed verbs answered in order,
//! drop-connection and reset, event lines, and Python's smtplib end to end.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use common::*;

fn masked_banner() -> Vec<u8> {
    let mut b = b"220 ".to_vec();
    b.extend(std::iter::repeat_n(b'*', UPSTREAM_BANNER.len() - 6));
    b.extend_from_slice(b"\r\n");
    b
}

#[test]
fn default_policy_masks_banner_and_keywords_and_xes_unknown_verbs_in_order() {
    let up = Upstream::start(&["PIPELINING", "X-SECRET"]);
    let (conf, listen) = config(up.addr, "policy = \"default\"", "");
    let _gate = Gate::start(&conf);

    let mut c = Client::connect(listen);
    assert_eq!(c.reply(), masked_banner());
    c.send(b"EHLO client.test\r\n");
    assert_eq!(
        c.reply(),
        b"250-mx.upstream.test\r\n250-PIPELINING\r\n250 XXXXXXXX\r\n"
    );
    // Pipelined: the X-ed verb must be answered by the server, in order.
    c.send(b"XYZZY magic\r\nNOOP\r\n");
    assert_eq!(c.reply(), b"500 5.5.1 Command unrecognized\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok\r\n");
    c.send(b"QUIT\r\n");
    assert_eq!(c.reply(), b"221 2.0.0 Bye\r\n");

    let wire = up.wait_wire(0, |w| w.ends_with(b"QUIT\r\n"));
    let lines: Vec<&[u8]> = wire.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(lines[0], b"EHLO client.test\r\n");
    assert_eq!(lines[1].len(), b"XYZZY magic\r\n".len(), "same length");
    assert!(lines[1].starts_with(b"XXXXX") && lines[1].ends_with(b"\r\n"));
    assert!(
        !wire.windows(5).any(|w| w == b"XYZZY"),
        "the verb never reaches the server"
    );
    assert_eq!(&lines[2..], [&b"NOOP\r\n"[..], b"QUIT\r\n"]);
}

#[test]
fn overlong_command_drops_the_session_and_logs() {
    let up = Upstream::start(&[]);
    let (conf, listen) = config(up.addr, "policy = \"default\"", "");
    let gate = Gate::start(&conf);

    let mut c = Client::connect(listen);
    c.reply();
    c.send(b"HELO me\r\n");
    assert_eq!(c.reply(), b"250 mx.upstream.test\r\n");
    let mut long = b"MAIL FROM:<".to_vec();
    long.extend(std::iter::repeat_n(b'a', 600));
    long.extend_from_slice(b"@example.org>\r\n");
    c.send(&long);
    let reply = c.reply();
    assert!(
        reply.starts_with(b"421 4.7.0 "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(c.read_to_end(), b"", "session closed after the 421");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        up.wire(0),
        b"HELO me\r\n",
        "the long command never reached the server"
    );

    let log = gate.wait_log("108004");
    let line = log.lines().find(|l| l.contains("108004")).unwrap();
    assert!(line.contains("cmd line length gt 512"), "{line}");
    assert!(line.contains("drop-connection"), "{line}");
    assert!(line.contains(&format!("server={}", up.addr)), "{line}");
}

#[test]
fn drop_mid_data_never_delivers_a_partial_message() {
    let up = Upstream::start(&[]);
    let (conf, listen) = config(up.addr, "policy = \"default\"", "");
    let _gate = Gate::start(&conf);

    let mut c = Client::connect(listen);
    c.reply();
    c.send(b"EHLO me\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    for _ in 0..4 {
        c.reply();
    }
    let mut header = b"Subject: ".to_vec();
    header.extend(std::iter::repeat_n(b'x', 1200));
    c.send(b"From: a@example.org\r\n");
    c.send(&header);
    c.send(b"\r\n\r\nbody\r\n.\r\n");
    let reply = c.reply();
    assert!(
        reply.starts_with(b"421 4.7.0 "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(up.messages().is_empty(), "no message may be delivered");
    let wire = up.wire(0);
    assert!(
        !wire.windows(5).any(|w| w == b"\r\n.\r\n"),
        "no end of data upstream"
    );
}

#[test]
fn reset_action_resets_both_sides() {
    let up = Upstream::start(&[]);
    let (conf, listen) = config(
        up.addr,
        "policy = \"strict\"",
        "[policy.strict]\nextends = \"default\"\nrules = [\"match cmd verb VRFY reset log\"]",
    );
    let gate = Gate::start(&conf);

    let mut c = Client::connect(listen);
    c.reply();
    c.send(b"HELO me\r\n");
    c.reply();
    c.send(b"VRFY root\r\n");
    let mut rest = Vec::new();
    let err = c
        .stream
        .read_to_end(&mut rest)
        .expect_err("a reset, not a clean close");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    gate.wait_log("match cmd verb VRFY reset log");
}

#[test]
fn json_log_format_prints_one_object_per_event() {
    let up = Upstream::start(&[]);
    let (conf, listen) = config(up.addr, "policy = \"default\"", "");
    let gate = Gate::start_with(&conf, &["--log-format", "json"]);

    let mut c = Client::connect(listen);
    c.reply();
    let mut long = b"HELO ".to_vec();
    long.extend(std::iter::repeat_n(b'h', 700));
    long.extend_from_slice(b"\r\n");
    c.send(&long);
    assert!(c.reply().starts_with(b"421 4.7.0 "));
    gate.wait_log("108004");
    let event: serde_json::Value = gate
        .stdout()
        .lines()
        .find(|l| l.contains("108004"))
        .map(|l| serde_json::from_str(l).expect("a JSON object"))
        .unwrap();
    assert_eq!(event["message_id"], 108004);
    assert_eq!(
        event["rule"],
        "match cmd line length gt 512 drop-connection log"
    );
    assert_eq!(event["value"], 705);
    assert_eq!(event["server"], up.addr.to_string());
}

const SMTPLIB_SCRIPT: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
msg = "From: a@example.org\r\nTo: b@example.net\r\nSubject: hello\r\n\r\n" + "line of body text\r\n" * 50
with smtplib.SMTP("127.0.0.1", port, timeout=15) as s:
    code, banner = s.ehlo()
    print("EHLO", code)
    s.sendmail("a@example.org", ["b@example.net"], msg)
    s.sendmail("c@example.org", ["d@example.net"], msg)
print("SENT")
"#;

#[test]
fn smtplib_delivers_two_messages_unchanged_through_the_default_policy() {
    let up = Upstream::start(&["PIPELINING", "8BITMIME", "SIZE 10240000"]);
    let (conf, listen) = config(up.addr, "policy = \"default\"", "");
    let _gate = Gate::start(&conf);

    let out = Command::new("python3")
        .args(["-c", SMTPLIB_SCRIPT, &listen.port().to_string()])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SENT"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected =
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hello\r\n\r\n".to_vec();
    for _ in 0..50 {
        expected.extend_from_slice(b"line of body text\r\n");
    }
    assert_eq!(up.messages(), vec![expected.clone(), expected]);
}
