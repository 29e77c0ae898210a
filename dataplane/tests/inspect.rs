//! The inspected path through the real binary: masking, X-ed verbs answered in order,
//! drop-connection and reset, event lines, and Python's smtplib end to end.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;

/// `default` hides the upstream's greeting behind the listener's `banner_name`.
fn masked_banner() -> Vec<u8> {
    b"220 mx.edge.test ESMTP ready\r\n".to_vec()
}

#[test]
fn default_policy_masks_banner_and_keywords_and_xes_unknown_verbs_in_order() {
    let (up, gate) = gated_upstream(
        &["PIPELINING", "X-SECRET"],
        "policy = \"default\"\nbanner_name = \"mx.edge.test\"",
        "",
    );

    let mut c = Client::connect(gate.listen());
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
    let (up, gate) = gated_upstream(&[], "policy = \"default\"", "");

    let mut c = Client::after_greeting(gate.listen());
    c.send(b"HELO me\r\n");
    assert_eq!(c.reply(), b"250 mx.upstream.test\r\n");
    let mut long = b"MAIL FROM:<".to_vec();
    long.extend(std::iter::repeat_n(b'a', 600));
    long.extend_from_slice(b"@example.org>\r\n");
    c.send(&long);
    c.reply_starting(b"421 4.7.0 ");
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
    let (up, gate) = gated_upstream(&[], "policy = \"default\"", "");

    let mut c = Client::after_greeting(gate.listen());
    c.send(b"EHLO me\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    for _ in 0..4 {
        c.reply();
    }
    let mut header = b"Subject: ".to_vec();
    header.extend(std::iter::repeat_n(b'x', 1200));
    c.send(b"From: a@example.org\r\n");
    c.send(&header);
    c.send(b"\r\n\r\nbody\r\n.\r\n");
    c.reply_starting(b"421 4.7.0 ");
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
    let (_up, gate) = gated_upstream(
        &[],
        "policy = \"strict\"",
        "[policy.strict]\nextends = \"default\"\nrules = [\"match cmd verb VRFY reset log\"]",
    );

    let mut c = Client::greeted(gate.listen(), "HELO me");
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
    let gate = Gate::start_with(
        &config_text(up.addr, "policy = \"default\"", ""),
        &["--log-format", "json"],
    );

    let mut c = Client::after_greeting(gate.listen());
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
    let (up, gate) = gated_upstream(
        &["PIPELINING", "8BITMIME", "SIZE 10240000"],
        "policy = \"default\"",
        "",
    );

    let out = testkit::python(SMTPLIB_SCRIPT, &[gate.listen().port().to_string()], LIMIT);
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

/// The EHLO reply lines a policy lets through, for an upstream advertising `keywords`.
fn ehlo_reply_under(policy: &str, keywords: &[&str]) -> Vec<u8> {
    let (_up, gate) = gated_upstream(keywords, &format!("policy = \"{policy}\""), "");
    let mut c = Client::after_greeting(gate.listen());
    c.send(b"EHLO client.test\r\n");
    c.reply()
}

#[test]
fn ehlo_keywords_are_masked_per_policy() {
    let keywords = [
        "STARTTLS",
        "PIPELINING",
        "CHUNKING",
        "8BITMIME",
        "X-EXPS GSSAPI",
    ];
    assert_eq!(
        ehlo_reply_under("default", &keywords),
        b"250-mx.upstream.test\r\n250-STARTTLS\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n250 XXXXXX GSSAPI\r\n"
    );
    let asa = ehlo_reply_under("asa-compat", &keywords);
    let asa = String::from_utf8_lossy(&asa);
    // The firewall's own behaviour: STARTTLS and PIPELINING masked, same lengths.
    assert!(asa.contains("250-XXXXXXXX\r\n250-XXXXXXXXXX\r\n"), "{asa}");
    assert!(asa.contains("250-8BITMIME\r\n"), "{asa}");
}

#[test]
fn starttls_then_both_directions_are_opaque() {
    let (up, gate) = gated_upstream(&["STARTTLS"], "policy = \"default\"", "");

    let mut c = Client::greeted(gate.listen(), "EHLO client.test");
    c.send(b"STARTTLS\r\n");
    assert_eq!(c.reply(), b"220 2.0.0 Ready to start TLS\r\n");
    // Not SMTP any more: bytes that would be X-ed or dropped if inspected.
    let opaque: Vec<u8> = (0u8..=255)
        .chain(b"XYZZY\r\nMAIL\n.\n".iter().copied())
        .collect();
    c.send(&opaque);
    let mut echoed = vec![0u8; opaque.len()];
    std::io::Read::read_exact(&mut c.stream, &mut echoed).unwrap();
    assert_eq!(echoed, opaque, "server-to-client verbatim");
    let wire = up.wait_wire(0, |w| w.ends_with(b".\n"));
    assert_eq!(
        &wire[wire.len() - opaque.len()..],
        &opaque[..],
        "client-to-server verbatim"
    );
    gate.wait_log("108007");
}

#[test]
fn bdat_chunks_reach_the_server_unchanged() {
    let (up, gate) = gated_upstream(&["CHUNKING"], "policy = \"default\"", "");

    let mut c = Client::greeted(gate.listen(), "EHLO client.test");
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n");
    c.reply();
    c.reply();
    let part1 = b"Subject: chunked\r\n\r\nfirst part ";
    let part2 = b"second part\r\n.\r\n.. dots stay\r\n";
    c.send(format!("BDAT {}\r\n", part1.len()).as_bytes());
    c.send(part1);
    assert_eq!(
        c.reply(),
        format!("250 2.0.0 {} octets received\r\n", part1.len()).as_bytes()
    );
    c.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes());
    c.send(part2);
    assert_eq!(
        c.reply(),
        format!("250 2.0.0 {} octets received\r\n", part2.len()).as_bytes()
    );
    let mut whole = part1.to_vec();
    whole.extend_from_slice(part2);
    assert_eq!(up.messages(), vec![whole]);
}

#[test]
fn pipelined_transactions_are_delivered_with_replies_in_order() {
    let (up, gate) = gated_upstream(&["PIPELINING"], "policy = \"default\"", "");

    let mut c = Client::greeted(gate.listen(), "EHLO client.test");
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    let replies: Vec<Vec<u8>> = (0..3).map(|_| c.reply()).collect();
    assert_eq!(
        replies,
        [
            b"250 2.0.0 Ok\r\n".to_vec(),
            b"250 2.0.0 Ok\r\n".to_vec(),
            b"354 End data with <CR><LF>.<CR><LF>\r\n".to_vec()
        ]
    );
    c.send(b"Subject: one\r\n\r\nbody one\r\n.\r\nMAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n");
    let replies: Vec<Vec<u8>> = (0..4).map(|_| c.reply()).collect();
    assert_eq!(replies[0], b"250 2.0.0 Ok: queued\r\n");
    assert_eq!(replies[3], b"354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send(b"Subject: two\r\n\r\nbody two\r\n.\r\nQUIT\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok: queued\r\n");
    assert_eq!(c.reply(), b"221 2.0.0 Bye\r\n");
    assert_eq!(
        up.messages(),
        vec![
            b"Subject: one\r\n\r\nbody one\r\n".to_vec(),
            b"Subject: two\r\n\r\nbody two\r\n".to_vec()
        ]
    );
}

#[test]
fn more_than_100_recipients_drops_before_data_under_asa_compat() {
    let (up, gate) = gated_upstream(&["PIPELINING"], "policy = \"asa-compat\"", "");

    let mut c = Client::after_greeting(gate.listen());
    c.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n");
    c.reply();
    c.reply();
    let mut last = Vec::new();
    for i in 0..101 {
        c.send(format!("RCPT TO:<r{i}@example.net>\r\n").as_bytes());
        last = c.reply();
        if !last.starts_with(b"250") {
            break;
        }
    }
    assert!(
        last.starts_with(b"421 4.7.0 "),
        "{}",
        String::from_utf8_lossy(&last)
    );
    assert_eq!(c.read_to_end(), b"");
    std::thread::sleep(Duration::from_millis(200));
    let wire = String::from_utf8_lossy(&up.wire(0)).into_owned();
    assert_eq!(
        wire.matches("RCPT TO:").count(),
        100,
        "the 101st never reaches the server"
    );
    assert!(!wire.contains("DATA"));
}

#[test]
fn bare_lf_end_of_data_is_never_passed_on_as_an_end_of_message() {
    let (up, gate) = gated_upstream(&[], "policy = \"default\"", "");

    let mut c = Client::after_greeting(gate.listen());
    c.send(b"HELO me\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    for _ in 0..4 {
        c.reply();
    }
    // SMTP smuggling: a bare-LF end of data followed by a second, forged transaction.
    c.send(b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<v@example.net>\r\nDATA\r\nforged\r\n.\r\n");
    c.reply_starting(b"421 4.7.0 ");
    std::thread::sleep(Duration::from_millis(200));
    assert!(up.messages().is_empty(), "nothing delivered");
    assert!(!String::from_utf8_lossy(&up.wire(0)).contains("ceo@bank"));
}
