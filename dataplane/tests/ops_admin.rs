//! The admin endpoint as probes and scrapers use it, through the real binary: idle
//! connections cannot delay an answer, `/healthz` and `/readyz` tell the truth (also to
//! HEAD), `/readyz` fails while draining, and a configured bearer token guards
//! `/status` and `/metrics` but not the probes.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn three_idle_admin_connections_do_not_delay_status_past_one_second() {
    let (_up, gate) = gated_upstream(&[], "policy = \"default\"", "");
    let admin = gate.admin();
    // Connected, never sending a byte (and one with half a request line).
    let idle: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = TcpStream::connect(admin).unwrap();
            if i == 2 {
                s.write_all(b"GET /sta").unwrap();
            }
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let status = http_get(admin, "/status");
    let waited = started.elapsed();
    assert!(status.starts_with("HTTP/1.1 200 OK"), "{status}");
    assert!(
        waited < Duration::from_secs(1),
        "/status took {waited:?} behind idle connections"
    );
    let health = http_get(admin, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    drop(idle);
}

#[test]
fn probes_answer_get_and_head_and_readyz_fails_while_draining() {
    let (_up, mut gate) = gated_upstream(
        &[],
        "policy = \"default\"",
        "[timeouts]\nshutdown_drain = \"20s\"",
    );
    let (listen, admin) = (gate.listen(), gate.admin());

    let health = http_request(admin, "GET", "/healthz", "");
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    let head = http_request(admin, "HEAD", "/healthz", "");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    assert!(head.contains("Content-Length: 3\r\n"), "{head}");
    let ready = http_request(admin, "GET", "/readyz", "");
    assert!(ready.starts_with("HTTP/1.1 200 OK"), "{ready}");
    let post = http_request(admin, "POST", "/healthz", "Content-Length: 0\r\n");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");

    // A live session keeps the process draining after SIGTERM.
    let mut live = Client::connect(listen);
    assert!(live.reply().starts_with(b"220"));
    gate.signal(15);
    let deadline = Instant::now() + LIMIT;
    loop {
        let ready = http_request(admin, "GET", "/readyz", "");
        if ready.starts_with("HTTP/1.1 503") {
            assert!(ready.ends_with("draining\n"), "{ready}");
            break;
        }
        assert!(Instant::now() < deadline, "{ready}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let health = http_request(admin, "GET", "/healthz", "");
    assert!(
        health.starts_with("HTTP/1.1 200 OK"),
        "draining shards are alive: {health}"
    );
    live.send(b"QUIT\r\n");
    live.reply();
    drop(live);
    assert_eq!(gate.wait_exit(LIMIT), Some(0));
}

#[test]
fn a_bearer_token_guards_status_and_metrics_but_not_the_probes() {
    let up = Upstream::start(&[]);
    let dir = scratch_dir("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let conf = config_text(up.addr, "policy = \"default\"", "").replacen(
        "[admin]\n",
        &format!("[admin]\ntoken_file = \"{}\"\n", token_file.display()),
        1,
    );
    let gate = Gate::start(&conf);
    let admin = gate.admin();

    for path in ["/status", "/metrics"] {
        let refused = http_request(admin, "GET", path, "");
        assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
        assert!(refused.contains("WWW-Authenticate: Bearer"), "{refused}");
        let wrong = http_request(admin, "GET", path, "Authorization: Bearer s3cret-tokeN\r\n");
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let allowed = http_request(admin, "GET", path, "Authorization: Bearer s3cret-token\r\n");
        assert!(allowed.starts_with("HTTP/1.1 200 OK"), "{allowed}");
    }
    for path in ["/healthz", "/readyz"] {
        let open = http_request(admin, "GET", path, "");
        assert!(open.starts_with("HTTP/1.1 200 OK"), "{open}");
    }
}
