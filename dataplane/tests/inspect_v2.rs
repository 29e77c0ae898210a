//! The inspector's session rules through the real binary: replies owed before a drop,
//! `reject` (452 for the 101st recipient), BDAT only where CHUNKING was offered and
//! the count is one a server takes, plaintext behind STARTTLS, the early talker, and
//! `default`'s neutral greeting. Each test drives `smtpgate run` against the recording
//! upstream and asserts the exact bytes each side saw.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use common::*;

#[test]
fn a_drop_behind_a_queued_message_sends_its_250_before_the_421() {
    let (up, gate) = gated_upstream(&["PIPELINING"], "policy = \"default\"", "");

    let mut c = Client::after_greeting(gate.listen());
    c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    for _ in 0..3 {
        assert!(c.reply().starts_with(b"250"));
    }
    assert!(c.reply().starts_with(b"354"));
    // The message, its dot, and an overlong command, in one write.
    let mut write = b"Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@example.com> ".to_vec();
    write.resize(write.len() + 600, b'x');
    write.extend_from_slice(b"\r\n");
    c.send(&write);
    let first = c.reply();
    assert_eq!(first, b"250 2.0.0 Ok: queued\r\n", "{}", text(&first));
    c.reply_starting(b"421 4.7.0 Command line too long");
    assert_eq!(c.read_to_end(), b"");
    assert_eq!(up.messages().len(), 1, "the message was delivered once");
}

#[test]
fn the_101st_recipient_is_answered_452_and_the_message_still_goes() {
    let (up, gate) = gated_upstream(&["PIPELINING"], "policy = \"default\"", "");

    let mut c = Client::after_greeting(gate.listen());
    c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n");
    c.reply();
    c.reply();
    let mut batch = Vec::new();
    for i in 0..101 {
        batch.extend_from_slice(format!("RCPT TO:<r{i}@example.net>\r\n").as_bytes());
    }
    batch.extend_from_slice(b"DATA\r\n");
    c.send(&batch);
    for i in 0..100 {
        assert!(c.reply().starts_with(b"250"), "RCPT {i}");
    }
    assert_eq!(c.reply(), b"452 4.5.3 Too many recipients\r\n");
    assert!(c.reply().starts_with(b"354"), "the session goes on");
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
    assert_eq!(c.reply(), b"250 2.0.0 Ok: queued\r\n");
    assert_eq!(c.reply(), b"221 2.0.0 Bye\r\n");
    let wire = text(&up.wire(0));
    assert_eq!(wire.matches("RCPT TO:").count(), 100);
    assert!(!wire.contains("<r100@example.net>"));
    assert_eq!(up.messages().len(), 1);
}

#[test]
fn bdat_to_a_server_without_chunking_is_masked_and_what_follows_judged_as_commands() {
    let (up, gate) = gated_upstream(&["PIPELINING"], "policy = \"default\"", "");

    let mut c = Client::greeted(gate.listen(), "EHLO c");
    c.send(b"BDAT 40 LAST\r\nWIZ\r\nKILL\r\nMAIL FROM:<a|b@example.com>\r\n");
    // The server answers the three masked lines, in order, then the pipe drops.
    for _ in 0..3 {
        let r = c.reply();
        assert!(r.starts_with(b"500"), "{}", text(&r));
    }
    c.reply_starting(b"421 4.7.0 Pipe in address");
    let wire = up.wait_wire(0, |w| w.ends_with(b"XXXX\r\n"));
    assert_eq!(text(&wire), "EHLO c\r\nXXXXXXXXXXXX\r\nXXX\r\nXXXX\r\n");
}

#[test]
fn a_bdat_count_above_2_to_the_53_is_masked_and_the_next_line_is_a_command() {
    let (up, gate) = gated_upstream(&["PIPELINING", "CHUNKING"], "policy = \"default\"", "");

    let mut c = Client::greeted(gate.listen(), "EHLO c");
    c.send(b"BDAT 9223372036854775808\r\nNOOP\r\n");
    assert!(c.reply().starts_with(b"500"));
    assert_eq!(
        c.reply(),
        b"250 2.0.0 Ok\r\n",
        "NOOP was judged and answered"
    );
    let wire = up.wait_wire(0, |w| w.ends_with(b"NOOP\r\n"));
    assert_eq!(
        text(&wire),
        "EHLO c\r\nXXXXXXXXXXXXXXXXXXXXXXXX\r\nNOOP\r\n"
    );
}

#[test]
fn plaintext_pipelined_behind_starttls_never_reaches_the_server() {
    let (up, gate) = gated_upstream(
        &["STARTTLS"],
        "policy = \"default\"\nstarttls = \"passthrough\"",
        "",
    );

    let mut c = Client::greeted(gate.listen(), "EHLO c");
    c.send(b"STARTTLS\r\nNOOP injected\r\n");
    c.reply_starting(b"421 4.7.0 Data sent before TLS started");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(text(&up.wire(0)), "EHLO c\r\nSTARTTLS\r\n");
    gate.wait_log("starttls-injection");
}

#[test]
fn a_client_talking_before_the_greeting_is_dropped() {
    // An upstream that greets late, so the client surely talks first.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            std::thread::sleep(Duration::from_millis(500));
            let _ = s.write_all(b"220 late ESMTP\r\n");
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let gate = Gate::start(&config_text(upstream, "policy = \"default\"", ""));

    let mut c = Client::connect(gate.listen());
    c.send(b"EHLO early\r\n");
    c.reply_starting(b"421 4.7.0 Talking before the greeting");
    gate.wait_log("early-talker");
}

#[test]
fn default_greets_with_the_edges_name_and_not_like_a_pix() {
    let (_up, gate) = gated_upstream(&[], "policy = \"default\"", "");
    let mut c = Client::connect(gate.listen());
    let greeting = c.reply();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        text(&greeting),
        format!("220 {} ESMTP ready\r\n", host.trim())
    );
    // Postfix's smtp client takes a greeting of only '2', '0', ' ' and '*' for a PIX.
    let content = &greeting[..greeting.len() - 2];
    assert!(content.iter().any(|b| !b"20 *".contains(b)));
    assert!(
        !text(&greeting).contains("upstream"),
        "the upstream's name is hidden"
    );
}

/// Client bytes that wait for a reply (here the upstream never answers DATA, so
/// nothing says whether they are commands or content) are held up to the inspector's
/// hold cap of 64 KiB; past it the session ends under its own rule,
/// `improper-pipelining`, not as a line-length or bare-newline violation.
#[test]
fn bytes_held_past_the_hold_cap_end_the_session_under_their_own_rule() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.write_all(b"220 up ESMTP\r\n");
        let mut lines = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut lines, &mut line).unwrap_or(0) > 0 {
            let reply: &[u8] = match line.get(..4) {
                Some("EHLO") => b"250-up\r\n250 PIPELINING\r\n",
                Some("MAIL") | Some("RCPT") => b"250 ok\r\n",
                _ => break, // DATA: never answered
            };
            let _ = s.write_all(reply);
            line.clear();
        }
        std::thread::sleep(Duration::from_secs(15));
    });
    let gate = Gate::start(&config_text(upstream, "policy = \"default\"", ""));

    let mut c = Client::after_greeting(gate.listen());
    c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    for _ in 0..3 {
        assert!(c.reply().starts_with(b"250"));
    }
    c.send(&vec![b'a'; 64 * 1024 + 1]);
    let reply = c.reply_starting(b"421 ");
    assert!(
        text(&reply).contains("Improper command pipelining"),
        "{}",
        text(&reply)
    );
    let log = gate.wait_log("improper-pipelining");
    assert!(!log.contains("bare-newline"), "{log}");
}

/// DATA, STARTTLS and AUTH lines past the inspector's 4 KiB command-line cap end the
/// session under their own rule, `overlong-command`, even in a policy without any
/// `cmd line length` rule, and are never forwarded.
#[test]
fn overlong_data_starttls_and_auth_lines_end_the_session_under_their_own_rule() {
    let policy = "[policy.no-rules]\nextends = \"default\"\ninherit_rules = false\n";
    let (up, gate) = gated_upstream(&["PIPELINING"], "policy = \"no-rules\"", policy);
    for verb in ["DATA", "STARTTLS", "AUTH"] {
        let mut c = Client::after_greeting(gate.listen());
        let mut line = format!("{verb} ").into_bytes();
        line.resize(4096 + 10, b'a');
        line.extend_from_slice(b"\r\n");
        c.send(&line);
        let reply = c.reply_starting(b"421 ");
        assert!(
            text(&reply).contains("too long"),
            "{verb}: {}",
            text(&reply)
        );
        assert_eq!(c.read_to_end(), b"", "{verb}: the session ends");
        let excerpt = format!("text=\"{verb} aaaa");
        let log = gate.wait_log(&excerpt);
        let event = log.lines().find(|l| l.contains(&excerpt)).unwrap();
        assert!(
            event.contains("rule=\"overlong-command drop-connection log\""),
            "{event}"
        );
    }
    for session in 0..up.accepted() {
        let wire = text(&up.wire(session));
        assert!(
            !wire.contains("aaaa"),
            "an overlong line reached the upstream: {wire}"
        );
    }
}
