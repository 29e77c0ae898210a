//! Memory stays bounded whatever peers do: a stalled upstream stops the reading of
//! its client (no buffering), and idle sessions hold no read buffers.

mod common;
mod e2e_support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_stalled_upstream_applies_backpressure_instead_of_buffering() {
    // An upstream that greets and then never reads.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(UPSTREAM_BANNER).unwrap();
        std::thread::sleep(LIMIT);
        drop(s);
    });
    let (conf, listen) = config(addr, "policy = \"none\"", "");
    let gate = Gate::start(&conf);
    let before = rss_kib(gate.child.id());

    let mut c = Client::connect(listen);
    assert_eq!(c.reply(), UPSTREAM_BANNER);
    // 256 MiB offered: far more than socket buffers can hold. The writer blocks once
    // the kernel buffers on both legs are full; smtpgate must not hold the rest.
    let mut writer = c.stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut offered = 0usize;
    let started = Instant::now();
    while offered < 256 << 20 && started.elapsed() < Duration::from_secs(5) {
        match writer.write(&chunk) {
            Ok(n) => offered += n,
            Err(_) => break, // blocked: backpressure reached the client
        }
    }
    assert!(offered < 256 << 20, "the client was never slowed down");
    let grown = rss_kib(gate.child.id()).saturating_sub(before);
    eprintln!("{offered} bytes offered to a stalled upstream: smtpgate grew {grown} KiB");
    assert!(
        grown < 16 * 1024,
        "smtpgate grew by {grown} KiB while {offered} bytes were offered"
    );
}

#[test]
fn idle_sessions_hold_only_a_few_kib_each() {
    const SESSIONS: usize = 400;
    let up = Upstream::start(&["PIPELINING"]);
    let (conf, listen) = config(up.addr, "policy = \"default\"", "");
    let gate = Gate::start(&conf);

    // Warm up the allocator arenas and the per-shard buffer pools.
    drop(open_idle_sessions(listen, SESSIONS / 4));
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(gate.child.id());

    let clients = open_idle_sessions(listen, SESSIONS);
    std::thread::sleep(Duration::from_millis(300));
    let grown = rss_kib(gate.child.id()).saturating_sub(before) * 1024;
    // The per-shard pools keep at most 64 returned 16 KiB buffers each (bufpool.rs),
    // whatever the number of sessions. How full they get depends on how many reads
    // overlapped, in the warm-up or in the measured burst, so that fixed bound is
    // not charged to the sessions (measured: 7 or 14 KiB per session at 400 without
    // this, run to run).
    const SHARDS: u64 = 2; // Gate::start runs --cores 2
    let pool_bound = SHARDS * 64 * 16 * 1024;
    let per_session = grown.saturating_sub(pool_bound) / SESSIONS as u64;
    // HAProxy holds about 3.3 KiB per idle session; a 16 KiB read buffer kept per
    // direction would show as 32 KiB here.
    eprintln!(
        "{SESSIONS} idle inspected sessions: {} bytes each, {per_session} beyond the buffer pools",
        grown / SESSIONS as u64
    );
    assert!(
        per_session < 8 * 1024,
        "{per_session} bytes per idle session beyond the buffer pools"
    );
    drop(clients);
    let _ = TcpStream::connect(listen);
}

/// `n` sessions, each greeted and past EHLO, then left idle.
fn open_idle_sessions(listen: std::net::SocketAddr, n: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..n).map(|_| Client::connect(listen)).collect();
    for c in &mut clients {
        c.reply();
        c.send(b"EHLO idle.test\r\n");
    }
    for c in &mut clients {
        c.reply();
    }
    clients
}

/// Idle greeted sessions the held-out bound is measured on, per round.
const ROUND: usize = 5_000;

/// Waits (bounded) until the admin endpoint reports no active session.
fn wait_no_sessions(admin: std::net::SocketAddr) {
    let started = Instant::now();
    loop {
        let response = http_get(admin, "/status");
        if response.contains("\"active\": 0") {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "sessions still active:\n{response}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` greeted, EHLO'd sessions from a spread of loopback sources (so no source runs
/// out of ports), each read to the end of its EHLO reply, then left idle.
fn open_greeted_sessions(listen: std::net::SocketAddr, n: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..n)
        .map(|i| Client::connect_from(&format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250), listen))
        .collect();
    for c in &mut clients {
        assert!(c.reply().starts_with(b"220"));
        c.send(b"EHLO idle.test\r\n");
    }
    for c in &mut clients {
        assert!(c.reply().starts_with(b"250"));
    }
    clients
}

#[test]
fn five_thousand_idle_greeted_sessions_stay_within_8_kib_each_and_a_second_round_reuses_the_memory()
{
    let dir = scratch_dir("memory-rounds");
    let sink = e2e_support::Sink::start(&dir, &[]);
    let admin = local(free_port());
    let listen = local(free_port());
    let conf = format!(
        "[admin]\nlisten = \"{admin}\"\n[[listener]]\nlisten = \"{listen}\"\nupstream = \"{}\"\npolicy = \"default\"\n",
        sink.addr
    );
    let gate = Gate::start(&conf);
    let pid = gate.child.id();
    // A few sessions first, so the process's one-time allocations are not charged.
    drop(open_greeted_sessions(listen, 50));
    wait_no_sessions(admin);
    let start = rss_kib(pid);

    let first = open_greeted_sessions(listen, ROUND);
    std::thread::sleep(Duration::from_millis(300));
    let first_peak = rss_kib(pid);
    drop(first);
    wait_no_sessions(admin);
    let after_first = rss_kib(pid);

    let second = open_greeted_sessions(listen, ROUND);
    std::thread::sleep(Duration::from_millis(300));
    let second_peak = rss_kib(pid);
    drop(second);
    wait_no_sessions(admin);
    let after_second = rss_kib(pid);

    // Everything, buffer pools included, is charged to the sessions.
    let per_session = (first_peak.saturating_sub(start) * 1024) / ROUND as u64;
    eprintln!(
        "RSS KiB: start {start}, {ROUND} idle sessions {first_peak} ({per_session} bytes each), \
         closed {after_first}, second round {second_peak}, closed {after_second}"
    );
    // The goal is 4 KiB (HAProxy: about 3.3 KiB). Measured in release: 7.0 KiB, of
    // which the inspector alone is 2.2 KiB inline plus its queues; this bound keeps
    // what was won (9.0 KiB before the session's futures were boxed and its output
    // vectors shared per shard). Debug builds' futures are larger (about 12 KiB).
    let bound = if cfg!(debug_assertions) { 16 } else { 8 } * 1024;
    assert!(
        per_session <= bound,
        "{per_session} bytes of RSS per idle greeted session"
    );
    // Memory freed by the first round serves the second: the second peak may not
    // exceed the first by more than noise (2 MiB, or 0.4 KiB a session).
    assert!(
        second_peak <= first_peak + 2048,
        "the second round grew RSS from {first_peak} to {second_peak} KiB"
    );
}
