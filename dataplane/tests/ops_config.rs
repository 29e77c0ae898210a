//! Config footguns an operator meets first, through the real binary: an upstream
//! written as a host name, `max_connections` alone, and the message a privileged port
//! gives a process without the capability to bind it.

mod common;

use std::process::Command;

use common::*;

#[test]
fn an_upstream_given_as_a_host_name_is_resolved_and_relayed_to() {
    let upstream = Upstream::start(&[]);
    let (conf, listen) = config(
        local(1),
        "policy = \"default\"",
        "[limits]\nmax_connections = 1000",
    );
    let conf = conf.replace(
        "upstream = \"127.0.0.1:1\"",
        &format!("upstream = \"localhost:{}\"", upstream.addr.port()),
    );
    let gate = Gate::start(&conf);
    assert!(
        gate.stderr()
            .contains(&format!("-> 127.0.0.1:{}", upstream.addr.port()))
            || gate
                .stderr()
                .contains(&format!("-> [::1]:{}", upstream.addr.port())),
        "{}",
        gate.stderr()
    );
    let mut client = Client::connect(listen);
    let banner = client.reply();
    assert!(banner.starts_with(b"220 "), "{banner:?}");
    client.send(b"QUIT\r\n");
    assert!(client.reply().starts_with(b"221"));
}

#[test]
fn an_unresolvable_upstream_host_name_is_a_located_check_error() {
    let dir = scratch_dir("resolve");
    let (code, _, stderr) = check_config(
        &dir.join("bad.toml"),
        "[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"no-such-host.invalid:25\"\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("line 3, column 12: listener[0].upstream: cannot resolve host name `no-such-host.invalid`"),
        "{stderr}"
    );
}

/// As an unprivileged user (nobody, no capabilities), port 1 is refused with EACCES;
/// the error must name the two fixes, not suggest another process holds the port.
#[test]
fn a_privileged_port_refused_names_the_capability_and_the_sysctl() {
    let unprivileged_start: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .expect("read net.ipv4.ip_unprivileged_port_start")
            .trim()
            .parse()
            .unwrap();
    assert!(
        unprivileged_start > 1,
        "this machine lets anyone bind port 1; the test needs the default sysctl"
    );
    let dir = scratch_dir("eacces");
    let path = dir.join("port1.toml");
    std::fs::write(
        &path,
        "[admin]\nlisten = \"\"\n\n[[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2526\"\n",
    )
    .unwrap();
    // A copy the unprivileged user can reach whatever the build directory's modes.
    let binary = dir.join("smtpgate");
    std::fs::copy(env!("CARGO_BIN_EXE_smtpgate"), &binary).unwrap();
    set_mode(&binary, 0o755);
    set_mode(&dir, 0o755);
    set_mode(&path, 0o644);
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&binary)
        .args(["run", "--cores", "1", "-c"])
        .arg(&path)
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on 127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains("CAP_NET_BIND_SERVICE"), "{stderr}");
    assert!(
        stderr.contains("net.ipv4.ip_unprivileged_port_start"),
        "{stderr}"
    );
    assert!(!stderr.contains("another process"), "{stderr}");
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
