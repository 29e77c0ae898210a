//! Hostile clients, lost upstreams and real client addresses, through the real binary:
//! per-phase deadlines cut trickling clients on time (and not fast ones), a lost
//! upstream is reported honestly, a dual-stack listener matches IPv4 exemptions, the
//! per-client connection rate bites, drain tells idle sessions goodbye, a dead shard
//! stops the process. Loopback only; every wait bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A config with fixed admin and listen addresses, so tests can read /status.
fn gate_config(
    upstream: SocketAddr,
    listen: &str,
    listener_lines: &str,
    extra: &str,
) -> (String, SocketAddr) {
    let admin = local(free_port());
    let text = format!(
        "[admin]\nlisten = \"{admin}\"\n\n{extra}\n\n[[listener]]\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n{listener_lines}\n"
    );
    (text, admin)
}

/// Waits (bounded) until `/status` connections.`key` is `value`: the session's
/// counters are bumped as it closes, just after the client saw the close.
fn wait_status(admin: SocketAddr, key: &str, value: u64) {
    let started = Instant::now();
    loop {
        let s = status(admin);
        if s["connections"][key] == value {
            return;
        }
        assert!(started.elapsed() < LIMIT, "{key} never became {value}: {s}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn status(admin: SocketAddr) -> serde_json::Value {
    let response = http_get(admin, "/status");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("/status: {e}: {response}"))
}

/// Sends `bytes` one at a time, `gap` apart, until the peer stops taking them or
/// `limit` passes; returns how long the peer kept the connection.
fn trickle(client: &mut Client, bytes: &[u8], gap: Duration, limit: Duration) -> Duration {
    let started = Instant::now();
    for byte in bytes.iter().cycle() {
        if started.elapsed() > limit || client.stream.write_all(&[*byte]).is_err() {
            break;
        }
        thread::sleep(gap);
        // The 421 arrived: stop at once.
        let mut peek = [0u8; 1];
        client.stream.set_nonblocking(true).unwrap();
        let got = client.stream.peek(&mut peek);
        client.stream.set_nonblocking(false).unwrap();
        if got.is_ok() {
            break;
        }
    }
    started.elapsed()
}

fn greeted(listen: SocketAddr) -> Client {
    let mut c = Client::connect(listen);
    assert!(c.reply().starts_with(b"220 "));
    c.send(b"EHLO client.test\r\n");
    assert!(c.reply().starts_with(b"250"));
    c
}

#[test]
fn a_trickled_command_line_is_cut_by_the_idle_deadline() {
    let up = Upstream::start(&["PIPELINING"]);
    let listen = local(free_port());
    let (conf, admin) = gate_config(
        up.addr,
        &listen.to_string(),
        "",
        "[timeouts]\nidle = \"2s\"\n",
    );
    let _gate = Gate::start(&conf);
    let mut c = greeted(listen);
    // One byte every 300 ms never completes a line: bytes inside a line do not extend
    // the idle deadline (they used to, which kept such a client for ever).
    let kept = trickle(
        &mut c,
        b"MAIL FROM:<slow@example.com>",
        Duration::from_millis(300),
        Duration::from_secs(10),
    );
    let rest = c.read_to_end();
    eprintln!("trickled command line (idle = 2s) cut after {kept:?}");
    assert!(
        rest.starts_with(b"421 4.4.2 "),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(String::from_utf8_lossy(&rest).contains("idle"));
    assert!(
        kept < Duration::from_millis(3500),
        "the trickling client was kept {kept:?} with idle = 2s"
    );
    assert_eq!(status(admin)["connections"]["timeouts"]["idle"], 1);
}

#[test]
fn trickled_message_content_is_cut_by_the_data_deadline_and_a_fast_5_mb_message_is_not() {
    let up = Upstream::start(&["PIPELINING"]);
    let listen = local(free_port());
    let (conf, admin) = gate_config(
        up.addr,
        &listen.to_string(),
        "",
        "[timeouts]\nidle = \"10s\"\ndata = \"2s\"\nmin_data_rate = 500\n",
    );
    let _gate = Gate::start(&conf);

    // Fast: 5 MB of content must not be cut by data = 2s (it earns 10,000 s at 500 B/s).
    let mut fast = greeted(listen);
    fast.send(b"MAIL FROM:<a@example.com>\r\n");
    assert!(fast.reply().starts_with(b"250"));
    fast.send(b"RCPT TO:<b@example.com>\r\n");
    assert!(fast.reply().starts_with(b"250"));
    fast.send(b"DATA\r\n");
    assert!(fast.reply().starts_with(b"354"));
    let line = [b'x'; 998];
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    while body.len() < 5_000_000 {
        body.extend_from_slice(&line);
        body.extend_from_slice(b"\r\n");
    }
    let started = Instant::now();
    fast.send(&body);
    fast.send(b".\r\n");
    let reply = fast.reply();
    assert!(
        reply.starts_with(b"250"),
        "5 MB message after {:?}: {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(up.messages().len(), 1);
    eprintln!("5 MB message relayed in {:?}", started.elapsed());

    // Slow: one content byte every 300 ms (3 B/s, far below 500 B/s).
    let mut slow = greeted(listen);
    slow.send(b"MAIL FROM:<a@example.com>\r\n");
    assert!(slow.reply().starts_with(b"250"));
    slow.send(b"RCPT TO:<b@example.com>\r\n");
    assert!(slow.reply().starts_with(b"250"));
    slow.send(b"DATA\r\n");
    assert!(slow.reply().starts_with(b"354"));
    let kept = trickle(
        &mut slow,
        b"Subject: slow\r\n\r\nbody\r\n",
        Duration::from_millis(300),
        Duration::from_secs(10),
    );
    let rest = slow.read_to_end();
    eprintln!("trickled content (data = 2s) cut after {kept:?}");
    assert!(
        rest.starts_with(b"421 4.4.2 ") && String::from_utf8_lossy(&rest).contains("data"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        kept < Duration::from_millis(3500),
        "kept {kept:?} with data = 2s"
    );
    assert_eq!(
        up.messages().len(),
        1,
        "the cut message never reached the upstream whole"
    );
    assert_eq!(status(admin)["connections"]["timeouts"]["data"], 1);
}

/// An upstream that greets, takes EHLO/MAIL/RCPT/DATA, then resets the connection
/// after `reset_after` content bytes (SO_LINGER 0), or, with `reset_after` = None,
/// reads the whole message and closes without answering the end of data.
fn failing_upstream(reset_after: Option<usize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(UPSTREAM_BANNER).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut content = 0usize;
        let mut in_data = false;
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if in_data {
                content += n;
                seen.extend_from_slice(&buf[..n]);
                let done = match reset_after {
                    Some(limit) => content >= limit,
                    None => seen.ends_with(b"\r\n.\r\n"),
                };
                if done {
                    if reset_after.is_some() {
                        let linger = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        unsafe {
                            libc::setsockopt(
                                std::os::fd::AsRawFd::as_raw_fd(&s),
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                &linger as *const libc::linger as *const libc::c_void,
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            );
                        }
                    }
                    return; // dropped: RST or FIN
                }
                continue;
            }
            seen.extend_from_slice(&buf[..n]);
            while let Some(end) = seen.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = seen.drain(..=end).collect();
                let reply: &[u8] = match &line[..4.min(line.len())] {
                    b"EHLO" => b"250 mx.upstream.test\r\n",
                    b"DATA" => {
                        in_data = true;
                        b"354 go ahead\r\n"
                    }
                    _ => b"250 2.0.0 Ok\r\n",
                };
                s.write_all(reply).unwrap();
                if in_data {
                    content = seen.len();
                    break;
                }
            }
        }
    });
    addr
}

fn into_data(listen: SocketAddr) -> Client {
    let mut c = greeted(listen);
    c.send(b"MAIL FROM:<a@example.com>\r\n");
    assert!(c.reply().starts_with(b"250"));
    c.send(b"RCPT TO:<b@example.com>\r\n");
    assert!(c.reply().starts_with(b"250"));
    c.send(b"DATA\r\n");
    assert!(c.reply().starts_with(b"354"));
    c
}

#[test]
fn an_upstream_reset_mid_data_gets_the_client_a_421_not_a_bare_close() {
    let upstream = failing_upstream(Some(100));
    let listen = local(free_port());
    let (conf, admin) = gate_config(upstream, &listen.to_string(), "", "");
    let _gate = Gate::start(&conf);
    let mut c = into_data(listen);
    c.send(&[b'y'; 200]);
    c.send(b"\r\n");
    let rest = c.read_to_end();
    assert!(
        rest.starts_with(b"421 4.4.2 "),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    wait_status(admin, "upstream_lost", 1);
}

#[test]
fn an_upstream_lost_while_the_end_of_data_reply_is_owed_closes_without_a_reply() {
    let upstream = failing_upstream(None);
    let listen = local(free_port());
    let (conf, _admin) = gate_config(upstream, &listen.to_string(), "", "");
    let _gate = Gate::start(&conf);
    let mut c = into_data(listen);
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    // Either answer could be false (the message may or may not have been queued), so
    // the client gets none and will retry; it must not get a 421 that says "not sent".
    let rest = c.read_to_end();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn an_upstream_that_never_greets_is_an_upstream_failure_421_4_4_1() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().take(1).flatten().collect();
        thread::sleep(LIMIT);
        drop(held);
    });
    let listen = local(free_port());
    let (conf, admin) = gate_config(
        upstream,
        &listen.to_string(),
        "",
        "[timeouts]\nupstream_connect = \"1s\"\n",
    );
    let _gate = Gate::start(&conf);
    let started = Instant::now();
    let mut c = Client::connect(listen);
    let rest = c.read_to_end();
    assert!(
        rest.starts_with(b"421 4.4.1 "),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let s = status(admin);
    assert_eq!(s["connections"]["upstream_failures"], 1);
    assert_eq!(
        s["connections"]["timeouts"]["embryonic"], 0,
        "not blamed on the client"
    );
}

#[test]
fn an_ipv4_client_on_a_dual_stack_listener_matches_an_ipv4_exemption() {
    let up = Upstream::start(&[]);
    let port = free_port();
    let (conf, _admin) = gate_config(
        up.addr,
        &format!("[::]:{port}"),
        "policy = \"default\"\nexempt = [\"127.0.0.2/32\"]",
        "",
    );
    let _gate = Gate::start(&conf);
    // Seen by the kernel as ::ffff:127.0.0.2 on the [::] socket.
    let mut exempt = Client::connect_from("127.0.0.2", local(port));
    assert_eq!(
        exempt.reply(),
        UPSTREAM_BANNER,
        "exempt: the banner is relayed verbatim"
    );
    let mut inspected = Client::connect_from("127.0.0.3", local(port));
    assert_ne!(
        inspected.reply(),
        UPSTREAM_BANNER,
        "inspected: the banner is masked"
    );
}

#[test]
fn the_per_client_connection_rate_refuses_a_burst_with_421_4_7_0() {
    let up = Upstream::start(&[]);
    let listen = local(free_port());
    let (conf, admin) = gate_config(
        up.addr,
        &listen.to_string(),
        "",
        "[limits]\nper_client_rate = 3\n",
    );
    let _gate = Gate::start(&conf);
    for i in 0..3 {
        let mut c = Client::connect_from("127.0.0.6", listen);
        assert!(c.reply().starts_with(b"220"), "session {i} within the rate");
        c.send(b"QUIT\r\n");
        c.read_to_end();
    }
    let mut over = Client::connect_from("127.0.0.6", listen);
    let refused = over.read_to_end();
    assert!(
        refused.starts_with(b"421 4.7.0 "),
        "{:?}",
        String::from_utf8_lossy(&refused)
    );
    let mut other = Client::connect_from("127.0.0.7", listen);
    assert!(
        other.reply().starts_with(b"220"),
        "another client is not limited"
    );
    assert_eq!(
        status(admin)["connections"]["rejected"]["per_client_rate"],
        1
    );
}

#[test]
fn drain_waits_for_an_owed_end_of_data_reply_then_says_421_4_3_2() {
    // An upstream whose reply to the end of data takes 1.5 s.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(UPSTREAM_BANNER).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut in_data = false;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            if in_data {
                if seen.ends_with(b"\r\n.\r\n") {
                    thread::sleep(Duration::from_millis(1500));
                    s.write_all(b"250 2.0.0 queued\r\n").unwrap();
                    in_data = false;
                    seen.clear();
                }
                continue;
            }
            while let Some(end) = seen.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = seen.drain(..=end).collect();
                let reply: &[u8] = if line.starts_with(b"DATA") {
                    in_data = true;
                    b"354 go ahead\r\n"
                } else {
                    b"250 ok\r\n"
                };
                s.write_all(reply).unwrap();
            }
        }
    });
    let listen = local(free_port());
    let (conf, _admin) = gate_config(
        upstream,
        &listen.to_string(),
        "",
        "[timeouts]\nshutdown_drain = \"10s\"\n",
    );
    let gate = Gate::start(&conf);
    let mut c = into_data(listen);
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    thread::sleep(Duration::from_millis(300));
    gate.signal(libc::SIGTERM);
    let reply = c.reply();
    assert!(
        reply.starts_with(b"250 2.0.0 queued"),
        "the owed reply came through the drain: {:?}\n{}",
        String::from_utf8_lossy(&reply),
        gate.stderr()
    );
    let rest = c.read_to_end();
    assert!(
        rest.starts_with(b"421 4.3.2 "),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn a_dead_shard_makes_the_process_exit_non_zero_with_a_clear_message() {
    let up = Upstream::start(&[]);
    let listen = local(free_port());
    let (conf, _admin) = gate_config(up.addr, &listen.to_string(), "", "");
    let dir = scratch_dir("dead-shard");
    let path = dir.join("smtpgate.toml");
    std::fs::write(&path, conf).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smtpgate"))
        .args(["run", "-c"])
        .arg(&path)
        .args(["--cores", "2"])
        .env("SMTPGATE_TEST_PANIC_ON_ACCEPT", "1")
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    let started = Instant::now();
    while !stderr().contains("listening on") {
        assert!(started.elapsed() < LIMIT, "did not start: {}", stderr());
        thread::sleep(Duration::from_millis(20));
    }
    let _ = TcpStream::connect(listen);
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("still running after a shard died:\n{}", stderr());
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exited.code(), Some(1), "{}", stderr());
    assert!(stderr().contains("died"), "{}", stderr());
}

#[test]
fn check_warns_when_an_exempt_range_covers_accept_proxy_sources() {
    let dir = scratch_dir("check-warning");
    let path = dir.join("smtpgate.toml");
    std::fs::write(
        &path,
        "[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2526\"\n\
         exempt = [\"10.0.0.0/8\"]\naccept_proxy = [\"10.1.0.0/16\"]\n",
    )
    .unwrap();
    let (code, _out, err) = smtpgate(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "valid, only suspicious: {err}");
    assert!(
        err.contains("warning") && err.contains("10.0.0.0/8") && err.contains("accept_proxy"),
        "{err}"
    );
}
