//! Deployment, through the real binary and the shipped files: systemd's notify
//! protocol (READY, RELOADING, WATCHDOG, STOPPING), `--watch-config` turning a changed
//! file into a reload, `--admin-listen`, and the unit, container and DaemonSet files
//! parsing and agreeing with each other.

mod common;

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use testkit::Datagrams;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let up = Upstream::start(&[]);
    let conf = config_text(up.addr, "policy = \"default\"", "");
    let mut notify = Datagrams::bind("notify");
    // Only this child gets the variables (setting them on the test process would leak
    // them into the other tests' children).
    let mut gate = Gate::spawn_command(&conf, &[], |command, _| {
        command
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", "400000");
    });
    notify.wait("READY=1");
    assert!(
        notify.seen[0].contains("STATUS=serving 1 listener(s) on 2 shard(s)"),
        "{:?}",
        notify.seen
    );
    notify.wait("WATCHDOG=1");
    gate.signal(libc::SIGHUP);
    let reloading = notify.wait_from(0, "RELOADING=1");
    assert!(
        notify.seen[reloading].contains("MONOTONIC_USEC="),
        "{:?}",
        notify.seen
    );
    notify.wait_from(reloading + 1, "READY=1");
    gate.signal(libc::SIGTERM);
    notify.wait("STOPPING=1");
    assert_eq!(gate.wait_exit(LIMIT), Some(0), "smtpgate did not exit");
}

#[test]
fn a_changed_config_file_is_reloaded_with_watch_config_and_admin_listen_overrides() {
    let up = Upstream::start(&[]);
    // The config's admin address is 127.0.0.1:0; the override is on 127.0.0.2, so the
    // readiness line's admin address shows which one was bound.
    let conf = config_text(up.addr, "policy = \"default\"", "");
    let gate = Gate::start_with(
        &conf,
        &["--watch-config", "200ms", "--admin-listen", "127.0.0.2:0"],
    );
    let admin = gate.admin();
    assert_eq!(
        admin.ip(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        "--admin-listen overrides the config"
    );
    let ready = http_get(admin, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200 OK"), "{ready}");
    std::fs::write(&gate.config_path, format!("{conf}\n# edited\n")).unwrap();
    gate.wait_log("changed: reloading");
    gate.wait_log("SIGHUP: reloaded");
    // The counter moves just after the log line: poll (bounded).
    let metrics = gate.wait_metric("smtpgate_config_reloads_total{result=\"success\"}", 1.0);
    assert_eq!(
        metric_value(
            &metrics,
            "smtpgate_config_reloads_total{result=\"success\"}"
        ),
        1.0
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = scratch_dir("unit");
    // The unit as shipped, pointed at this build and an existing user.
    let unit = read("deploy/smtpgate.service")
        .replace("/usr/local/bin/smtpgate", env!("CARGO_BIN_EXE_smtpgate"))
        .replace("User=smtpgate", "User=daemon")
        .replace("Group=smtpgate", "Group=daemon");
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "LimitMEMLOCK=64M",
        "io_uring_setup io_uring_enter io_uring_register",
    ] {
        assert!(unit.contains(key), "{key} missing");
    }
    let path = dir.join("smtpgate.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) is installed; scripts/test installs it");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("Unknown") && !said.contains("Failed"),
        "{said}"
    );
}

#[test]
fn the_daemonset_parses_and_its_probes_ports_and_security_agree() {
    let text = read("deploy/daemonset.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("valid YAML"))
        .collect();
    assert_eq!(docs.len(), 2);
    let config_map = &docs[0];
    assert_eq!(config_map["kind"], "ConfigMap");
    let toml = config_map["data"]["smtpgate.toml"].as_str().unwrap();
    let dir = scratch_dir("daemonset");
    let baked = dir.join("smtpgate.toml");
    let (code, _, stderr) = check_config(&baked, toml);
    assert_eq!(code, Some(0), "the ConfigMap's config: {stderr}");

    let set = &docs[1];
    assert_eq!(set["kind"], "DaemonSet");
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    assert_eq!(
        arg("--cores"),
        container["resources"]["requests"]["cpu"].as_str().unwrap(),
        "one executor per requested core"
    );
    assert_eq!(arg("--admin-listen"), "$(POD_IP):9725");
    assert!(args.contains(&"--watch-config"), "ConfigMap changes reload");
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], 9725, "{probe}");
        assert_eq!(container[probe]["timeoutSeconds"], 1, "{probe}");
    }
    let security = &container["securityContext"];
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(security["capabilities"]["add"][0], "NET_BIND_SERVICE");
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
}

#[test]
fn the_container_build_is_locked_and_exposes_the_baked_config_ports() {
    let file = read("deploy/Containerfile");
    assert!(file.contains("cargo build --release --locked"));
    assert!(file.contains("setcap cap_net_bind_service=+ep /usr/local/bin/smtpgate"));
    let exposed: Vec<u16> = file
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let baked = read("deploy/examples/edge.toml");
    let mut ports: Vec<u16> = baked
        .lines()
        .filter_map(|l| l.trim().strip_prefix("listen = \""))
        .map(|addr| addr.trim_end_matches('"').rsplit(':').next().unwrap())
        .map(|p| p.parse().unwrap())
        .collect();
    ports.sort();
    let mut exposed_sorted = exposed.clone();
    exposed_sorted.sort();
    assert_eq!(
        exposed_sorted, ports,
        "EXPOSE {exposed:?} vs the baked config"
    );
    let ignore = read(".containerignore");
    assert!(ignore.lines().any(|l| l == "target"));
    assert!(ignore.lines().any(|l| l == ".git"));
}
