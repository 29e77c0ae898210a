//! Bulk through the real binary: reads grow from 16 KiB to 64 KiB while a session
//! carries message content or verbatim bytes, and whatever the read sizes, every byte
//! arrives as it was sent, on inspected and exempt sessions alike, in both directions.

mod common;

use std::io::{Read, Write};
use std::time::Instant;

use common::*;

/// About 5 MB of message content in wire form (dot-stuffed, CRLF lines, no final dot):
/// lines of every length up to 998 bytes, some starting with a dot, so reads end
/// anywhere in a line, in a CRLF, or between the dots of a stuffed line.
fn five_mb_of_content() -> Vec<u8> {
    let mut content = b"Subject: bulk\r\nX-Test: read sizes\r\n\r\n".to_vec();
    let mut state: u32 = 0x2545_f491;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    while content.len() < 5_000_000 {
        let len = (next() % 999) as usize;
        if next() % 16 == 0 {
            content.extend_from_slice(b"..");
        }
        content.extend((0..len).map(|_| b' ' + (next() % 95) as u8));
        content.extend_from_slice(b"\r\n");
    }
    content
}

/// Sends one message of `content` on a greeted session and returns its reply.
fn send_message(client: &mut Client, content: &[u8]) -> Vec<u8> {
    client.send(b"MAIL FROM:<bulk@example.com>\r\n");
    assert!(client.reply().starts_with(b"250"));
    client.send(b"RCPT TO:<sink@example.com>\r\n");
    assert!(client.reply().starts_with(b"250"));
    client.send(b"DATA\r\n");
    assert!(client.reply().starts_with(b"354"));
    client.send(content);
    client.send(b".\r\n");
    client.reply()
}

#[test]
fn a_5_mb_message_arrives_byte_exact_through_inspected_and_exempt_sessions() {
    let (up, gate) = gated_upstream(
        &["PIPELINING"],
        "policy = \"default\"\nexempt = [\"127.0.0.2/32\"]",
        "",
    );
    let content = five_mb_of_content();
    for (session, source) in ["127.0.0.1", "127.0.0.2"].into_iter().enumerate() {
        let mut client = Client::connect_from(source, gate.listen());
        assert!(client.reply().starts_with(b"220"));
        client.send(b"EHLO bulk.test\r\n");
        assert!(client.reply().starts_with(b"250"));
        let started = Instant::now();
        let reply = send_message(&mut client, &content);
        assert!(
            reply.starts_with(b"250"),
            "{source}: {:?}",
            String::from_utf8_lossy(&reply)
        );
        eprintln!("{source}: 5 MB message relayed in {:?}", started.elapsed());
        // A second message on the same session: the reads shrank back for its
        // commands and grow again for its content.
        let reply = send_message(&mut client, b"Subject: small\r\n\r\nsmall\r\n");
        assert!(reply.starts_with(b"250"), "{source}");
        client.send(b"QUIT\r\n");
        assert!(client.reply().starts_with(b"221"));

        let messages = up.messages();
        assert_eq!(messages.len(), 2 * (session + 1), "{source}");
        let bulk = &messages[2 * session];
        assert_eq!(bulk.len(), content.len(), "{source}: length");
        assert!(*bulk == content, "{source}: content differs");
        assert_eq!(
            messages[2 * session + 1],
            b"Subject: small\r\n\r\nsmall\r\n",
            "{source}"
        );
    }
}

#[test]
fn five_mb_each_way_on_a_verbatim_session_come_back_byte_exact() {
    // After STARTTLS the fake upstream echoes every byte; on a verbatim session (an
    // exempt client) smtpgate relays both directions as bulk.
    let (up, gate) = gated_upstream(
        &["STARTTLS"],
        "policy = \"default\"\nexempt = [\"127.0.0.2/32\"]",
        "",
    );
    let mut client = Client::connect_from("127.0.0.2", gate.listen());
    assert!(client.reply().starts_with(b"220"));
    client.send(b"EHLO bulk.test\r\n");
    assert!(client.reply().starts_with(b"250"));
    client.send(b"STARTTLS\r\n");
    assert!(client.reply().starts_with(b"220"));

    let payload = five_mb_of_content();
    let mut writer = client.stream.try_clone().unwrap();
    let to_send = payload.clone();
    let sender = std::thread::spawn(move || writer.write_all(&to_send));
    let mut echoed = vec![0u8; payload.len()];
    client
        .stream
        .read_exact(&mut echoed)
        .expect("the echo of every byte");
    sender.join().unwrap().unwrap();
    assert!(echoed == payload, "the echo differs from what was sent");
    let wire = up.wait_wire(0, |w| w.ends_with(&payload));
    assert!(wire.ends_with(&payload), "the upstream got other bytes");
}
