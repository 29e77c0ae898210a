//! cargo-fuzz target for the session inspector: `scripts/fuzz` runs it (or
//! `cargo fuzz run inspector` from `policy/`). CI only compiles it; the proptest fuzz
//! in `policy/tests/inspector_props.rs` runs there.
//!
//! The input is a program over an SMTP alphabet, so the fuzzer reaches deep states
//! (DATA content, BDAT chunks, AUTH, STARTTLS) instead of dying at the greeting:
//! each op byte picks a direction and either a whole protocol atom or a short run of
//! bytes drawn from SMTP's own characters. The transcript is then fed twice, whole
//! and in chunks sized by the input's tail; both runs must agree byte for byte, and
//! the inspector's buffering must stay bounded.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use smtpgate_policy::inspector::{
    Inspector, Output, Verdict, CMD_LINE_CAP, HOLD_CAP, REPLY_LINE_CAP,
};
use smtpgate_policy::mime::LINE_HEAD_CAP;
use smtpgate_policy::policy::Policy;

const CLIENT_ATOMS: &[&[u8]] = &[
    b"EHLO c\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"MAIL FROM:<a|`b@example.org> SIZE=10\r\n",
    b"RCPT TO:<b@example.com>\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"XYZZY\r\n",
    b"STARTTLS\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN AGEAYg==\r\n",
    b"Subject: x\r\nTo: a@x, b@x\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf; name=\"f.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD\r\n--b--\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"..x\r\n",
    b"\n.\n",
    b"\r.\r",
];

const SERVER_ATOMS: &[&[u8]] = &[
    b"220 mx ESMTP\r\n",
    b"220-mx\r\n220 more\r\n",
    b"250-mx\r\n250-PIPELINING\r\n250-X-EXPS A\r\n250-STARTTLS\r\n250 CHUNKING\r\n",
    b"250 ok\r\n",
    b"354 go\r\n",
    b"220 ready\r\n",
    b"334 \r\n",
    b"235 ok\r\n",
    b"550 no\r\n",
    b"502 what\r\n",
    b"221 bye\r\n",
];

const ALPHABET: &[u8] = b"\r\n.:<>@- ABDEHLMOPRSTXZ0123456789abcdez\t\0|`";

const BUFFER_BOUND: usize =
    (CMD_LINE_CAP + 1) + (REPLY_LINE_CAP + 1) + HOLD_CAP + LINE_HEAD_CAP + 1024;

fn decode(data: &[u8]) -> (Vec<(bool, Vec<u8>)>, &[u8]) {
    let mut ops = Vec::new();
    let mut i = 0;
    while i + 1 < data.len() && ops.len() < 256 {
        let (op, arg) = (data[i], data[i + 1]);
        i += 2;
        let client = op & 1 == 0;
        let bytes = match op >> 6 {
            0 | 1 => {
                let atoms = if client { CLIENT_ATOMS } else { SERVER_ATOMS };
                atoms[arg as usize % atoms.len()].to_vec()
            }
            2 => {
                let n = (arg as usize % 48).min(data.len() - i);
                let b = data[i..i + n]
                    .iter()
                    .map(|&c| ALPHABET[c as usize % ALPHABET.len()])
                    .collect();
                i += n;
                b
            }
            // A long line around the buffer caps.
            _ => {
                let mut line = if client {
                    b"NOOP ".to_vec()
                } else {
                    b"250-".to_vec()
                };
                line.resize(CMD_LINE_CAP - 4 + arg as usize % 8, b'a');
                line.extend_from_slice(b"\r\n");
                line
            }
        };
        ops.push((client, bytes));
    }
    (ops, &data[i.min(data.len())..])
}

fn run(ops: &[(bool, Vec<u8>)], chunks: &[u8]) -> (Vec<u8>, Vec<u8>, usize, Verdict) {
    let mut inspector = Inspector::new(Arc::new(Policy::builtin("default").unwrap()));
    let mut out = Output::default();
    let (mut to_server, mut to_client, mut events) = (Vec::new(), Vec::new(), 0);
    let mut verdict = Verdict::Continue;
    let now = Instant::now();
    let mut sizes = chunks.iter().cycle();
    for (client, bytes) in ops {
        let bytes = Bytes::copy_from_slice(bytes);
        let mut pos = 0;
        while pos < bytes.len() {
            let n = if chunks.is_empty() {
                bytes.len()
            } else {
                *sizes.next().unwrap() as usize % 64 + 1
            };
            let piece = bytes.slice(pos..(pos + n).min(bytes.len()));
            pos += piece.len();
            if *client {
                inspector.on_client_bytes(piece, now, &mut out);
            } else {
                inspector.on_server_bytes(piece, now, &mut out);
            }
            out.to_server
                .iter()
                .for_each(|b| to_server.extend_from_slice(b));
            out.to_client
                .iter()
                .for_each(|b| to_client.extend_from_slice(b));
            events += out.events.len();
            if out.verdict != Verdict::Continue {
                verdict = out.verdict;
            }
            out.clear();
            assert!(inspector.buffered_bytes() <= BUFFER_BOUND);
        }
    }
    (to_server, to_client, events, verdict)
}

fuzz_target!(|data: &[u8]| {
    let (ops, tail) = decode(data);
    let whole = run(&ops, &[]);
    let chunked = run(&ops, if tail.is_empty() { &[1] } else { tail });
    assert_eq!(whole, chunked);
});
