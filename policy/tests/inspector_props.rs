//! Property tests for the session inspector.
//!
//! 1. Chunking does not matter: any transcript (client and server byte streams in a
//!    realistic interleaving) fed whole, split into random chunks, or byte by byte
//!    gives byte-identical output both ways and identical events and verdict.
//! 2. Fuzzing (proptest-driven, runs in CI): random and mutated transcripts never
//!    panic, and what the inspector keeps between calls stays bounded.

use proptest::prelude::*;
use smtpgate_policy::event::Event;
use smtpgate_policy::inspector::testing::{Driver, Peer as Dir};
use smtpgate_policy::inspector::{Verdict, CMD_LINE_CAP, HOLD_CAP, REPLY_LINE_CAP};
use smtpgate_policy::mime::LINE_HEAD_CAP;
use smtpgate_policy::policy::Policy;
use smtpgate_policy::rules::{parse_rule, Actions, Criterion, Disposition, Rule};
use std::sync::Arc;

type Transcript = Vec<(Dir, Vec<u8>)>;

/// Everything a run produced.
#[derive(PartialEq, Eq)]
struct Run {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    events: Vec<Event>,
    verdict: Verdict,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = |b: &[u8]| b.escape_ascii().to_string();
        f.debug_struct("Run")
            .field("to_server", &text(&self.to_server))
            .field("to_client", &text(&self.to_client))
            .field("events", &self.events)
            .field("verdict", &self.verdict)
            .finish()
    }
}

/// Where two runs first differ, compactly (proptest prints the inputs).
fn difference(a: &Run, b: &Run) -> Option<String> {
    fn first_diff(x: &[u8], y: &[u8]) -> Option<String> {
        let i = x.iter().zip(y).take_while(|(p, q)| p == q).count();
        if i == x.len() && i == y.len() {
            return None;
        }
        let from = i.saturating_sub(40);
        Some(format!(
            "at {i} (lengths {} / {}): ...{} | ...{}",
            x.len(),
            y.len(),
            x[from..(i + 40).min(x.len())].escape_ascii(),
            y[from..(i + 40).min(y.len())].escape_ascii()
        ))
    }
    if let Some(d) = first_diff(&a.to_server, &b.to_server) {
        return Some(format!("to_server {d}"));
    }
    if let Some(d) = first_diff(&a.to_client, &b.to_client) {
        return Some(format!("to_client {d}"));
    }
    if a.events != b.events {
        let i = a
            .events
            .iter()
            .zip(&b.events)
            .take_while(|(p, q)| p == q)
            .count();
        return Some(format!(
            "events at {i}: {:?} vs {:?}",
            a.events.get(i),
            b.events.get(i)
        ));
    }
    (a.verdict != b.verdict).then(|| format!("verdict {:?} vs {:?}", a.verdict, b.verdict))
}

/// A transcript, readable: runs of one byte compressed.
fn show(t: &Transcript) -> String {
    let mut s = String::new();
    for (dir, bytes) in t {
        s.push_str(if *dir == Dir::Client {
            "\nC: "
        } else {
            "\nS: "
        });
        let mut i = 0;
        while i < bytes.len() {
            let run = bytes[i..].iter().take_while(|&&b| b == bytes[i]).count();
            if run > 8 {
                s.push_str(&format!("[{}x{run}]", [bytes[i]].escape_ascii()));
            } else {
                s.push_str(&bytes[i..i + run].escape_ascii().to_string());
            }
            i += run;
        }
    }
    s
}

/// Upper bound on what the inspector may keep: a partial command and reply line,
/// held pipelined bytes, a content line's head and one MIME header field.
const BUFFER_BOUND: usize =
    (CMD_LINE_CAP + 1) + (REPLY_LINE_CAP + 1) + HOLD_CAP + LINE_HEAD_CAP + 1024;

/// Feeds `transcript`, each segment cut into pieces of the sizes in `chunks` (used
/// cyclically; empty = whole segments), checking the buffering bound after each read.
fn run(policy: &Arc<Policy>, transcript: &Transcript, chunks: &[usize]) -> Run {
    let mut driver = Driver::new(policy.clone());
    driver.run(transcript, chunks, |d| {
        let buffered = d.inspector.buffered_bytes();
        assert!(
            buffered <= BUFFER_BOUND,
            "buffered {buffered} > {BUFFER_BOUND}"
        );
    });
    Run {
        to_server: driver.to_server,
        to_client: driver.to_client,
        events: driver.events,
        verdict: driver.verdict,
    }
}

/// `default` with every criterion added as a low-threshold `log` rule (smuggling
/// defence switched to log too), so a session goes deep and still hits every rule.
fn logging_policy() -> Policy {
    let mut p = Policy::builtin("default").unwrap();
    for r in &mut p.rules {
        if matches!(r.criterion, Criterion::BareNewline) {
            r.actions = Actions {
                log: true,
                ..Actions::default()
            };
        }
        if r.actions.disposition == Disposition::Drop {
            r.actions.disposition = Disposition::Continue;
            r.actions.log = true;
        }
    }
    for text in [
        "match cmd line length gt 40 log",
        "match cmd RCPT count gt 2 log",
        "match cmd verb VRFY EXPN mask log",
        "match header line length gt 30 log",
        "match header length gt 100 log",
        "match header to-fields count gt 1 log",
        "match body line length gt 20 log",
        "match body length gt 50 log",
        "match sender-address length gt 10 log",
        "match sender-address regex \"evil\" log",
        "match MIME filename length gt 5 log",
        "match MIME filetype regex \"pdf\" log",
        "match MIME encoding base64 quoted-printable log",
        "match invalid-recipients count gt 1 log",
        "match not cmd verb NOOP RSET log",
        "match ehlo-reply-parameter size log",
    ] {
        p.push_rule(parse_rule(text).unwrap());
    }
    for criterion in [Criterion::SpecialCharacter, Criterion::MailRelay] {
        p.push_rule(Rule {
            text: "parameter".into(),
            negate: false,
            criterion,
            actions: Actions {
                log: true,
                ..Actions::default()
            },
        });
    }
    p.mail_relay = Some("example.com".into());
    p.allowed_commands.insert_name("XEXCH50");
    p.reindex();
    p
}

/// `default` with low line-length limits that end the session, so lines are cut
/// as they cross them, and a NUL in content that ends it too (cut at the NUL).
fn strict_policy() -> Policy {
    let mut p = Policy::builtin("default").unwrap();
    for r in &mut p.rules {
        if matches!(r.criterion, Criterion::NulInContent) {
            r.actions.disposition = Disposition::Drop;
        }
    }
    for text in [
        "match body line length gt 30 drop-connection log",
        "match body line length gt 20 log",
        "match header line length gt 40 reset",
        "match cmd line length gt 60 drop-connection log",
    ] {
        p.push_rule(parse_rule(text).unwrap());
    }
    p
}

/// `default` with low body / header totals that end the session as they are crossed.
fn total_length_policy() -> Policy {
    let mut p = Policy::builtin("default").unwrap();
    for text in [
        "match body length gt 120 drop-connection log",
        "match header length gt 90 reset",
    ] {
        p.push_rule(parse_rule(text).unwrap());
    }
    p
}

fn policies() -> Vec<Arc<Policy>> {
    vec![
        Arc::new(Policy::builtin("default").unwrap()),
        Arc::new(Policy::builtin("asa-compat").unwrap()),
        Arc::new(Policy::builtin("mailguard").unwrap()),
        Arc::new(logging_policy()),
        Arc::new(total_length_policy()),
        Arc::new(strict_policy()),
    ]
}

// ---- transcript generation: atoms of an SMTP session ----

const CLIENT_ATOMS: &[&[u8]] = &[
    b"EHLO client.example\r\n",
    b"HELO client.example\r\n",
    b"MAIL FROM:<alice@example.org> SIZE=100\r\n",
    b"MAIL FROM:<evil|`x@example.org>\r\n",
    b"MAIL FROM: <a.very.long.sender.address@sub.example.org>\r\n",
    b"RCPT TO:<bob@example.com>\r\n",
    b"RCPT TO:<carol@elsewhere.example>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"DATA\r\n",
    b"BDAT 12\r\n",
    b"BDAT 7 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY root\r\n",
    b"XYZZY plugh\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH LOGIN\r\n",
    b"YWxpY2U=\r\n",
    b"noop\n",
    b"X-LINK2STATE LAST CHUNK=1\r\n",
    // Message content.
    b"From: alice@example.org\r\nTo: bob@example.com, \"Doe, J\" <j@x>,\r\n c@x\r\nSubject: test\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n",
    b"a body line that is longer than twenty bytes\r\n",
    b"..stuffed dot line\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r",
    b"line with bare\nLF and bare\rCR\r\n",
    b"\x16\x03\x01\x00\x05hello",
    b"XEXCH50 6 2\r\n",
];

const SERVER_ATOMS: &[&[u8]] = &[
    b"220 mx.example.com ESMTP ready\r\n",
    b"220-mx.example.com first\r\n220 second\r\n",
    b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n250-X-EXPS GSSAPI\r\n250-STARTTLS\r\n250-CHUNKING\r\n250 \r\n",
    b"250 2.1.0 Ok\r\n",
    b"250 ok\r\n250 ok\r\n",
    b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"220 2.0.0 Ready to start TLS\r\n",
    b"334 \r\n",
    b"334 VXNlcm5hbWU6\r\n",
    b"235 2.7.0 Authentication successful\r\n",
    b"550 5.1.1 No such user\r\n",
    b"502 5.5.2 Error: command not recognized\r\n",
    b"554 5.5.1 Error: no valid recipients\r\n",
    b"221 2.0.0 Bye\r\n",
    b"421 4.4.2 timeout\r\n",
];

/// Bytes an SMTP dialogue is made of, for random filler.
const ALPHABET: &[u8] = b"\r\n\r\n\r\n.. :<>@-=AEHLMORSTXZ0123459abcdefgh \t\x00|`";

fn random_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(ALPHABET), 0..max)
}

fn segment() -> impl Strategy<Value = (Dir, Vec<u8>)> {
    prop_oneof![
        6 => prop::collection::vec(prop::sample::select(CLIENT_ATOMS), 1..6)
            .prop_map(|atoms| (Dir::Client, atoms.concat())),
        4 => prop::collection::vec(prop::sample::select(SERVER_ATOMS), 1..4)
            .prop_map(|atoms| (Dir::Server, atoms.concat())),
        1 => random_bytes(80).prop_map(|b| (Dir::Client, b)),
        1 => random_bytes(40).prop_map(|b| (Dir::Server, b)),
        // Long lines, around the buffer caps.
        1 => (CMD_LINE_CAP - 8..CMD_LINE_CAP + 8, prop::bool::ANY).prop_map(|(n, crlf)| {
            let mut line = b"NOOP ".to_vec();
            line.resize(n, b'a');
            line.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            (Dir::Client, line)
        }),
        1 => (REPLY_LINE_CAP - 8..REPLY_LINE_CAP + 8).prop_map(|n| {
            let mut line = b"250-".to_vec();
            line.resize(n, b'k');
            line.extend_from_slice(b"\r\n");
            (Dir::Server, line)
        }),
        1 => (990..1010usize).prop_map(|n| {
            let mut line = vec![b'h'; n];
            line.extend_from_slice(b"\r\n");
            (Dir::Client, line)
        }),
    ]
}

/// Random segments after a greeting.
fn loose_transcript() -> impl Strategy<Value = Transcript> {
    prop::collection::vec(segment(), 1..40).prop_map(|mut segs| {
        segs.insert(0, (Dir::Server, SERVER_ATOMS[0].to_vec()));
        segs
    })
}

/// Message content: header lines, MIME, dots, long and bare-newline lines.
fn content() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(&CLIENT_ATOMS[23..34]).prop_map(|a| a.to_vec()),
            2 => random_bytes(60).prop_map(|mut b| { b.extend_from_slice(b"\r\n"); b }),
            1 => (990..1010usize).prop_map(|n| { let mut l = vec![b'q'; n]; l.extend_from_slice(b"\r\n"); l }),
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

/// One mail transaction, coherent: MAIL, RCPTs, DATA or BDAT, content, replies.
fn transaction() -> impl Strategy<Value = Transcript> {
    (1..4usize, prop::bool::ANY, content(), prop::bool::ANY).prop_map(
        |(rcpts, bdat, body, pipelined)| {
            let mut t = Vec::new();
            let mut cmds = b"MAIL FROM:<alice@example.org>\r\n".to_vec();
            let mut replies = b"250 ok\r\n".to_vec();
            for i in 0..rcpts {
                cmds.extend_from_slice(format!("RCPT TO:<r{i}@example.com>\r\n").as_bytes());
                replies.extend_from_slice(if i == 1 { b"550 no\r\n" } else { b"250 ok\r\n" });
            }
            if bdat {
                let (a, b) = body.split_at(body.len() / 2);
                cmds.extend_from_slice(format!("BDAT {}\r\n", a.len()).as_bytes());
                cmds.extend_from_slice(a);
                cmds.extend_from_slice(format!("BDAT {} LAST\r\n", b.len()).as_bytes());
                cmds.extend_from_slice(b);
                replies.extend_from_slice(b"250 ok\r\n250 ok\r\n");
                t.push((Dir::Client, cmds));
                t.push((Dir::Server, replies));
            } else {
                cmds.extend_from_slice(b"DATA\r\n");
                replies.extend_from_slice(b"354 go\r\n");
                let mut body = body;
                body.extend_from_slice(b"\r\n.\r\n");
                if pipelined {
                    // Content sent before the 354 (held, then judged).
                    cmds.extend_from_slice(&body);
                    t.push((Dir::Client, cmds));
                    t.push((Dir::Server, replies));
                } else {
                    t.push((Dir::Client, cmds));
                    t.push((Dir::Server, replies));
                    t.push((Dir::Client, body));
                }
                t.push((Dir::Server, b"250 queued\r\n".to_vec()));
            }
            t
        },
    )
}

/// A coherent session: greeting, EHLO, transactions, maybe noise, QUIT.
fn session() -> impl Strategy<Value = Transcript> {
    (
        prop::collection::vec(transaction(), 1..4),
        prop::collection::vec(segment(), 0..3),
    )
        .prop_map(|(transactions, noise)| {
            let mut t: Transcript = vec![
                (Dir::Server, SERVER_ATOMS[1].to_vec()),
                (Dir::Client, b"EHLO client.example\r\n".to_vec()),
                (Dir::Server, SERVER_ATOMS[2].to_vec()),
            ];
            for tr in transactions {
                t.extend(tr);
            }
            t.extend(noise);
            t.push((Dir::Client, b"QUIT\r\n".to_vec()));
            t.push((Dir::Server, b"221 bye\r\n".to_vec()));
            t
        })
}

/// Half coherent sessions (to reach deep states), half loose segments.
fn transcript() -> impl Strategy<Value = Transcript> {
    prop_oneof![session(), loose_transcript()]
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..64usize, 1..16)
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N for a longer run.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn chunking_never_changes_output_events_or_verdict(
        t in transcript(),
        chunks in chunk_sizes(),
        which in 0..policies().len(),
    ) {
        let policy = &policies()[which];
        let whole = run(policy, &t, &[]);
        let chunked = run(policy, &t, &chunks);
        prop_assert!(whole == chunked, "{}\n{}\nchunks {:?}", difference(&whole, &chunked).unwrap(), show(&t), chunks);
    }

    #[test]
    fn byte_by_byte_equals_whole(t in transcript(), which in 0..policies().len()) {
        let policy = &policies()[which];
        let (whole, bytes) = (run(policy, &t, &[]), run(policy, &t, &[1]));
        prop_assert!(whole == bytes, "{}\n{}", difference(&whole, &bytes).unwrap(), show(&t));
    }

    /// Fuzz: random segments and mutations of realistic ones; no panic, bounded
    /// buffering (asserted inside `run` after every call).
    #[test]
    fn fuzz_no_panic_bounded_buffering(
        t in transcript(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()), 0..12),
        chunks in chunk_sizes(),
        which in 0..policies().len(),
    ) {
        let mut t = t;
        for (seg, at, byte) in flips {
            let n = t.len();
            let (_, bytes) = &mut t[seg.index(n)];
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
        }
        let policy = &policies()[which];
        let whole = run(policy, &t, &[]);
        let chunked = run(policy, &t, &chunks);
        prop_assert!(whole == chunked, "{}\n{}\nchunks {:?}", difference(&whole, &chunked).unwrap(), show(&t), chunks);
    }
}

/// A rich fixed session, split into two reads at every offset of every segment.
#[test]
fn split_at_every_offset() {
    let t: Transcript = vec![
        (Dir::Server, SERVER_ATOMS[1].to_vec()),
        (Dir::Client, b"EHLO c\r\n".to_vec()),
        (Dir::Server, SERVER_ATOMS[2].to_vec()),
        (Dir::Client, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@x.example>\r\nXYZZY\r\nDATA\r\n".to_vec()),
        (Dir::Server, b"250 ok\r\n250 ok\r\n550 no\r\n502 what\r\n354 go\r\n".to_vec()),
        (Dir::Client, [CLIENT_ATOMS[23], CLIENT_ATOMS[24], b"..dot\r\nbare\nLF\r\n.\r\nRSET\r\n"].concat()),
        (Dir::Server, b"250 queued\r\n250 ok\r\n".to_vec()),
        (Dir::Client, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nBDAT 20\r\nSubject: x\r\n\r\nabcdefBDAT 4 LAST\r\nxyz\n".to_vec()),
        (Dir::Server, b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n".to_vec()),
        (Dir::Client, b"STARTTLS\r\n".to_vec()),
        (Dir::Server, b"220 go\r\n".to_vec()),
        (Dir::Client, b"\x16\x03\x01 tls\n".to_vec()),
    ];
    for policy in policies() {
        let whole = run(&policy, &t, &[]);
        for seg in 0..t.len() {
            for cut in 1..t[seg].1.len() {
                let mut split = t.clone();
                let tail = split[seg].1.split_off(cut);
                split.insert(seg + 1, (split[seg].0, tail));
                let r = run(&policy, &split, &[]);
                assert!(
                    r == whole,
                    "policy {} segment {seg} cut {cut}: {}",
                    policy.name,
                    difference(&whole, &r).unwrap()
                );
            }
        }
    }
}

#[test]
fn overlong_lines_split_near_the_cap() {
    for extra in [0usize, 1, 2, 3, 5] {
        let mut reply = b"250-".to_vec();
        reply.resize(REPLY_LINE_CAP + extra, b'k');
        reply.extend_from_slice(b"\r\n250 ok\r\n");
        let mut cmd = b"NOOP ".to_vec();
        cmd.resize(CMD_LINE_CAP + extra, b'c');
        cmd.extend_from_slice(b"\r\nNOOP\r\n");
        let t: Transcript = vec![
            (Dir::Server, b"220 x\r\n".to_vec()),
            (Dir::Client, b"EHLO c\r\n".to_vec()),
            (Dir::Server, reply.clone()),
            (Dir::Client, cmd.clone()),
        ];
        for policy in policies() {
            let whole = run(&policy, &t, &[]);
            for seg in [2, 3] {
                // Every cut near the line's start, the cap and its end.
                let len = t[seg].1.len();
                let cuts = (1..8)
                    .chain(CMD_LINE_CAP - 8..CMD_LINE_CAP + 16)
                    .chain(len - 12..len)
                    .filter(|&cut| cut < len);
                for cut in cuts {
                    let mut split = t.clone();
                    let tail = split[seg].1.split_off(cut);
                    split.insert(seg + 1, (split[seg].0, tail));
                    let r = run(&policy, &split, &[]);
                    assert!(
                        r == whole,
                        "policy {} extra {extra} segment {seg} cut {cut}: {}",
                        policy.name,
                        difference(&whole, &r).unwrap()
                    );
                }
            }
        }
    }
}

#[test]
fn overlong_reply_starting_with_cr() {
    let mut reply = b"250-".to_vec();
    reply.resize(4 + 4088, b'k');
    reply.extend_from_slice(b"\r\n");
    let t: Transcript = vec![
        (Dir::Server, b"220 x\r\n".to_vec()),
        (Dir::Server, b"\r".to_vec()),
        (Dir::Server, b"....".to_vec()),
        (Dir::Server, reply),
    ];
    let policy = policies().remove(0);
    let whole = run(&policy, &t, &[]);
    for cut in 1..t[3].1.len() {
        let mut split = t.clone();
        let tail = split[3].1.split_off(cut);
        split.push((Dir::Server, tail));
        let r = run(&policy, &split, &[]);
        assert!(r == whole, "cut {cut}: {}", difference(&whole, &r).unwrap());
    }
}

#[test]
fn regression_fuzz_1() {
    let body = b"From: alice@example.org\r\nTo: bob@example.com, \"Doe, J\" <j@x>,\r\n c@x\r\nSubject: test\r\n\r\n";
    let mut c1 = b"EHLO client.example\r\n".to_vec();
    for _ in 0..3 {
        c1.extend_from_slice(body);
    }
    c1.extend_from_slice(b"\r\n.\r\n");
    let mut noop = b"NOOP ".to_vec();
    noop.resize(5 + 4083, b'a');
    noop.push(b'\n');
    let mut k = b"250-".to_vec();
    k.resize(4 + 4088, b'k');
    k.extend_from_slice(b"\r\n");
    let r220 = b"220 mx.example.com ESMTP ready\r\n".as_slice();
    let t: Transcript = vec![
        (Dir::Server, r220.to_vec()),
        (Dir::Client, c1),
        (Dir::Client, b"EHLO client.example\r\nSTARTTLS\r\n".to_vec()),
        (Dir::Server, r220.to_vec()),
        (Dir::Server, [r220, r220, r220].concat()),
        (Dir::Client, noop),
        (Dir::Server, r220.to_vec()),
        (
            Dir::Server,
            [r220, b"354 End data with <CR><LF>.<CR><LF>\r\n"].concat(),
        ),
        (Dir::Server, [r220, r220].concat()),
        (Dir::Server, r220.to_vec()),
        (
            Dir::Server,
            [b"354 End data with <CR><LF>.<CR><LF>\r\n".as_slice(), r220].concat(),
        ),
        (Dir::Server, b"\r".to_vec()),
        (
            Dir::Server,
            [
                b"220-mx.example.com first\r\n220 second\r\n".as_slice(),
                r220,
            ]
            .concat(),
        ),
        (Dir::Client, b"EHLO client.example\r\n".to_vec()),
        (Dir::Server, r220.to_vec()),
        (Dir::Server, [r220, r220, SERVER_ATOMS[2]].concat()),
        (Dir::Server, b"\r....".to_vec()),
        (Dir::Client, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n".to_vec()),
        (Dir::Server, k),
    ];
    for which in 0..4 {
        let policy = &policies()[which];
        let whole = run(policy, &t, &[]);
        let chunked = run(policy, &t, &[19, 9, 22, 45, 38, 41, 27, 8, 46, 21, 62, 41]);
        assert!(
            whole == chunked,
            "policy {which}: {}",
            difference(&whole, &chunked).unwrap()
        );
    }
}
