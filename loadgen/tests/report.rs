//! End to end: `compare` against the real smtpgate and HAProxy (its JSON
//! complete and self-consistent, its HTML holding every chart, its TLS rows
//! really terminating TLS and delivering intact), and `merge`
//! of two `send --json` results that ran side by side into one sink.

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::{binary, peer, run_bounded, scratch_dir, Sink};

const LOADGEN: &str = env!("CARGO_BIN_EXE_smtpgate-loadgen");

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing or not a string in {v}"))
}

/// A spread is {median, min, max} with min <= median <= max.
fn assert_spread(v: &Value, what: &str) -> (f64, f64, f64) {
    let (median, min, max) = (num(v, "median"), num(v, "min"), num(v, "max"));
    assert!(
        min <= median && median <= max,
        "{what}: {min} <= {median} <= {max}"
    );
    (median, min, max)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

const INSPECT: &str = "inspect (policy default)";
const EXEMPT: &str = "exempt (policy none)";
const TLS_INSPECT: &str = "TLS inspected (starttls inspect)";
const TLS_EXEMPT: &str = "TLS exempt (starttls passthrough)";
const HAPROXY: &str = "haproxy (tcp mode)";
const DIRECT: &str = "direct to sink";
const PER_CONNECTION: [&str; 3] = [
    "inspect, one message per connection",
    "TLS inspected, one message per connection",
    "TLS exempt, one message per connection",
];

#[test]
fn compare_reports_facts_config_spread_sweep_and_charts_consistently() {
    let smtpgate = binary("smtpgate");
    peer("haproxy");
    let dir = scratch_dir("compare");
    let mut compare = Command::new(LOADGEN);
    compare
        .args(["compare", "--duration", "1s", "--rounds", "2"])
        .args(["--connections", "4", "--size", "1k:80,10k:20"])
        .args(["--rates", "100,200", "--sweep-duration", "1s"])
        .args(["--sweep-rounds", "1", "--cores-for", "150,100000"])
        .arg("--smtpgate")
        .arg(&smtpgate)
        .arg("--out")
        .arg(&dir);
    let out = run_bounded(&mut compare, Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("cost of inspection"), "{stdout}");
    assert!(stdout.contains("cores needed"), "{stdout}");
    assert!(stdout.contains("cost of inspecting TLS"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();

    // Machine and build facts.
    let facts = &report["facts"];
    assert!(!text(facts, "cpu_model").is_empty());
    assert!(num(facts, "cpus") >= 1.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(text(facts, "kernel"), kernel.trim());
    assert!(
        text(facts, "smtpgate_version").starts_with("smtpgate "),
        "{facts}"
    );
    assert!(!text(facts, "smtpgate_commit").is_empty());
    assert_eq!(text(facts, "placement"), "unbound");
    assert_eq!(text(facts, "relay_cores"), "all");
    assert!(
        text(facts, "haproxy_version").contains("HAProxy"),
        "{facts}"
    );
    assert_eq!(text(facts, "started_utc").len(), 20);

    // The config embedded is the one smtpgate ran with.
    let config = text(&report, "smtpgate_config");
    assert_eq!(
        config,
        std::fs::read_to_string(dir.join("smtpgate.toml")).unwrap()
    );
    assert!(config.contains("policy = \"default\"") && config.contains("policy = \"none\""));
    assert!(
        config.contains("[tls]") && dir.join("tls-cert.pem").is_file(),
        "{config}"
    );
    assert!(config.contains("starttls = \"inspect\"\nupstream_tls = \"opportunistic\""));
    assert_eq!(
        config.matches("starttls = \"passthrough\"").count(),
        3,
        "{config}"
    );
    assert!(text(&report, "haproxy_config").contains("mode tcp"));

    // Every path, the baselines by default; each figure's spread over rounds.
    let paths = report["paths"].as_array().unwrap();
    let names: Vec<&str> = paths.iter().map(|p| text(p, "path")).collect();
    assert_eq!(
        names,
        [INSPECT, EXEMPT, TLS_INSPECT, TLS_EXEMPT, HAPROXY, DIRECT]
    );
    let runs = report["runs"].as_array().unwrap();
    for p in paths {
        let name = text(p, "path");
        let mine: Vec<&Value> = runs
            .iter()
            .filter(|r| text(r, "path") == name && r["offered_msgs_per_s"].is_null())
            .collect();
        assert_eq!(mine.len(), 2, "{name}: one closed-loop run per round");
        assert_eq!(num(p, "rounds"), 2.0);
        assert!(
            num(p, "messages_ok") > 0.0 && num(p, "messages_failed") == 0.0,
            "{p}"
        );
        let rates: Vec<f64> = mine.iter().map(|r| num(r, "msgs_per_s")).collect();
        let (median, min, max) = assert_spread(&p["msgs_per_s"], name);
        assert!(close(min, rates[0].min(rates[1])) && close(max, rates[0].max(rates[1])));
        assert!(close(median, (rates[0] + rates[1]) / 2.0));
        assert_spread(&p["mb_per_s"], name);
        assert_spread(&p["end_of_data_p99_us"], name);
        let has_relay = name != DIRECT;
        assert_eq!(p["has_relay"], has_relay);
        for key in [
            "relay_cores",
            "relay_cpu_us_per_msg",
            "msgs_per_s_per_busy_core",
        ] {
            assert_eq!(!p[key].is_null(), has_relay, "{name} {key}");
            if has_relay {
                assert_spread(&p[key], name);
            }
        }
        for r in &mine {
            if has_relay {
                let cpu = num(r, "relay_cpu_s");
                assert!(
                    close(num(r, "relay_cores"), cpu / num(r, "elapsed_s")),
                    "{r}"
                );
                assert!(close(
                    num(r, "relay_cpu_us_per_msg"),
                    cpu * 1e6 / num(r, "messages_ok")
                ));
            }
        }
        // The latency percentile curve: all five points, rising, with whiskers.
        let curve = p["message_latency"].as_array().unwrap();
        let labels: Vec<&str> = curve.iter().map(|q| text(q, "label")).collect();
        assert_eq!(labels, ["p50", "p90", "p99", "p99.9", "max"]);
        let values: Vec<f64> = curve.iter().map(|q| num(q, "all_rounds_us")).collect();
        assert!(
            values[0] > 0.0 && values.windows(2).all(|w| w[0] <= w[1]),
            "{values:?}"
        );
        for q in curve {
            assert!(num(q, "min_us") <= num(q, "max_us"), "{q}");
        }
    }

    // The headline ratios pair the runs of each round.
    let per_round = |round: f64, path: &str, key: &str| {
        runs.iter()
            .find(|r| {
                text(r, "path") == path
                    && num(r, "round") == round
                    && r["offered_msgs_per_s"].is_null()
            })
            .map(|r| num(r, key))
            .unwrap()
    };
    let ratios: Vec<f64> = [1.0, 2.0]
        .iter()
        .map(|&round| {
            per_round(round, INSPECT, "msgs_per_s") / per_round(round, EXEMPT, "msgs_per_s")
        })
        .collect();
    let (_, min, max) = assert_spread(
        &report["cost_of_inspection"]["throughput_ratio"],
        "throughput ratio",
    );
    assert!(close(min, ratios[0].min(ratios[1])) && close(max, ratios[0].max(ratios[1])));
    assert_spread(
        &report["cost_of_inspection"]["cpu_per_message_ratio"],
        "CPU ratio",
    );

    // The TLS rows: their ratios pair their runs of each round too; one
    // message per connection for the handshake; smtpgate really terminated
    // TLS on both sides; every accepted message reached the STARTTLS sink
    // unaltered.
    let tls = &report["tls"];
    let tls_ratios: Vec<f64> = [1.0, 2.0]
        .iter()
        .map(|&round| {
            per_round(round, TLS_INSPECT, "msgs_per_s") / per_round(round, TLS_EXEMPT, "msgs_per_s")
        })
        .collect();
    let (_, min, max) = assert_spread(
        &tls["inspected_over_exempt"]["throughput_ratio"],
        "TLS throughput ratio",
    );
    assert!(close(min, tls_ratios[0].min(tls_ratios[1])));
    assert!(close(max, tls_ratios[0].max(tls_ratios[1])));
    let cpu_ratio = |round| {
        per_round(round, TLS_INSPECT, "relay_cpu_us_per_msg")
            / per_round(round, TLS_EXEMPT, "relay_cpu_us_per_msg")
    };
    let (_, min, max) = assert_spread(
        &tls["inspected_over_exempt"]["cpu_per_message_ratio"],
        "TLS CPU ratio",
    );
    assert!(close(min, cpu_ratio(1.0).min(cpu_ratio(2.0))));
    assert!(close(max, cpu_ratio(1.0).max(cpu_ratio(2.0))));
    assert_spread(
        &tls["tls_over_plaintext"]["throughput_ratio"],
        "TLS over plaintext",
    );
    assert_eq!(num(tls, "per_connection_duration_s"), 1.0);
    let per_connection = tls["per_connection"].as_array().unwrap();
    let series: Vec<&str> = per_connection.iter().map(|p| text(p, "path")).collect();
    assert_eq!(series, PER_CONNECTION);
    for p in per_connection {
        assert_eq!(num(p, "rounds"), 2.0);
        assert!(
            num(p, "messages_ok") > 0.0 && num(p, "messages_failed") == 0.0,
            "{p}"
        );
        assert_spread(&p["relay_cpu_us_per_msg"], text(p, "path"));
    }
    let handshake = |round| {
        per_round(round, PER_CONNECTION[1], "relay_cpu_us_per_msg")
            - per_round(round, PER_CONNECTION[0], "relay_cpu_us_per_msg")
    };
    let (median, min, max) =
        assert_spread(&tls["handshake_cpu_us_per_connection"], "handshake CPU");
    assert!(close(min, handshake(1.0).min(handshake(2.0))));
    assert!(close(max, handshake(1.0).max(handshake(2.0))));
    assert!(
        median > 0.0,
        "TLS costs the relay CPU per connection: {median}"
    );
    // Each one-message connection on the TLS inspected path is one TLS
    // session with the client and one with the sink (and there are more).
    let tls_connections = num(&per_connection[1], "messages_ok");
    let sessions = &tls["sessions_established"];
    assert!(num(sessions, "client") >= tls_connections, "{sessions}");
    assert!(num(sessions, "upstream") >= tls_connections, "{sessions}");
    let delivery = &tls["delivery"];
    assert_eq!(delivery["digests_match"], true, "{delivery}");
    assert_eq!(
        num(delivery, "messages_sent"),
        num(delivery, "messages_received")
    );
    // Warm-up runs deliver too; the measured runs are a part.
    let measured: f64 = paths
        .iter()
        .chain(per_connection)
        .filter(|p| text(p, "path").contains("TLS"))
        .map(|p| num(p, "messages_ok"))
        .sum();
    assert!(
        num(delivery, "messages_sent") >= measured && measured > 0.0,
        "{delivery} vs {measured}"
    );

    // The sweep: both smtpgate paths at each offered rate plus their
    // closed-loop point, and cores needed read off that curve.
    let sweep = &report["sweep"];
    assert_eq!(sweep["rates"], serde_json::json!([100.0, 200.0]));
    let points = sweep["points"].as_array().unwrap();
    assert_eq!(points.len(), 6, "{points:?}");
    for p in points {
        let offered = &p["offered_msgs_per_s"];
        let (achieved, _, _) = assert_spread(&p["achieved_msgs_per_s"], "achieved");
        if let Some(offered) = offered.as_f64() {
            assert!(
                achieved <= offered * 1.1 && achieved >= offered * 0.5,
                "open loop at {offered} msgs/s relayed {achieved}"
            );
        }
        let (cores, _, _) = assert_spread(&p["relay_cores"], "cores");
        let (per_msg, _, _) = assert_spread(&p["relay_cpu_us_per_msg"], "cpu per msg");
        assert!(cores > 0.0 && per_msg > 0.0, "{p}");
        assert_eq!(num(p, "messages_failed"), 0.0);
    }
    let sweep_runs = runs
        .iter()
        .filter(|r| !r["offered_msgs_per_s"].is_null())
        .count();
    assert_eq!(sweep_runs, 4, "two rates x two paths x one round");
    let needed = sweep["cores_needed"].as_array().unwrap();
    assert_eq!(needed.len(), 4, "{needed:?}");
    for n in needed {
        let (cores, _, _) = assert_spread(&n["cores"], "cores needed");
        assert!(cores > 0.0);
        let expected = if num(n, "msgs_per_s") == 100_000.0 {
            "extrapolated"
        } else {
            "interpolated"
        };
        assert_eq!(text(n, "basis"), expected, "{n}");
    }

    // The page: every chart and table, the facts and the config.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    for title in [
        "<title>Messages per second</title>",
        "<title>Relay CPU per message (µs)</title>",
        "<title>Messages per second per busy relay core</title>",
        "<title>Latency percentiles</title>",
        "<title>Relay cores against message rate</title>",
        "Cores needed for a message rate",
        "Machine and build",
        "Every run",
    ] {
        assert!(html.contains(title), "{title} missing from the page");
    }
    assert_eq!(html.matches("<svg").count(), 5);
    assert!(html.contains("<h2>TLS</h2>") && html.contains("TLS inspected ÷ TLS exempt"));
    assert!(html.contains("their SHA-256 digests match"));
    assert!(html.contains("class=\"big\">×"), "headline ratio");
    assert!(html.contains(&format!("{}</td>", text(facts, "kernel"))));
    assert!(html.contains("policy = &quot;default&quot;"));
    for name in names.into_iter().chain(PER_CONNECTION) {
        assert!(html.contains(name), "{name}");
    }
}

#[test]
fn compare_without_tls_rows_has_neither_their_listeners_nor_their_figures() {
    let smtpgate = binary("smtpgate");
    let dir = scratch_dir("compare-no-tls");
    let mut compare = Command::new(LOADGEN);
    compare
        .args(["compare", "--tls", "off", "--baselines", "none"])
        .args(["--duration", "500ms", "--rounds", "1", "--rates", "none"])
        .args(["--connections", "2", "--size", "1k"])
        .arg("--smtpgate")
        .arg(&smtpgate)
        .arg("--out")
        .arg(&dir);
    let out = run_bounded(&mut compare, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("TLS"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert!(report["tls"].is_null());
    assert_eq!(report["load"]["tls_rows"], false);
    let names: Vec<&str> = report["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| text(p, "path"))
        .collect();
    assert_eq!(names, [INSPECT, EXEMPT]);
    let config = text(&report, "smtpgate_config");
    assert!(
        !config.contains("tls") && !config.contains("starttls"),
        "{config}"
    );
    assert!(!dir.join("sink-tls.log").exists());
}

/// Runs `send --json DIR/NAME` on its own thread, so that two run side by side.
fn send_json(target: &str, dir: &Path, name: &str, messages: &str) -> std::thread::JoinHandle<()> {
    let mut send = Command::new(LOADGEN);
    send.args(["send", "--quiet", "--cores", "1", "--target", target])
        .args(["--connections", "3", "--messages", messages, "--size", "1k"])
        .arg("--json")
        .arg(dir.join(name));
    std::thread::spawn(move || {
        let out = run_bounded(&mut send, Duration::from_secs(30));
        assert!(out.status.success(), "{out:?}");
    })
}

#[test]
fn merge_adds_two_simultaneous_sends_and_their_histograms() {
    let dir = scratch_dir("merge");
    let sink = Sink::start(&dir, &[]);
    let target = sink.addr.to_string();
    let a = send_json(&target, &dir, "a.json", "300");
    let b = send_json(&target, &dir, "b.json", "200");
    a.join().unwrap();
    b.join().unwrap();
    let mut merge = Command::new(LOADGEN);
    merge
        .arg("merge")
        .arg(dir.join("a.json"))
        .arg(dir.join("b.json"))
        .arg("--json")
        .arg(dir.join("merged.json"));
    let out = run_bounded(&mut merge, Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("merged 2 reports"));

    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let (a, b, merged) = (read("a.json"), read("b.json"), read("merged.json"));
    assert_eq!(num(&merged, "messages_ok"), 500.0);
    assert_eq!(num(&merged, "messages_failed"), 0.0);
    assert_eq!(num(&merged, "connections"), 6.0);
    assert!(close(
        num(&merged, "msgs_per_s"),
        num(&a, "msgs_per_s") + num(&b, "msgs_per_s")
    ));
    for step in ["message", "end_of_data", "connect"] {
        let count = |v: &Value| num(&v["latency_us"][step], "count");
        assert_eq!(count(&merged), count(&a) + count(&b), "{step}");
        // The merged percentile lies within the two inputs' (a sum of
        // histograms, not an average: it is one of the recorded values).
        let p99 = |v: &Value| num(&v["latency_us"][step], "p99");
        let max = |v: &Value| num(&v["latency_us"][step], "max");
        assert!(p99(&merged) >= p99(&a).min(p99(&b)) && p99(&merged) <= p99(&a).max(p99(&b)));
        assert_eq!(max(&merged), max(&a).max(max(&b)), "{step}");
        assert!(!text(&merged["histograms"], step).is_empty());
    }
    assert_eq!(merged["merged_from"].as_array().unwrap().len(), 2);
    // What the sink received is what the merged report counts.
    let (counters, received) = sink.stop();
    assert_eq!((counters["messages"], received.len()), (500, 500));

    // Different loads are refused, with exit status 2.
    let mut different: Value = read("a.json");
    different["size"] = Value::from("10k");
    std::fs::write(dir.join("c.json"), different.to_string()).unwrap();
    let out = run_bounded(
        Command::new(LOADGEN)
            .arg("merge")
            .arg(dir.join("a.json"))
            .arg(dir.join("c.json")),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("size 1k vs 10k"));
}
