//! The processes `compare` measures — the sink, smtpgate, HAProxy — and what
//! it reads about them and the machine: CPU time from /proc, versions, the
//! machine's facts. Every child is killed when its guard drops.

use crate::util;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after 3 s; returns once the process is gone.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn check_alive(&mut self) -> io::Result<()> {
        match self.child.try_wait()? {
            Some(status) => Err(io::Error::other(format!(
                "{} exited unexpectedly ({status})",
                self.name
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU time (user + system, all threads) of a process so far, from /proc/PID/stat.
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after "(comm)": state is field 3; utime and stime are 14 and 15.
    let after_comm = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unexpected /proc/PID/stat format"))?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unexpected /proc/PID/stat format"))
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64(
        (ticks(11)? + ticks(12)?) as f64 / per_second,
    ))
}

pub fn find_smtpgate(explicit: &Option<PathBuf>) -> io::Result<PathBuf> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.clone())
        } else {
            Err(io::Error::other(format!(
                "--smtpgate {}: no such file",
                path.display()
            )))
        };
    }
    let beside = std::env::current_exe()?.with_file_name("smtpgate");
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(found) = find_on_path("smtpgate") {
        return Ok(found);
    }
    // Under `cargo run -p smtpgate-loadgen`, only the loadgen was built:
    // build the sibling binary with the same cargo, profile and target dir.
    if build_sibling_smtpgate(&beside) && beside.is_file() {
        return Ok(beside);
    }
    Err(io::Error::other(format!(
        "the smtpgate binary was not found beside {} nor on PATH.\n\
         Build it first:  cargo build --release --workspace\n\
         (or pass --smtpgate PATH)",
        beside.display()
    )))
}

/// When started by `cargo run` (CARGO and CARGO_MANIFEST_DIR are set),
/// runs `cargo build -p smtpgate` into our own target directory.
fn build_sibling_smtpgate(beside: &Path) -> bool {
    let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return false;
    };
    let Some(profile_dir) = beside.parent() else {
        return false;
    };
    let Some(target_dir) = profile_dir.parent() else {
        return false;
    };
    let workspace_manifest = Path::new(&manifest_dir).join("../Cargo.toml");
    let mut build = Command::new(cargo);
    build
        .args(["build", "-p", "smtpgate", "--manifest-path"])
        .arg(&workspace_manifest)
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(other) => {
            build.args(["--profile", other]);
        }
        None => return false,
    }
    eprintln!("compare: smtpgate is not built yet; building it: {build:?}");
    build.status().map(|s| s.success()).unwrap_or(false)
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Waits until `addr` accepts TCP connections, failing early if the
/// process that should listen there dies.
fn wait_for_listener(addr: SocketAddr, owner: &mut ChildGuard, limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        owner.check_alive()?;
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "{} did not listen on {addr} within {limit:?}",
                owner.name
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which sink a path delivers into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    /// Plaintext only.
    Plain,
    /// Offers STARTTLS (a self-signed pair made in memory) and logs the digest
    /// of every message it accepts, so the TLS rows' delivery can be checked.
    StartTls,
}

pub struct StartedSink {
    pub process: ChildGuard,
    pub addr: SocketAddr,
    /// The SHA-256 of every accepted message, one per line (`StartTls` only).
    pub digest_log: Option<PathBuf>,
}

pub fn start_sink(out: &Path, kind: SinkKind) -> io::Result<StartedSink> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["sink", "--listen", "127.0.0.1:0", "--report-interval", "0"]);
    let (name, log, digest_log) = match kind {
        SinkKind::Plain => ("sink", "sink.log", None),
        SinkKind::StartTls => (
            "STARTTLS sink",
            "sink-tls.log",
            Some(out.join("sink-tls.sha256")),
        ),
    };
    if let Some(digests) = &digest_log {
        command.arg("--starttls").arg("--digest-log").arg(digests);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.join(log))?)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped stderr");
    let guard = ChildGuard { name, child };
    // The sink reports its port (it binds port 0) on its first stderr line.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the sink never blocks on a full pipe.
        for line in lines.map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| io::Error::other(format!("the {name} did not report readiness")))?;
    let addr = line
        .strip_prefix("sink: listening on ")
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("{name}: {line}")))?;
    Ok(StartedSink {
        process: guard,
        addr,
        digest_log,
    })
}

/// smtpgate's `[tls]` pair: a self-signed ECDSA P-256 certificate for
/// `localhost` and 127.0.0.1, written to `out` as PEM.
pub fn write_self_signed_pair(out: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let pair =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(io::Error::other)?;
    let (cert, key) = (out.join("tls-cert.pem"), out.join("tls-key.pem"));
    std::fs::write(&cert, pair.cert.pem())?;
    std::fs::write(&key, pair.signing_key.serialize_pem())?;
    Ok((cert, key))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// How smtpgate is started: its `--cores` and `--placement`.
#[derive(Clone, Debug)]
pub struct GateLaunch {
    pub binary: PathBuf,
    pub cores: Option<usize>,
    pub placement: Placement,
}

/// smtpgate's `--placement` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// One executor pinned per core.
    Pinned,
    /// Executors not pinned; the kernel may move them (smtpgate's default).
    Unbound,
}

impl Placement {
    fn flag(self) -> &'static str {
        match self {
            Placement::Pinned => "pinned",
            Placement::Unbound => "unbound",
        }
    }
}

/// What smtpgate's TLS listeners need: its own pair and the STARTTLS sink.
pub struct TlsSetup {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sink: SocketAddr,
}

/// smtpgate's two TLS listeners, both in front of the STARTTLS sink.
#[derive(Clone, Copy, Debug)]
pub struct TlsListeners {
    /// `starttls = "inspect"`: terminates the client's TLS, inspects, and
    /// encrypts again towards the sink (`upstream_tls = "opportunistic"`).
    pub inspect: SocketAddr,
    /// `starttls = "passthrough"`: relays the client's STARTTLS to the sink,
    /// blind after it.
    pub exempt: SocketAddr,
}

pub struct Gate {
    pub process: ChildGuard,
    pub inspect: SocketAddr,
    pub exempt: SocketAddr,
    pub tls: Option<TlsListeners>,
    pub admin: SocketAddr,
    /// The generated configuration, as written.
    pub config: String,
}

pub fn start_smtpgate(
    launch: &GateLaunch,
    out: &Path,
    sink: SocketAddr,
    tls: Option<&TlsSetup>,
) -> io::Result<Gate> {
    let inspect = loopback(util::free_loopback_port()?);
    let exempt = loopback(util::free_loopback_port()?);
    let admin = loopback(util::free_loopback_port()?);
    let mut config = format!(
        "# Written by smtpgate-loadgen compare.\n\
         [admin]\nlisten = \"{admin}\"\n\n"
    );
    let mut tls_listeners = None;
    if let Some(setup) = tls {
        tls_listeners = Some(TlsListeners {
            inspect: loopback(util::free_loopback_port()?),
            exempt: loopback(util::free_loopback_port()?),
        });
        config += &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n",
            setup.cert.display(),
            setup.key.display()
        );
    }
    // With [tls] the default would be "inspect": the plaintext listeners
    // keep the behaviour they have without it.
    let plaintext = if tls.is_some() {
        "starttls = \"passthrough\"\n"
    } else {
        ""
    };
    config += &format!(
        "[[listener]]\nlisten = \"{inspect}\"\nupstream = \"{sink}\"\npolicy = \"default\"\n{plaintext}\n\
         [[listener]]\nlisten = \"{exempt}\"\nupstream = \"{sink}\"\npolicy = \"none\"\n{plaintext}"
    );
    if let (Some(setup), Some(listeners)) = (tls, tls_listeners) {
        config += &format!(
            "\n[[listener]]\nlisten = \"{}\"\nupstream = \"{}\"\npolicy = \"default\"\n\
             starttls = \"inspect\"\nupstream_tls = \"opportunistic\"\n\n\
             [[listener]]\nlisten = \"{}\"\nupstream = \"{}\"\npolicy = \"default\"\n\
             starttls = \"passthrough\"\n",
            listeners.inspect, setup.sink, listeners.exempt, setup.sink
        );
    }
    let config_path = out.join("smtpgate.toml");
    std::fs::write(&config_path, &config)?;
    let mut command = Command::new(&launch.binary);
    command
        .arg("run")
        .arg("-c")
        .arg(&config_path)
        .args(["--placement", launch.placement.flag()]);
    if let Some(cores) = launch.cores {
        command.args(["--cores", &cores.to_string()]);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.join("smtpgate.log"))?)
        .stderr(std::fs::File::create(out.join("smtpgate.err"))?)
        .spawn()
        .map_err(|e| io::Error::other(format!("starting {}: {e}", launch.binary.display())))?;
    let mut process = ChildGuard {
        name: "smtpgate",
        child,
    };
    let tls_addrs = tls_listeners.iter().flat_map(|l| [l.inspect, l.exempt]);
    for addr in [inspect, exempt].into_iter().chain(tls_addrs) {
        wait_for_listener(addr, &mut process, Duration::from_secs(15)).map_err(|e| {
            let log = std::fs::read_to_string(out.join("smtpgate.err")).unwrap_or_default();
            io::Error::other(format!("{e}\nsmtpgate stderr:\n{log}"))
        })?;
    }
    Ok(Gate {
        process,
        inspect,
        exempt,
        tls: tls_listeners,
        admin,
        config,
    })
}

pub struct Haproxy {
    pub process: ChildGuard,
    pub listen: SocketAddr,
    pub config: String,
}

pub fn start_haproxy(binary: &Path, out: &Path, sink: SocketAddr) -> io::Result<Haproxy> {
    let listen = loopback(util::free_loopback_port()?);
    let config = format!(
        "# Written by smtpgate-loadgen compare: plain TCP relay, the reference.\n\
         global\n    maxconn 4096\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
         listen smtp\n    bind {listen}\n    server sink {sink}\n"
    );
    let config_path = out.join("haproxy.cfg");
    std::fs::write(&config_path, &config)?;
    let child = Command::new(binary)
        .arg("-db")
        .arg("-f")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(out.join("haproxy.err"))?)
        .spawn()?;
    let mut process = ChildGuard {
        name: "haproxy",
        child,
    };
    wait_for_listener(listen, &mut process, Duration::from_secs(10))?;
    Ok(Haproxy {
        process,
        listen,
        config,
    })
}

/// What was measured on what: enough to tell whether two reports compare.
#[derive(Clone, Debug, Serialize)]
pub struct Facts {
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cpus: usize,
    pub kernel: String,
    pub hostname: String,
    pub memory_gib: f64,
    pub smtpgate_binary: String,
    /// `smtpgate --version`, e.g. "smtpgate 0.1.0".
    pub smtpgate_version: String,
    /// From smtpgate's build-info metric when it exports one, else "unknown".
    pub smtpgate_commit: String,
    /// smtpgate's `--cores` ("all" when not limited).
    pub relay_cores: String,
    pub placement: Placement,
    pub loadgen_version: String,
    /// Executors of the load generator.
    pub loadgen_cores: usize,
    /// A debug build measures the compiler, not the relay.
    pub loadgen_build: &'static str,
    pub haproxy_version: Option<String>,
    /// When the run started, UTC (RFC 3339).
    pub started_utc: String,
}

impl Facts {
    pub fn gather(launch: &GateLaunch, gate: &Gate, loadgen_cores: usize) -> Facts {
        Facts {
            cpu_model: cpu_model(),
            cpus: util::online_cpus(),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            memory_gib: memory_gib(),
            smtpgate_binary: launch.binary.display().to_string(),
            smtpgate_version: first_line_of(&launch.binary, "--version"),
            smtpgate_commit: build_info_commit(gate.admin).unwrap_or_else(|| "unknown".into()),
            relay_cores: launch
                .cores
                .map_or_else(|| "all".to_string(), |n| n.to_string()),
            placement: launch.placement,
            loadgen_version: env!("CARGO_PKG_VERSION").to_string(),
            loadgen_cores,
            loadgen_build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            haproxy_version: None,
            started_utc: rfc3339_now(),
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // x86 says "model name"; many ARM kernels only "Hardware" or "CPU part".
    ["model name", "Hardware", "CPU part"]
        .iter()
        .find_map(|key| {
            info.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key).then(|| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn memory_gib() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (kib / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

/// First line of `binary ARG`'s output (stdout, else stderr: HAProxy's `-v`).
pub fn first_line_of(binary: &Path, arg: &str) -> String {
    Command::new(binary)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            Some(
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()?
                    .trim()
                    .to_string(),
            )
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The admin endpoint's /metrics text.
fn metrics(admin: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: smtpgate\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    let _ = stream.take(4 << 20).read_to_string(&mut body);
    Some(body)
}

/// The commit label of `smtpgate_build_info` on the admin endpoint's
/// /metrics, when this smtpgate exports one.
fn build_info_commit(admin: SocketAddr) -> Option<String> {
    let body = metrics(admin)?;
    let line = body
        .lines()
        .find(|l| l.starts_with("smtpgate_build_info{"))?;
    ["commit", "git_commit", "revision"]
        .iter()
        .find_map(|key| label(line, key))
}

/// TLS sessions smtpgate established so far, by side ("client", "upstream"),
/// from `smtpgate_tls_established_total`; empty when it exports none.
pub fn tls_established(admin: SocketAddr) -> BTreeMap<String, u64> {
    let body = metrics(admin).unwrap_or_default();
    tls_established_in(&body)
}

fn tls_established_in(metrics: &str) -> BTreeMap<String, u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("smtpgate_tls_established_total{"))
        .filter_map(|line| {
            let count = line.rsplit_once(' ')?.1.trim().parse().ok()?;
            Some((label(line, "side")?, count))
        })
        .collect()
}

/// The value of `key="..."` in a Prometheus sample line.
fn label(line: &str, key: &str) -> Option<String> {
    let labels = line.split_once('{')?.1.split_once('}')?.0;
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Now as "YYYY-MM-DDTHH:MM:SSZ".
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let cpu = process_cpu(std::process::id()).unwrap();
        assert!(cpu < Duration::from_secs(3600));
    }

    #[test]
    fn build_info_labels_are_read_from_a_metrics_line() {
        let line = r#"smtpgate_build_info{version="0.1.0",commit="fee1762"} 1"#;
        assert_eq!(label(line, "commit").as_deref(), Some("fee1762"));
        assert_eq!(label(line, "version").as_deref(), Some("0.1.0"));
        assert_eq!(label(line, "revision"), None);
    }

    #[test]
    fn tls_sessions_are_read_by_side_from_the_metrics() {
        let text = "# TYPE smtpgate_tls_established_total counter\n\
                    smtpgate_tls_established_total{side=\"client\"} 12\n\
                    smtpgate_tls_established_total{side=\"upstream\"} 7\n\
                    smtpgate_tls_handshake_failures_total{side=\"client\",reason=\"eof\"} 1\n";
        let counts = tls_established_in(text);
        assert_eq!(counts.get("client"), Some(&12));
        assert_eq!(counts.get("upstream"), Some(&7));
        assert_eq!(counts.len(), 2);
    }

    #[test]
    fn the_clock_renders_as_rfc3339_utc() {
        let now = rfc3339_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
        assert_eq!(&now[10..11], "T");
    }

    #[test]
    fn machine_facts_are_read_from_proc() {
        assert_ne!(read_trimmed("/proc/sys/kernel/osrelease"), "unknown");
        assert!(memory_gib() > 0.0);
    }
}
