//! Client commands: masking, line lengths, MAIL/RCPT rules, AUTH, hold and release.

#[allow(unused_imports)]
use super::*;

// ---- commands ----

#[test]
fn unknown_verbs_become_same_length_x_lines_in_order() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n");
    s.client(b"NOOP\r\nXYZZY magic words\r\nTURN\r\nNOOP\r\n");
    assert_eq!(
        s.server_text(),
        "NOOP\r\nXXXXXXXXXXXXXXXXX\r\nXXXX\r\nNOOP\r\n"
    );
    assert_eq!(
        s.events
            .iter()
            .filter(|e| s.rule_text(e).contains("verb")
                || e.message_id == MessageId::ReplacedString)
            .count(),
        3
    );
    s.to_client.clear();
    s.server(b"250 ok\r\n502 5.5.2 what\r\n502 5.5.2 what\r\n250 ok\r\n");
    assert_eq!(
        s.client_text(),
        "250 ok\r\n502 5.5.2 what\r\n502 5.5.2 what\r\n250 ok\r\n"
    );
    assert!((s.inspector.replies.queued() == 0));
}

#[test]
fn pipelined_replies_pair_with_their_commands() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n");
    s.client(b"RSET\r\nEHLO c\r\nNOOP\r\nVRFY x\r\n");
    s.to_client.clear();
    // Only the EHLO reply's keyword lines are subject to masking.
    s.server(b"250 X-EXPS ok\r\n250-mx\r\n250-X-EXPS GSSAPI\r\n250 SIZE 10\r\n250 X-EXPS\r\n252 X-EXPS\r\n");
    assert_eq!(
        s.client_text(),
        "250 X-EXPS ok\r\n250-mx\r\n250-XXXXXX GSSAPI\r\n250 SIZE 10\r\n250 X-EXPS\r\n252 X-EXPS\r\n"
    );
    assert!((s.inspector.replies.queued() == 0));
}

#[test]
fn private_verbs_pass_when_allowed() {
    let mut p = Policy::builtin("default").unwrap();
    p.allowed_commands.insert_name("X-LINK2STATE");
    let mut s = session(p);
    s.server(b"220 x\r\n")
        .client(b"X-LINK2STATE LAST CHUNK=1\r\nXEXCH50 10 2\r\n");
    assert_eq!(
        s.server_text(),
        "X-LINK2STATE LAST CHUNK=1\r\nXXXXXXXXXXXX\r\n"
    );
}

#[test]
fn xexch50_blob_after_354_is_relayed_untouched() {
    let mut p = Policy::builtin("default").unwrap();
    p.allowed_commands.insert_name("XEXCH50");
    let mut s = session(p);
    s.in_transaction();
    s.client(b"XEXCH50 12 2\r\nBINARY\r\n");
    assert_eq!(
        s.server_text(),
        "XEXCH50 12 2\r\n",
        "the blob waits for the 354"
    );
    s.server(b"354 Send binary data\r\n");
    // 12 octets of blob ("BINARY\r\n\0\nXY"), then a command again.
    s.client(b"\0\nXYNOOP\r\nXYZZY\r\n");
    assert_eq!(
        s.to_server,
        b"XEXCH50 12 2\r\nBINARY\r\n\0\nXYNOOP\r\nXXXXX\r\n"
    );
    assert_eq!(s.inspector.client.mode, ClientMode::Command);

    // Refused: what followed is commands.
    let mut p = Policy::builtin("default").unwrap();
    p.allowed_commands.insert_name("XEXCH50");
    let mut s = session(p);
    s.in_transaction();
    s.client(b"XEXCH50 12 2\r\nBINARY\r\n")
        .server(b"500 no\r\n");
    assert_eq!(s.server_text(), "XEXCH50 12 2\r\nXXXXXX\r\n");
}

#[test]
fn empty_lines_pass_and_leading_spaces_do_not_hide_a_verb() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n").client(b"\r\n VRFY root\r\n");
    assert_eq!(s.server_text(), "\r\nXXXXXXXXXX\r\n");
    assert_eq!(s.events.len(), 2, "banner mask and one X-ed line");
}

#[test]
fn mailguard_passes_only_rfc821_minimum() {
    let mut s = Driver::builtin("mailguard");
    s.server(b"220 mx ESMTP\r\n");
    assert_eq!(s.client_text(), "220 ********\r\n");
    s.client(b"EHLO c\r\nHELO c\r\nVRFY root\r\n");
    assert_eq!(s.server_text(), "XXXXXX\r\nHELO c\r\nXXXXXXXXX\r\n");
}

#[test]
fn cmd_verb_rule_with_mask_x_es_the_command() {
    let mut s = Driver::with_rules(&["match cmd verb VRFY EXPN mask log"]);
    s.server(b"220 x\r\n")
        .client(b"VRFY root\r\nEXPN staff\r\nHELP\r\n");
    assert_eq!(s.server_text(), "XXXXXXXXX\r\nXXXXXXXXXX\r\nHELP\r\n");
}

#[test]
fn match_not_cmd_verb() {
    let mut s = Driver::with_rules(&[
        "match not cmd verb HELO EHLO MAIL RCPT DATA QUIT drop-connection log",
    ]);
    s.server(b"220 x\r\n").client(b"EHLO c\r\nNOOP\r\n");
    assert_eq!(s.server_text(), "EHLO c\r\n");
    assert!(s.drop_reply().starts_with("421 4.7.0 "));
}

#[test]
fn command_line_length_limit_hit_and_near_miss() {
    let mut s = Driver::builtin("default");
    let ok = format!("NOOP {}\r\n", "a".repeat(512 - 5));
    let long = format!("NOOP {}\r\n", "a".repeat(513 - 5));
    s.server(b"220 x\r\n").client(ok.as_bytes());
    assert_eq!(s.server_text(), ok);
    assert_eq!(s.verdict, Verdict::Continue);
    s.client(long.as_bytes()).client(b"QUIT\r\n");
    assert_eq!(s.server_text(), ok, "nothing of the long line or after it");
    assert_eq!(
        s.drop_reply(),
        "421 4.7.0 Command line too long, closing connection\r\n"
    );
    let e = s.events.last().unwrap();
    assert_eq!((e.value, e.message_id), (513, MessageId::PolicyAction));
}

#[test]
fn command_split_across_reads_is_judged_whole() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n")
        .client(b"XY")
        .client(b"ZZY x")
        .client(b"\r")
        .client(b"\nNO");
    assert_eq!(s.server_text(), "XXXXXXX\r\n");
    s.client(b"OP\r\n");
    assert_eq!(s.server_text(), "XXXXXXX\r\nNOOP\r\n");
    assert!(s.inspector.buffered_bytes() == 0);
}

#[test]
fn overlong_command_without_rule_streams_and_keeps_bytes() {
    let mut p = Policy::builtin("default").unwrap();
    p.rules
        .retain(|r| !matches!(r.criterion, Criterion::CmdLineLength(_)));
    let mut s = session(p);
    s.server(b"220 x\r\n");
    let line = format!("NOOP {}\r\n", "b".repeat(3 * CMD_LINE_CAP));
    for chunk in line.as_bytes().chunks(1000) {
        s.client(chunk);
        assert!(s.inspector.buffered_bytes() <= CMD_LINE_CAP);
    }
    assert_eq!(s.server_text(), line);
    s.client(b"NOOP\r\n");
    assert!(s.server_text().ends_with("\r\nNOOP\r\n"));
}

#[test]
fn overlong_command_across_cap_is_dropped_before_its_end() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n");
    s.client(b"NOOP ").client(&[b'c'; 2 * CMD_LINE_CAP]);
    assert_eq!(s.server_text(), "", "judged once it crossed the buffer cap");
    assert!(s.drop_reply().contains("Command line too long"));
}

#[test]
fn rcpt_count_per_transaction() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n")
        .client(b"EHLO c\r\nMAIL FROM:<a@x>\r\n");
    for _ in 0..100 {
        s.client(b"RCPT TO:<b@y>\r\n");
    }
    s.client(b"RSET\r\nMAIL FROM:<a@x>\r\n");
    for _ in 0..100 {
        s.client(b"RCPT TO:<b@y>\r\n");
    }
    assert_eq!(s.verdict, Verdict::Continue, "100 per transaction is fine");
    s.client(b"RCPT TO:<c@y>\r\n");
    assert!(!s.server_text().contains("c@y"));
    assert_eq!(s.events.last().unwrap().value, 101);
    let mut s = Driver::builtin("asa-compat");
    s.server(b"220 x\r\n")
        .client(b"HELO c\r\nMAIL FROM:<a@x>\r\n");
    for _ in 0..101 {
        s.client(b"RCPT TO:<b@y>\r\n");
    }
    assert!(
        s.drop_reply().contains("Too many recipients"),
        "asa-compat keeps the firewall's drop"
    );
}

#[test]
fn the_101st_recipient_is_answered_452_in_order_and_the_session_goes_on() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250 mx\r\n");
    let mut batch = b"MAIL FROM:<a@x>\r\n".to_vec();
    for i in 0..102 {
        batch.extend_from_slice(format!("RCPT TO:<r{i}@y>\r\n").as_bytes());
    }
    batch.extend_from_slice(b"NOOP\r\n");
    s.forget().client(&batch);
    assert_eq!(s.verdict, Verdict::Continue);
    assert!(!s.server_text().contains("<r100@y>") && !s.server_text().contains("<r101@y>"));
    assert!(s.server_text().contains("<r99@y>") && s.server_text().ends_with("NOOP\r\n"));
    assert_eq!(
        s.client_text(),
        "",
        "the 452s wait for the replies before them"
    );
    // MAIL, 100 RCPTs: then our two 452s, then the NOOP's reply, in order.
    let mut replies = b"250 mail\r\n".to_vec();
    for _ in 0..100 {
        replies.extend_from_slice(b"250 rcpt\r\n");
    }
    s.server(&replies);
    assert!(s.client_text().ends_with(
        "250 rcpt\r\n452 4.5.3 Too many recipients\r\n452 4.5.3 Too many recipients\r\n"
    ));
    s.server(b"250 noop\r\n");
    assert!(s
        .client_text()
        .ends_with("Too many recipients\r\n250 noop\r\n"));
    assert_eq!(s.inspector.owed_replies(), 0);
    // A reject with nothing owed before it is answered at once.
    s.forget().client(b"RCPT TO:<late@y>\r\n");
    assert_eq!(s.client_text(), "452 4.5.3 Too many recipients\r\n");
    assert_eq!(s.server_text(), "");
}

#[test]
fn reject_is_refused_where_no_whole_command_can_be_answered() {
    assert!(parse_rule("match body length gt 10 reject").is_err());
    assert!(parse_rule("match cmd RCPT count gt 10 reject drop-connection").is_err());
    let rule = parse_rule("match sender-address regex \"@spam\\.example$\" reject").unwrap();
    assert_eq!(rule.actions.disposition, Disposition::Reject);
    let mut s = Driver::with_rules(&["match sender-address regex \"@spam\\.example$\" reject log"]);
    s.server(b"220 x\r\n")
        .client(b"MAIL FROM:<x@SPAM.example>\r\nNOOP\r\n");
    assert_eq!(s.verdict, Verdict::Continue);
    assert_eq!(s.server_text(), "NOOP\r\n");
    assert_eq!(
        s.client_text(),
        "220 localhost ESMTP ready\r\n550 5.7.1 Sender address rejected\r\n"
    );
}

#[test]
fn sender_address_length_and_regex() {
    let mut s = Driver::with_rules(&[
        "match sender-address regex \"@spam\\.example$\" drop-connection log",
    ]);
    let ok = format!("MAIL FROM:<{}@x.example> SIZE=10\r\n", "a".repeat(320 - 10));
    s.server(b"220 x\r\n").client(ok.as_bytes());
    assert_eq!(s.verdict, Verdict::Continue);
    s.client(b"MAIL FROM: <boss@spam.example.org>\r\n");
    assert_eq!(s.verdict, Verdict::Continue, "regex near miss");
    s.client(b"MAIL FROM:<boss@spam.example>\r\n");
    assert!(s.drop_reply().contains("Sender address not allowed"));

    let mut s = Driver::builtin("default");
    let long = format!("MAIL FROM:<{}@x.example>\r\n", "a".repeat(321 - 10));
    s.server(b"220 x\r\n").client(long.as_bytes());
    assert!(s.drop_reply().contains("Sender address too long"));
    assert_eq!(s.events.last().unwrap().value, 321);
}

fn with_parameter_rule(criterion: Criterion, actions: Actions) -> Policy {
    let mut p = Policy::builtin("default").unwrap();
    p.push_rule(Rule {
        text: "parameter".into(),
        negate: false,
        criterion,
        actions,
    });
    p
}

#[test]
fn special_characters_in_addresses() {
    let p = with_parameter_rule(Criterion::SpecialCharacter, DROP_LOG);
    let mut s = session(p.clone());
    s.server(b"220 x\r\n")
        .client(b"MAIL FROM:<a-b.c+d@x>\r\nRCPT TO:<ok@y>\r\n");
    assert_eq!(s.verdict, Verdict::Continue);
    for bad in [&b"MAIL FROM:<a`id`@x>\r\n"[..], b"MAIL FROM:<a\0@x>\r\n"] {
        let mut s = session(p.clone());
        s.server(b"220 x\r\n").client(bad);
        assert!(s.drop_reply().contains("Special character"));
        assert_eq!(s.server_text(), "");
    }
}

#[test]
fn a_pipe_in_any_address_closes_the_session_in_every_inspecting_builtin() {
    let lines: [&[u8]; 5] = [
        b"RCPT TO:<a|b@example.net>\r\n",
        b"MAIL FROM:<a|b@example.com>\r\n",
        b"RCPT TO:<\"|/bin/sh\"@y>\r\n",
        b"MAIL FROM:<\"a\\|b\"@x> SIZE=1\r\n",
        // Not a path at all: the pipe still counts, before the line is masked.
        b"MAIL FROM:<a|b@x\r\n",
    ];
    for name in ["default", "asa-compat", "mailguard"] {
        for line in lines {
            let mut s = Driver::builtin(name);
            s.server(b"220 x\r\n").client(line);
            let what = format!("{name}: {}", line.escape_ascii());
            assert!(s.drop_reply().contains("Pipe in address"), "{what}");
            assert_eq!(s.server_text(), "", "{what}");
            let event = s.events.last().unwrap();
            assert_eq!(event.message_id, MessageId::MaliciousPattern, "{what}");
            assert_eq!(s.rule_text(event), "address-pipe drop-connection log");
        }
    }
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n")
        .client(b"MAIL FROM:<a@x> ORCPT=rfc822;a|b\r\n");
    assert_eq!(
        s.verdict,
        Verdict::Continue,
        "a parameter is not the address"
    );
}

#[test]
fn quoted_local_parts_and_domain_case_do_not_evade_the_sender_regex() {
    let rule = "match sender-address regex \"@spam\\.example$\" drop-connection log";
    for line in [
        &b"MAIL FROM:<\"a>b\"@spam.example>\r\n"[..],
        b"MAIL FROM:<x@SPAM.Example>\r\n",
        b"MAIL FROM:<x@spam.example.> BODY=8BITMIME\r\n",
        b"MAIL FROM:<@relay.example:x@spam.example>\r\n",
    ] {
        let mut s = Driver::with_rules(&[rule]);
        s.server(b"220 x\r\n").client(line);
        let what = line.escape_ascii().to_string();
        assert!(
            s.drop_reply().contains("Sender address not allowed"),
            "{what}"
        );
        assert_eq!(s.server_text(), "", "{what}");
    }
    // A quoted local part equal to a dot-string is that dot-string.
    let mut s = Driver::with_rules(&["match sender-address regex \"^boss@\" drop-connection"]);
    s.server(b"220 x\r\n")
        .client(b"MAIL FROM:<\"b\\oss\"@x>\r\n");
    assert!(s.drop_reply().contains("Sender address not allowed"));
}

#[test]
fn an_unparseable_path_is_masked_and_answered_by_the_server() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n").client(
        b"MAIL FROM:<a@b\r\nMAIL FROM:<ok@x>\r\nRCPT TO:<a b@c>\r\nRCPT TO:<>\r\nRCPT TO:<ok@y>\r\n",
    );
    assert_eq!(s.verdict, Verdict::Continue);
    assert_eq!(
        s.server_text(),
        "XXXXXXXXXXXXXX\r\nMAIL FROM:<ok@x>\r\nXXXXXXXXXXXXXXX\r\nXXXXXXXXXX\r\nRCPT TO:<ok@y>\r\n"
    );
    let masked = s
        .events
        .iter()
        .filter(|e| s.rule_text(e) == "malformed-path mask log");
    assert_eq!(masked.count(), 3);
    // Each masked line is answered by the server, in order, and pairs with it.
    s.server(b"500 no\r\n250 ok\r\n500 no\r\n500 no\r\n250 ok\r\n");
    assert_eq!(s.client_text().matches("500 no").count(), 3);
    assert_eq!(s.inspector.replies.queued(), 0);
}

#[test]
fn mail_relay_domain() {
    let mut p = with_parameter_rule(Criterion::MailRelay, DROP_LOG);
    p.mail_relay = Some("example.com".into());
    let mut s = session(p);
    s.server(b"220 x\r\n")
        .client(b"RCPT TO:<a@Example.COM>\r\nRCPT TO:<postmaster>\r\n");
    assert_eq!(s.verdict, Verdict::Continue);
    s.client(b"RCPT TO:<@example.com:a@EXAMPLE.com.>\r\nRCPT TO:<\"a>b\"@example.com>\r\n");
    assert_eq!(
        s.verdict,
        Verdict::Continue,
        "source route ignored, trailing dot"
    );
    s.client(b"RCPT TO:<\"a>\"@example.com.evil>\r\n");
    assert!(s.drop_reply().contains("Relaying denied"));
}

#[test]
fn invalid_recipients_counted_from_5xx_replies() {
    let mut s = Driver::with_rules(&["match invalid-recipients count gt 2 drop-connection log"]);
    s.in_transaction();
    s.client(b"RCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\nRCPT TO:<3@y>\r\nRCPT TO:<4@y>\r\n");
    s.server(b"550 no\r\n250 ok\r\n550 no\r\n");
    assert_eq!(s.verdict, Verdict::Continue);
    s.server(b"550 no\r\n");
    assert!(s.drop_reply().contains("invalid recipients"));
    assert_eq!(s.client_text(), "550 no\r\n250 ok\r\n550 no\r\n");
}

#[test]
fn reset_action() {
    let mut s = Driver::with_rules(&["match cmd verb HELP reset log"]);
    s.server(b"220 x\r\n").client(b"NOOP\r\nHELP\r\nNOOP\r\n");
    assert_eq!(s.verdict, Verdict::Reset);
    assert_eq!(s.server_text(), "NOOP\r\n");
    s.client(b"NOOP\r\n").server(b"250 ok\r\n");
    assert_eq!(s.server_text(), "NOOP\r\n", "nothing after a verdict");
    assert_eq!(s.client_text(), "220 localhost ESMTP ready\r\n");
}

#[test]
fn log_action_emits_one_event_and_traffic_goes_on() {
    let mut s = Driver::with_rules(&["match cmd verb NOOP log"]);
    s.server(b"220 x\r\n").client(b"NOOP\r\nNOOP\r\n");
    assert_eq!(s.server_text(), "NOOP\r\nNOOP\r\n");
    let logs: Vec<_> = s
        .events
        .iter()
        .filter(|e| e.message_id == MessageId::PolicyLog)
        .collect();
    assert_eq!(logs.len(), 2);
}

#[test]
fn rate_limit_per_second_uses_now() {
    let mut s = Driver::with_rules(&["match cmd verb MAIL rate-limit 2"]);
    s.server(b"220 x\r\n")
        .client(b"MAIL FROM:<a@x>\r\nRSET\r\nMAIL FROM:<a@x>\r\n");
    assert_eq!(s.verdict, Verdict::Continue);
    s.now += Duration::from_millis(1100);
    s.client(b"MAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\n");
    assert_eq!(s.verdict, Verdict::Continue, "a new second, a new window");
    s.client(b"MAIL FROM:<a@x>\r\n");
    assert!(s.drop_reply().contains("rate limit"));
}

#[test]
fn auth_continuation_lines_are_not_commands() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 AUTH LOGIN\r\n");
    s.to_server.clear();
    s.client(b"AUTH LOGIN\r\n").server(b"334 VXNlcm5hbWU6\r\n");
    s.client(b"dXNlcg==\r\n").server(b"334 UGFzc3dvcmQ6\r\n");
    s.client(b"cGFzcw==\r\n").server(b"235 ok\r\n");
    s.client(b"XYZZY\r\n");
    assert_eq!(
        s.server_text(),
        "AUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\nXXXXX\r\n"
    );
}

#[test]
fn pipelined_commands_after_auth_wait_for_its_reply() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n");
    s.client(b"AUTH PLAIN AGEAYg==\r\nMAIL FROM:<a@x>\r\n");
    assert_eq!(s.server_text(), "AUTH PLAIN AGEAYg==\r\n");
    s.server(b"235 ok\r\n");
    assert_eq!(
        s.server_text(),
        "AUTH PLAIN AGEAYg==\r\nMAIL FROM:<a@x>\r\n"
    );
}

#[test]
fn commands_held_for_queue_room_are_released_in_a_few_slices_not_one_copy_per_reply() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n");
    // More pipelined commands than the queue takes: the rest is held.
    let commands = 3 * QUEUE_CAP;
    s.client(&b"NOOP\r\n".repeat(commands));
    assert_eq!(s.inspector.replies.queued(), QUEUE_CAP);
    s.forget();
    // One server read answers the whole queue. Each release forwards slices of one
    // copy of the held bytes; a release per reply would make a thousand copies.
    let replies = Bytes::from(b"250 ok\r\n".repeat(QUEUE_CAP));
    let out = s.feed_raw(Peer::Server, replies);
    let forwarded: usize = out.to_server.iter().map(Bytes::len).sum();
    let slices = out.to_server.len();
    assert!(slices <= 4, "{slices} slices forwarded for one server read");
    assert_eq!(forwarded, 6 * QUEUE_CAP, "a queue's worth went out");
    assert_eq!(s.inspector.replies.queued(), QUEUE_CAP);
}
