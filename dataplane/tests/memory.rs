//! Memory stays bounded whatever peers do: a stalled upstream stops the reading of
//! its client (no buffering), and idle sessions hold no read buffers.

mod common;

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
