//! smtpgate between real MTAs: private Postfix instances on loopback (testkit's
//! [`PostfixInstance`]), one sending through smtpgate (its `relayhost`), one receiving
//! behind it into a Maildir. What is asserted is what the MTAs themselves logged,
//! queued and delivered, and what a client heard.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::CertificateParams;
use testkit::*;

/// A UTF-8 local part: Postfix relays it only to a server that offers SMTPUTF8.
const UTF8_RECIPIENT: &str = "δοκιμή@example.net";

/// A message a DKIM signer would hash: 8-bit UTF-8 and non-UTF-8 bytes in the body,
/// a leading dot, a long line. Any conversion (to quoted-printable, dot or line-end
/// changes) shows in the delivered bytes.
fn eight_bit_message() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(
        "DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=sender.test; s=sel;\r\n\
         \tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; h=From:To:Subject; b=AAAA\r\n\
         From: <sender@sender.test>\r\n\
         To: <δοκιμή@example.net>\r\n\
         Subject: Grüße\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Grüße aus Köln, ünïcödé body.\r\n"
            .as_bytes(),
    );
    m.extend_from_slice(b"Latin-1, not UTF-8: caf\xe9 \xe0 la cr\xe8me\r\n");
    m.extend_from_slice(b".a line that starts with a dot\r\n");
    m.extend_from_slice(&[b'8'; 900]);
    m.extend_from_slice(b"\r\nlast line\r\n");
    m
}

/// The body of a message with LF line ends (a Maildir file, or sent content passed
/// through [`crlf_to_lf`]): what follows the first empty line.
fn body_lf(message: &[u8]) -> Vec<u8> {
    let start = message
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| i + 2)
        .expect("a header/body separator");
    message[start..].to_vec()
}

/// Postfix stores and delivers lines ending in LF; the wire has CRLF.
fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Reads one reply and checks its code; returns it as text.
fn expect(client: &mut Client, code: u16) -> String {
    let reply = client.reply();
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert_eq!(
        reply_code(&reply),
        Some(code),
        "expected {code}, got {text:?}"
    );
    text
}

/// Hands `message` to the sending Postfix's smtpd as an SMTPUTF8, 8BITMIME
/// submission for `recipient`.
fn submit(sender: &PostfixInstance, recipient: &str, message: &[u8]) {
    let mut client = Client::connect(sender.smtpd);
    expect(&mut client, 220);
    client.send(b"EHLO client.test\r\n");
    let ehlo = expect(&mut client, 250);
    assert!(ehlo.contains("SMTPUTF8"), "{ehlo}");
    client.send(b"MAIL FROM:<sender@sender.test> SMTPUTF8 BODY=8BITMIME\r\n");
    expect(&mut client, 250);
    client.send(format!("RCPT TO:<{recipient}>\r\n").as_bytes());
    expect(&mut client, 250);
    client.send(b"DATA\r\n");
    expect(&mut client, 354);
    client.send(&dot_stuffed(message));
    client.send(b".\r\n");
    expect(&mut client, 250);
    client.send(b"QUIT\r\n");
    expect(&mut client, 221);
}

/// The delivered file's recipient line and body against what was submitted.
fn assert_delivered_unchanged(delivered: &[u8], sent: &[u8]) {
    let text = String::from_utf8_lossy(delivered);
    assert!(
        text.contains(&format!("Delivered-To: {UTF8_RECIPIENT}\n")),
        "the SMTPUTF8 recipient got it:\n{text}"
    );
    assert!(
        !text.contains("quoted-printable"),
        "no 8-bit to 7-bit conversion:\n{text}"
    );
    // The signed header block arrives as it was sent (line ends aside: Maildir is LF).
    let sent_lf = crlf_to_lf(sent);
    let headers_end = sent_lf.windows(2).position(|w| w == b"\n\n").unwrap();
    let sent_headers = &sent_lf[..headers_end + 1];
    assert!(
        delivered
            .windows(sent_headers.len())
            .any(|w| w == sent_headers),
        "the header block (DKIM-Signature first) arrives unchanged:\n{text}"
    );
    assert_eq!(
        body_lf(delivered),
        body_lf(&sent_lf),
        "the 8-bit body arrives byte for byte"
    );
}

/// smtpgate's own certificate (CN gate.test, for gate.test and 127.0.0.1) in `dir`,
/// and the `[tls]` section that serves it.
fn gate_certificate(dir: &Path) -> (PathBuf, String) {
    let mut params = CertificateParams::new(vec!["gate.test".into(), "127.0.0.1".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gate.test");
    let (cert, key) = write_pair(dir, "gate.test", params);
    let section = tls_section(&cert, &key);
    (cert, section)
}

/// A Postfix receiver that refuses mail without TLS, and smtpgate in front of it with
/// its own certificate (`[tls]`), `listener_lines`, and `upstream_tls = "verify"`
/// against the receiver's certificate.
fn gate_before_a_tls_only_receiver(tag: &str, listener_lines: &str) -> (PostfixInstance, Gate) {
    let receiver = PostfixInstance::start(
        &PostfixSetup::new("receiver.test", Delivery::Mailbox).smtpd_tls(SmtpdTls::Required),
    );
    let (_, tls) = gate_certificate(&scratch_dir(tag));
    let listener = format!(
        "{listener_lines}\nupstream_tls = \"verify\"\nupstream_ca = \"{}\"",
        receiver.certificate.as_ref().unwrap().display()
    );
    let gate = Gate::start(&config_text(receiver.smtpd, &listener, &tls));
    (receiver, gate)
}

/// The built-in `default` policy, nothing else configured: Postfix sending through it
/// keeps ESMTP (the masked greeting does not look like a Cisco PIX), so STARTTLS
/// (relayed end to end here), SMTPUTF8 and 8BITMIME all work.
#[test]
fn postfix_through_default_keeps_esmtp_tls_smtputf8_and_8bit() {
    let receiver = PostfixInstance::start(
        &PostfixSetup::new("receiver.test", Delivery::Mailbox).smtpd_tls(SmtpdTls::Offered),
    );
    let gate = Gate::start(&config_text(receiver.smtpd, "policy = \"default\"", ""));
    let sender = PostfixInstance::start(&PostfixSetup::new(
        "sender.test",
        Delivery::RelayTo(gate.listen()),
    ));
    let message = eight_bit_message();
    submit(&sender, UTF8_RECIPIENT, &message);

    let delivered = receiver.wait_delivered(1);
    let sender_log = sender.wait_log("status=sent");
    assert!(
        !sender_log.contains("PIX workarounds"),
        "Postfix took smtpgate's greeting for a Cisco PIX:\n{sender_log}"
    );
    let hop = format!(
        "TLS connection established to 127.0.0.1[127.0.0.1]:{}",
        gate.listen().port()
    );
    assert!(
        sender_log.contains(&hop),
        "no TLS on the edge hop:\n{sender_log}"
    );
    // Passthrough: the sender's TLS peer is the receiver, through smtpgate.
    assert!(
        sender_log.contains("subject_CN=receiver.test"),
        "{sender_log}"
    );
    let receiver_log = receiver.log();
    assert!(
        receiver_log.contains("TLS connection established from unknown[127.0.0.1]"),
        "{receiver_log}"
    );
    assert_delivered_unchanged(&delivered[0], &message);
    assert_eq!(delivered.len(), 1);
}

/// The control for the test above: the firewall's asterisk greeting (`asa-compat`) is
/// what makes Postfix fall back to HELO, so the test above can tell the two apart.
#[test]
fn postfix_through_asa_compat_takes_the_asterisk_greeting_for_a_pix() {
    let receiver = PostfixInstance::start(&PostfixSetup::new("receiver.test", Delivery::Mailbox));
    let gate = Gate::start(&config_text(receiver.smtpd, "policy = \"asa-compat\"", ""));
    let sender = PostfixInstance::start(&PostfixSetup::new(
        "sender.test",
        Delivery::RelayTo(gate.listen()),
    ));
    let mut client = Client::connect(sender.smtpd);
    expect(&mut client, 220);
    client.send(b"HELO client.test\r\nMAIL FROM:<sender@sender.test>\r\n");
    expect(&mut client, 250);
    expect(&mut client, 250);
    client.send(b"RCPT TO:<user@example.net>\r\nDATA\r\n");
    expect(&mut client, 250);
    expect(&mut client, 354);
    client.send(b"Subject: plain\r\n\r\nplain ASCII\r\n.\r\nQUIT\r\n");
    expect(&mut client, 250);

    let delivered = receiver.wait_delivered(1);
    let log = sender.wait_log("status=sent");
    assert!(
        log.contains("enabling PIX workarounds: disable_esmtp"),
        "{log}"
    );
    let text = String::from_utf8_lossy(&delivered[0]);
    assert!(
        text.contains("by receiver.test (Postfix) with SMTP id"),
        "HELO, not EHLO:\n{text}"
    );
}

/// The `disconnect from` lines of real sessions (not the readiness probe's), each with
/// Postfix's per-command counts such as `ehlo=1 unknown=0/3 commands=1/4`.
fn sessions(postfix: &PostfixInstance) -> Vec<String> {
    postfix
        .log()
        .lines()
        .filter(|l| l.contains(": disconnect from ") && !l.ends_with("commands=0/0"))
        .map(str::to_owned)
        .collect()
}

/// Waits for session number `n` (from 1) to end at the upstream; returns its counts.
fn session_counts(postfix: &PostfixInstance, n: usize) -> String {
    wait_until(LIMIT, || sessions(postfix).get(n - 1).cloned())
        .unwrap_or_else(|| panic!("session {n} did not end at Postfix:\n{}", postfix.log()))
}

/// Everything the client hears until smtpgate closes the session.
fn rest(client: &mut Client) -> String {
    String::from_utf8_lossy(&client.read_to_end()).into_owned()
}

/// A Postfix smtpd that does not offer CHUNKING (`smtpd_discard_ehlo_keywords`): the
/// BDAT line is masked like any refused verb and the bytes behind it are judged as
/// the commands Postfix will read them as: the piped MAIL FROM ends the session before
/// Postfix sees it.
#[test]
fn bdat_to_postfix_without_chunking_is_masked_and_what_follows_is_judged() {
    let receiver = PostfixInstance::start(
        &PostfixSetup::new("receiver.test", Delivery::Mailbox)
            .main_cf("smtpd_discard_ehlo_keywords = chunking"),
    );
    let gate = Gate::start(&config_text(receiver.smtpd, "policy = \"default\"", ""));
    let mut client = Client::connect(gate.listen());
    expect(&mut client, 220);
    client.send(b"EHLO client.test\r\n");
    let ehlo = expect(&mut client, 250);
    assert!(!ehlo.contains("CHUNKING"), "{ehlo}");
    client.send(b"BDAT 40 LAST\r\nWIZ\r\nKILL\r\nMAIL FROM:<a|b@example.com>\r\n");
    let heard = rest(&mut client);
    let replies: Vec<&str> = heard.lines().collect();
    assert_eq!(replies.len(), 4, "{heard}");
    assert!(
        replies[..3].iter().all(|r| r.starts_with("500 5.5.2")),
        "Postfix refused the masked BDAT line, WIZ and KILL as unknown commands:\n{heard}"
    );
    assert!(
        replies[3].starts_with("421 "),
        "the piped MAIL FROM ends the session:\n{heard}"
    );

    let counts = session_counts(&receiver, 1);
    assert!(
        counts.ends_with("ehlo=1 unknown=0/3 commands=1/4"),
        "Postfix saw EHLO and three unknown commands, never BDAT or MAIL: {counts}"
    );
    gate.wait_log("address-pipe");
    assert!(receiver.delivered().is_empty());
    assert!(receiver.queue_listing().contains("Mail queue is empty"));
}

/// CHUNKING offered with `SIZE 10240000`: a BDAT count no server accepts (above the
/// SIZE, above 2^53, above 2^63) is masked, and the next line is a command again.
/// A BDAT within the SIZE is relayed as a chunk and delivered.
#[test]
fn bdat_counts_postfix_cannot_accept_are_masked_and_the_next_line_is_a_command() {
    let receiver = PostfixInstance::start(&PostfixSetup::new("receiver.test", Delivery::Mailbox));
    let gate = Gate::start(&config_text(receiver.smtpd, "policy = \"default\"", ""));
    let counts = ["10240001", "9007199254740993", "9223372036854775808"];
    for (n, count) in counts.iter().enumerate() {
        let mut client = Client::connect(gate.listen());
        expect(&mut client, 220);
        client.send(b"EHLO client.test\r\n");
        let ehlo = expect(&mut client, 250);
        assert!(
            ehlo.contains("CHUNKING") && ehlo.contains("SIZE 10240000"),
            "{ehlo}"
        );
        client.send(
            format!("BDAT {count} LAST\r\nNOOP\r\nMAIL FROM:<a|b@example.com>\r\n").as_bytes(),
        );
        let heard = rest(&mut client);
        let replies: Vec<&str> = heard.lines().collect();
        assert_eq!(replies.len(), 3, "BDAT {count}: {heard}");
        assert!(
            replies[0].starts_with("500 5.5.2"),
            "BDAT {count} masked: {heard}"
        );
        assert!(
            replies[1].starts_with("250 "),
            "NOOP is a command again: {heard}"
        );
        assert!(
            replies[2].starts_with("421 "),
            "the piped MAIL FROM was judged: {heard}"
        );
        let at_postfix = session_counts(&receiver, n + 1);
        assert!(
            at_postfix.ends_with("ehlo=1 noop=1 unknown=0/1 commands=2/3"),
            "BDAT {count}: {at_postfix}"
        );
    }

    let message = b"Subject: chunked\r\n\r\nin one chunk\r\n";
    let mut client = Client::connect(gate.listen());
    expect(&mut client, 220);
    client.send(b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<user@example.net>\r\n");
    expect(&mut client, 250);
    expect(&mut client, 250);
    expect(&mut client, 250);
    client.send(&bdat(message.len(), true));
    client.send(message);
    expect(&mut client, 250);
    client.send(b"QUIT\r\n");
    expect(&mut client, 221);
    let delivered = receiver.wait_delivered(1);
    assert_eq!(body_lf(&delivered[0]), b"in one chunk\n");
    assert!(session_counts(&receiver, 4).contains(" bdat=1 "));
}

/// STARTTLS terminated by smtpgate (`[tls]`, so `starttls = "inspect"`) between two
/// Postfix instances: the sender's TLS peer is smtpgate (its certificate), smtpgate
/// verifies the receiver's certificate and re-encrypts towards it, and the receiver,
/// which refuses mail without TLS, gets the message over TLS, unchanged.
#[test]
fn postfix_to_postfix_through_inspected_starttls_is_encrypted_on_both_hops() {
    let (receiver, gate) = gate_before_a_tls_only_receiver(
        "postfix-inspect",
        "policy = \"default\"\nstarttls = \"inspect\"",
    );
    let sender = PostfixInstance::start(&PostfixSetup::new(
        "sender.test",
        Delivery::RelayTo(gate.listen()),
    ));
    let message = eight_bit_message();
    submit(&sender, UTF8_RECIPIENT, &message);

    let delivered = receiver.wait_delivered(1);
    let sender_log = sender.wait_log("status=sent");
    assert!(!sender_log.contains("PIX workarounds"), "{sender_log}");
    let hop = format!(
        "TLS connection established to 127.0.0.1[127.0.0.1]:{}",
        gate.listen().port()
    );
    assert!(sender_log.contains(&hop), "{sender_log}");
    assert!(
        sender_log.contains("subject_CN=gate.test"),
        "the sender's TLS peer is smtpgate:\n{sender_log}"
    );
    let receiver_log = receiver.log();
    assert!(
        receiver_log.contains("TLS connection established from unknown[127.0.0.1]"),
        "{receiver_log}"
    );
    let counts = session_counts(&receiver, 1);
    assert!(
        counts.contains(" starttls=1 ") && counts.contains(" data=1 "),
        "{counts}"
    );
    let text = String::from_utf8_lossy(&delivered[0]);
    assert!(
        text.contains("by receiver.test (Postfix) with UTF8SMTPS id"),
        "the receiver's Received: says SMTPUTF8 over TLS:\n{text}"
    );
    assert_delivered_unchanged(&delivered[0], &message);
    let log = gate.wait_log("side=upstream");
    assert!(log.contains("side=client"), "{log}");
}

/// Implicit TLS (port 465 style) with `upstream_tls` on: smtpgate starts STARTTLS
/// towards Postfix before relaying the greeting, so the upstream leg is encrypted too.
/// Postfix here refuses mail without TLS.
#[test]
fn implicit_tls_listener_encrypts_the_upstream_leg_with_starttls() {
    let (receiver, gate) =
        gate_before_a_tls_only_receiver("postfix-implicit", "implicit_tls = true");
    let script = r#"
import smtplib, ssl, sys
with smtplib.SMTP_SSL(sys.argv[1], int(sys.argv[2]), context=ssl._create_unverified_context(), timeout=20) as s:
    print(s.ehlo("client.test")[0])
    assert not s.has_extn("starttls"), "no STARTTLS offered inside implicit TLS"
    assert not s.sendmail("a@client.test", ["user@example.net"], b"Subject: 465\r\n\r\nimplicit, then STARTTLS upstream\r\n")
"#;
    let addr = gate.listen();
    let out = python(
        script,
        &[addr.ip().to_string(), addr.port().to_string()],
        LIMIT,
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let delivered = receiver.wait_delivered(1);
    assert_eq!(
        body_lf(&delivered[0]),
        b"implicit, then STARTTLS upstream\n"
    );
    let text = String::from_utf8_lossy(&delivered[0]);
    assert!(text.contains("with ESMTPS id"), "{text}");
    assert!(
        receiver
            .log()
            .contains("TLS connection established from unknown[127.0.0.1]"),
        "{}",
        receiver.log()
    );
    let counts = session_counts(&receiver, 1);
    assert!(counts.contains("ehlo=2 starttls=1 "), "{counts}");
    let log = gate.wait_log("side=upstream");
    assert!(log.contains("side=client"), "{log}");
}

/// The same listener in front of a Postfix without TLS: `verify` closes the session
/// before anything is relayed.
#[test]
fn implicit_tls_with_verify_and_an_upstream_without_starttls_relays_nothing() {
    let dir = scratch_dir("postfix-implicit-verify");
    let receiver = PostfixInstance::start(&PostfixSetup::new("receiver.test", Delivery::Mailbox));
    let (cert, tls) = gate_certificate(&dir);
    let listener = format!(
        "implicit_tls = true\nupstream_tls = \"verify\"\nupstream_ca = \"{}\"",
        cert.display()
    );
    let gate = Gate::start(&config_text(receiver.smtpd, &listener, &tls));
    let script = r#"
import smtplib, ssl, sys
try:
    with smtplib.SMTP_SSL(sys.argv[1], int(sys.argv[2]), context=ssl._create_unverified_context(), timeout=20) as s:
        s.sendmail("a@client.test", ["user@example.net"], b"Subject: no\r\n\r\nno\r\n")
    print("delivered")
except (smtplib.SMTPServerDisconnected, ConnectionError, ssl.SSLError) as e:
    print("closed")
"#;
    let addr = gate.listen();
    let out = python(
        script,
        &[addr.ip().to_string(), addr.port().to_string()],
        LIMIT,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
    gate.wait_log("no STARTTLS, and upstream_tls = verify");
    let counts = session_counts(&receiver, 1);
    assert!(
        counts.ends_with("ehlo=1 commands=1"),
        "Postfix saw smtpgate's EHLO only: {counts}"
    );
    assert!(receiver.delivered().is_empty());
}

/// A drop right behind an end of data (an overlong MAIL FROM pipelined after the dot):
/// the 250 of the message Postfix already queued reaches the client before the 421,
/// so a sending MTA never delivers that message twice.
#[test]
fn a_drop_behind_an_end_of_data_still_relays_postfixs_250_for_that_message() {
    let receiver = PostfixInstance::start(&PostfixSetup::new("receiver.test", Delivery::Mailbox));
    let gate = Gate::start(&config_text(receiver.smtpd, "policy = \"default\"", ""));
    let mut client = Client::connect(gate.listen());
    expect(&mut client, 220);
    client.send(b"EHLO client.test\r\n");
    expect(&mut client, 250);
    client.send(b"MAIL FROM:<a@client.test>\r\n");
    expect(&mut client, 250);
    client.send(b"RCPT TO:<user@example.net>\r\n");
    expect(&mut client, 250);
    client.send(b"DATA\r\n");
    expect(&mut client, 354);
    let mut write =
        b"Subject: one\r\n\r\nqueued before the drop\r\n.\r\nMAIL FROM:<a@client.test> ".to_vec();
    write.extend_from_slice(&[b'x'; 600]);
    write.extend_from_slice(b"\r\n");
    client.send(&write);
    let heard = rest(&mut client);
    let replies: Vec<&str> = heard.lines().collect();
    assert_eq!(replies.len(), 2, "{heard}");
    let queued = replies[0]
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("Postfix's 250 first: {heard}"));
    assert!(replies[1].starts_with("421 4.7.0"), "{heard}");

    let delivered = receiver.wait_delivered(1);
    assert_eq!(body_lf(&delivered[0]), b"queued before the drop\n");
    let log = receiver.wait_log("status=sent");
    assert!(
        log.contains(&format!("{queued}: to=<user@example.net>")),
        "the queue id the client heard is the message Postfix delivered:\n{log}"
    );
    let counts = session_counts(&receiver, 1);
    assert!(
        counts.contains(" mail=1 ") && counts.contains(" data=1 "),
        "the overlong MAIL FROM never reached Postfix: {counts}"
    );
}

/// `default` answers a 101st recipient `452 4.5.3 Too many recipients` itself and the
/// session goes on: a real sending Postfix delivers the first 100 and sends the rest
/// in a later transaction, so all 150 arrive (none bounced, none lost).
#[test]
fn postfix_delivers_all_150_recipients_past_the_452_for_the_101st() {
    let receiver = PostfixInstance::start(&PostfixSetup::new("receiver.test", Delivery::Mailbox));
    let gate = Gate::start(&config_text(receiver.smtpd, "policy = \"default\"", ""));
    // One transaction for all recipients (Postfix's default splits at 50).
    let sender = PostfixInstance::start(
        &PostfixSetup::new("sender.test", Delivery::RelayTo(gate.listen()))
            .main_cf("smtp_destination_recipient_limit = 1000"),
    );
    let mut client = Client::connect(sender.smtpd);
    expect(&mut client, 220);
    client.send(b"EHLO client.test\r\n");
    expect(&mut client, 250);
    client.send(b"MAIL FROM:<sender@sender.test>\r\n");
    expect(&mut client, 250);
    for i in 0..150 {
        client.send(format!("RCPT TO:<r{i}@example.net>\r\n").as_bytes());
        expect(&mut client, 250);
    }
    client.send(b"DATA\r\n");
    expect(&mut client, 354);
    client.send(b"Subject: many\r\n\r\nto 150\r\n.\r\nQUIT\r\n");
    expect(&mut client, 250);

    let delivered = wait_until(Duration::from_secs(60), || {
        let delivered = receiver.delivered();
        (delivered.len() >= 150).then_some(delivered)
    })
    .unwrap_or_else(|| {
        panic!(
            "not all 150 delivered; sender:\n{}\nreceiver queue:\n{}",
            sender.log(),
            receiver.queue_listing()
        )
    });
    assert_eq!(delivered.len(), 150);
    let log = sender.log();
    assert!(log.contains("452 4.5.3"), "{log}");
    assert_eq!(log.matches("status=sent").count(), 150, "{log}");
    assert!(!log.contains("status=bounced"), "{log}");
}

/// SMTP smuggling into a Postfix that takes a bare LF as a line end (3.7's default,
/// `smtpd_forbid_bare_newline = no`): sent straight to Postfix, `\n.\n` ends the
/// message and the rest is a second, smuggled message. Through `default` the bare LF
/// ends the session; through a policy whose `bare_newline` only logs, the dot beside
/// bare LFs still does. Postfix queues nothing either way.
#[test]
fn smuggling_with_bare_newlines_reaches_postfix_alone_but_not_through_smtpgate() {
    let receiver = PostfixInstance::start(
        &PostfixSetup::new("receiver.test", Delivery::Mailbox)
            .main_cf("smtpd_forbid_bare_newline = no"),
    );
    let smuggle = |to: std::net::SocketAddr| -> String {
        let mut client = Client::connect(to);
        expect(&mut client, 220);
        client.send(b"EHLO client.test\r\n");
        expect(&mut client, 250);
        client.send(b"MAIL FROM:<a@client.test>\r\n");
        expect(&mut client, 250);
        client.send(b"RCPT TO:<user@example.net>\r\n");
        expect(&mut client, 250);
        client.send(b"DATA\r\n");
        expect(&mut client, 354);
        client.send(
            b"Subject: outer\r\n\r\nhello\n.\nMAIL FROM:<evil@client.test>\n\
              RCPT TO:<victim@example.net>\nDATA\nSubject: smuggled\n\nsmuggled\n.\n\r\n.\r\nQUIT\r\n",
        );
        rest(&mut client)
    };

    // Control: Postfix alone acts on the smuggled commands.
    let heard = smuggle(receiver.smtpd);
    let delivered = receiver.wait_delivered(2);
    assert!(
        delivered
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains("Delivered-To: victim@example.net")),
        "Postfix alone delivers the smuggled message: {heard}"
    );
    session_counts(&receiver, 1);

    let lenient = "[policy.lenient]\nextends = \"default\"\nbare_newline = \"log\"\n";
    let policies = [
        ("default", "", "bare-newline"),
        ("lenient", lenient, "smuggled-end-of-data"),
    ];
    for (n, (policy, extra, rule)) in policies.into_iter().enumerate() {
        let listener = format!("policy = \"{policy}\"");
        let gate = Gate::start(&config_text(receiver.smtpd, &listener, extra));
        let heard = smuggle(gate.listen());
        assert!(heard.starts_with("421 "), "{policy}: {heard}");
        gate.wait_log(rule);
        let counts = session_counts(&receiver, n + 2);
        assert!(
            counts.contains(" data=0/1"),
            "{policy}: Postfix never saw the end of that message: {counts}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receiver.delivered().len(), 2, "nothing more was delivered");
    assert_eq!(receiver.log().matches("status=sent").count(), 2);
}
