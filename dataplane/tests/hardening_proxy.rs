//! Real client addresses behind an L4 balancer: Debian's HAProxy with `send-proxy-v2`
//! in front of smtpgate (`accept_proxy` naming it). Exemption, per-client limits and
//! the PROXY header smtpgate sends upstream all see the client behind HAProxy; a PROXY
//! header from anyone else is never trusted, and a trusted source that sends none is
//! closed. Loopback only (clients bind 127.0.0.x sources); every wait bounded.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// HAProxy in TCP mode on `listen`, sending a PROXY v2 header to `server`.
struct Haproxy {
    child: Child,
}

impl Haproxy {
    fn start(listen: SocketAddr, server: SocketAddr) -> Haproxy {
        let dir = scratch_dir("haproxy");
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 30s\n  timeout server 30s\nfrontend mx\n  bind {listen}\n  \
                 default_backend gate\nbackend gate\n  server smtpgate {server} send-proxy-v2\n"
            ),
        )
        .unwrap();
        let binary = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("haproxy is not installed (Debian package haproxy; scripts/test installs it)");
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("start haproxy");
        // Ready once it accepts.
        let started = Instant::now();
        while std::net::TcpStream::connect(listen).is_err() {
            assert!(started.elapsed() < LIMIT, "haproxy did not start");
            thread::sleep(Duration::from_millis(20));
        }
        Haproxy { child }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An upstream that reads smtpgate's PROXY v2 header (IPv4: 28 bytes), records the
/// source address in it, greets, and holds the connection until the peer closes.
fn header_recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<IpAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sources = Arc::new(Mutex::new(Vec::new()));
    let seen = sources.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            thread::spawn(move || {
                let mut s = stream;
                s.set_read_timeout(Some(LIMIT)).unwrap();
                let mut header = [0u8; 28];
                if s.read_exact(&mut header).is_err() {
                    return;
                }
                assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
                assert_eq!(header[13], 0x11, "TCP over IPv4");
                let source = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
                seen.lock().unwrap().push(IpAddr::V4(source));
                let _ = s.write_all(UPSTREAM_BANNER);
                let mut scrap = [0u8; 1024];
                while matches!(s.read(&mut scrap), Ok(n) if n > 0) {}
            });
        }
    });
    (addr, sources)
}

fn status(admin: SocketAddr) -> serde_json::Value {
    let response = http_get(admin, "/status");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("/status: {e}: {response}"))
}

#[test]
fn behind_haproxy_exemption_limits_and_the_upstream_header_use_the_real_client_address() {
    let (upstream, sources) = header_recording_upstream();
    let gate_listen = local(free_port());
    let admin = local(free_port());
    let conf = format!(
        "[admin]\nlisten = \"{admin}\"\n[limits]\nper_client_max = 1\n\
         [[listener]]\nlisten = \"{gate_listen}\"\nupstream = \"{upstream}\"\n\
         policy = \"default\"\nexempt = [\"127.0.0.2/32\"]\naccept_proxy = [\"127.0.0.1/32\"]\n\
         proxy_protocol = true\n"
    );
    let _gate = Gate::start(&conf);
    let front = local(free_port());
    let _haproxy = Haproxy::start(front, gate_listen);

    // Every connection reaches smtpgate from HAProxy's 127.0.0.1; only the PROXY
    // header says who the client is.
    let mut exempt = Client::connect_from("127.0.0.2", front);
    assert_eq!(
        exempt.reply(),
        UPSTREAM_BANNER,
        "127.0.0.2 is exempt: banner verbatim"
    );
    let mut inspected = Client::connect_from("127.0.0.3", front);
    let banner = inspected.reply();
    assert!(
        banner.starts_with(b"220 "),
        "{:?}",
        String::from_utf8_lossy(&banner)
    );
    assert_ne!(
        banner, UPSTREAM_BANNER,
        "127.0.0.3 is inspected: banner masked"
    );

    // per_client_max = 1 counts 127.0.0.3, not the balancer (which already has two).
    let mut second = Client::connect_from("127.0.0.3", front);
    let refused = second.read_to_end();
    assert!(
        refused.starts_with(b"421 4.7.0 "),
        "{:?}",
        String::from_utf8_lossy(&refused)
    );
    let mut other = Client::connect_from("127.0.0.4", front);
    assert!(
        other.reply().starts_with(b"220 "),
        "another client behind HAProxy is admitted"
    );

    let mut seen = sources.lock().unwrap().clone();
    // Haproxy::start's readiness probe came from 127.0.0.1 itself.
    seen.retain(|ip| *ip != IpAddr::V4(Ipv4Addr::LOCALHOST));
    seen.sort();
    let expected: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(
        seen, expected,
        "the PROXY header sent upstream names the real client"
    );
    assert_eq!(
        status(admin)["connections"]["rejected"]["per_client_max"],
        1
    );
    drop((exempt, inspected, other));
}

#[test]
fn a_proxy_header_from_an_untrusted_source_is_not_believed_and_a_trusted_source_must_send_one() {
    let up = Upstream::start(&[]);
    let gate_listen = local(free_port());
    let admin = local(free_port());
    let conf = format!(
        "[admin]\nlisten = \"{admin}\"\n\
         [[listener]]\nlisten = \"{gate_listen}\"\nupstream = \"{}\"\n\
         policy = \"default\"\nexempt = [\"127.0.0.2/32\"]\naccept_proxy = [\"127.0.0.1/32\"]\n",
        up.addr
    );
    let _gate = Gate::start(&conf);

    // 127.0.0.5 is no balancer: its claim to be the exempt 127.0.0.2 is just bytes.
    let mut liar = Client::connect_from("127.0.0.5", gate_listen);
    liar.send(b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n");
    let seen = liar.reply();
    assert!(
        !seen.is_empty() && seen != UPSTREAM_BANNER,
        "the liar was treated as exempt: {:?}",
        String::from_utf8_lossy(&seen)
    );

    // 127.0.0.1 is the balancer: a connection from it without a header is closed.
    let mut headless = Client::connect_from("127.0.0.1", gate_listen);
    headless.send(b"EHLO sneaky.test\r\n");
    let seen = headless.read_to_end();
    assert!(seen.is_empty(), "{:?}", String::from_utf8_lossy(&seen));
    let started = Instant::now();
    while status(admin)["connections"]["proxy_header_refused"] != 1 {
        assert!(started.elapsed() < LIMIT, "{}", status(admin));
        thread::sleep(Duration::from_millis(20));
    }
}
