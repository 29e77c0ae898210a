//! Whole-session behaviour: STARTTLS, and what the driver's deadlines follow.

#[allow(unused_imports)]
use super::*;

// ---- STARTTLS ----

#[test]
fn starttls_goes_opaque_after_220() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 STARTTLS\r\n");
    s.to_server.clear();
    s.to_client.clear();
    s.client(b"STARTTLS\r\n");
    assert!(!s.inspector.is_opaque());
    s.server(b"220 2.0.0 Ready\r\n");
    assert!(s.inspector.is_opaque());
    s.client(b"\x16\x03\x01\x00\x05hello");
    assert_eq!(s.to_server, b"STARTTLS\r\n\x16\x03\x01\x00\x05hello");
    let tls = s.events.last().unwrap();
    assert_eq!(tls.message_id, MessageId::TlsStarted);
    s.client(b"XYZZY\r\n\0\n")
        .server(b"\x16\x03\x03 anything\n");
    assert!(s.to_server.ends_with(b"XYZZY\r\n\0\n"));
    assert!(s.to_client.ends_with(b"\x16\x03\x03 anything\n"));
}

#[test]
fn plaintext_pipelined_behind_starttls_is_discarded_and_ends_the_session() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 STARTTLS\r\n");
    s.forget().client(b"STARTTLS\r\nNOOP injected\r\n");
    assert_eq!(s.server_text(), "STARTTLS\r\n");
    s.server(b"220 2.0.0 Ready\r\n");
    assert!(s.drop_reply().contains("before TLS started"));
    assert_eq!(
        s.server_text(),
        "STARTTLS\r\n",
        "the injected NOOP never reaches the server"
    );
    assert_eq!(s.client_text(), "", "no 220: the client must not start TLS");
    let event = s.events.last().unwrap();
    assert_eq!(s.rule_text(event), "starttls-injection drop-connection log");
}

#[test]
fn server_plaintext_after_its_starttls_220_is_discarded_and_ends_the_session() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 STARTTLS\r\n");
    s.forget()
        .client(b"STARTTLS\r\n")
        .server(b"220 2.0.0 Ready\r\n250 injected\r\n");
    assert!(s.drop_reply().contains("before TLS started"));
    assert_eq!(s.client_text(), "220 2.0.0 Ready\r\n");
    assert_eq!(
        s.events.last().unwrap().direction,
        crate::event::Direction::ServerToClient
    );
}

#[test]
fn a_client_talking_before_the_greeting_is_dropped_under_default_only() {
    let mut s = Driver::builtin("default");
    s.client(b"EHLO early\r\n");
    assert!(s.drop_reply().contains("before the greeting"));
    assert_eq!(s.server_text(), "");
    assert_eq!(
        s.rule_text(s.events.last().unwrap()),
        "early-talker drop-connection log"
    );
    let mut s = Driver::builtin("asa-compat");
    s.client(b"EHLO early\r\n");
    assert_eq!(s.verdict, Verdict::Continue);
    assert_eq!(s.server_text(), "EHLO early\r\n");
    // After the greeting, talking is normal.
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n").client(b"EHLO c\r\n");
    assert_eq!(s.verdict, Verdict::Continue);
}

#[test]
fn early_talker_is_a_policy_parameter_with_bare_newline_syntax() {
    let config = crate::config::Config::from_toml_str(
        "[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2526\"\n\
         policy = \"lenient\"\n[policy.lenient]\nextends = \"default\"\nearly_talker = \"log\"\n",
    )
    .unwrap();
    let mut s = session((*config.listeners[0].policy).clone());
    s.client(b"EHLO early\r\n");
    assert_eq!(s.verdict, Verdict::Continue);
    assert_eq!(s.server_text(), "EHLO early\r\n");
    assert_eq!(s.rule_text(s.events.last().unwrap()), "early-talker log");
}

#[test]
fn starttls_refused_stays_inspected() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n")
        .client(b"STARTTLS\r\nXYZZY\r\n")
        .server(b"454 no\r\n");
    assert!(!s.inspector.is_opaque());
    assert_eq!(s.server_text(), "STARTTLS\r\nXXXXX\r\n");
}

#[test]
fn starttls_masked_by_asa_compat() {
    let mut s = Driver::builtin("asa-compat");
    s.server(b"220 x\r\n").client(b"STARTTLS\r\n");
    assert_eq!(s.server_text(), "XXXXXXXX\r\n");
    s.server(b"502 what\r\n");
    assert!(!s.inspector.is_opaque());
}

#[test]
fn none_policy_relays_verbatim() {
    let mut s = Driver::builtin("none");
    s.server(b"220 mx\r\n").client(b"XYZZY\r\n");
    assert_eq!(s.server_text(), "XYZZY\r\n");
    assert_eq!(s.client_text(), "220 mx\r\n");
}

// ---- phase, progress and transaction: what the driver's deadlines follow ----

#[test]
fn phase_follows_greeting_commands_content_and_the_end_of_data_reply() {
    let mut s = Driver::builtin("default");
    assert_eq!(s.inspector.phase(), Phase::Greeting);
    s.server(b"220-mx ESMTP\r\n");
    assert_eq!(
        s.inspector.phase(),
        Phase::Greeting,
        "greeting not complete"
    );
    s.server(b"220 ready\r\n");
    assert_eq!(s.inspector.phase(), Phase::Command);
    s.client(b"EHLO c\r\n")
        .server(b"250 mx\r\n")
        .client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
        .server(b"250 ok\r\n250 ok\r\n");
    assert_eq!(s.inspector.phase(), Phase::Command, "DATA not answered yet");
    s.server(b"354 go\r\n");
    assert_eq!(s.inspector.phase(), Phase::Content);
    s.client(b"Subject: x\r\n\r\nbody\r\n");
    assert_eq!(s.inspector.phase(), Phase::Content);
    s.client(b".\r\n");
    assert_eq!(s.inspector.phase(), Phase::AwaitingEndOfData);
    s.client(b"QUIT\r\n");
    assert_eq!(
        s.inspector.phase(),
        Phase::AwaitingEndOfData,
        "a pipelined QUIT does not hide the owed reply"
    );
    s.server(b"250 queued\r\n");
    assert_eq!(s.inspector.phase(), Phase::Command);
}

#[test]
fn phase_is_content_inside_a_bdat_chunk_then_awaits_the_last_reply() {
    let mut s = Driver::builtin("default");
    s.in_transaction();
    s.client(b"BDAT 10\r\n01234");
    assert_eq!(s.inspector.phase(), Phase::Content);
    s.client(b"56789");
    assert_eq!(
        s.inspector.phase(),
        Phase::Command,
        "a non-LAST chunk ended"
    );
    s.client(b"BDAT 3 LAST\r\nab");
    assert_eq!(s.inspector.phase(), Phase::Content);
    s.client(b"c");
    assert_eq!(s.inspector.phase(), Phase::AwaitingEndOfData);
    s.server(b"250 chunk\r\n");
    assert_eq!(s.inspector.phase(), Phase::AwaitingEndOfData);
    s.server(b"250 queued\r\n");
    assert_eq!(s.inspector.phase(), Phase::Command);
}

#[test]
fn phase_is_opaque_after_starttls_and_for_the_none_policy() {
    let mut s = Driver::builtin("default");
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 STARTTLS\r\n")
        .client(b"STARTTLS\r\n")
        .server(b"220 go ahead\r\n");
    assert_eq!(s.inspector.phase(), Phase::Opaque);
    let s = Driver::builtin("none");
    assert_eq!(s.inspector.phase(), Phase::Opaque);
}

#[test]
fn progress_counts_complete_lines_and_replies_not_bytes_inside_them() {
    let mut policy = Policy::builtin("default").unwrap();
    policy
        .rules
        .retain(|r| !matches!(r.criterion, Criterion::CmdLineLength(_)));
    let mut s = session(policy);
    assert_eq!(s.inspector.progress(), 0);
    s.server(b"220-mx\r\n");
    assert_eq!(s.inspector.progress(), 0, "a reply counts when complete");
    s.server(b"220 ready\r\n");
    assert_eq!(s.inspector.progress(), 1);
    s.client(b"EHL");
    assert_eq!(s.inspector.progress(), 1, "a partial command line");
    s.client(b"O c\r\nNOOP\r\n");
    assert_eq!(s.inspector.progress(), 3);
    s.server(b"250 mx\r\n250 ok\r\n");
    assert_eq!(s.inspector.progress(), 5);
    let long = vec![b'a'; CMD_LINE_CAP + 100];
    s.client(b"NOOP ").client(&long);
    assert_eq!(s.inspector.progress(), 5, "an overlong line still growing");
    s.client(b"\r\n");
    assert_eq!(s.inspector.progress(), 6);
}

#[test]
fn progress_ignores_message_content() {
    let mut s = Driver::builtin("default");
    s.in_data();
    let before = s.inspector.progress();
    s.client(b"Subject: x\r\n\r\nline\r\nline\r\n");
    assert_eq!(s.inspector.progress(), before);
}

#[test]
fn transaction_opens_at_mail_and_ends_at_the_end_of_data_reply() {
    let mut s = Driver::builtin("default");
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250 mx\r\n");
    assert!(!s.inspector.in_transaction());
    s.client(b"MAIL FROM:<a@x>\r\n");
    assert!(s.inspector.in_transaction(), "pending MAIL");
    s.server(b"250 ok\r\n").client(b"RCPT TO:<b@y>\r\nDATA\r\n");
    s.server(b"250 ok\r\n354 go\r\n").client(b"body\r\n.\r\n");
    assert!(s.inspector.in_transaction(), "end of data not answered yet");
    s.server(b"250 queued\r\n");
    assert!(!s.inspector.in_transaction());
}

#[test]
fn transaction_ends_at_a_refused_mail_and_at_rset() {
    let mut s = Driver::builtin("default");
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250 mx\r\n");
    s.client(b"MAIL FROM:<a@x>\r\n").server(b"550 no\r\n");
    assert!(!s.inspector.in_transaction());
    s.client(b"MAIL FROM:<a@x>\r\n").server(b"250 ok\r\n");
    assert!(s.inspector.in_transaction());
    s.client(b"RSET\r\n");
    assert!(!s.inspector.in_transaction());
}

#[test]
fn a_mail_pipelined_behind_an_end_of_data_keeps_the_transaction_open() {
    let mut s = Driver::builtin("default");
    s.in_data();
    s.client(b"body\r\n.\r\nMAIL FROM:<c@x>\r\n");
    s.server(b"250 queued\r\n");
    assert!(s.inspector.in_transaction());
    s.server(b"250 ok\r\n");
    assert!(s.inspector.in_transaction());
}

#[test]
fn unchanged_bytes_of_a_read_are_one_slice() {
    let mut s = Driver::builtin("default");
    s.in_data();
    let input =
        Bytes::from_static(b"Subject: x\r\n\r\nline one\r\nline two\r\n.\r\nMAIL FROM:<a@x>\r\n");
    let mut out = Output::default();
    s.inspector.on_client_bytes(input.clone(), s.now, &mut out);
    assert_eq!(out.to_server.len(), 1);
    assert_eq!(
        out.to_server[0].as_ptr(),
        input.as_ptr(),
        "a slice, not a copy"
    );
    assert_eq!(out.to_server[0], input);
}

// ---- after a drop: the replies owed for what was forwarded come first ----

#[test]
fn a_drop_after_a_dot_still_forwards_the_reply_to_the_message() {
    let mut s = Driver::builtin("default");
    s.in_data();
    let mut long = b"MAIL FROM:<a@example.com> ".to_vec();
    long.resize(600, b'x');
    long.extend_from_slice(b"\r\n");
    s.client(&[&b"Subject: x\r\n\r\nbody\r\n.\r\n"[..], &long].concat());
    assert!(s.drop_reply().contains("Command line too long"));
    assert!(
        s.server_text().ends_with("body\r\n.\r\n"),
        "the message went out whole"
    );
    assert_eq!(s.inspector.owed_replies(), 1, "its 250 is owed");
    s.server(b"250 2.0.0 Ok: queued as 1\r\n550 late\r\n");
    assert_eq!(
        s.client_text(),
        "250 2.0.0 Ok: queued as 1\r\n",
        "the 250 reaches the client, nothing after it"
    );
    assert_eq!(s.inspector.owed_replies(), 0);
}

#[test]
fn a_drop_owed_replies_split_across_reads_and_multiline_arrive_whole() {
    let mut s = Driver::builtin("asa-compat");
    s.in_transaction()
        .client(b"DATA\r\n")
        .server(b"354 go\r\n")
        .forget();
    let mut batch = b"body\r\n.\r\nMAIL FROM:<a@x>\r\n".to_vec();
    for i in 0..101 {
        batch.extend_from_slice(format!("RCPT TO:<r{i}@y>\r\n").as_bytes());
    }
    s.client(&batch);
    assert!(s.drop_reply().contains("Too many recipients"));
    assert_eq!(
        s.inspector.owed_replies(),
        102,
        "the dot, MAIL and 100 RCPTs"
    );
    s.server(b"250-queued\r\n250 as ").server(b"2\r\n");
    assert_eq!(s.client_text(), "250-queued\r\n250 as 2\r\n");
    for _ in 0..101 {
        s.server(b"250 ok\r\n");
    }
    assert_eq!(s.client_text().matches("250 ok").count(), 101);
    assert_eq!(s.inspector.owed_replies(), 0);
}

#[test]
fn an_invalid_recipients_drop_after_bdat_last_forwards_the_reply_to_the_message() {
    let mut s = Driver::with_rules(&["match invalid-recipients count gt 0 drop-connection log"]);
    s.in_transaction();
    s.client(b"RCPT TO:<nobody@y>\r\nBDAT 4 LAST\r\nabcd");
    s.server(b"550 5.1.1 no such user\r\n");
    assert!(s.drop_reply().contains("invalid recipients"));
    assert_eq!(s.client_text(), "", "the refusing reply itself is withheld");
    s.server(b"250 2.0.0 queued\r\n");
    assert_eq!(s.client_text(), "250 2.0.0 queued\r\n");
}

#[test]
fn a_bdat_chunk_cut_by_a_drop_is_owed_no_reply() {
    let mut s = Driver::with_rules(&["match body length gt 3 drop-connection log"]);
    s.in_transaction()
        .client(b"BDAT 20 LAST\r\nSubject: x\r\n\r\nabcdef");
    assert!(s.drop_reply().contains("body too long"));
    assert_eq!(s.inspector.owed_replies(), 0);
}
