//! Fixed, realistic transcripts for the inspector benchmarks (`benches/inspector.rs`).
//!
//! Built deterministically (no randomness, no files), so every run measures the same
//! bytes: a 100 KiB MIME message with a base64 attachment in 76-character lines, and
//! command-heavy pipelined sessions. `compare`'s size mix is the load generator's own
//! corpus (the same content every run but for its Date header's value).

use smtpgate_loadgen::message::{build_content, Message};

/// Target size of the benchmark message.
pub const MESSAGE_SIZE: usize = 100 * 1024;

/// The read size a relay typically hands the inspector.
pub const READ_SIZE: usize = 16 * 1024;

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// [`message`] as the relay hands it to the inspector: one `Bytes` per
/// [`READ_SIZE`] read.
pub fn message_reads() -> Vec<bytes::Bytes> {
    into_reads(message())
}

/// `message` cut into [`READ_SIZE`] reads, as a relay hands it over.
fn into_reads(message: Vec<u8>) -> Vec<bytes::Bytes> {
    let msg = bytes::Bytes::from(message);
    (0..msg.len())
        .step_by(READ_SIZE)
        .map(|at| msg.slice(at..(at + READ_SIZE).min(msg.len())))
        .collect()
}

/// A DATA payload of about [`MESSAGE_SIZE`] bytes, dot-terminated: RFC 5322 headers,
/// a multipart/mixed body with a text part and a base64 PDF attachment (76-character
/// lines, RFC 2045 §6.8), a few dot-stuffed lines, and the final `.` line.
pub fn message() -> Vec<u8> {
    let mut m = Vec::with_capacity(MESSAGE_SIZE + 1024);
    m.extend_from_slice(
        b"Return-Path: <alice@example.org>\r\n\
Received: from client.example.org (client.example.org [192.0.2.10])\r\n\
\tby mx.example.com (Postfix) with ESMTPS id 4Xk2Lq0Zz3z9sWm\r\n\
\tfor <bob@example.com>; Tue, 24 Nov 2026 08:30:00 +0000 (UTC)\r\n\
DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel1;\r\n\
\th=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgaXQgbG9va3MgbGlrZSBvbmU=\r\n\
From: Alice Example <alice@example.org>\r\n\
To: Bob Example <bob@example.com>, \"Doe, Carol\" <carol@example.com>\r\n\
Cc: team@example.com\r\n\
Subject: Quarterly report with attachment\r\n\
Date: Tue, 24 Nov 2026 08:29:58 +0000\r\n\
Message-ID: <20261124082958.12345@client.example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed;\r\n\
\tboundary=\"=_Part_0_1234567890.1700000000000\"\r\n\
\r\n\
This is a multi-part message in MIME format.\r\n\
\r\n\
--=_Part_0_1234567890.1700000000000\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n",
    );
    for i in 0..40 {
        let line = format!(
            "Paragraph {i:02}: the quarterly figures are attached; see the summary on pa=\r\n"
        );
        m.extend_from_slice(line.as_bytes());
        if i % 10 == 9 {
            // A line starting with a dot, doubled by the client (RFC 5321 §4.5.2).
            m.extend_from_slice(b"..and a line that starts with a dot, stuffed on the wire.\r\n");
        }
    }
    m.extend_from_slice(
        b"\r\n--=_Part_0_1234567890.1700000000000\r\n\
Content-Type: application/pdf; name=\"Q3-report.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"Q3-report.pdf\"\r\n\
\r\n",
    );
    let closing = b"\r\n--=_Part_0_1234567890.1700000000000--\r\n.\r\n";
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    while m.len() + 78 + closing.len() <= MESSAGE_SIZE {
        for _ in 0..76 {
            // xorshift: deterministic, base64-looking content.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            m.push(BASE64[(seed % 64) as usize]);
        }
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"QUJDRA==");
    m.extend_from_slice(closing);
    m
}

/// `compare`'s default size mix (`1k:60,10k:30,100k:10`) as ten of the load
/// generator's own messages (its corpus builder, in DATA wire form: dot-stuffed and
/// dot-terminated), each cut into [`READ_SIZE`] reads.
pub fn compare_mix_reads() -> Vec<Vec<bytes::Bytes>> {
    let sizes = [
        1024, 10240, 1024, 1024, 10240, 1024, 102400, 1024, 10240, 1024,
    ];
    sizes
        .iter()
        .enumerate()
        .map(|(seq, &size)| into_reads(Message::new(build_content(size, seq as u64)).data_wire))
        .collect()
}

/// The commands of one unpipelined transaction, a read each, and their replies.
pub const LOCKSTEP_COMMANDS: [&[u8]; 3] = [
    b"MAIL FROM:<loadgen@sender.example>\r\n",
    b"RCPT TO:<sink@recipient.example>\r\n",
    b"DATA\r\n",
];
pub const LOCKSTEP_REPLIES: [&[u8]; 3] = [
    b"250 2.1.0 Ok\r\n",
    b"250 2.1.5 Ok\r\n",
    b"354 End data with <CR><LF>.<CR><LF>\r\n",
];

/// The commands that put a session into DATA before each message, and the replies.
pub const TRANSACTION_COMMANDS: &[u8] =
    b"MAIL FROM:<alice@example.org> SIZE=102400\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n";
pub const TRANSACTION_REPLIES: &[u8] =
    b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n";
pub const MESSAGE_ACCEPTED: &[u8] = b"250 2.0.0 Ok: queued as 4Xk2Lq0Zz3z9sWm\r\n";

pub const GREETING: &[u8] = b"220 mx.example.com ESMTP Postfix\r\n";
pub const EHLO: &[u8] = b"EHLO client.example.org\r\n";
pub const EHLO_REPLY: &[u8] = b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";

/// One read from the client and the server's answer to it.
pub type Exchange = (Vec<u8>, Vec<u8>);

/// A command-heavy session after the greeting: EHLO, then `groups` pipelined groups of
/// `MAIL`, `recipients` × `RCPT`, `RSET`, `NOOP` (RFC 2920), then QUIT. Each entry is
/// one read: (client bytes, server bytes answering them). Also returns the number of
/// command lines.
pub fn command_session(groups: usize, recipients: usize) -> (Vec<Exchange>, u64) {
    let mut reads = vec![(EHLO.to_vec(), EHLO_REPLY.to_vec())];
    let mut lines = 1;
    for g in 0..groups {
        let mut cmds =
            format!("MAIL FROM:<sender{g}@example.org> SIZE=2048 BODY=8BITMIME\r\n").into_bytes();
        let mut replies = b"250 2.1.0 Ok\r\n".to_vec();
        for r in 0..recipients {
            cmds.extend_from_slice(
                format!("RCPT TO:<user{r}@example.com> NOTIFY=NEVER\r\n").as_bytes(),
            );
            replies.extend_from_slice(b"250 2.1.5 Ok\r\n");
        }
        cmds.extend_from_slice(b"RSET\r\nNOOP\r\n");
        replies.extend_from_slice(b"250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n");
        lines += recipients as u64 + 3;
        reads.push((cmds, replies));
    }
    reads.push((b"QUIT\r\n".to_vec(), b"221 2.0.0 Bye\r\n".to_vec()));
    lines += 1;
    (reads, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_about_100_kib_of_76_char_lines() {
        let m = message();
        assert!(m.len() <= MESSAGE_SIZE && m.len() > MESSAGE_SIZE - 200);
        assert!(m.ends_with(b"\r\n.\r\n"));
        let longest = m.split(|&b| b == b'\n').map(|l| l.len()).max().unwrap();
        assert!(longest <= 78 + 10);
    }

    #[test]
    fn command_session_counts_its_lines() {
        let (reads, lines) = command_session(3, 4);
        let counted: usize = reads
            .iter()
            .map(|(c, _)| c.iter().filter(|&&b| b == b'\n').count())
            .sum();
        assert_eq!(counted as u64, lines);
    }
}
