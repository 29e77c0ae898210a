//! The parsers behind the inspector, through the real binary: RFC 5321 paths in MAIL
//! FROM / RCPT TO (pipes, quoted local parts, domain case, unparseable paths), and the
//! DATA scanner (a dot beside a bare line end or a NUL, NUL elsewhere), and the MIME
//! parser (filenames behind long parameters and long boundaries, parse limits).
//! Each test drives `smtpgate run` against the recording upstream and asserts the
//! exact bytes each side saw.

mod common;
mod e2e_support;

use std::time::Duration;

use common::*;

/// A listener with `policy`, optionally a user policy defined in `extra`.
fn gate_with(up: &Upstream, policy: &str, extra: &str) -> (Gate, std::net::SocketAddr) {
    let gate = Gate::start(&config_text(
        up.addr,
        &format!("policy = \"{policy}\""),
        extra,
    ));
    let listen = gate.listen();
    (gate, listen)
}

/// The client hears `421 4.7.0 <reason>` and then the close; the upstream never saw
/// `line`.
fn assert_dropped(c: &mut Client, up: &Upstream, session: usize, reason: &str, line: &[u8]) {
    let reply = c.reply();
    assert!(
        reply.starts_with(b"421 4.7.0 ") && text(&reply).contains(reason),
        "{}",
        text(&reply)
    );
    assert_eq!(c.read_to_end(), b"", "closed after the 421");
    std::thread::sleep(Duration::from_millis(200));
    let wire = up.wire(session);
    assert!(
        !wire.windows(line.len()).any(|w| w == line),
        "{} reached the server: {}",
        text(line),
        text(&wire)
    );
}

#[test]
fn a_pipe_in_mail_from_or_rcpt_to_closes_the_session_with_108003_in_every_inspecting_builtin() {
    let up = Upstream::start(&["PIPELINING"]);
    let cases: [(&str, &[u8], &[u8]); 3] = [
        (
            "default",
            b"MAIL FROM:<a@example.com>\r\n",
            b"RCPT TO:<a|b@example.net>\r\n",
        ),
        ("asa-compat", b"", b"MAIL FROM:<a|b@example.com>\r\n"),
        ("mailguard", b"", b"MAIL FROM:<\"a|b\"@example.com>\r\n"),
    ];
    for (session, (policy, before, bad)) in cases.into_iter().enumerate() {
        let (gate, listen) = gate_with(&up, policy, "");
        let hello = if policy == "mailguard" {
            "HELO"
        } else {
            "EHLO"
        };
        let mut c = Client::greeted(listen, &format!("{hello} client.test"));
        if !before.is_empty() {
            c.send(before);
            assert_eq!(c.reply(), b"250 2.0.0 Ok\r\n");
        }
        c.send(bad);
        assert_dropped(&mut c, &up, session, "Pipe in address", bad);
        let log = gate.wait_log("108003");
        let line = log.lines().find(|l| l.contains("108003")).unwrap();
        assert!(line.contains("address-pipe"), "{policy}: {line}");
    }
}

#[test]
fn quoted_local_parts_and_upper_case_domains_do_not_evade_the_sender_regex() {
    let up = Upstream::start(&[]);
    let extra = "[policy.spam]\nextends = \"default\"\n\
                 rules = [\"match sender-address regex \\\"@spam\\\\.example$\\\" drop-connection log\"]\n";
    let (_gate, listen) = gate_with(&up, "spam", extra);
    let tricks: [&[u8]; 3] = [
        b"MAIL FROM:<\"a>b\"@spam.example>\r\n",
        b"MAIL FROM:<x@SPAM.Example>\r\n",
        b"MAIL FROM:<x@spam.example.> SIZE=100\r\n",
    ];
    for (session, line) in tricks.into_iter().enumerate() {
        let mut c = Client::greeted(listen, "EHLO client.test");
        c.send(line);
        assert_dropped(&mut c, &up, session, "Sender address not allowed", line);
    }
    // A near miss still passes, byte for byte.
    let mut c = Client::greeted(listen, "EHLO client.test");
    c.send(b"MAIL FROM:<\"a>b\"@spam.example.org>\r\nQUIT\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok\r\n");
    let wire = up.wait_wire(3, |w| w.ends_with(b"QUIT\r\n"));
    assert!(text(&wire).contains("MAIL FROM:<\"a>b\"@spam.example.org>\r\n"));
}

#[test]
fn an_unparseable_path_is_masked_and_answered_by_the_server_in_order() {
    let up = Upstream::start(&["PIPELINING"]);
    let (gate, listen) = gate_with(&up, "default", "");
    let mut c = Client::greeted(listen, "EHLO client.test");
    c.send(b"MAIL FROM:<a@b\r\nMAIL FROM:<a@b>\r\nRCPT TO:<a b@c>\r\nRCPT TO:<c@d>\r\nQUIT\r\n");
    assert_eq!(c.reply(), b"500 5.5.1 Command unrecognized\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok\r\n");
    assert_eq!(c.reply(), b"500 5.5.1 Command unrecognized\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok\r\n");
    assert_eq!(c.reply(), b"221 2.0.0 Bye\r\n");
    let wire = up.wait_wire(0, |w| w.ends_with(b"QUIT\r\n"));
    assert_eq!(
        text(&wire),
        "EHLO client.test\r\nXXXXXXXXXXXXXX\r\nMAIL FROM:<a@b>\r\nXXXXXXXXXXXXXXX\r\nRCPT TO:<c@d>\r\nQUIT\r\n"
    );
    gate.wait_log("malformed-path");
}

/// Opens a transaction and DATA; returns once the 354 has arrived.
fn in_data(listen: std::net::SocketAddr) -> Client {
    let mut c = Client::greeted(listen, "EHLO client.test");
    c.send(b"MAIL FROM:<a@example.org>\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok\r\n");
    c.send(b"RCPT TO:<b@example.net>\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok\r\n");
    c.send(b"DATA\r\n");
    assert!(c.reply().starts_with(b"354"));
    c
}

fn policy_with(params: &str) -> String {
    format!("[policy.p]\nextends = \"default\"\n{params}\n")
}

#[test]
fn a_dot_beside_a_bare_line_end_ends_the_session_even_when_bare_newline_only_logs() {
    let up = Upstream::start(&[]);
    let (gate, listen) = gate_with(&up, "p", &policy_with("bare_newline = \"log\""));
    let smuggled: [&[u8]; 4] = [
        b"hello\n.\nMAIL FROM:<evil@x>\r\n",
        b"hello\r\n.\nMAIL FROM:<evil@x>\r\n",
        b"hello\n.\r\nMAIL FROM:<evil@x>\r\n",
        b"hello\r.\rMAIL FROM:<evil@x>\r\n",
    ];
    for (session, body) in smuggled.into_iter().enumerate() {
        let mut c = in_data(listen);
        c.send(b"Subject: x\r\n\r\n");
        c.send(body);
        assert_dropped(&mut c, &up, session, "SMTP smuggling", b"evil");
    }
    assert!(up.messages().is_empty(), "no message ended at the upstream");
    let log = gate.wait_log("smuggled-end-of-data");
    let line = log
        .lines()
        .find(|l| l.contains("smuggled-end-of-data"))
        .unwrap();
    assert!(line.contains("108003"), "{line}");
}

#[test]
fn bare_line_ends_away_from_a_dot_are_logged_and_delivered_unaltered() {
    let up = Upstream::start(&[]);
    let (gate, listen) = gate_with(&up, "p", &policy_with("bare_newline = \"log\""));
    let mut c = in_data(listen);
    let body = b"Subject: x\r\n\r\nbody\nmore\rtext\n..\n.x\r\n";
    c.send(body);
    c.send(b".\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok: queued\r\n");
    assert_eq!(up.messages(), [body.to_vec()]);
    gate.wait_log("bare-newline log");
}

#[test]
fn a_nul_before_a_dot_line_is_smuggling_and_a_nul_elsewhere_is_logged_and_delivered() {
    let up = Upstream::start(&[]);
    let (gate, listen) = gate_with(&up, "default", "");
    let mut c = in_data(listen);
    c.send(b"Subject: x\r\n\r\nhello\r\n\x00.\r\nMAIL FROM:<evil@x>\r\n");
    assert_dropped(&mut c, &up, 0, "SMTP smuggling", b"evil");
    assert!(up.messages().is_empty());

    let mut c = in_data(listen);
    let body = b"Subject: x\r\n\r\nbin\x00ary\r\n";
    c.send(body);
    c.send(b".\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok: queued\r\n");
    assert_eq!(up.messages(), [body.to_vec()]);
    let log = gate.wait_log("nul-in-content log");
    assert!(log.contains("smuggled-end-of-data"), "{log}");
}

/// A message with a 300-character attachment filename in a part behind `boundary`,
/// after a parameter of `pad` bytes.
fn attachment(boundary: &str, pad: usize) -> Vec<u8> {
    format!(
        "Subject: x\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}\r\n\
         Content-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; x=\"{}\"; filename=\"{}\"\r\n\r\n\
         TVqQAAMAAAAEAAAA\r\n--{boundary}--\r\n",
        "p".repeat(pad),
        "n".repeat(300),
    )
    .into_bytes()
}

#[test]
fn a_long_attachment_filename_behind_a_long_parameter_or_a_71_character_boundary_is_dropped() {
    let up = Upstream::start(&[]);
    let extra = "[policy.p]\nextends = \"default\"\n\
                 rules = [\"match MIME filename length gt 255 drop-connection\"]\n";
    let (_gate, listen) = gate_with(&up, "p", extra);
    let cases = [attachment("simple", 1100), attachment(&"b".repeat(71), 0)];
    for (session, msg) in cases.iter().enumerate() {
        let mut c = in_data(listen);
        c.send(msg);
        c.send(b".\r\n");
        assert_dropped(&mut c, &up, session, "MIME filename too long", b"TVqQ");
    }
    assert!(up.messages().is_empty(), "no message was delivered");
}

#[test]
fn a_mime_structure_past_the_parser_bounds_is_logged_by_default_and_dropped_when_strict() {
    let mut msg = String::from("Subject: deep\r\n");
    for level in 0..9 {
        msg += &format!("Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n");
    }
    msg += "Content-Disposition: attachment; filename=\"x.exe\"\r\n\r\nMZ\r\n";
    let up = Upstream::start(&[]);
    let (gate, listen) = gate_with(&up, "default", "");
    let mut c = in_data(listen);
    c.send(msg.as_bytes());
    c.send(b".\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok: queued\r\n");
    assert_eq!(up.messages(), [msg.as_bytes().to_vec()]);
    gate.wait_log("MIME parse-limit log");

    let up = Upstream::start(&[]);
    let strict = "[policy.p]\nextends = \"default\"\n\
                  rules = [\"match MIME parse-limit drop-connection log\"]\n";
    let (_gate, listen) = gate_with(&up, "p", strict);
    let mut c = in_data(listen);
    c.send(msg.as_bytes());
    c.send(b".\r\n");
    assert_dropped(&mut c, &up, 0, "MIME structure too complex", b"MZ\r\n.\r\n");
    assert!(up.messages().is_empty());
}
