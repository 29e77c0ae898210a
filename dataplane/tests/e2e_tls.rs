//! STARTTLS end to end with real TLS on both sides: Python's smtplib as the client and
//! a Python SMTP server with a self-signed certificate as the upstream. With policy
//! `default` the session upgrades and the mail arrives through the opaque relay; with
//! `asa-compat` STARTTLS is masked, as the firewall does.

mod common;
mod e2e_support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use e2e_support::*;

/// A one-connection-at-a-time SMTP server with STARTTLS. Each delivered message is
/// written to OUT_DIR/N.eml, with the envelope and whether TLS was on in N.env.
const TLS_UPSTREAM: &str = r#"
import socket, ssl, sys, os
port, cert, key, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(16)
n = 0
def serve(conn):
    global n
    f = conn.makefile("rwb", buffering=0)
    tls = False
    def reply(text):
        f.write(text.encode() + b"\r\n")
    reply("220 tls.upstream.test ESMTP")
    env = []
    while True:
        line = f.readline()
        if not line:
            break
        cmd = line.rstrip(b"\r\n").decode()
        verb = cmd.split(" ")[0].upper()
        if verb == "EHLO":
            reply("250-tls.upstream.test"); reply("250-PIPELINING")
            reply("250 8BITMIME" if tls else "250 STARTTLS")
        elif verb == "STARTTLS" and not tls:
            reply("220 2.0.0 Ready to start TLS")
            conn = ctx.wrap_socket(conn, server_side=True)
            f = conn.makefile("rwb", buffering=0)
            tls = True
        elif verb in ("MAIL", "RCPT"):
            env.append(cmd); reply("250 2.0.0 Ok")
        elif verb == "DATA":
            reply("354 go ahead")
            data = b""
            while True:
                l = f.readline()
                if l == b".\r\n" or not l:
                    break
                data += l
            n += 1
            open(os.path.join(out_dir, f"{n}.eml"), "wb").write(data)
            open(os.path.join(out_dir, f"{n}.env"), "w").write("\n".join(env + [f"tls={tls}"]))
            env = []
            reply("250 2.0.0 queued")
        elif verb == "QUIT":
            reply("221 2.0.0 bye"); break
        else:
            reply("500 5.5.1 unrecognized")
    conn.close()
while True:
    conn, _ = srv.accept()
    try:
        serve(conn)
    except OSError:
        # The readiness probe connects and closes at once: the greeting written to
        # it may fail. Serve the next connection.
        conn.close()
"#;

const TLS_CLIENT: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.ehlo("client.example.org")
print("STARTTLS-ADVERTISED", s.has_extn("starttls"))
if s.has_extn("starttls"):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    s.ehlo("client.example.org")
    print("TLS", s.sock.version())
else:
    code, msg = s.docmd("STARTTLS")
    print("FORCED-STARTTLS", code)
s.sendmail("alice@example.org", ["bob@example.net"], b"Subject: secret\r\n\r\nover tls\r\n")
print("SENT")
s.quit()
"#;

struct TlsUpstream {
    child: Child,
    addr: SocketAddr,
    out: std::path::PathBuf,
}

impl TlsUpstream {
    /// A file the upstream wrote for a delivered message, waiting (bounded) for it.
    fn delivered(&self, name: &str) -> Vec<u8> {
        let path = self.out.join(name);
        let deadline = std::time::Instant::now() + LIMIT;
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50)); // written in one go, but not atomically
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_upstream() -> TlsUpstream {
    let dir = scratch_dir("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = run_bounded(
        Command::new(testkit::peer("openssl"))
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            ])
            .arg("/CN=tls.upstream.test")
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        LIMIT,
    );
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = dir.join("mail");
    std::fs::create_dir_all(&out).unwrap();
    let addr = local(free_port());
    let child = Command::new(testkit::peer("python3"))
        .arg("-c")
        .arg(TLS_UPSTREAM)
        .arg(addr.port().to_string())
        .arg(&cert)
        .arg(&key)
        .arg(&out)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_listener(addr, Duration::from_secs(10));
    TlsUpstream { child, addr, out }
}

/// Runs the smtplib TLS client through smtpgate with `policy` in front of a TLS
/// upstream; returns both (kept alive for the test's checks) and what the client printed.
fn run_tls_client(policy: &str) -> (Gate, TlsUpstream, String) {
    let upstream = start_tls_upstream();
    let (config, listen) = config(upstream.addr, &format!("policy = \"{policy}\""), "");
    let gate = Gate::start(&config);
    let out = python(TLS_CLIENT, &[listen.port().to_string()], LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (gate, upstream, stdout)
}

#[test]
fn starttls_allowed_by_default_relays_tls_opaquely_and_logs_108007() {
    let (gate, upstream, stdout) = run_tls_client("default");
    assert!(stdout.contains("STARTTLS-ADVERTISED True"), "{stdout}");
    assert!(stdout.contains("TLS TLSv1."), "{stdout}");

    assert_eq!(
        upstream.delivered("1.eml"),
        b"Subject: secret\r\n\r\nover tls\r\n"
    );
    let env = String::from_utf8(upstream.delivered("1.env")).unwrap();
    assert!(env.contains("tls=True"), "{env}");
    gate.wait_log("108007");
}

#[test]
fn asa_compat_masks_starttls_like_the_firewall() {
    let (_gate, upstream, stdout) = run_tls_client("asa-compat");
    assert!(stdout.contains("STARTTLS-ADVERTISED False"), "{stdout}");
    // The verb itself is X-ed, so the server answers it with its own 5xx.
    assert!(stdout.contains("FORCED-STARTTLS 500"), "{stdout}");
    let env = String::from_utf8(upstream.delivered("1.env")).unwrap();
    assert!(env.contains("tls=False"), "{env}");
}
