//! Server replies: the greeting, EHLO keyword masking, pairing under PIPELINING.

#[allow(unused_imports)]
use super::*;

// ---- server replies: banner and EHLO masking ----

#[test]
fn default_greeting_becomes_neutral_with_the_edges_name_and_esmtp_kept() {
    let policy = Arc::new(Policy::builtin("default").unwrap());
    let mut s = Driver::new(policy.clone());
    s.inspector = Inspector::new(policy).with_banner_name(Bytes::from_static(b"mx.edge.example"));
    s.server(b"220-mx.upstream.example ESMTP Postfix (Debian)\r\n220 second line\r\n");
    assert_eq!(
        s.client_text(),
        "220-mx.edge.example ESMTP ready\r\n220 \r\n"
    );
    // Not a PIX greeting: Postfix's smtp client takes a greeting made only of '2',
    // '0', spaces and '*' for one and falls back to HELO.
    assert!(s
        .client_text()
        .lines()
        .next()
        .unwrap()
        .bytes()
        .any(|b| !matches!(b, b'2' | b'0' | b' ' | b'*')));
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].message_id, MessageId::ReplacedString);
    s.client(b"NOOP\r\n").server(b"250 2.0.0 Ok\r\n");
    assert!(s.client_text().ends_with("250 2.0.0 Ok\r\n"));
}

#[test]
fn a_refusing_greeting_keeps_its_code_under_the_neutral_mask() {
    let mut s = Driver::builtin("default");
    s.server(b"554 mx.upstream.example no service\r\n");
    assert_eq!(
        s.client_text(),
        "554 localhost ESMTP service not available\r\n"
    );
}

#[test]
fn banner_is_masked_keeping_code_length_and_crlf() {
    let mut s = Driver::builtin("asa-compat");
    s.server(b"220-mx.example.com ESMTP Postfix\r\n220 \r\n");
    assert_eq!(
        s.client_text(),
        "220-****************************\r\n220 \r\n"
    );
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].message_id, MessageId::ReplacedString);
    // The next reply is not a banner.
    s.client(b"NOOP\r\n").server(b"250 2.0.0 Ok\r\n");
    assert!(s.client_text().ends_with("250 2.0.0 Ok\r\n"));
}

#[test]
fn banner_passes_without_mask_banner() {
    let mut p = Policy::builtin("default").unwrap();
    p.rules
        .retain(|r| !matches!(r.criterion, Criterion::Banner));
    let mut s = session(p);
    s.server(b"220 mx ESMTP\r\n");
    assert_eq!(s.client_text(), "220 mx ESMTP\r\n");
    assert!(s.events.is_empty());
}

#[test]
fn banner_split_across_reads_is_masked_the_same() {
    for (name, masked) in [
        ("mailguard", "220 **************\r\n"),
        ("default", "220 localhost ESMTP ready\r\n"),
    ] {
        let mut s = Driver::builtin(name);
        s.server(b"220 mx.exa").server(b"mple.com\r");
        assert_eq!(s.client_text(), "");
        s.server(b"\n");
        assert_eq!(s.client_text(), masked);
    }
}

#[test]
fn ehlo_keywords_outside_the_policy_are_masked_same_length() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n").client(b"EHLO c\r\n");
    s.to_client.clear();
    s.server(b"250-mx.example.com\r\n250-PIPELINING\r\n250-X-EXPS GSSAPI\r\n250-ETRN\r\n250-STARTTLS\r\n250 CHUNKING\r\n");
    assert_eq!(
        s.client_text(),
        "250-mx.example.com\r\n250-PIPELINING\r\n250-XXXXXX GSSAPI\r\n250-XXXX\r\n250-STARTTLS\r\n250 CHUNKING\r\n"
    );
    assert!(!s.inspector.is_embryonic());
}

#[test]
fn asa_compat_masks_starttls_pipelining_and_chunking() {
    let mut s = Driver::builtin("asa-compat");
    s.server(b"220 x\r\n").client(b"EHLO c\r\n");
    s.to_client.clear();
    s.server(b"250-mx\r\n250-STARTTLS\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 CHUNKING\r\n");
    assert_eq!(
        s.client_text(),
        "250-mx\r\n250-XXXXXXXX\r\n250-XXXXXXXXXX\r\n250-SIZE 1000\r\n250 XXXXXXXX\r\n"
    );
}

#[test]
fn private_ehlo_keywords_pass_when_allowed() {
    let mut p = Policy::builtin("default").unwrap();
    p.allowed_private_ehlo.push(b"X-LINK2STATE".to_vec().into());
    let mut s = session(p);
    s.server(b"220 x\r\n").client(b"EHLO c\r\n");
    s.to_client.clear();
    s.server(b"250-mx\r\n250-X-LINK2STATE\r\n250 XEXCH50\r\n");
    assert_eq!(
        s.client_text(),
        "250-mx\r\n250-X-LINK2STATE\r\n250 XXXXXXX\r\n"
    );
}

#[test]
fn embryonic_until_helo_is_accepted() {
    let mut s = Driver::builtin("default");
    s.server(b"220 x\r\n").client(b"HELO c\r\n");
    assert!(s.inspector.is_embryonic());
    s.server(b"501 no\r\n");
    assert!(s.inspector.is_embryonic());
    s.client(b"HELO c\r\n").server(b"250 ok\r\n");
    assert!(!s.inspector.is_embryonic());
}
