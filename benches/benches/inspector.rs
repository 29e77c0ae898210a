//! Inspector micro-benchmarks: `cargo bench -p smtpgate-benches --bench inspector`.
//!
//! - `inspector_body`: a warm `default` session in DATA, fed a 100 KiB MIME message
//!   (base64 attachment, 76-character lines) in 16 KiB reads, as a relay would; bytes/s
//!   per core. Each iteration also runs the few commands that start the next message.
//!   `memchr_line_ends_baseline` only finds the line ends of the same reads: the ratio
//!   of the two is what inspection costs over bare line framing, whatever the load.
//! - `inspector_commands`: whole command-heavy sessions (greeting, EHLO, pipelined
//!   MAIL / RCPT × 5 / RSET / NOOP groups, QUIT) through a new `default` inspector, as
//!   bytes/s and as command lines/s.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smtpgate_benches::{
    command_session, message, EHLO, EHLO_REPLY, GREETING, MESSAGE_ACCEPTED, READ_SIZE,
    TRANSACTION_COMMANDS, TRANSACTION_REPLIES,
};
use smtpgate_policy::inspector::{Inspector, Output, Verdict};
use smtpgate_policy::policy::Policy;

fn default_policy() -> Arc<Policy> {
    Arc::new(Policy::builtin("default").expect("built-in policy"))
}

/// Feeds one side and checks the session goes on; returns bytes forwarded.
fn feed(
    inspector: &mut Inspector,
    client: bool,
    input: Bytes,
    now: Instant,
    out: &mut Output,
) -> usize {
    if client {
        inspector.on_client_bytes(input, now, out);
    } else {
        inspector.on_server_bytes(input, now, out);
    }
    assert_eq!(out.verdict, Verdict::Continue);
    let n = out
        .to_server
        .iter()
        .chain(&out.to_client)
        .map(|b| b.len())
        .sum();
    out.clear();
    n
}

fn body(c: &mut Criterion) {
    let msg = Bytes::from(message());
    let reads: Vec<Bytes> = (0..msg.len())
        .step_by(READ_SIZE)
        .map(|at| msg.slice(at..(at + READ_SIZE).min(msg.len())))
        .collect();
    let commands = Bytes::from_static(TRANSACTION_COMMANDS);
    let replies = Bytes::from_static(TRANSACTION_REPLIES);
    let accepted = Bytes::from_static(MESSAGE_ACCEPTED);
    let now = Instant::now();

    let mut inspector = Inspector::new(default_policy());
    let mut out = Output::default();
    feed(
        &mut inspector,
        false,
        Bytes::from_static(GREETING),
        now,
        &mut out,
    );
    feed(
        &mut inspector,
        true,
        Bytes::from_static(EHLO),
        now,
        &mut out,
    );
    feed(
        &mut inspector,
        false,
        Bytes::from_static(EHLO_REPLY),
        now,
        &mut out,
    );

    let mut group = c.benchmark_group("inspector_body");
    group.throughput(Throughput::Bytes(msg.len() as u64));
    group.bench_function("mime_100k_in_16k_reads", |b| {
        b.iter(|| {
            let mut forwarded = 0;
            forwarded += feed(&mut inspector, true, commands.clone(), now, &mut out);
            forwarded += feed(&mut inspector, false, replies.clone(), now, &mut out);
            for read in &reads {
                forwarded += feed(&mut inspector, true, read.clone(), now, &mut out);
            }
            forwarded += feed(&mut inspector, false, accepted.clone(), now, &mut out);
            black_box(forwarded)
        })
    });
    // The floor under any line scanner on this machine, in the same conditions: find
    // every line end of the same reads, one memchr call per line, nothing else.
    group.bench_function("memchr_line_ends_baseline", |b| {
        b.iter(|| {
            let mut lines = 0usize;
            for read in &reads {
                let mut at = 0;
                while let Some(i) = memchr::memchr(b'\n', &read[at..]) {
                    at += i + 1;
                    lines += 1;
                }
            }
            black_box(lines)
        })
    });
    group.finish();
}

fn commands(c: &mut Criterion) {
    let (session, lines) = command_session(10, 5);
    let session: Vec<(Bytes, Bytes)> = session
        .into_iter()
        .map(|(c, s)| (Bytes::from(c), Bytes::from(s)))
        .collect();
    let greeting = Bytes::from_static(GREETING);
    let bytes: usize = greeting.len()
        + session
            .iter()
            .map(|(c, s)| c.len() + s.len())
            .sum::<usize>();
    let policy = default_policy();
    let now = Instant::now();
    let mut out = Output::default();

    let run = |out: &mut Output| {
        let mut inspector = Inspector::new(policy.clone());
        let mut forwarded = feed(&mut inspector, false, greeting.clone(), now, out);
        for (client, server) in &session {
            forwarded += feed(&mut inspector, true, client.clone(), now, out);
            forwarded += feed(&mut inspector, false, server.clone(), now, out);
        }
        black_box(forwarded)
    };

    let mut group = c.benchmark_group("inspector_commands");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("pipelined_session_bytes", |b| b.iter(|| run(&mut out)));
    group.throughput(Throughput::Elements(lines));
    group.bench_function("pipelined_session_command_lines", |b| {
        b.iter(|| run(&mut out))
    });
    group.finish();
}

criterion_group!(benches, body, commands);
criterion_main!(benches);
