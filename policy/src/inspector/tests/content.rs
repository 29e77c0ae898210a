//! Message content: DATA, smuggling defence, BDAT, message rules.

#[allow(unused_imports)]
use super::*;

// ---- DATA ----

#[test]
fn message_passes_byte_for_byte_with_dot_stuffing() {
    let mut s = Driver::builtin("default");
    s.in_data();
    let msg = b"Subject: t\r\n\r\n..leading dot\r\n.\r\n";
    s.client(msg);
    assert_eq!(s.to_server, msg);
    s.client(b"QUIT\r\n");
    assert!(s.server_text().ends_with(".\r\nQUIT\r\n"));
    s.server(b"250 queued\r\n221 bye\r\n");
    assert!((s.inspector.replies.queued() == 0));
}

#[test]
fn content_before_354_is_held_then_judged_by_the_reply() {
    let mut s = Driver::builtin("default");
    s.in_transaction();
    s.client(b"DATA\r\nXYZZY: header\r\n\r\nbody\r\n.\r\n");
    assert_eq!(s.server_text(), "DATA\r\n");
    s.server(b"354 go\r\n");
    assert_eq!(
        s.server_text(),
        "DATA\r\nXYZZY: header\r\n\r\nbody\r\n.\r\n"
    );

    // Refused DATA: what followed is commands after all.
    let mut s = Driver::builtin("default");
    s.in_transaction();
    s.client(b"DATA\r\nXYZZY: header\r\n");
    s.server(b"554 no valid recipients\r\n");
    assert_eq!(s.server_text(), "DATA\r\nXXXXXXXXXXXXX\r\n");
}

#[test]
fn held_bytes_are_bounded() {
    let mut s = Driver::builtin("default");
    s.in_transaction();
    s.client(b"DATA\r\n");
    let chunk = vec![b'a'; 16 * 1024];
    for _ in 0..5 {
        s.client(&chunk);
        assert!(s.inspector.buffered_bytes() <= HOLD_CAP);
    }
    assert!(s.drop_reply().contains("Improper command pipelining"));
}

#[test]
fn header_line_too_long_drops_mid_data_without_final_dot() {
    let mut s = Driver::builtin("default");
    s.in_data();
    s.client(b"Subject: ok\r\n");
    let long = format!("X-Long: {}\r\n", "h".repeat(999 - 8));
    s.client(long.as_bytes()).client(b"\r\nbody\r\n.\r\n");
    // The line is cut where it crosses the limit: its 999th byte never goes out.
    assert_eq!(s.server_text(), format!("Subject: ok\r\n{}", &long[..998]));
    assert_eq!(
        s.drop_reply(),
        "421 4.7.0 Message header line too long, closing connection\r\n"
    );
    assert_eq!(s.events.last().unwrap().value, 999);
}

#[test]
fn a_stuffed_dot_does_not_count_toward_the_line_length() {
    let mut s = Driver::with_rules(&["match body line length gt 10 drop-connection log"]);
    s.in_data();
    s.client(b"Subject: x\r\n\r\n..234567890\r\n");
    assert_eq!(s.verdict, Verdict::Continue, "10 bytes once unstuffed");
    s.client(b"..2345678901\r\n");
    assert!(s.drop_reply().contains("body line too long"));
    assert!(s.server_text().ends_with("\r\n..234567890\r\n..234567890"));
}

#[test]
fn header_line_at_limit_passes() {
    let mut s = Driver::builtin("default");
    s.in_data();
    let line = format!("X-Long: {}\r\n\r\n.\r\n", "h".repeat(998 - 8));
    s.client(line.as_bytes());
    assert_eq!(s.server_text(), line);
    assert_eq!(s.verdict, Verdict::Continue);
}

#[test]
fn drop_inside_a_long_line_split_across_reads() {
    let mut s = Driver::builtin("default");
    s.in_data();
    s.client(b"X-Long: ");
    for _ in 0..10 {
        s.client(&[b'h'; 500]);
    }
    // Dropped as the line crossed 998 bytes, before it ended.
    assert!(s.drop_reply().contains("header line too long"));
    assert_eq!(s.server_text().len(), 998);
    assert_eq!(s.events.last().unwrap().value, 999);
    assert!(s.inspector.buffered_bytes() <= LINE_HEAD_CAP);
    s.client(b"\r\n\r\nbody\r\n.\r\n");
    assert_eq!(s.server_text().len(), 998, "nothing after a verdict");
}

#[test]
fn body_line_length_is_logged_not_dropped() {
    let mut s = Driver::builtin("default");
    s.in_data();
    let msg = format!(
        "Subject: x\r\n\r\n{}\r\n{}\r\n.\r\n",
        "b".repeat(999),
        "b".repeat(998)
    );
    s.client(msg.as_bytes());
    assert_eq!(s.server_text(), msg);
    let hits: Vec<_> = s
        .events
        .iter()
        .filter(|e| s.rule_text(e).contains("body line length"))
        .collect();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].value, hits[0].message_id),
        (999, MessageId::PolicyLog)
    );
}

#[test]
fn header_length_to_fields_and_body_length() {
    let rules = [
        "match header length gt 40 log",
        "match header to-fields count gt 2 log",
        "match body length gt 10 drop-connection log",
    ];
    let mut s = Driver::with_rules(&rules);
    s.in_data();
    s.client(b"To: a@x, b@x\r\nSubject: hello\r\n\r\n123456\r\n.\r\n");
    assert_eq!(s.verdict, Verdict::Continue, "near misses");
    assert!(s.events.is_empty());

    let mut s = Driver::with_rules(&rules);
    s.in_data();
    s.client(
        b"To: a@x, \"Doe, J\" <b@x>,\r\n c@x\r\nSubject: hello world\r\n\r\n123456789\r\n.\r\n",
    );
    assert_eq!(s.events.len(), 3, "{:?}", s.events);
    assert_eq!(
        s.events[0].value,
        26 + 6 + 22,
        "header bytes with their CRLFs"
    );
    assert_eq!(s.events[1].value, 3, "a quoted comma is not a separator");
    assert_eq!(s.events[2].value, 11, "body bytes with their CRLFs");
    assert!(s.drop_reply().contains("body too long"));
    assert!(!s.server_text().contains(".\r\n"), "final dot withheld");
}

#[test]
fn body_and_header_length_drops_fire_as_the_total_crosses_not_at_the_end() {
    let body_rule = ["match body length gt 20 drop-connection log"];
    let msg = b"Subject: x\r\n\r\n0123456789\r\n0123456789\r\nthis line is never sent\r\n";
    for split in [msg.len(), 1] {
        let mut s = Driver::with_rules(&body_rule);
        s.in_data();
        for piece in msg.chunks(split) {
            s.client(piece);
        }
        // No end of data yet, and still dropped: on the second line (24 > 20).
        assert!(s.drop_reply().contains("body too long"), "split {split}");
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].value, 24);
        assert_eq!(
            s.server_text(),
            "Subject: x\r\n\r\n0123456789\r\n0123456789"
        );
    }

    let mut s = Driver::with_rules(&["match header length gt 30 drop-connection log"]);
    s.in_data();
    s.client(b"Subject: first\r\nX-Long: 0123456789abcdef\r\nX-Never: sent\r\n");
    assert!(s.drop_reply().contains("header too long"));
    assert_eq!(s.events[0].value, 16 + 26);
    assert!(!s.server_text().contains("X-Never"));

    // A log-only rule still reports the final total once, at the end.
    let mut s = Driver::with_rules(&["match body length gt 20 log"]);
    s.in_data();
    s.client(msg);
    s.client(b".\r\n");
    assert_eq!(s.verdict, Verdict::Continue);
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].value, msg.len() as u64 - 14);
}

const MIME: &str = "Subject: m\r\nContent-Type: multipart/mixed; boundary=\"=_b\"\r\n\r\n\
    --=_b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--=_b\r\n\
    Content-Type: application/x-msdownload; name=\"NAME\"\r\n\
    Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--=_b--\r\n.\r\n";

#[test]
fn mime_filename_length() {
    let mut s = Driver::builtin("default");
    s.in_data();
    let ok = MIME.replace("NAME", &"n".repeat(255));
    s.client(ok.as_bytes());
    assert_eq!(s.server_text(), ok);
    assert_eq!(s.verdict, Verdict::Continue);

    let mut s = Driver::builtin("default");
    s.in_data();
    let long = MIME.replace("NAME", &"n".repeat(256));
    s.client(long.as_bytes());
    assert!(s.drop_reply().contains("MIME filename too long"));
    assert!(!s.server_text().contains("TVqQ"));
}

#[test]
fn mime_filetype_and_encoding() {
    let mut s =
        Driver::with_rules(&["match MIME filetype regex \"x-msdownload\" drop-connection log"]);
    s.in_data();
    s.client(MIME.as_bytes());
    assert!(s.drop_reply().contains("MIME file type"));

    let mut s = Driver::with_rules(&["match MIME filetype regex \"^image/\" drop-connection log"]);
    s.in_data();
    s.client(MIME.as_bytes());
    assert_eq!(s.verdict, Verdict::Continue);

    let mut s = Driver::with_rules(&["match MIME encoding base64 log"]);
    s.in_data();
    s.client(MIME.as_bytes());
    assert_eq!(
        s.events
            .iter()
            .filter(|e| e.value == crate::rules::ENC_BASE64 as u64)
            .count(),
        1
    );

    let mut s = Driver::with_rules(&["match MIME encoding quoted-printable log"]);
    s.in_data();
    s.client(MIME.as_bytes());
    assert!(s.events.is_empty());

    // No Content-Transfer-Encoding at all is 7bit, for allow-lists and deny-lists alike.
    let plain = b"Subject: plain\r\n\r\nhello\r\n.\r\n";
    let mut s = Driver::with_rules(&["match MIME encoding 7bit log"]);
    s.in_data();
    s.client(plain);
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].value, crate::rules::ENC_7BIT as u64);
    let allow_list = "match not MIME encoding 7bit 8bit drop-connection";
    let mut s = Driver::with_rules(&[allow_list]);
    s.in_data();
    s.client(plain);
    assert_eq!(s.verdict, Verdict::Continue);
    let mut s = Driver::with_rules(&[allow_list]);
    s.in_data();
    s.client(MIME.as_bytes());
    assert!(s.drop_reply().contains("MIME encoding"));
}

/// A message whose attachment has a 300-character filename, hidden the ways a
/// 1024-byte parse window and a 70-character boundary limit used to miss.
fn hidden_filename_message() -> Vec<u8> {
    let boundary = "b".repeat(71);
    format!(
        "Subject: x\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}\r\n\
         Content-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; x=\"{pad}\"; filename=\"{name}\"\r\n\r\n\
         TVqQAAMAAAAEAAAA\r\n--{boundary}--\r\n.\r\n",
        pad = "p".repeat(1100),
        name = "n".repeat(300),
    )
    .into_bytes()
}

#[test]
fn a_filename_behind_a_long_parameter_and_a_71_character_boundary_is_judged() {
    let msg = hidden_filename_message();
    let policy = Policy::builtin("default").unwrap();
    // In every read split, DATA: cut before the attachment's content goes out.
    for cut in (1..msg.len()).step_by(97) {
        let mut s = session(policy.clone());
        s.in_data();
        s.client(&msg[..cut]).client(&msg[cut..]);
        assert!(
            s.drop_reply().contains("MIME filename too long"),
            "cut {cut}"
        );
        assert!(!s.server_text().contains("TVqQ"), "cut {cut}");
        assert_eq!(s.events.last().unwrap().value, 300);
    }
    // BDAT: the LAST chunk never completes.
    let body = &msg[..msg.len() - 3];
    let mut s = Driver::builtin("default");
    s.in_transaction();
    s.client(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
    s.client(body);
    assert!(s.drop_reply().contains("MIME filename too long"));
}

#[test]
fn a_mime_structure_past_the_parser_bounds_is_observable() {
    let mut msg = String::from("Subject: deep\r\n");
    for level in 0..=crate::mime::MAX_DEPTH {
        msg += &format!("Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n");
    }
    msg += "Content-Disposition: attachment; filename=\"x.exe\"\r\n\r\nMZ\r\n.\r\n";
    // `default` logs it and delivers.
    let mut s = Driver::builtin("default");
    s.in_data();
    s.client(msg.as_bytes());
    assert_eq!(s.verdict, Verdict::Continue);
    let limit = s
        .events
        .iter()
        .find(|e| s.rule_text(e) == "match MIME parse-limit log");
    assert_eq!(limit.unwrap().value, crate::mime::ParseLimit::Depth as u64);
    // A stricter policy drops before the end of data.
    let mut s = Driver::with_rules(&["match MIME parse-limit drop-connection log"]);
    s.in_data();
    s.client(msg.as_bytes());
    assert!(s.drop_reply().contains("MIME structure too complex"));
    assert!(!s.server_text().ends_with("\r\n.\r\n"));
}

// ---- SMTP smuggling ----

fn smuggle(reads: &[&[u8]]) -> Driver {
    let mut s = Driver::builtin("default");
    s.in_data();
    for r in reads {
        s.client(r);
    }
    s
}

#[test]
fn smuggled_end_of_data_never_reaches_the_server() {
    let cases: [&[&[u8]]; 6] = [
        &[b"Subject: x\r\n\r\nbody\n.\r\nMAIL FROM:<evil@x>\r\n"],
        &[b"Subject: x\r\n\r\nbody\r\n.\nMAIL FROM:<evil@x>\r\n"],
        &[b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@x>\r\n"],
        &[b"Subject: x\r\n\r\nbody\r.\rMAIL FROM:<evil@x>\r\n"],
        &[b"Subject: x\r\n\r\nbody\r\n.\r", b"MAIL FROM:<evil@x>\r\n"],
        &[b"Subject: x\r\n\r\nbody\r", b"\n.\r", b"\nMAIL"],
    ];
    for (i, reads) in cases.iter().enumerate() {
        let s = smuggle(reads);
        let sent = s.server_text();
        if i == 5 {
            // CRLF split across reads is a real line end: nothing to defend.
            assert_eq!(sent, "Subject: x\r\n\r\nbody\r\n.\r\n", "case {i}");
            assert_eq!(s.verdict, Verdict::Continue);
            continue;
        }
        assert!(!sent.contains("MAIL"), "case {i}: {sent:?}");
        assert!(
            !sent.ends_with('\r') && !sent.ends_with(".\n"),
            "case {i}: {sent:?}"
        );
        assert!(s.drop_reply().contains("Bare CR or LF"), "case {i}");
        assert_eq!(
            s.events.last().unwrap().message_id,
            MessageId::MaliciousPattern
        );
    }
}

#[test]
fn held_cr_is_not_forwarded_until_judged() {
    let mut s = smuggle(&[b"Subject: x\r\n\r\nbody\r\n.\r"]);
    assert_eq!(s.server_text(), "Subject: x\r\n\r\nbody\r\n.");
    s.client(b"\n");
    assert_eq!(s.server_text(), "Subject: x\r\n\r\nbody\r\n.\r\n");
}

#[test]
fn bare_newlines_pass_when_the_policy_tolerates_them() {
    // Every built-in defends against smuggling; an operator can switch it off.
    let config = crate::config::Config::from_toml_str(
        "[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2526\"\n\
         policy = \"tolerant\"\n[policy.tolerant]\nextends = \"asa-compat\"\n\
         bare_newline = false\n",
    )
    .unwrap();
    let mut s = session((*config.listeners[0].policy).clone());
    s.in_data();
    let msg = b"Subject: x\r\n\r\nbody\nmore\rtext\r\n.\r\n";
    s.client(msg);
    assert_eq!(s.to_server, msg);
    assert_eq!(s.verdict, Verdict::Continue);
    // The bare LF did not end the message: the next line is still content.
    s.client(b"QUIT\r\n");
    assert_eq!(s.inspector.client.mode, ClientMode::Command);
    assert!(s.server_text().ends_with("\r\n.\r\nQUIT\r\n"));
}

/// A `default`-based policy with these parameter lines.
fn with_params(params: &str) -> Policy {
    let config = crate::config::Config::from_toml_str(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2526\"\n\
         policy = \"p\"\n[policy.p]\nextends = \"default\"\n{params}\n"
    ))
    .unwrap();
    (*config.listeners[0].policy).clone()
}

/// Feeds `msg` in DATA whole and split at every offset: the server bytes, events and
/// verdict must not depend on the split. Returns the whole-read session.
fn data_every_split(policy: &Policy, msg: &[u8]) -> Driver {
    let mut whole = session(policy.clone());
    whole.in_data();
    whole.client(msg);
    for cut in 1..msg.len() {
        let mut s = session(policy.clone());
        s.in_data();
        s.client(&msg[..cut]).client(&msg[cut..]);
        let what = format!("cut {cut} of {}", msg.escape_ascii());
        assert_eq!(s.server_text(), whole.server_text(), "{what}");
        assert_eq!(s.events, whole.events, "{what}");
        assert_eq!(s.verdict, whole.verdict, "{what}");
    }
    whole
}

#[test]
fn a_dot_beside_a_bare_line_end_ends_the_session_whatever_bare_newline_says() {
    for params in ["bare_newline = \"log\"", "bare_newline = false", ""] {
        let policy = with_params(params);
        for body in [
            &b"hello\n.\nMAIL FROM:<evil@x>\r\n"[..],
            b"hello\r\n.\nMAIL FROM:<evil@x>\r\n",
            b"hello\n.\r\nMAIL FROM:<evil@x>\r\n",
            b"hello\r.\rMAIL FROM:<evil@x>\r\n",
        ] {
            let mut msg = b"Subject: x\r\n\r\n".to_vec();
            msg.extend_from_slice(body);
            let s = data_every_split(&policy, &msg);
            let what = format!("{params}: {}", body.escape_ascii());
            let sent = s.server_text();
            assert!(!sent.contains("MAIL"), "{what}: {sent:?}");
            assert!(s.drop_reply().contains("SMTP smuggling"), "{what}");
            let last = s.events.last().unwrap();
            assert_eq!(last.message_id, MessageId::MaliciousPattern, "{what}");
            // `default` drops at the first bare line end; a policy that lets bare line
            // ends pass still never sends the dot's line end.
            if !params.is_empty() {
                assert!(sent.ends_with('.'), "{what}: {sent:?}");
                assert_eq!(
                    s.rule_text(last),
                    "smuggled-end-of-data drop-connection log"
                );
            }
        }
    }
}

#[test]
fn bare_line_ends_elsewhere_follow_bare_newline_and_pass_unaltered_when_it_logs() {
    let policy = with_params("bare_newline = \"log\"");
    let msg = b"Subject: x\r\n\r\nbody\nmore\rtext\n..\n.x\r\n.\r\n";
    let s = data_every_split(&policy, msg);
    assert_eq!(s.to_server, msg, "delivered unaltered");
    assert_eq!(s.verdict, Verdict::Continue);
    let logged = s
        .events
        .iter()
        .filter(|e| s.rule_text(e) == "bare-newline log");
    assert_eq!(logged.count(), 4);
    assert_eq!(
        s.inspector.client.mode,
        ClientMode::Command,
        "the message ended at CRLF.CRLF"
    );
}

#[test]
fn a_nul_beside_a_dot_line_is_smuggling() {
    for body in [
        &b"hello\r\n\x00.\r\nMAIL FROM:<evil@x>\r\n"[..],
        b"hello\r\n.\x00\r\nMAIL FROM:<evil@x>\r\n",
    ] {
        let mut msg = b"Subject: x\r\n\r\n".to_vec();
        msg.extend_from_slice(body);
        let s = data_every_split(&Policy::builtin("default").unwrap(), &msg);
        assert!(!s.server_text().contains("MAIL"), "{}", body.escape_ascii());
        assert!(s.drop_reply().contains("SMTP smuggling"));
        // The NUL itself was logged first (nul_in_content, default log).
        let rules: Vec<&str> = s.events.iter().map(|e| s.rule_text(e)).collect();
        assert_eq!(
            rules,
            [
                "nul-in-content log",
                "smuggled-end-of-data drop-connection log"
            ]
        );
    }
}

#[test]
fn a_nul_elsewhere_in_content_follows_nul_in_content() {
    let msg = b"Subject: x\r\n\r\nbin\x00ary\x00\r\nmore\x00\r\n.\r\n";
    // Default: logged once per message, delivered unaltered.
    let s = data_every_split(&Policy::builtin("default").unwrap(), msg);
    assert_eq!(s.to_server, msg);
    assert_eq!(s.verdict, Verdict::Continue);
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.rule_text(&s.events[0]), "nul-in-content log");
    // Off: nothing.
    let s = data_every_split(&with_params("nul_in_content = false"), msg);
    assert_eq!((s.to_server.as_slice(), s.events.len()), (&msg[..], 0));
    // Drop: nothing from the NUL on.
    let s = data_every_split(&with_params("nul_in_content = true"), msg);
    assert_eq!(s.server_text(), "Subject: x\r\n\r\nbin");
    assert!(s.drop_reply().contains("NUL in message"));
}

// ---- BDAT ----

#[test]
fn bdat_chunks_counted_across_reads() {
    let mut s = Driver::builtin("default");
    s.in_transaction();
    let body = b"Subject: x\r\n\r\nNOOP is content here\r\n";
    let cmd = format!("BDAT {} LAST\r\n", body.len());
    s.client(cmd.as_bytes())
        .client(&body[..7])
        .client(&body[7..])
        .client(b"XYZZY\r\n");
    let mut expect = cmd.into_bytes();
    expect.extend_from_slice(body);
    expect.extend_from_slice(b"XXXXX\r\n");
    assert_eq!(s.to_server, expect);
    assert_eq!(s.verdict, Verdict::Continue);
}

#[test]
fn bdat_content_gets_message_checks_across_chunks() {
    let mut s = Driver::builtin("default");
    s.in_transaction();
    let line = format!("X-Long: {}\r\n", "h".repeat(1200));
    let (a, b) = line.split_at(600);
    s.client(format!("BDAT {}\r\n{a}", a.len()).as_bytes());
    assert_eq!(s.verdict, Verdict::Continue);
    s.client(format!("BDAT {} LAST\r\n{b}", b.len()).as_bytes());
    assert!(s.drop_reply().contains("header line too long"));
    assert!(
        s.to_server.len() < format!("BDAT {}\r\n{a}BDAT {} LAST\r\n{b}", a.len(), b.len()).len()
    );
}

#[test]
fn bdat_last_chunk_never_completes_when_the_message_is_dropped() {
    let mut s = Driver::with_rules(&["match body length gt 3 drop-connection log"]);
    s.in_transaction();
    let chunk = b"S: x\r\n\r\nabcd";
    let all = [
        format!("BDAT {} LAST\r\n", chunk.len()).as_bytes(),
        &chunk[..],
    ]
    .concat();
    s.client(&all);
    assert!(s.drop_reply().contains("body too long"));
    assert_eq!(s.to_server, all[..all.len() - 1]);
}

#[test]
fn bdat_zero_last_ends_the_message() {
    let mut s = Driver::with_rules(&["match header length lt 1 drop-connection log"]);
    s.in_transaction();
    s.client(b"BDAT 0 LAST\r\n");
    assert!(s.drop_reply().contains("header too long"));
    assert_eq!(s.server_text(), "BDAT 0 LAST\r");
}

#[test]
fn bdat_to_a_server_that_never_offered_chunking_is_masked_and_its_chunk_judged_as_commands() {
    let mut s = Driver::builtin("default");
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 PIPELINING\r\n")
        .forget();
    s.client(b"BDAT 40 LAST\r\nWIZ\r\nKILL\r\nMAIL FROM:<a|b@example.com>\r\n");
    assert!(s
        .server_text()
        .starts_with("XXXXXXXXXXXX\r\nXXX\r\nXXXX\r\n"));
    assert!(
        s.drop_reply().contains("Pipe in address"),
        "the chunk was judged as commands"
    );
    assert!(!s.server_text().contains("a|b"));
}

#[test]
fn bdat_counts_a_server_would_refuse_are_masked() {
    for (ehlo, line) in [
        (
            &b"250-mx\r\n250 CHUNKING\r\n"[..],
            &b"BDAT 9223372036854775808\r\n"[..],
        ),
        (
            b"250-mx\r\n250 CHUNKING\r\n",
            b"BDAT 9007199254740993 LAST\r\n",
        ),
        (
            b"250-mx\r\n250-SIZE 1000\r\n250 CHUNKING\r\n",
            b"BDAT 1001\r\n",
        ),
        (b"250-mx\r\n250 CHUNKING\r\n", b"BDAT 12 junk\r\n"),
    ] {
        let mut s = Driver::builtin("default");
        s.server(b"220 mx\r\n")
            .client(b"EHLO c\r\n")
            .server(ehlo)
            .forget();
        s.client(line).client(b"NOOP\r\n");
        let what = line.escape_ascii().to_string();
        assert_eq!(s.server_text().len(), line.len() + 6, "{what}");
        assert!(s.server_text().starts_with("XXXX"), "{what}");
        assert!(
            s.server_text().ends_with("\r\nNOOP\r\n"),
            "{what}: NOOP is a command"
        );
        assert_eq!(s.inspector.phase(), Phase::Command, "{what}");
    }
    // Within SIZE, after CHUNKING: content.
    let mut s = Driver::builtin("default");
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250-SIZE 1000\r\n250 CHUNKING\r\n")
        .client(b"BDAT 1000\r\n");
    assert_eq!(s.inspector.phase(), Phase::Content);
}

#[test]
fn a_later_helo_withdraws_chunking() {
    let mut s = Driver::builtin("default");
    s.in_transaction()
        .client(b"HELO c\r\n")
        .server(b"250 mx\r\n")
        .forget();
    s.client(b"BDAT 4 LAST\r\nNOOP");
    assert!(s.server_text().starts_with("XXXXXXXXXXX\r\n"));
}

#[test]
fn a_5xx_to_a_bdat_chunk_relayed_as_content_ends_the_session() {
    let mut s = Driver::builtin("default");
    s.in_transaction().client(b"BDAT 5\r\nabcde").forget();
    s.server(b"554 5.5.1 what chunk\r\n");
    assert!(s.drop_reply().contains("BDAT refused"));
    assert_eq!(
        s.client_text(),
        "554 5.5.1 what chunk\r\n",
        "the server's answer first"
    );
    let event = s.events.last().unwrap();
    assert_eq!(s.rule_text(event), "bdat-refused drop-connection log");
    // A 2xx goes on.
    let mut s = Driver::builtin("default");
    s.in_transaction()
        .client(b"BDAT 5\r\nabcde")
        .server(b"250 ok\r\n");
    assert_eq!(s.verdict, Verdict::Continue);
}

#[test]
fn the_hold_cap_drop_has_its_own_rule() {
    let mut p = Policy::builtin("default").unwrap();
    p.rules
        .retain(|r| !matches!(r.criterion, Criterion::BareNewline));
    let mut s = session(p);
    s.in_transaction().client(b"DATA\r\n");
    s.client(&vec![b'a'; HOLD_CAP + 1]);
    assert!(s.drop_reply().contains("Improper command pipelining"));
    let event = s.events.last().unwrap();
    assert_eq!(
        s.rule_text(event),
        "improper-pipelining drop-connection log"
    );
}

#[test]
fn overlong_data_starttls_and_auth_lines_end_the_session_under_their_own_rule() {
    for verb in ["DATA", "STARTTLS", "AUTH"] {
        let mut p = Policy::builtin("default").unwrap();
        p.rules
            .retain(|r| !matches!(r.criterion, Criterion::CmdLineLength(_)));
        let mut s = session(p);
        s.server(b"220 mx\r\n");
        let mut line = format!("{verb} ").into_bytes();
        line.resize(CMD_LINE_CAP + 10, b'a');
        line.extend_from_slice(b"\r\n");
        s.client(&line);
        assert!(s.drop_reply().contains("too long"), "{verb}");
        assert_eq!(s.server_text(), "", "{verb}");
        let event = s.events.last().unwrap();
        assert_eq!(s.rule_text(event), "overlong-command drop-connection log");
    }
}

#[test]
fn a_bare_cr_inside_a_run_of_plain_body_lines_is_found() {
    // Plain body lines are taken in runs; a CR hidden in the middle of one of them
    // must still be judged where it is, whatever run it falls in.
    let policy = with_params("bare_newline = \"log\"");
    let mut msg = b"Subject: x\r\n\r\n".to_vec();
    for i in 0..6 {
        msg.extend_from_slice(format!("plain line {i}\r\n").as_bytes());
    }
    msg.extend_from_slice(b"hidden\rcarriage return\r\nafter it\r\n\r\n.\r\n");
    let s = data_every_split(&policy, &msg);
    assert_eq!(s.to_server, msg, "delivered unaltered");
    let logged = s
        .events
        .iter()
        .filter(|e| s.rule_text(e) == "bare-newline log");
    assert_eq!(logged.count(), 1);

    // `default` drops the session at that CR: the lines before it went out, nothing
    // from it on.
    let policy = Policy::builtin("default").unwrap();
    let s = data_every_split(&policy, &msg);
    let hidden = msg.windows(7).position(|w| w == b"hidden\r").unwrap() + 6;
    assert!(matches!(s.verdict, Verdict::Drop { .. }));
    assert!(
        s.to_server.ends_with(&msg[..hidden]),
        "everything before the bare CR"
    );
    assert!(!s.to_server.ends_with(b"\r\n.\r\n"));
}
