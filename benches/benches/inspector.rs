//! Inspector micro-benchmarks: `cargo bench -p smtpgate-benches --bench inspector`.
//!
//! - `inspector_body`: a warm `default` session in DATA, fed a 100 KiB MIME message
//!   (base64 attachment, 76-character lines) in 16 KiB reads, as a relay would; bytes/s
//!   per core. Each iteration also runs the few commands that start the next message.
//!   `memchr_line_ends_baseline` only finds the line ends of the same reads: the ratio
//!   of the two is what inspection costs over bare line framing, whatever the load.
//! - `inspector_compare_mix`: ten lock-step transactions (MAIL, RCPT, DATA a read each,
//!   their replies, the message in 16 KiB reads, its 250) of messages shaped like
//!   `smtpgate-loadgen`'s in `compare`'s default size mix (1k:60,10k:30,100k:10), through
//!   one warm `default` session: what inspection costs per message of that mix.
//! - `inspector_commands`: whole command-heavy sessions (greeting, EHLO, pipelined
//!   MAIL / RCPT × 5 / RSET / NOOP groups, QUIT) through a new `default` inspector, as
//!   bytes/s and as command lines/s.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smtpgate_benches::{
    command_session, compare_mix_reads, message_reads, EHLO, EHLO_REPLY, GREETING,
    LOCKSTEP_COMMANDS, LOCKSTEP_REPLIES, MESSAGE_ACCEPTED, TRANSACTION_COMMANDS,
    TRANSACTION_REPLIES,
};
use smtpgate_policy::inspector::testing::{Collect, Driver, Peer};
use smtpgate_policy::inspector::Verdict;
use smtpgate_policy::policy::Policy;

fn default_policy() -> Arc<Policy> {
    Arc::new(Policy::builtin("default").expect("built-in policy"))
}

/// Feeds one read and checks the session goes on; returns the bytes forwarded so far.
fn feed(driver: &mut Driver, peer: Peer, input: Bytes) -> usize {
    driver.feed(peer, input);
    assert_eq!(driver.verdict, Verdict::Continue);
    driver.forwarded
}

fn body(c: &mut Criterion) {
    let reads = message_reads();
    let commands = Bytes::from_static(TRANSACTION_COMMANDS);
    let replies = Bytes::from_static(TRANSACTION_REPLIES);
    let accepted = Bytes::from_static(MESSAGE_ACCEPTED);

    let mut driver = Driver::with(default_policy(), Collect::Counts);
    feed(&mut driver, Peer::Server, Bytes::from_static(GREETING));
    feed(&mut driver, Peer::Client, Bytes::from_static(EHLO));
    feed(&mut driver, Peer::Server, Bytes::from_static(EHLO_REPLY));

    let mut group = c.benchmark_group("inspector_body");
    let message_len: usize = reads.iter().map(Bytes::len).sum();
    group.throughput(Throughput::Bytes(message_len as u64));
    group.bench_function("mime_100k_in_16k_reads", |b| {
        b.iter(|| {
            feed(&mut driver, Peer::Client, commands.clone());
            feed(&mut driver, Peer::Server, replies.clone());
            for read in &reads {
                feed(&mut driver, Peer::Client, read.clone());
            }
            black_box(feed(&mut driver, Peer::Server, accepted.clone()))
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

fn compare_mix(c: &mut Criterion) {
    let messages = compare_mix_reads();
    let commands = LOCKSTEP_COMMANDS.map(Bytes::from_static);
    let replies = LOCKSTEP_REPLIES.map(Bytes::from_static);
    let accepted = Bytes::from_static(MESSAGE_ACCEPTED);

    let mut driver = Driver::with(default_policy(), Collect::Counts);
    feed(&mut driver, Peer::Server, Bytes::from_static(GREETING));
    feed(&mut driver, Peer::Client, Bytes::from_static(EHLO));
    feed(&mut driver, Peer::Server, Bytes::from_static(EHLO_REPLY));

    let mut group = c.benchmark_group("inspector_compare_mix");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("lockstep_messages", |b| {
        b.iter(|| {
            for reads in &messages {
                for (command, reply) in commands.iter().zip(&replies) {
                    feed(&mut driver, Peer::Client, command.clone());
                    feed(&mut driver, Peer::Server, reply.clone());
                }
                for read in reads {
                    feed(&mut driver, Peer::Client, read.clone());
                }
                feed(&mut driver, Peer::Server, accepted.clone());
            }
            black_box(driver.forwarded)
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

    let run = || {
        let mut driver = Driver::with(policy.clone(), Collect::Counts);
        feed(&mut driver, Peer::Server, greeting.clone());
        for (client, server) in &session {
            feed(&mut driver, Peer::Client, client.clone());
            feed(&mut driver, Peer::Server, server.clone());
        }
        black_box(driver.forwarded)
    };

    let mut group = c.benchmark_group("inspector_commands");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("pipelined_session_bytes", |b| b.iter(run));
    group.throughput(Throughput::Elements(lines));
    group.bench_function("pipelined_session_command_lines", |b| b.iter(run));
    group.finish();
}

criterion_group!(benches, body, compare_mix, commands);
criterion_main!(benches);
