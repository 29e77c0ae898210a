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
/// out of ports), each read to the end of its EHLO reply, then left idle. Opened 500
/// at a time, so the accept queue never holds thousands of connections a busy shard
/// has not taken yet (past its backlog the kernel drops them, and a client waits for
/// a greeting that does not come).
fn open_greeted_sessions(listen: std::net::SocketAddr, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for start in (0..n).step_by(500) {
        let mut batch: Vec<Client> = (start..n.min(start + 500))
            .map(|i| {
                Client::connect_from(&format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250), listen)
            })
            .collect();
        for c in &mut batch {
            c.reply_starting(b"220");
            c.send(b"EHLO idle.test\r\n");
        }
        for c in &mut batch {
            c.reply_starting(b"250");
        }
        clients.append(&mut batch);
    }
    clients
}

#[test]
fn five_thousand_idle_greeted_sessions_stay_within_4_kib_each_and_a_second_round_reuses_the_memory()
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
    // HAProxy holds about 3.3 KiB per idle session. Measured in release: 3.0 KiB here
    // (500 opened at a time) and 3.7 KiB with 5,000 opened at once; 9.0 KiB before
    // the session's state was held once (one future, no argument copies), the TLS
    // and inspector state allocated only when used, and glommio's sources shrunk.
    // Debug builds' futures are larger (about 12 KiB).
    let bound = if cfg!(debug_assertions) { 16 } else { 4 } * 1024;
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

/// The `"key": value` number in admin JSON (first occurrence).
fn status_number(status: &str, key: &str) -> u64 {
    let at = status
        .find(&format!("\"{key}\": "))
        .unwrap_or_else(|| panic!("no {key} in {status}"));
    let rest = &status[at + key.len() + 4..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap();
    rest[..end].parse().unwrap()
}

#[test]
fn pipelining_clients_that_never_read_are_stopped_by_tcp_not_buffered() {
    const CLIENTS: usize = 50;
    let dir = scratch_dir("memory-pipeliners");
    let sink = e2e_support::Sink::start(&dir, &[]);
    let listen = local(free_port());
    let admin = local(free_port());
    let conf = format!(
        "[admin]\nlisten = \"{admin}\"\n[[listener]]\nlisten = \"{listen}\"\nupstream = \"{}\"\npolicy = \"default\"\n",
        sink.addr
    );
    let gate = Gate::start(&conf);
    let pid = gate.child.id();
    drop(open_greeted_sessions(listen, 20));
    wait_no_sessions(admin);
    let before = rss_kib(pid);
    let clients = open_greeted_sessions(listen, CLIENTS);

    // Each pipelines NOOPs and never reads a reply, all at once, until a write has
    // been blocked for a second (or the time is up: then smtpgate never pushed back).
    let writers: Vec<_> = clients
        .iter()
        .map(|c| {
            let mut stream = c.stream.try_clone().unwrap();
            std::thread::spawn(move || {
                stream
                    .set_write_timeout(Some(Duration::from_secs(1)))
                    .unwrap();
                let burst = b"NOOP\r\n".repeat(10_000);
                let mut accepted = 0usize;
                let started = Instant::now();
                while started.elapsed() < LIMIT {
                    match stream.write(&burst) {
                        Ok(n) => accepted += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            return Ok(accepted)
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(accepted),
                        Err(e) => return Err(format!("after {accepted} bytes: {e}")),
                    }
                }
                Err(format!("never blocked: {accepted} bytes accepted"))
            })
        })
        .collect();
    let accepted: Vec<usize> = writers
        .into_iter()
        .map(|w| w.join().unwrap().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let peak = rss_kib(pid);
    let per_client = (peak.saturating_sub(before) * 1024) / CLIENTS as u64;
    let most = *accepted.iter().max().unwrap();
    let total: usize = accepted.iter().sum();
    eprintln!(
        "{CLIENTS} pipelining clients that never read: writes blocked after {} bytes on \
         average ({most} at most); RSS {before} -> {peak} KiB, {per_client} bytes each",
        total / CLIENTS
    );
    // Flow control, not a drop: every session is alive and none was cut.
    let status = http_get(admin, "/status");
    assert_eq!(status_number(&status, "active"), CLIENTS as u64, "{status}");
    assert_eq!(status_number(&status, "dropped"), 0, "{status}");
    // What a client gets in before it blocks is what TCP buffers hold on the two legs
    // (loopback autotunes them to a few MiB each), not what smtpgate keeps.
    assert!(
        most < 64 << 20,
        "a client that never reads got {most} bytes in"
    );
    // What smtpgate keeps per session: the replies of one read queued to the client,
    // at most one read held by the inspector, and its queue of owed replies. Measured
    // in release: 127 KiB each, idle session included (1.97 MB before the relay paused
    // the client and the inspector stopped copying its held bytes once per reply).
    assert!(
        per_client <= 160 * 1024,
        "{per_client} bytes of RSS per non-reading pipeliner"
    );
    drop(clients);
}

/// An upstream that greets, answers EHLO with PIPELINING, then reads nothing more:
/// whatever a client sends behind DATA is held by the inspector, awaiting a 354.
fn upstream_that_stops_after_ehlo() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::BufRead;
                let _ = conn.write_all(UPSTREAM_BANNER);
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if line.to_ascii_uppercase().starts_with("EHLO") {
                        let _ = conn.write_all(b"250-mx.upstream.test\r\n250 PIPELINING\r\n");
                        break;
                    }
                    line.clear();
                }
                std::thread::sleep(LIMIT * 2);
            });
        }
    });
    addr
}

#[test]
fn past_the_buffer_budget_the_largest_holders_get_421_4_3_2_and_are_counted() {
    let upstream = upstream_that_stops_after_ehlo();
    let listen = local(free_port());
    let admin = local(free_port());
    // 1 MiB over two shards: 512 KiB each.
    let conf = format!(
        "[admin]\nlisten = \"{admin}\"\n[limits]\nbuffer_budget = \"1MiB\"\n\
         [[listener]]\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\npolicy = \"default\"\n"
    );
    let gate = Gate::start(&conf);
    let greeted = |n: usize| -> Vec<Client> {
        let mut clients: Vec<Client> = (0..n).map(|_| Client::connect(listen)).collect();
        for c in &mut clients {
            assert!(c.reply().starts_with(b"220"));
            c.send(b"EHLO budget.test\r\n");
            assert!(c.reply().starts_with(b"250"));
        }
        clients
    };
    // Content sent ahead of the DATA reply is held by the inspector until it comes
    // (here never): 60 KiB for each large holder, 4 KiB for each small one.
    let behind_data = |content: usize| {
        let mut bytes =
            b"MAIL FROM:<a@budget.test>\r\nRCPT TO:<b@budget.test>\r\nDATA\r\n".to_vec();
        bytes.extend(b"x".repeat(78).iter().chain(b"\r\n").cycle().take(content));
        bytes
    };
    let idle = greeted(10);
    let mut small = greeted(10);
    let mut large = greeted(24);
    for c in &mut small {
        c.send(&behind_data(4 * 1024));
    }
    // 24 x 60 KiB is 1.4 MiB: more than the budget however the kernel spreads the
    // sessions over the shards; the small holders alone fit in either shard's share.
    for c in &mut large {
        c.send(&behind_data(60 * 1024));
    }
    std::thread::sleep(Duration::from_secs(1));

    // What each client was told, if anything.
    let told = |clients: &mut Vec<Client>| -> Vec<Vec<u8>> {
        clients
            .iter_mut()
            .map(|c| {
                c.stream
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 512];
                while let Ok(n) = std::io::Read::read(&mut c.stream, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                got
            })
            .collect()
    };
    let mut idle = idle;
    let idle_told = told(&mut idle);
    let small_told = told(&mut small);
    let large_told = told(&mut large);
    let over_budget: Vec<&Vec<u8>> = large_told
        .iter()
        .filter(|got| got.starts_with(b"421 4.3.2 "))
        .collect();
    eprintln!(
        "buffer_budget 1MiB: {} of 24 large holders closed with 421 4.3.2",
        over_budget.len()
    );
    assert!(
        !over_budget.is_empty(),
        "no large holder was closed: {:?}",
        large_told
            .iter()
            .map(|g| String::from_utf8_lossy(g).into_owned())
            .collect::<Vec<_>>()
    );
    // The others were left alone, and nothing else was said to anyone.
    for got in large_told.iter().filter(|g| !g.starts_with(b"421 4.3.2 ")) {
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(got));
    }
    for got in idle_told.iter().chain(&small_told) {
        assert!(
            got.is_empty(),
            "a small or idle session was told {}",
            String::from_utf8_lossy(got)
        );
    }
    let status = http_get(admin, "/status");
    assert_eq!(
        status_number(&status, "over_buffer_budget"),
        over_budget.len() as u64,
        "{status}"
    );
    // The survivors fit in the budget (as of the shards' last tick).
    assert!(status_number(&status, "buffered") <= 1 << 20, "{status}");
    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics.contains(&format!(
            "smtpgate_sessions_over_buffer_budget_total {}",
            over_budget.len()
        )),
        "{metrics}"
    );
    assert!(
        gate.stderr().contains("buffer_budget exhausted"),
        "{}",
        gate.stderr()
    );
}
