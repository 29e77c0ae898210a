//! Deployment, through the real binary and the shipped files: systemd's notify
//! protocol (READY, RELOADING, WATCHDOG, STOPPING), `--watch-config` turning a changed
//! file into a reload, `--admin-listen`, and the unit, container and DaemonSet files
//! parsing and agreeing with each other.

mod common;

use std::os::unix::net::UnixDatagram;

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

/// Collects datagrams until one contains `wanted` (bounded); returns all seen.
fn wait_notify(socket: &UnixDatagram, seen: &mut Vec<String>, wanted: &str) {
    let deadline = Instant::now() + LIMIT;
    let mut buf = [0u8; 4096];
    while !seen.iter().any(|m| m.contains(wanted)) {
        assert!(Instant::now() < deadline, "no {wanted:?} in {seen:?}");
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let up = Upstream::start(&[]);
    let (conf, _) = config(up.addr, "policy = \"default\"", "");
    let dir = scratch_dir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Only this child gets the variables (setting them on the test process would leak
    // them into the other tests' children).
    let config_path = dir.join("smtpgate.toml");
    std::fs::write(&config_path, &conf).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_smtpgate"))
        .args(["run", "--cores", "2", "-c"])
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut gate = Child(child);
    let mut seen = Vec::new();
    wait_notify(&socket, &mut seen, "READY=1");
    assert!(
        seen[0].contains("STATUS=serving 1 listener(s) on 2 shard(s)"),
        "{seen:?}"
    );
    wait_notify(&socket, &mut seen, "WATCHDOG=1");
    gate.signal("-HUP");
    wait_notify(&socket, &mut seen, "RELOADING=1");
    let reloading = seen.iter().position(|m| m.contains("RELOADING=1")).unwrap();
    assert!(seen[reloading].contains("MONOTONIC_USEC="), "{seen:?}");
    let deadline = Instant::now() + LIMIT;
    while !seen[reloading + 1..].iter().any(|m| m.contains("READY=1")) {
        assert!(Instant::now() < deadline, "no READY after reload: {seen:?}");
        let mut buf = [0u8; 4096];
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    gate.signal("-TERM");
    wait_notify(&socket, &mut seen, "STOPPING=1");
    assert_eq!(gate.wait_exit(), Some(0));
}

/// A child smtpgate, killed on drop.
struct Child(std::process::Child);

impl Child {
    /// `kill -NAME`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.0.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "smtpgate did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_changed_config_file_is_reloaded_with_watch_config_and_admin_listen_overrides() {
    let up = Upstream::start(&[]);
    let (conf, _) = config(up.addr, "policy = \"default\"", "");
    let admin = local(free_port());
    let admin_arg = admin.to_string();
    let gate = Gate::start_with(
        &conf,
        &["--watch-config", "200ms", "--admin-listen", &admin_arg],
    );
    let ready = http_get(admin, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200 OK"), "{ready}");
    std::fs::write(&gate.config_path, format!("{conf}\n# edited\n")).unwrap();
    gate.wait_log("changed: reloading");
    gate.wait_log("SIGHUP: reloaded");
    // The counter moves just after the log line: poll (bounded).
    let deadline = Instant::now() + LIMIT;
    loop {
        let metrics = http_get(admin, "/metrics");
        if metrics.contains("smtpgate_config_reloads_total{result=\"success\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    std::fs::write(&baked, toml).unwrap();
    let (code, _, stderr) = smtpgate(&["check", "-c", baked.to_str().unwrap()]);
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
