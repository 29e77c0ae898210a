//! cargo-fuzz target for the session inspector: `scripts/fuzz` runs it (or
//! `cargo fuzz run inspector` from `policy/`). CI only compiles it; the proptest fuzz
//! in `policy/tests/inspector_props.rs` runs there.
//!
//! The input is a program over an SMTP alphabet, so the fuzzer reaches deep states
//! (DATA content, BDAT chunks, AUTH, STARTTLS) instead of dying at the greeting:
//! each op byte picks a direction and either a whole protocol atom or a short run of
//! bytes drawn from SMTP's own characters. The transcript is then fed twice through
//! the in-memory driver, whole and in chunks sized by the input's tail; both runs must
//! agree byte for byte, and the inspector's buffering must stay bounded.
//!
//! Cost per input is bounded so the fuzzer spends its time on many small sessions
//! rather than a few huge ones: the transcript stops at [`TRANSCRIPT_BUDGET`] bytes
//! (a long line near the caps costs 4 KiB of it), and the policy is compiled once.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use smtpgate_policy::inspector::testing::{Driver, Peer, Transcript};
use smtpgate_policy::inspector::{CMD_LINE_CAP, HOLD_CAP, REPLY_LINE_CAP};
use smtpgate_policy::mime::LINE_HEAD_CAP;
use smtpgate_policy::policy::Policy;

/// 100 bytes of a MIME parameter value (eleven make one longer than the parse window).
macro_rules! x100 {
    () => {
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    };
}

/// A 71-character MIME boundary, one over RFC 2046's 70.
macro_rules! b71 {
    () => {
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    };
}

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
    // Appended after the atoms above so existing seeds keep their meaning.
    // BDAT counts a server refuses or that cross SIZE / 2^53 / 2^63 / 2^64.
    b"BDAT 9223372036854775808\r\n",
    b"BDAT 18446744073709551616 LAST\r\n",
    b"BDAT 9007199254740992\r\n",
    b"BDAT 9007199254740993 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 101\r\n",
    b"bdat 4 last\r\n",
    // RFC 5321 paths: quoted local parts, quoted pairs, source routes, the null path,
    // upper-case domains with a trailing dot, pipes, an unterminated path.
    b"MAIL FROM:<\"a>b\"@SPAM.Example.>\r\n",
    b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<a@b|c.example> BODY=8BITMIME\r\n",
    b"RCPT TO:<@r1.example,@r2.example:c@d.example>\r\n",
    b"RCPT TO:<\"q\\\"x|y\"@example.net>\r\n",
    b"RCPT TO:<a|b@example.net>\r\n",
    b"RCPT TO:<unterminated@x\r\n",
    // Dot lines beside a bare CR / LF or a NUL, and a smuggled transaction.
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r\n\0.\r\n",
    b"x\0\r\n",
    b"hello\n.\nMAIL FROM:<a@b.example>\r\n",
    // MIME: RFC 2231 continuations, a parameter longer than the parse window before
    // the filename, a boundary over 70 characters.
    b"Content-Disposition: attachment; filename*0*=utf-8''a%20b; filename*1=\"c.exe\"\r\n\r\n",
    concat!(
        "Content-Disposition: attachment; x=\"",
        x100!(), x100!(), x100!(), x100!(), x100!(), x100!(),
        x100!(), x100!(), x100!(), x100!(), x100!(),
        "\"; filename=\"f.exe\"\r\n\r\n"
    )
    .as_bytes(),
    concat!(
        "Content-Type: multipart/mixed; boundary=\"", b71!(), "\"\r\n\r\n--", b71!(),
        "\r\nContent-Type: text/plain; name*=us-ascii'en'a.pdf\r\n\r\nx\r\n--", b71!(),
        "--\r\n"
    )
    .as_bytes(),
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
    // Appended: an EHLO reply with SIZE, one without CHUNKING, and refusals.
    b"250-mx\r\n250-SIZE 100\r\n250 CHUNKING\r\n",
    b"250-mx\r\n250 PIPELINING\r\n",
    b"452 4.5.3 Too many recipients\r\n",
    b"554 5.5.1 no\r\n",
];

const ALPHABET: &[u8] = b"\r\n.:<>@- ABDEHLMOPRSTXZ0123456789abcdez\t\0|`";

const BUFFER_BOUND: usize =
    (CMD_LINE_CAP + 1) + (REPLY_LINE_CAP + 1) + HOLD_CAP + LINE_HEAD_CAP + 1024;

/// Bytes of transcript one input may expand to (an op that would cross it is the last):
/// enough to overflow the hold buffer, which a smaller budget could never reach.
const TRANSCRIPT_BUDGET: usize = HOLD_CAP + 2 * CMD_LINE_CAP;

/// At most this many ops (each one peer's write).
const MAX_OPS: usize = 256;

fn decode(data: &[u8]) -> (Transcript, &[u8]) {
    let mut ops = Vec::new();
    let mut total = 0;
    let mut i = 0;
    while i + 1 < data.len() && ops.len() < MAX_OPS && total < TRANSCRIPT_BUDGET {
        let (op, arg) = (data[i], data[i + 1]);
        i += 2;
        let peer = if op & 1 == 0 {
            Peer::Client
        } else {
            Peer::Server
        };
        let bytes = match op >> 6 {
            0 | 1 => {
                let atoms = match peer {
                    Peer::Client => CLIENT_ATOMS,
                    Peer::Server => SERVER_ATOMS,
                };
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
                let mut line = match peer {
                    Peer::Client => b"NOOP ".to_vec(),
                    Peer::Server => b"250-".to_vec(),
                };
                line.resize(CMD_LINE_CAP - 4 + arg as usize % 8, b'a');
                line.extend_from_slice(b"\r\n");
                line
            }
        };
        total += bytes.len();
        ops.push((peer, bytes));
    }
    (ops, &data[i.min(data.len())..])
}

fn policy() -> Arc<Policy> {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    POLICY
        .get_or_init(|| Arc::new(Policy::builtin("default").unwrap()))
        .clone()
}

fn run(transcript: &Transcript, chunks: &[usize]) -> Driver {
    let mut driver = Driver::new(policy());
    driver.run(transcript, chunks, |d| {
        assert!(d.inspector.buffered_bytes() <= BUFFER_BOUND)
    });
    driver
}

fuzz_target!(|data: &[u8]| {
    let (transcript, tail) = decode(data);
    let chunks: Vec<usize> = if tail.is_empty() {
        vec![1]
    } else {
        tail.iter().map(|&c| c as usize % 64 + 1).collect()
    };
    let whole = run(&transcript, &[]);
    let chunked = run(&transcript, &chunks);
    assert_eq!(whole.to_server, chunked.to_server);
    assert_eq!(whole.to_client, chunked.to_client);
    assert_eq!(whole.events, chunked.events);
    assert_eq!(whole.verdict, chunked.verdict);
});
