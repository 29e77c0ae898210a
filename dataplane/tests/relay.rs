//! The relay through the real binary: verbatim paths (policy none, exempt client),
//! half-close, upstream failures, limits and timeouts.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn policy_none_relays_every_byte_verbatim() {
    let (up, gate) = gated_upstream(
        &["PIPELINING", "X-SECRET-EXTENSION"],
        "policy = \"none\"",
        "",
    );

    let mut c = Client::connect(gate.listen());
    assert_eq!(c.reply(), UPSTREAM_BANNER, "banner must not be masked");
    c.send(b"EHLO client.test\r\n");
    assert_eq!(
        c.reply(),
        b"250-mx.upstream.test\r\n250-PIPELINING\r\n250 X-SECRET-EXTENSION\r\n"
    );
    c.send(b"XYZZY magic\r\n");
    assert_eq!(c.reply(), b"500 5.5.1 Command unrecognized\r\n");
    c.send(b"QUIT\r\n");
    assert_eq!(c.reply(), b"221 2.0.0 Bye\r\n");
    assert_eq!(c.read_to_end(), b"", "closed after QUIT");
    assert_eq!(up.wire(0), b"EHLO client.test\r\nXYZZY magic\r\nQUIT\r\n");
}

#[test]
fn exempt_client_is_relayed_verbatim_on_an_inspecting_listener() {
    let (up, gate) = gated_upstream(
        &["X-SECRET-EXTENSION"],
        "policy = \"default\"\nexempt = [\"127.0.0.2/32\"]",
        "",
    );

    let mut c = Client::connect_from("127.0.0.2", gate.listen());
    assert_eq!(c.reply(), UPSTREAM_BANNER);
    c.send(b"EHLO exempt.test\r\n");
    assert_eq!(
        c.reply(),
        b"250-mx.upstream.test\r\n250 X-SECRET-EXTENSION\r\n"
    );
    c.send(b"XYZZY magic\r\nQUIT\r\n");
    assert_eq!(c.reply(), b"500 5.5.1 Command unrecognized\r\n");
    assert_eq!(c.reply(), b"221 2.0.0 Bye\r\n");
    assert_eq!(up.wire(0), b"EHLO exempt.test\r\nXYZZY magic\r\nQUIT\r\n");
}

#[test]
fn half_close_after_quit_still_delivers_the_reply() {
    let (up, gate) = gated_upstream(&[], "policy = \"none\"", "");

    let mut c = Client::connect(gate.listen());
    assert_eq!(c.reply(), UPSTREAM_BANNER);
    c.send(b"QUIT\r\n");
    c.shutdown_write();
    assert_eq!(c.read_to_end(), b"221 2.0.0 Bye\r\n");
    assert_eq!(up.wait_wire(0, |w| w.ends_with(b"QUIT\r\n")), b"QUIT\r\n");
}

#[test]
fn upstream_down_gets_421_quickly() {
    let dead = local(free_port()); // nothing listens there
    let gate = Gate::start(&config_text(
        dead,
        "policy = \"default\"",
        "[timeouts]\nupstream_connect = \"2s\"",
    ));

    let started = Instant::now();
    let mut c = Client::connect(gate.listen());
    c.reply_starting(b"421 4.4.1 ");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(c.read_to_end(), b"", "closed after the 421");
    gate.wait_log("unavailable");
}

#[test]
fn upstream_that_never_answers_the_connect_gets_421_within_the_timeout() {
    // A listener whose backlog is full never completes new handshakes: the connect hangs.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = blackhole.local_addr().unwrap();
    let gate = Gate::start(&config_text(
        addr,
        "policy = \"none\"",
        "[timeouts]\nupstream_connect = \"1s\"",
    ));
    // Fill the backlog with clients nobody accepts (a backlog of 128+ on Linux).
    let mut fillers = Vec::new();
    while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
        fillers.push(s);
        assert!(fillers.len() < 5000, "backlog never filled");
    }

    let started = Instant::now();
    let mut c = Client::connect(gate.listen());
    // Either the kernel refused (backlog overflow with RST) or the connect timed out:
    // both must reach the client as a 421 4.4.1 bounded by upstream_connect.
    c.reply_starting(b"421 4.4.1 ");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[test]
fn max_connections_refuses_the_next_client_with_421() {
    let (up, gate) = gated_upstream(
        &[],
        "policy = \"none\"",
        "[limits]\nmax_connections = 2\nmax_embryonic = 2",
    );
    let listen = gate.listen();

    let mut a = Client::connect(listen);
    let mut b = Client::connect(listen);
    assert_eq!(a.reply(), UPSTREAM_BANNER);
    assert_eq!(b.reply(), UPSTREAM_BANNER);
    let mut refused = Client::connect(listen);
    refused.reply_starting(b"421 4.7.0 ");
    assert_eq!(refused.read_to_end(), b"");
    assert_eq!(
        up.accepted(),
        2,
        "a refused client never reaches the upstream"
    );

    // A freed slot is usable again.
    a.send(b"QUIT\r\n");
    assert_eq!(a.reply(), b"221 2.0.0 Bye\r\n");
    assert_eq!(a.read_to_end(), b"");
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut c = Client::connect(listen);
        if c.reply() == UPSTREAM_BANNER {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn per_client_max_counts_each_source_address() {
    let (_up, gate) = gated_upstream(&[], "policy = \"none\"", "[limits]\nper_client_max = 1");
    let listen = gate.listen();

    let mut first = Client::connect_from("127.0.0.3", listen);
    assert_eq!(first.reply(), UPSTREAM_BANNER);
    let mut same = Client::connect_from("127.0.0.3", listen);
    assert!(same.reply().starts_with(b"421 4.7.0 "));
    let mut other = Client::connect_from("127.0.0.4", listen);
    assert_eq!(other.reply(), UPSTREAM_BANNER);
}

#[test]
fn embryonic_session_times_out_with_421() {
    let (_up, gate) = gated_upstream(&[], "policy = \"none\"", "[timeouts]\nembryonic = \"1s\"");

    let started = Instant::now();
    let mut c = Client::connect(gate.listen());
    assert_eq!(c.reply(), UPSTREAM_BANNER);
    // Say nothing: no HELO/EHLO ever.
    c.reply_starting(b"421 4.4.2 ");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(c.read_to_end(), b"");
}

#[test]
fn idle_session_times_out() {
    let (_up, gate) = gated_upstream(&[], "policy = \"none\"", "[timeouts]\nidle = \"1s\"");

    let mut c = Client::connect(gate.listen());
    assert_eq!(c.reply(), UPSTREAM_BANNER);
    c.send(b"HELO me\r\n");
    assert_eq!(c.reply(), b"250 mx.upstream.test\r\n");
    c.reply_starting(b"421 4.4.2 ");
}

#[test]
fn max_embryonic_refuses_silent_clients_beyond_the_cap() {
    let (_up, gate) = gated_upstream(&[], "policy = \"none\"", "[limits]\nmax_embryonic = 1");
    let listen = gate.listen();

    let mut silent = Client::connect(listen);
    assert_eq!(silent.reply(), UPSTREAM_BANNER);
    let mut second = Client::connect(listen);
    assert!(second.reply().starts_with(b"421 4.7.0 "));
    // Once the first one speaks it is no longer embryonic (exempt path: first bytes).
    silent.send(b"HELO me\r\n");
    assert_eq!(silent.reply(), b"250 mx.upstream.test\r\n");
    let mut third = Client::connect(listen);
    assert_eq!(third.reply(), UPSTREAM_BANNER);
}

#[test]
fn a_port_held_by_another_process_refuses_start() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = Upstream::start(&[]);
    let conf = format!(
        "[admin]\nlisten = \"\"\n\n[[listener]]\nlisten = \"{}\"\nupstream = \"{}\"\npolicy = \"none\"\n",
        held.local_addr().unwrap(),
        up.addr
    );
    let mut gate = Gate::spawn(&conf, &[]);
    assert_eq!(gate.wait_exit(LIMIT), Some(1));
    let err = gate.stderr();
    assert!(
        err.contains("cannot listen on") && err.contains(&held.local_addr().unwrap().to_string()),
        "{err}"
    );
}

#[test]
fn upstream_dying_mid_session_closes_the_client_promptly() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::AsRawFd;
    // An upstream that greets, reads one command, then aborts with RST.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(UPSTREAM_BANNER).unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    });
    let gate = Gate::start(&config_text(addr, "policy = \"default\"", ""));

    let mut c = Client::connect(gate.listen());
    assert!(c.reply().starts_with(b"220 "));
    c.send(b"HELO me\r\n");
    let started = Instant::now();
    let rest = c.read_to_end();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        rest.is_empty() || rest.starts_with(b"421 "),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    gate.wait_log("lost");
}

#[test]
fn per_client_embryonic_max_caps_silent_sessions_per_address() {
    let (_up, gate) = gated_upstream(
        &[],
        "policy = \"none\"",
        "[limits]\nper_client_embryonic_max = 1",
    );
    let listen = gate.listen();

    let mut silent = Client::connect_from("127.0.0.5", listen);
    assert_eq!(silent.reply(), UPSTREAM_BANNER);
    let mut second = Client::connect_from("127.0.0.5", listen);
    assert!(second.reply().starts_with(b"421 4.7.0 "));
    let mut elsewhere = Client::connect_from("127.0.0.6", listen);
    assert_eq!(elsewhere.reply(), UPSTREAM_BANNER);
    silent.send(b"HELO me\r\n");
    assert_eq!(silent.reply(), b"250 mx.upstream.test\r\n");
    let mut third = Client::connect_from("127.0.0.5", listen);
    assert_eq!(
        third.reply(),
        UPSTREAM_BANNER,
        "no longer embryonic, slot free"
    );
}

#[test]
fn ipv6_listener_relays_to_an_ipv4_upstream() {
    std::net::TcpListener::bind("[::1]:0")
        .expect("this test needs an IPv6 loopback (::1) on the machine");
    let up = Upstream::start(&[]);
    let conf = format!(
        "[admin]\nlisten = \"\"\n\n[[listener]]\nlisten = \"[::1]:0\"\nupstream = \"{}\"\npolicy = \"none\"\n",
        up.addr
    );
    let gate = Gate::start(&conf);
    let listen = gate.listen();
    assert!(listen.is_ipv6(), "{listen}");
    let mut c = Client::connect(listen);
    assert_eq!(c.reply(), UPSTREAM_BANNER);
    c.send(b"QUIT\r\n");
    assert_eq!(c.reply(), b"221 2.0.0 Bye\r\n");
}
