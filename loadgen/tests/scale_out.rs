//! Scale-out, as the deployment guide describes it, on loopback: HAProxy in TCP
//! mode in front of two smtpgate nodes, sending each a PROXY v2 header (the
//! nodes trust it through `accept_proxy`) and health-checking their `/readyz`;
//! two `smtpgate-loadgen send` processes drive load at the same time and
//! `merge` combines their results. Nothing is lost: the sink received exactly
//! the digests the senders logged. Then one node drains (SIGTERM): its
//! `/readyz` turns 503, HAProxy stops sending it sessions, and further load
//! all arrives through the other node.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;
use testkit::{
    config_text, free_port, http_get, local, peer, run_bounded, scratch_dir, sorted_lines,
    wait_for_listener, Gate, Sink, LIMIT,
};

const LOADGEN: &str = env!("CARGO_BIN_EXE_smtpgate-loadgen");

/// HAProxy balancing over `nodes` (listener, admin) with PROXY v2 and /readyz checks.
struct Balancer {
    child: Child,
    listen: SocketAddr,
}

impl Balancer {
    fn start(dir: &Path, nodes: &[(SocketAddr, SocketAddr)]) -> Balancer {
        let listen = local(free_port());
        let servers: String = nodes
            .iter()
            .enumerate()
            .map(|(i, (smtp, admin))| {
                format!("  server node{i} {smtp} check port {}\n", admin.port())
            })
            .collect();
        let config = format!(
            "global\n  maxconn 1000\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  \
             timeout server 30s\n  retries 3\n  option redispatch\n\
             frontend mx\n  bind {listen}\n  default_backend smtpgate\n\
             backend smtpgate\n  balance roundrobin\n  option httpchk\n  \
             http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host smtpgate\n  \
             http-check expect status 200\n  \
             default-server send-proxy-v2 inter 200ms fall 2 rise 1\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(peer("haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.err")).unwrap())
            .spawn()
            .expect("start haproxy");
        let balancer = Balancer { child, listen };
        wait_for_listener(listen, LIMIT);
        balancer
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node: smtpgate trusting PROXY headers from loopback, in front of the sink.
fn node(sink: SocketAddr) -> Gate {
    Gate::start(&config_text(
        sink,
        "policy = \"default\"\naccept_proxy = [\"127.0.0.0/8\"]",
        "",
    ))
}

/// A counter from a node's /metrics, summed over its labels.
fn metric(admin: SocketAddr, name: &str) -> u64 {
    let response = http_get(admin, "/metrics");
    let samples: Vec<u64> = response
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(!samples.is_empty(), "no {name} in /metrics:\n{response}");
    samples.iter().sum()
}

/// `send` through the balancer on its own thread; returns its JSON and digest log paths.
fn send(target: SocketAddr, dir: &Path, name: &str, messages: u32) -> thread::JoinHandle<PathBuf> {
    let json = dir.join(format!("{name}.json"));
    let mut command = Command::new(LOADGEN);
    command
        .args(["send", "--quiet", "--cores", "1", "--connections", "4"])
        .args(["--size", "1k:70,10k:30", "--pipelining"])
        .args(["--messages", &messages.to_string(), "--target"])
        .arg(target.to_string())
        .arg("--json")
        .arg(&json)
        .arg("--digest-log")
        .arg(dir.join(format!("{name}.sha256")));
    thread::spawn(move || {
        let out = run_bounded(&mut command, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "send failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        json
    })
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn two_nodes_behind_haproxy_with_proxy_v2_lose_nothing_and_one_drains_cleanly() {
    let dir = scratch_dir("scale-out");
    let sink = Sink::start(&dir, &[]);
    let mut nodes = [node(sink.addr), node(sink.addr)];
    let addresses: Vec<(SocketAddr, SocketAddr)> =
        nodes.iter().map(|n| (n.listen(), n.admin())).collect();
    let balancer = Balancer::start(&dir, &addresses);

    // Two load generators at once; their results merged.
    let a = send(balancer.listen, &dir, "a", 400);
    let b = send(balancer.listen, &dir, "b", 400);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let merged_path = dir.join("merged.json");
    let out = run_bounded(
        Command::new(LOADGEN)
            .arg("merge")
            .arg(&a)
            .arg(&b)
            .arg("--json")
            .arg(&merged_path),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:?}");
    let merged = read_json(&merged_path);
    assert_eq!(merged["messages_ok"], 800, "{merged}");
    assert_eq!(merged["messages_failed"], 0, "{merged}");
    let count = |v: &Value| v["latency_us"]["message"]["count"].as_u64().unwrap();
    assert_eq!(
        count(&merged),
        count(&read_json(&a)) + count(&read_json(&b))
    );

    // Both nodes carried sessions, each behind a PROXY header they accepted.
    for (i, (_, admin)) in addresses.iter().enumerate() {
        let accepted = metric(*admin, "smtpgate_connections_accepted_total");
        assert!(accepted >= 2, "node {i} accepted {accepted} sessions");
        assert_eq!(metric(*admin, "smtpgate_proxy_header_refused_total"), 0);
    }

    // Drain node 1: /readyz says 503 (or the node is gone), HAProxy's checks take it
    // out, and new load all goes through node 0.
    let before = metric(addresses[0].1, "smtpgate_connections_accepted_total");
    nodes[1].signal(libc::SIGTERM);
    assert!(
        nodes[1].wait_exit(Duration::from_secs(40)).is_some(),
        "node 1 did not finish draining"
    );
    let c = send(balancer.listen, &dir, "c", 200).join().unwrap();
    let after_drain = read_json(&c);
    assert_eq!(after_drain["messages_ok"], 200, "{after_drain}");
    assert_eq!(after_drain["messages_failed"], 0, "{after_drain}");
    let accepted = metric(addresses[0].1, "smtpgate_connections_accepted_total") - before;
    assert!(
        accepted >= 4,
        "node 0 took {accepted} sessions after the drain"
    );

    // Nothing lost, nothing altered: the sink's digests are exactly the senders'.
    let mut sent: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|name| sorted_lines(&dir.join(format!("{name}.sha256"))))
        .collect();
    sent.sort();
    drop(balancer);
    let (counters, received) = sink.stop();
    assert_eq!(sent.len(), 1000);
    assert_eq!(counters["messages"], 1000);
    assert_eq!(received, sent);
}
