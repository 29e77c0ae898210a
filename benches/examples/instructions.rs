//! The inspector benches' three workloads as a plain program, for instruction counts under
//! callgrind, which a loaded machine does not disturb the way it disturbs wall time
//! (cargo builds the bench profile into `target/release`):
//!
//!   cargo build --profile bench -p smtpgate-benches --example instructions
//!   valgrind --tool=callgrind target/release/examples/instructions body 12
//!   valgrind --tool=callgrind target/release/examples/instructions commands 12
//!
//! `body N` runs N transactions of the bench's 100 KiB message through one warm session;
//! `mix N` runs N rounds of the ten lock-step transactions of `compare`'s size mix (the
//! `inspector_compare_mix` bench); `commands N` runs N whole pipelined command sessions. The cost of one message or one
//! session is the difference between two counts (say N = 12 and N = 2) divided by the
//! difference in N, which cancels start-up and warm-up. Only the `Inspector` API is used,
//! so the same file builds against older versions of the policy crate for an A/B.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use smtpgate_benches::{
    command_session, compare_mix_reads, message_reads, EHLO, EHLO_REPLY, GREETING,
    LOCKSTEP_COMMANDS, LOCKSTEP_REPLIES, MESSAGE_ACCEPTED, TRANSACTION_COMMANDS,
    TRANSACTION_REPLIES,
};
use smtpgate_policy::inspector::{Inspector, Output, Verdict};
use smtpgate_policy::policy::Policy;

/// Feeds one read to one side, checks the session goes on, returns the bytes forwarded.
fn feed(inspector: &mut Inspector, from_client: bool, input: &Bytes, out: &mut Output) -> usize {
    let now = Instant::now();
    if from_client {
        inspector.on_client_bytes(input.clone(), now, out);
    } else {
        inspector.on_server_bytes(input.clone(), now, out);
    }
    assert_eq!(out.verdict, Verdict::Continue);
    let forwarded = out
        .to_server
        .iter()
        .chain(&out.to_client)
        .map(|b| b.len())
        .sum();
    out.clear();
    forwarded
}

fn body(policy: Arc<Policy>, messages: usize) -> usize {
    let reads = message_reads();
    let commands = Bytes::from_static(TRANSACTION_COMMANDS);
    let replies = Bytes::from_static(TRANSACTION_REPLIES);
    let accepted = Bytes::from_static(MESSAGE_ACCEPTED);
    let mut inspector = Inspector::new(policy);
    let mut out = Output::default();
    let mut forwarded = feed(
        &mut inspector,
        false,
        &Bytes::from_static(GREETING),
        &mut out,
    );
    forwarded += feed(&mut inspector, true, &Bytes::from_static(EHLO), &mut out);
    forwarded += feed(
        &mut inspector,
        false,
        &Bytes::from_static(EHLO_REPLY),
        &mut out,
    );
    for _ in 0..messages {
        forwarded += feed(&mut inspector, true, &commands, &mut out);
        forwarded += feed(&mut inspector, false, &replies, &mut out);
        for read in &reads {
            forwarded += feed(&mut inspector, true, read, &mut out);
        }
        forwarded += feed(&mut inspector, false, &accepted, &mut out);
    }
    forwarded
}

fn mix(policy: Arc<Policy>, rounds: usize) -> usize {
    let messages = compare_mix_reads();
    let commands = LOCKSTEP_COMMANDS.map(Bytes::from_static);
    let replies = LOCKSTEP_REPLIES.map(Bytes::from_static);
    let accepted = Bytes::from_static(MESSAGE_ACCEPTED);
    let mut inspector = Inspector::new(policy);
    let mut out = Output::default();
    let mut forwarded = 0;
    for (input, from_client) in [(GREETING, false), (EHLO, true), (EHLO_REPLY, false)] {
        forwarded += feed(
            &mut inspector,
            from_client,
            &Bytes::from_static(input),
            &mut out,
        );
    }
    for _ in 0..rounds {
        for reads in &messages {
            for (command, reply) in commands.iter().zip(&replies) {
                forwarded += feed(&mut inspector, true, command, &mut out);
                forwarded += feed(&mut inspector, false, reply, &mut out);
            }
            for read in reads {
                forwarded += feed(&mut inspector, true, read, &mut out);
            }
            forwarded += feed(&mut inspector, false, &accepted, &mut out);
        }
    }
    forwarded
}

fn commands(policy: Arc<Policy>, sessions: usize) -> usize {
    let (session, _lines) = command_session(10, 5);
    let session: Vec<(Bytes, Bytes)> = session
        .into_iter()
        .map(|(c, s)| (Bytes::from(c), Bytes::from(s)))
        .collect();
    let greeting = Bytes::from_static(GREETING);
    let mut out = Output::default();
    let mut forwarded = 0;
    for _ in 0..sessions {
        let mut inspector = Inspector::new(policy.clone());
        forwarded += feed(&mut inspector, false, &greeting, &mut out);
        for (client, server) in &session {
            forwarded += feed(&mut inspector, true, client, &mut out);
            forwarded += feed(&mut inspector, false, server, &mut out);
        }
    }
    forwarded
}

fn main() {
    let mut args = std::env::args().skip(1);
    let workload = args.next().unwrap_or_default();
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let policy = Arc::new(Policy::builtin("default").expect("built-in policy"));
    let forwarded = match workload.as_str() {
        "body" => body(policy, count),
        "mix" => mix(policy, count),
        "commands" => commands(policy, count),
        _ => {
            eprintln!("usage: instructions body|mix|commands COUNT");
            std::process::exit(2);
        }
    };
    println!("{}", black_box(forwarded));
}
