//! STARTTLS terminated by smtpgate (`starttls = "inspect"`): what the client and the
//! upstream see, when the driver is told to switch, and that rules go on inside TLS.

use super::*;
use crate::config::UpstreamTls;
use crate::inspector::testing::Collect;

fn inspect(upstream: UpstreamTls) -> Driver {
    let policy = Arc::new(Policy::builtin("default").unwrap());
    let tls = TlsTermination::Inspect {
        upstream,
        implicit: false,
    };
    Driver::with_tls(policy, Collect::Everything, tls)
}

const READY: &str = "220 2.0.0 Ready to start TLS\r\n";

#[test]
fn an_upstream_offering_starttls_gets_ours_and_its_220_becomes_the_clients() {
    let mut s = inspect(UpstreamTls::Opportunistic);
    s.server(b"220 mx ESMTP\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
    assert!(
        s.client_text()
            .ends_with("250-PIPELINING\r\n250 STARTTLS\r\n"),
        "{}",
        s.client_text()
    );
    s.forget();
    s.client(b"STARTTLS\r\nMAIL FROM:<pipelined@x>\r\n");
    assert_eq!(
        s.server_text(),
        "STARTTLS\r\n",
        "nothing behind STARTTLS goes on"
    );
    assert!(
        s.start_tls.is_empty(),
        "no switch before the upstream's reply"
    );
    s.server(b"220 2.0.0 go ahead\r\n");
    assert_eq!(s.client_text(), READY, "the upstream's 220 is swallowed");
    assert_eq!(
        s.start_tls,
        [StartTls {
            sides: TlsSides::ClientAndUpstream,
            discarded: b"MAIL FROM:<pipelined@x>\r\n".len()
        }]
    );
    assert_eq!(s.events.last().unwrap().message_id, MessageId::TlsStarted);
    assert!(!s.inspector.is_opaque(), "still inspected");
    assert!(!s.inspector.in_transaction());
}

#[test]
fn rules_apply_inside_tls_and_starttls_is_not_offered_twice() {
    let mut s = inspect(UpstreamTls::Opportunistic);
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 STARTTLS\r\n")
        .client(b"STARTTLS\r\n")
        .server(b"220 go\r\n")
        .forget();
    // The session restarts: the client's new EHLO (now decrypted by the driver).
    s.client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n");
    assert_eq!(
        s.client_text(),
        "250-mx\r\n250-XXXXXXXX\r\n250 8BITMIME\r\n"
    );
    s.forget().client(b"STARTTLS\r\n");
    assert_eq!(
        s.server_text(),
        "XXXXXXXX\r\n",
        "a second STARTTLS is an unknown verb"
    );
    s.server(b"502 5.5.2 unknown\r\n");
    assert_eq!(s.start_tls.len(), 1);
    s.forget()
        .client(b"MAIL FROM:<a@x>\r\n")
        .server(b"250 ok\r\n");
    let rcpts: String = (0..101).map(|i| format!("RCPT TO:<r{i}@y>\r\n")).collect();
    for line in rcpts.lines() {
        s.client(format!("{line}\r\n").as_bytes())
            .server(b"250 ok\r\n");
    }
    let rcpt_rule = s
        .events
        .iter()
        .find(|e| s.rule_text(e).contains("RCPT count"));
    assert!(rcpt_rule.is_some(), "the RCPT limit fires inside TLS");
}

#[test]
fn an_upstream_without_starttls_keeps_plaintext_and_the_client_still_gets_tls() {
    let mut s = inspect(UpstreamTls::Opportunistic);
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 PIPELINING\r\n");
    assert_eq!(
        s.client_text(),
        "220 localhost ESMTP ready\r\n250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n",
        "STARTTLS offered whether or not the upstream does"
    );
    s.forget().client(b"STARTTLS\r\n");
    assert_eq!(s.server_text(), "", "nothing owed: answered here");
    assert_eq!(s.client_text(), READY);
    assert_eq!(s.start_tls[0].sides, TlsSides::Client);
}

#[test]
fn a_one_line_ehlo_reply_gains_a_starttls_line() {
    let mut s = inspect(UpstreamTls::Off);
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250 mx.example\r\n");
    assert_eq!(
        s.client_text(),
        "220 localhost ESMTP ready\r\n250-mx.example\r\n250 STARTTLS\r\n"
    );
}

#[test]
fn upstream_tls_off_never_sends_starttls_upstream() {
    let mut s = inspect(UpstreamTls::Off);
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 STARTTLS\r\n")
        .forget()
        .client(b"STARTTLS\r\n");
    assert_eq!(s.server_text(), "", "the upstream sees nothing of it");
    assert_eq!(s.client_text(), READY);
    assert_eq!(s.start_tls[0].sides, TlsSides::Client);
    // The session restarts; the client's next EHLO goes to the upstream.
    s.forget().client(b"EHLO c\r\n");
    assert_eq!(s.server_text(), "EHLO c\r\n");
}

#[test]
fn commands_pipelined_behind_a_starttls_answered_here_are_discarded_not_forwarded() {
    let mut s = inspect(UpstreamTls::Off);
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 PIPELINING\r\n")
        .forget()
        .client(b"STARTTLS\r\nMAIL FROM:<injected@x>\r\n");
    assert_eq!(
        s.server_text(),
        "",
        "the injected command never reaches the upstream"
    );
    assert_eq!(s.client_text(), READY);
    assert_eq!(s.start_tls.len(), 1);
    assert_eq!(s.start_tls[0].discarded, "MAIL FROM:<injected@x>\r\n".len());
}

#[test]
fn a_starttls_behind_owed_replies_is_x_ed_so_its_220_comes_in_order() {
    let mut s = inspect(UpstreamTls::Off);
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 PIPELINING\r\n")
        .forget()
        .client(b"NOOP\r\nSTARTTLS\r\n");
    assert_eq!(s.server_text(), "NOOP\r\nXXXXXXXX\r\n");
    assert!(s.start_tls.is_empty(), "no switch before the NOOP's reply");
    s.server(b"250 ok\r\n500 5.5.1 what\r\n");
    assert_eq!(s.client_text(), format!("250 ok\r\n{READY}"));
    assert_eq!(s.start_tls[0].sides, TlsSides::Client);
}

#[test]
fn verify_without_upstream_starttls_is_421_and_nothing_forwarded() {
    let mut s = inspect(UpstreamTls::Verify);
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250 mx\r\n")
        .forget()
        .client(b"STARTTLS\r\nMAIL FROM:<a@x>\r\n");
    assert_eq!(s.server_text(), "");
    assert!(
        s.drop_reply().starts_with("421 4.7.0"),
        "{}",
        s.drop_reply()
    );
    assert!(s.start_tls.is_empty());
}

#[test]
fn verify_with_upstream_refusing_starttls_is_421() {
    let mut s = inspect(UpstreamTls::Verify);
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 STARTTLS\r\n")
        .forget()
        .client(b"STARTTLS\r\n")
        .server(b"454 4.7.0 TLS not available\r\n");
    assert_eq!(
        s.client_text(),
        "",
        "the upstream's refusal is not passed on"
    );
    assert!(s.drop_reply().starts_with("421 4.7.0"));
    assert!(s.start_tls.is_empty());
}

#[test]
fn a_multiline_220_is_swallowed_whole() {
    let mut s = inspect(UpstreamTls::Opportunistic);
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 STARTTLS\r\n")
        .forget()
        .client(b"STARTTLS\r\n")
        .server(b"220-one\r\n220 two\r\n");
    assert_eq!(s.client_text(), READY);
    assert_eq!(s.start_tls.len(), 1);
}

#[test]
fn implicit_tls_never_offers_starttls() {
    let policy = Arc::new(Policy::builtin("default").unwrap());
    let tls = TlsTermination::Inspect {
        upstream: UpstreamTls::Opportunistic,
        implicit: true,
    };
    let mut s = Driver::with_tls(policy, Collect::Everything, tls);
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250-mx\r\n250 STARTTLS\r\n");
    assert_eq!(
        s.client_text(),
        "220 localhost ESMTP ready\r\n250-mx\r\n250 XXXXXXXX\r\n"
    );
}

#[test]
fn passthrough_is_unchanged() {
    let mut s = Driver::builtin("default");
    s.server(b"220 mx\r\n")
        .client(b"EHLO c\r\n")
        .server(b"250 mx\r\n")
        .client(b"STARTTLS\r\n")
        .server(b"220 go\r\n");
    assert!(s.inspector.is_opaque());
    assert!(s.start_tls.is_empty());
    assert_eq!(
        s.client_text(),
        "220 localhost ESMTP ready\r\n250 mx\r\n220 go\r\n"
    );
}
