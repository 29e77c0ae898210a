//! Operating smtpgate: `check`, the admin endpoint, SIGHUP reload, SIGTERM drain and
//! the PROXY v2 header.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use testkit::{binary, run_bounded};

#[test]
fn check_accepts_a_good_config_and_lists_every_error_of_a_bad_one() {
    let dir = scratch_dir("check");
    let good = config_text(local(2526), "policy = \"default\"", "");
    let (code, stdout, _) = check_config(&dir.join("good.toml"), &good);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("ok"), "{stdout}");

    let bad = dir.join("bad.toml");
    let (code, _, stderr) = check_config(
        &bad,
        "[limits]\nmax_connections = 10\nno_such_key = 1\n\n[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2526\"\npolicy = \"strict\"\n\n[policy.strict]\nextends = \"default\"\nrules = [\"match cmd line length gt banana drop-connection\"]\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no_such_key"), "{stderr}");
    assert!(stderr.contains("banana"), "{stderr}");
    assert!(stderr.lines().count() >= 2, "one line per error: {stderr}");
    assert!(stderr.contains("bad.toml"), "names the file: {stderr}");

    // `run` refuses the same file with the same errors.
    let (code, _, run_stderr) = smtpgate(&["run", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(run_stderr.contains("banana"), "{run_stderr}");

    let (code, _, stderr) = smtpgate(&["check", "-c", "/nonexistent/smtpgate.toml"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn status_and_metrics_count_connections_and_rule_hits() {
    let (_up, gate) = gated_upstream(&[], "policy = \"default\"", "");

    let mut c = Client::after_greeting(gate.listen());
    let mut long = b"HELO ".to_vec();
    long.extend(std::iter::repeat_n(b'h', 600));
    long.extend_from_slice(b"\r\n");
    c.send(&long);
    assert!(c.reply().starts_with(b"421 4.7.0"));
    assert_eq!(c.read_to_end(), b"");

    let admin = gate.admin();
    let status =
        gate.wait_status(|s| s["connections"]["dropped"] == 1 && s["connections"]["active"] == 0);
    assert_eq!(status["connections"]["accepted"], 1);
    let rules = status["listeners"][0]["rules"].as_array().unwrap();
    let long_line = rules
        .iter()
        .find(|r| r["rule"] == "match cmd line length gt 512 drop-connection log")
        .expect("default rule listed with its text");
    assert_eq!(long_line["matched"], 1);
    assert_eq!(long_line["drop"], 1);
    assert_eq!(long_line["log"], 1);
    let banner = rules
        .iter()
        .find(|r| r["mask"] == 1)
        .expect("the banner mask counted");
    assert_eq!(banner["matched"], 1);

    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics.contains("smtpgate_connections_accepted_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE smtpgate_rule_matches_total counter"));
    assert!(metrics
        .contains("rule=\"match cmd line length gt 512 drop-connection log\",action=\"drop\"} 1"));
    assert!(http_get(admin, "/nope").starts_with("HTTP/1.1 404"));
}

#[test]
fn sighup_reload_applies_to_new_sessions_and_a_bad_file_keeps_the_old_config() {
    let up = Upstream::start(&[]);
    let conf = config_text(up.addr, "policy = \"none\"", "");
    let gate = Gate::start(&conf);
    let listen = gate.listen();

    let mut old = Client::connect(listen);
    assert_eq!(old.reply(), UPSTREAM_BANNER);

    std::fs::write(
        &gate.config_path,
        conf.replace("policy = \"none\"", "policy = \"asa-compat\""),
    )
    .unwrap();
    gate.signal(libc::SIGHUP);
    gate.wait_log("reloaded");
    let mut new = Client::connect(listen);
    new.reply_starting(b"220 ***");
    // The live session keeps its policy: unknown verbs still pass verbatim.
    old.send(b"XYZZY\r\n");
    assert_eq!(old.reply(), b"500 5.5.1 Command unrecognized\r\n");
    assert_eq!(up.wait_wire(0, |w| !w.is_empty()), b"XYZZY\r\n");

    std::fs::write(&gate.config_path, "this is not toml [").unwrap();
    gate.signal(libc::SIGHUP);
    gate.wait_log("keeping the current config");
    let mut after = Client::connect(listen);
    assert!(
        after.reply().starts_with(b"220 ***"),
        "still the last good config"
    );
}

#[test]
fn sigterm_stops_accepting_drains_live_sessions_and_exits_zero() {
    let (_up, mut gate) = gated_upstream(
        &[],
        "policy = \"none\"",
        "[timeouts]\nshutdown_drain = \"10s\"",
    );
    let listen = gate.listen();

    let mut live = Client::connect(listen);
    assert_eq!(live.reply(), UPSTREAM_BANNER);
    gate.signal(libc::SIGTERM);
    gate.wait_log("draining");
    // New clients are refused once the listeners close (within a housekeeping tick).
    let deadline = Instant::now() + LIMIT;
    while std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The live session still works, then the process exits cleanly once it ends.
    live.send(b"NOOP\r\n");
    assert_eq!(live.reply(), b"250 2.0.0 Ok\r\n");
    assert_eq!(
        gate.child.try_wait().unwrap(),
        None,
        "waits for the live session"
    );
    live.send(b"QUIT\r\n");
    assert_eq!(live.reply(), b"221 2.0.0 Bye\r\n");
    assert_eq!(gate.wait_exit(LIMIT), Some(0));
}

#[test]
fn proxy_protocol_v2_header_goes_first_to_the_upstream() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let gate = Gate::start(&config_text(
        upstream.local_addr().unwrap(),
        "policy = \"none\"\nproxy_protocol = true",
        "",
    ));
    let listen = gate.listen();

    let client = std::net::TcpStream::connect(listen).unwrap();
    let client_addr = client.local_addr().unwrap();
    let (mut conn, _) = upstream.accept().unwrap();
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    let mut header = [0u8; 28];
    conn.read_exact(&mut header).unwrap();
    let mut expected = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    expected.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    expected.extend_from_slice(&client_addr.port().to_be_bytes());
    expected.extend_from_slice(&listen.port().to_be_bytes());
    assert_eq!(header.to_vec(), expected);
}

const ASA_EXCERPT: &str = "\
regex spam_sender \"@spam\\.example$\"
class-map type regex match-any bad_senders
 match regex spam_sender
policy-map type inspect esmtp edge_esmtp
 parameters
  mask-banner
 match sender-address regex class bad_senders
  drop-connection log
policy-map global_policy
 class smtp
  inspect esmtp edge_esmtp
  set connection conn-max 5000 embryonic-conn-max 500 per-client-max 50 per-client-embryonic-max 10
";

#[test]
fn import_asa_prints_toml_that_check_accepts() {
    let dir = scratch_dir("asa");
    let asa = dir.join("asa.txt");
    std::fs::write(&asa, ASA_EXCERPT).unwrap();
    let (code, toml, stderr) = smtpgate(&["import-asa", asa.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(toml.contains("[policy.edge_esmtp]"), "{toml}");
    assert!(toml.contains("max_connections = 5000"), "{toml}");

    // Imported policy and limits, plus a listener using it: a config `run` accepts.
    let listener = "\n[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2526\"\npolicy = \"edge_esmtp\"\n";
    let (code, _, stderr) = check_config(&dir.join("imported.toml"), &format!("{toml}{listener}"));
    assert_eq!(code, Some(0), "{stderr}\n{toml}");

    std::fs::write(&asa, "hostname fw1\n").unwrap();
    let (code, _, stderr) = smtpgate(&["import-asa", asa.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("esmtp"), "{stderr}");
}

#[test]
fn executor_start_up_failure_is_reported_and_exits_one() {
    let up = Upstream::start(&[]);
    let dir = scratch_dir("memlock");
    let path = dir.join("smtpgate.toml");
    std::fs::write(&path, config_text(up.addr, "policy = \"none\"", "")).unwrap();
    // glommio refuses to start below 512 KiB of RLIMIT_MEMLOCK; that error only
    // surfaces when the executor threads are joined.
    let script = format!(
        "ulimit -l 16 && exec {} run -c {}",
        binary("smtpgate").display(),
        path.display()
    );
    let out = run_bounded(Command::new("sh").args(["-c", &script]), LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("executors failed to start"), "{stderr}");
    assert!(stderr.contains("RLIMIT_MEMLOCK"), "{stderr}");
}

#[test]
fn status_counts_limit_rejections_upstream_failures_and_exempt_sessions() {
    let up = Upstream::start(&[]);
    let dead = local(free_port());
    let conf = config_text(
        up.addr,
        "policy = \"default\"\nexempt = [\"127.0.0.7/32\"]",
        "[limits]\nmax_connections = 1\nmax_embryonic = 1",
    );
    // A second listener whose upstream is down.
    let conf = format!(
        "{conf}\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{dead}\"\npolicy = \"none\"\n"
    );
    let gate = Gate::start(&conf);
    let (listen, down_listen, admin) = (gate.listen(), gate.listener(1), gate.admin());

    let mut exempt = Client::connect_from("127.0.0.7", listen);
    assert_eq!(exempt.reply(), UPSTREAM_BANNER);
    let mut refused = Client::connect(listen);
    assert!(refused.reply().starts_with(b"421 4.7.0"));
    exempt.send(b"QUIT\r\n");
    exempt.reply();
    assert_eq!(exempt.read_to_end(), b"");
    drop(exempt);
    gate.wait_status(|s| s["connections"]["active"] == 0);
    let mut no_upstream = Client::connect(down_listen);
    assert!(no_upstream.reply().starts_with(b"421 4.4.1"));
    assert_eq!(no_upstream.read_to_end(), b"");

    let s = gate.status();
    let c = &s["connections"];
    assert_eq!(c["accepted"], 3, "{s}");
    assert_eq!(c["rejected"]["max_connections"], 1, "{s}");
    assert_eq!(c["exempt"], 1, "{s}");
    assert_eq!(c["upstream_failures"], 1, "{s}");
    assert_eq!(s["listeners"][0]["exempt"], 1, "{s}");
    assert_eq!(s["listeners"][1]["policy"], "none", "{s}");
    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics.contains("smtpgate_connections_rejected_total{limit=\"max_connections\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smtpgate_upstream_failures_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_client_that_never_closes_after_the_server_did_is_finished_not_timed_out() {
    let (_up, gate) = gated_upstream(&[], "policy = \"none\"", "");

    let mut c = Client::after_greeting(gate.listen());
    c.send(b"QUIT\r\n");
    assert_eq!(c.reply(), b"221 2.0.0 Bye\r\n");
    assert_eq!(c.read_to_end(), b"", "the server's close is passed on");
    // Keep our side open: smtpgate ends the session after its close grace.
    let s = gate.wait_status(|s| s["connections"]["active"] == 0);
    assert_eq!(s["connections"]["timeouts"]["idle"], 0, "{s}");
    drop(c);
}
