//! `compare`: what does inspection cost?
//!
//! Starts a sink (child process, this same binary), `smtpgate` with two
//! listeners in front of it — one inspecting (policy "default"), one exempt
//! (policy "none") — and optionally HAProxy in TCP mode and a direct path,
//! then runs the same closed-loop load through each path in alternation for
//! several rounds (the order flips every round so drift hits both sides).
//! smtpgate's CPU is read from /proc/PID/stat around each run. Prints a
//! table and the inspect/exempt ratios with their spread over rounds, and
//! writes `report.json` and a self-contained `report.html` (inline SVG).
//!
//! It does not judge the numbers; it measures and shows its work (rounds,
//! spread, configuration) so an operator can trust or rerun them.

use crate::send::{self, SendOptions};
use crate::util::{self, parse_duration, SizeSpec};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Directory for report.json, report.html and the processes' logs.
    #[arg(long, default_value = "smtpgate-report")]
    out: PathBuf,
    /// Length of each measured run.
    #[arg(long, value_parser = parse_duration, default_value = "7s")]
    duration: Duration,
    /// Message size or mix, as for `send --size`.
    #[arg(long, default_value = "1k:60,10k:30,100k:10")]
    size: SizeSpec,
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// Rounds; each round runs every path once.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    #[arg(long, default_value_t = 1)]
    recipients: u32,
    /// Pipeline MAIL/RCPT/DATA as a real MTA does.
    #[arg(long)]
    pipelining: bool,
    /// Also measure HAProxy in TCP mode (if installed) and direct-to-sink.
    #[arg(long)]
    haproxy: bool,
    /// The smtpgate binary; default: beside this executable, then on PATH.
    #[arg(long)]
    smtpgate: Option<PathBuf>,
    /// Executors for the load generator (default: half the cores).
    #[arg(long)]
    cores: Option<usize>,
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> io::Result<()> {
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
        // SAFETY: plain kill(2) on our own child's pid.
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
}

/// CPU time (user + system) of a process so far, from /proc/PID/stat.
fn process_cpu(pid: u32) -> io::Result<Duration> {
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

fn find_smtpgate(explicit: &Option<PathBuf>) -> io::Result<PathBuf> {
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

fn find_on_path(name: &str) -> Option<PathBuf> {
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

fn start_sink(out: &Path) -> io::Result<(ChildGuard, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["sink", "--listen", "127.0.0.1:0", "--report-interval", "0"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.join("sink.log"))?)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped stderr");
    let guard = ChildGuard {
        name: "sink",
        child,
    };
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
        .map_err(|_| io::Error::other("the sink did not report readiness"))?;
    let addr = line
        .strip_prefix("sink: listening on ")
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("sink: {line}")))?;
    Ok((guard, addr))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct Gate {
    process: ChildGuard,
    inspect: SocketAddr,
    exempt: SocketAddr,
}

fn start_smtpgate(binary: &Path, out: &Path, sink: SocketAddr) -> io::Result<Gate> {
    let inspect = loopback(util::free_loopback_port()?);
    let exempt = loopback(util::free_loopback_port()?);
    let admin = loopback(util::free_loopback_port()?);
    let config = format!(
        "# Written by smtpgate-loadgen compare.\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [[listener]]\nlisten = \"{inspect}\"\nupstream = \"{sink}\"\npolicy = \"default\"\n\n\
         [[listener]]\nlisten = \"{exempt}\"\nupstream = \"{sink}\"\npolicy = \"none\"\n"
    );
    let config_path = out.join("smtpgate.toml");
    std::fs::write(&config_path, config)?;
    let child = Command::new(binary)
        .arg("run")
        .arg("-c")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.join("smtpgate.log"))?)
        .stderr(std::fs::File::create(out.join("smtpgate.err"))?)
        .spawn()
        .map_err(|e| io::Error::other(format!("starting {}: {e}", binary.display())))?;
    let mut process = ChildGuard {
        name: "smtpgate",
        child,
    };
    for addr in [inspect, exempt] {
        wait_for_listener(addr, &mut process, Duration::from_secs(15)).map_err(|e| {
            let log = std::fs::read_to_string(out.join("smtpgate.err")).unwrap_or_default();
            io::Error::other(format!("{e}\nsmtpgate stderr:\n{log}"))
        })?;
    }
    Ok(Gate {
        process,
        inspect,
        exempt,
    })
}

fn start_haproxy(
    binary: &Path,
    out: &Path,
    sink: SocketAddr,
) -> io::Result<(ChildGuard, SocketAddr)> {
    let listen = loopback(util::free_loopback_port()?);
    let config = format!(
        "# Written by smtpgate-loadgen compare: plain TCP relay, the reference.\n\
         global\n    maxconn 4096\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
         listen smtp\n    bind {listen}\n    server sink {sink}\n"
    );
    let dir = std::env::temp_dir().join(format!("smtpgate-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("haproxy.cfg");
    std::fs::write(&config_path, config)?;
    let child = Command::new(binary)
        .arg("-db")
        .arg("-f")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(out.join("haproxy.err"))?)
        .spawn()?;
    let mut guard = ChildGuard {
        name: "haproxy",
        child,
    };
    let listening = wait_for_listener(listen, &mut guard, Duration::from_secs(10));
    // HAProxy has read its configuration once it listens (or has failed).
    let _ = std::fs::remove_dir_all(&dir);
    listening?;
    Ok((guard, listen))
}

/// One path the load goes through.
struct Path_ {
    name: &'static str,
    target: SocketAddr,
    /// The relay process whose CPU is charged to this path, if any.
    relay_pid: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
struct RunResult {
    round: usize,
    path: String,
    elapsed_s: f64,
    messages_ok: u64,
    messages_failed: u64,
    msgs_per_s: f64,
    mb_per_s: f64,
    p99_end_of_data_us: u64,
    /// CPU seconds the relay process used during the run (none for direct).
    relay_cpu_s: Option<f64>,
    relay_cpu_ms_per_1000_msgs: Option<f64>,
    /// The load generator's and the sink's own CPU, to show neither was the
    /// bottleneck.
    loadgen_cpu_s: f64,
    sink_cpu_s: f64,
    errors: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
struct PathSummary {
    path: String,
    rounds: usize,
    /// Medians over rounds.
    msgs_per_s: f64,
    mb_per_s: f64,
    p99_end_of_data_us: u64,
    /// Total relay CPU over total messages, all rounds.
    relay_cpu_ms_per_1000_msgs: Option<f64>,
    loadgen_cpu_ms_per_1000_msgs: f64,
    sink_cpu_ms_per_1000_msgs: f64,
    messages_ok: u64,
    messages_failed: u64,
}

#[derive(Clone, Debug, Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Spread> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_by(|a, b| a.total_cmp(b));
        Some(Spread {
            median: median(&values),
            min: values[0],
            max: values[values.len() - 1],
        })
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[derive(Clone, Debug, Serialize)]
struct CostOfInspection {
    /// inspect msgs/s ÷ exempt msgs/s, per round.
    throughput_ratio: Option<Spread>,
    /// inspect CPU per message ÷ exempt CPU per message, per round.
    cpu_per_message_ratio: Option<Spread>,
}

#[derive(Clone, Debug, Serialize)]
struct CompareReport {
    smtpgate: String,
    sink: String,
    duration_per_run_s: f64,
    rounds: usize,
    connections: usize,
    size: String,
    recipients: u32,
    pipelining: bool,
    cores_online: usize,
    paths: Vec<PathSummary>,
    cost_of_inspection: CostOfInspection,
    runs: Vec<RunResult>,
}

fn run_once(
    args: &CompareArgs,
    path: &Path_,
    sink_pid: u32,
    round: usize,
    duration: Duration,
) -> io::Result<RunResult> {
    let options = SendOptions {
        target: path.target,
        connections: args.connections,
        messages: None,
        duration: Some(duration),
        size: args.size.clone(),
        recipients: args.recipients,
        pipelining: args.pipelining,
        bdat: false,
        per_connection: false,
        rate: None,
        cores: args.cores.unwrap_or_else(util::default_cores),
        digest_log: None,
        progress: false,
        timeout: Duration::from_secs(30),
        tls: send::TlsMode::Off,
        tls_ca: None,
    };
    let cpu_before = path.relay_pid.map(process_cpu).transpose()?;
    let sink_before = process_cpu(sink_pid)?;
    let report = send::run(options)?;
    let sink_cpu_s = (process_cpu(sink_pid)? - sink_before).as_secs_f64();
    let relay_cpu_s = match (path.relay_pid, cpu_before) {
        (Some(pid), Some(before)) => Some((process_cpu(pid)? - before).as_secs_f64()),
        _ => None,
    };
    let per_1000 = |cpu: f64| {
        if report.messages_ok > 0 {
            cpu * 1e6 / report.messages_ok as f64
        } else {
            f64::NAN
        }
    };
    Ok(RunResult {
        round,
        path: path.name.to_string(),
        elapsed_s: report.elapsed_s,
        messages_ok: report.messages_ok,
        messages_failed: report.messages_failed,
        msgs_per_s: report.msgs_per_s,
        mb_per_s: report.mb_per_s,
        p99_end_of_data_us: report.latency_us.get("end_of_data").map_or(0, |p| p.p99),
        relay_cpu_ms_per_1000_msgs: relay_cpu_s.map(per_1000),
        relay_cpu_s,
        loadgen_cpu_s: report.loadgen_cpu_s,
        sink_cpu_s,
        errors: report.errors,
    })
}

pub fn run(args: CompareArgs) -> io::Result<()> {
    if args.rounds == 0 || args.connections == 0 {
        return Err(io::Error::other(
            "--rounds and --connections must be at least 1",
        ));
    }
    let smtpgate = find_smtpgate(&args.smtpgate)?;
    std::fs::create_dir_all(&args.out)?;
    let started = Instant::now();

    let (mut sink, sink_addr) = start_sink(&args.out)?;
    let mut gate = start_smtpgate(&smtpgate, &args.out, sink_addr)?;
    eprintln!(
        "compare: sink {sink_addr}; smtpgate {} (inspect {}, exempt {})",
        smtpgate.display(),
        gate.inspect,
        gate.exempt
    );
    let mut paths = vec![
        Path_ {
            name: "inspect (policy default)",
            target: gate.inspect,
            relay_pid: Some(gate.process.pid()),
        },
        Path_ {
            name: "exempt (policy none)",
            target: gate.exempt,
            relay_pid: Some(gate.process.pid()),
        },
    ];
    let mut _haproxy = None;
    if args.haproxy {
        match find_on_path("haproxy") {
            Some(binary) => {
                let (guard, addr) = start_haproxy(&binary, &args.out, sink_addr)?;
                paths.push(Path_ {
                    name: "haproxy (tcp mode)",
                    target: addr,
                    relay_pid: Some(guard.pid()),
                });
                _haproxy = Some(guard);
            }
            None => eprintln!("compare: haproxy is not on PATH; skipping its row"),
        }
        paths.push(Path_ {
            name: "direct to sink",
            target: sink_addr,
            relay_pid: None,
        });
    }

    // Warm-up (not counted): connections, caches, the sink's first accepts.
    let warmup = (args.duration / 4).clamp(Duration::from_millis(300), Duration::from_secs(2));
    for path in &paths {
        run_once(&args, path, sink.pid(), 0, warmup)?;
    }

    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        let mut order: Vec<usize> = (0..paths.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for &i in &order {
            gate.process.check_alive()?;
            sink.check_alive()?;
            let result = run_once(&args, &paths[i], sink.pid(), round, args.duration)?;
            eprintln!(
                "compare: round {round}/{} {:<26} {:>8.0} msgs/s{}",
                args.rounds,
                result.path,
                result.msgs_per_s,
                if result.messages_failed > 0 {
                    format!("  ({} failed)", result.messages_failed)
                } else {
                    String::new()
                }
            );
            runs.push(result);
        }
    }

    let report = summarize(&args, &smtpgate, sink_addr, &paths, runs);
    let text = table(&report);
    print!("{text}");
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report).expect("report serializes") + "\n",
    )?;
    std::fs::write(args.out.join("report.html"), html(&report, &text))?;
    println!(
        "wrote {0}/report.json and {0}/report.html in {1:.0}s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn summarize(
    args: &CompareArgs,
    smtpgate: &Path,
    sink: SocketAddr,
    paths: &[Path_],
    runs: Vec<RunResult>,
) -> CompareReport {
    let summaries = paths
        .iter()
        .map(|p| {
            let mine: Vec<&RunResult> = runs.iter().filter(|r| r.path == p.name).collect();
            let mut rates: Vec<f64> = mine.iter().map(|r| r.msgs_per_s).collect();
            let mut mbs: Vec<f64> = mine.iter().map(|r| r.mb_per_s).collect();
            let mut p99s: Vec<f64> = mine.iter().map(|r| r.p99_end_of_data_us as f64).collect();
            for v in [&mut rates, &mut mbs, &mut p99s] {
                v.sort_by(|a, b| a.total_cmp(b));
            }
            let ok: u64 = mine.iter().map(|r| r.messages_ok).sum();
            let cpu: Option<f64> = mine.iter().map(|r| r.relay_cpu_s).sum();
            let per_1000 = |cpu: f64| if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 };
            let loadgen_cpu: f64 = mine.iter().map(|r| r.loadgen_cpu_s).sum();
            let sink_cpu: f64 = mine.iter().map(|r| r.sink_cpu_s).sum();
            PathSummary {
                path: p.name.to_string(),
                rounds: mine.len(),
                msgs_per_s: median(&rates),
                mb_per_s: median(&mbs),
                p99_end_of_data_us: median(&p99s) as u64,
                relay_cpu_ms_per_1000_msgs: cpu.filter(|_| ok > 0).map(|c| c * 1e6 / ok as f64),
                loadgen_cpu_ms_per_1000_msgs: per_1000(loadgen_cpu),
                sink_cpu_ms_per_1000_msgs: per_1000(sink_cpu),
                messages_ok: ok,
                messages_failed: mine.iter().map(|r| r.messages_failed).sum(),
            }
        })
        .collect();
    let (inspect, exempt) = (paths[0].name, paths[1].name);
    let per_round = |f: &dyn Fn(&RunResult, &RunResult) -> f64| -> Vec<f64> {
        (1..=args.rounds)
            .filter_map(|round| {
                let a = runs
                    .iter()
                    .find(|r| r.round == round && r.path == inspect)?;
                let b = runs.iter().find(|r| r.round == round && r.path == exempt)?;
                Some(f(a, b))
            })
            .collect()
    };
    let cost = CostOfInspection {
        throughput_ratio: Spread::of(per_round(&|a, b| a.msgs_per_s / b.msgs_per_s)),
        cpu_per_message_ratio: Spread::of(per_round(&|a, b| match (
            a.relay_cpu_ms_per_1000_msgs,
            b.relay_cpu_ms_per_1000_msgs,
        ) {
            (Some(x), Some(y)) if y > 0.0 => x / y,
            _ => f64::NAN,
        })),
    };
    CompareReport {
        smtpgate: smtpgate.display().to_string(),
        sink: sink.to_string(),
        duration_per_run_s: args.duration.as_secs_f64(),
        rounds: args.rounds,
        connections: args.connections,
        size: args.size.to_string(),
        recipients: args.recipients,
        pipelining: args.pipelining,
        cores_online: util::online_cpus(),
        paths: summaries,
        cost_of_inspection: cost,
        runs,
    }
}

fn table(report: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} rounds x {:.0}s, {} connections, size {}{}, closed loop; medians over rounds\n",
        report.rounds,
        report.duration_per_run_s,
        report.connections,
        report.size,
        if report.pipelining {
            ", pipelining"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{:<26} {:>10} {:>8} {:>14} {:>22} {:>8}",
        "path", "msgs/s", "MB/s", "p99 EOD (ms)", "relay CPU ms/1k msgs", "failed"
    );
    for p in &report.paths {
        let _ = writeln!(
            out,
            "{:<26} {:>10.0} {:>8.2} {:>14.2} {:>22} {:>8}",
            p.path,
            p.msgs_per_s,
            p.mb_per_s,
            p.p99_end_of_data_us as f64 / 1000.0,
            p.relay_cpu_ms_per_1000_msgs
                .map_or("-".to_string(), |c| format!("{c:.1}")),
            p.messages_failed
        );
    }
    let spread = |s: &Option<Spread>| {
        s.as_ref().map_or("n/a".to_string(), |s| {
            format!("{:.3} (rounds {:.3}..{:.3})", s.median, s.min, s.max)
        })
    };
    let _ = writeln!(
        out,
        "\nload generator / sink CPU, ms per 1k msgs: {}",
        report
            .paths
            .iter()
            .map(|p| format!(
                "{} {:.1} / {:.1}",
                p.path.split(' ').next().unwrap_or(""),
                p.loadgen_cpu_ms_per_1000_msgs,
                p.sink_cpu_ms_per_1000_msgs
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cost = &report.cost_of_inspection;
    let _ = writeln!(out, "\ncost of inspection (inspect / exempt):");
    let _ = writeln!(
        out,
        "  throughput        x{}",
        spread(&cost.throughput_ratio)
    );
    let _ = writeln!(
        out,
        "  CPU per message   x{}",
        spread(&cost.cpu_per_message_ratio)
    );
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal bar chart, one bar per path.
fn svg_bars(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9);
    let (label_w, bar_w, row_h) = (220.0, 380.0, 28.0);
    let height = 40.0 + row_h * bars.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"13\">\
         <text x=\"4\" y=\"18\" font-weight=\"bold\">{}</text>",
        escape(title),
        w = label_w + bar_w + 110.0
    );
    const COLORS: [&str; 4] = ["#c0504d", "#4f81bd", "#9bbb59", "#8064a2"];
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = 30.0 + row_h * i as f64;
        let w = (value / max * bar_w).max(1.0);
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{ty}\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{h}\" fill=\"{}\"/>\
             <text x=\"{tx:.1}\" y=\"{ty}\">{value:.1} {}</text>",
            escape(label),
            COLORS[i % COLORS.len()],
            escape(unit),
            ty = y + 16.0,
            h = row_h - 8.0,
            tx = label_w + w + 6.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn html(report: &CompareReport, table_text: &str) -> String {
    let throughput: Vec<(String, f64)> = report
        .paths
        .iter()
        .map(|p| (p.path.clone(), p.msgs_per_s))
        .collect();
    let cpu: Vec<(String, f64)> = report
        .paths
        .iter()
        .filter_map(|p| Some((p.path.clone(), p.relay_cpu_ms_per_1000_msgs?)))
        .collect();
    let mut rows = String::new();
    for r in &report.runs {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
            r.round,
            escape(&r.path),
            r.msgs_per_s,
            r.mb_per_s,
            r.p99_end_of_data_us as f64 / 1000.0,
            r.relay_cpu_ms_per_1000_msgs
                .map_or("-".to_string(), |c| format!("{c:.1}")),
            r.messages_failed
        );
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>smtpgate: cost of inspection</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:60em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         pre{{background:#f6f6f6;padding:1em}}</style></head><body>\
         <h1>smtpgate: cost of inspection</h1>\
         <p>Same closed-loop load through smtpgate with policy <code>default</code> (inspect) \
         and <code>none</code> (exempt), alternating, into one sink. smtpgate: <code>{}</code>.</p>\
         <pre>{}</pre>{}<br>{}<h2>Every run</h2>\
         <table><tr><th>round</th><th>path</th><th>msgs/s</th><th>MB/s</th><th>p99 EOD ms</th>\
         <th>relay CPU ms/1k msgs</th><th>failed</th></tr>{}</table></body></html>\n",
        escape(&report.smtpgate),
        escape(table_text),
        svg_bars("Throughput (msgs/s, higher is better)", "msgs/s", &throughput),
        svg_bars(
            "Relay CPU per 1000 messages (ms, lower is better)",
            "ms",
            &cpu
        ),
        rows
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
    fn spread_and_chart() {
        let s = Spread::of(vec![0.9, 0.8, 1.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (0.9, 0.8, 1.0));
        assert!(Spread::of(vec![f64::NAN]).is_none());
        let svg = svg_bars("t", "u", &[("a<b".into(), 2.0), ("c".into(), 1.0)]);
        assert!(svg.contains("a&lt;b") && svg.matches("<rect").count() == 2);
    }
}
