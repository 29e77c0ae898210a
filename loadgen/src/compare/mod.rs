//! `compare`: what does inspection cost, and how many cores does a message
//! rate need?
//!
//! Starts a sink (child process, this same binary), `smtpgate` with two
//! listeners in front of it — one inspecting (policy "default"), one exempt
//! (policy "none") — and, as baselines, HAProxy in TCP mode (when installed)
//! and the sink directly. The TLS rows (on unless `--tls off`) add a second
//! sink that offers STARTTLS and two more smtpgate listeners in front of it:
//! one terminating the client's STARTTLS, inspecting and encrypting again
//! towards the sink (`starttls = "inspect"`), one relaying STARTTLS blind
//! (`starttls = "passthrough"`); their clients do STARTTLS after EHLO. Then:
//! 1. closed loop: the same load through each path in alternation for
//!    several rounds (the order flips every round so drift hits all paths);
//! 2. with the TLS rows and connections reused: one message per connection
//!    through plaintext inspected, TLS inspected and TLS exempt, for the TLS
//!    handshake's CPU per connection;
//! 3. an open-loop sweep: smtpgate's two paths at several offered rates,
//!    which shows how many cores the relay keeps busy at each rate. CPU per
//!    message is not constant (it falls as batches grow with load), so the
//!    "cores needed for N msgs/s" is read off this curve, not projected
//!    from saturation.
//!
//! Each relay's CPU is read from /proc/PID/stat around each run. The TLS
//! rows' delivery is checked: the STARTTLS sink's digests of what it
//! accepted against the senders' digests of what was accepted. Prints a
//! table and writes `report.json` and a self-contained `report.html`.
//!
//! It does not judge the numbers; it measures and shows its work (machine,
//! versions, config, every run, the spread over rounds) so an operator can
//! trust or rerun them.
//!
//! # Layout
//! - `procs`   — the child processes, their CPU time, the machine's facts.
//! - `summary` — per-path figures with spread, ratios, sweep, cores needed.
//! - `render`  — the text table and the HTML page with its SVG charts.

mod procs;
mod render;
mod summary;

use crate::report::{Latencies, Report};
use crate::send::{self, SendOptions};
use crate::util::{self, parse_duration, SizeSpec};
use procs::{ChildGuard, Facts, GateLaunch, Placement, SinkKind, TlsSetup};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};
use summary::{
    CompareReport, CoresNeeded, CostOfInspection, Delivery, Load, PathSummary, RunResult, Sweep,
    SweepPoint, TlsCost,
};

const INSPECT: &str = "inspect (policy default)";
const EXEMPT: &str = "exempt (policy none)";
const TLS_INSPECT: &str = "TLS inspected (starttls inspect)";
const TLS_EXEMPT: &str = "TLS exempt (starttls passthrough)";
const HAPROXY: &str = "haproxy (tcp mode)";
const DIRECT: &str = "direct to sink";
// The one-message-per-connection series of the TLS rows.
const INSPECT_PER_CONNECTION: &str = "inspect, one message per connection";
const TLS_INSPECT_PER_CONNECTION: &str = "TLS inspected, one message per connection";
const TLS_EXEMPT_PER_CONNECTION: &str = "TLS exempt, one message per connection";

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Directory for report.json, report.html and the processes' logs.
    #[arg(long, default_value = "smtpgate-report")]
    out: PathBuf,
    /// Length of each measured closed-loop run.
    #[arg(long, value_parser = parse_duration, default_value = "4s")]
    duration: Duration,
    /// Message size or mix, as for `send --size`.
    #[arg(long, default_value = "1k:60,10k:30,100k:10")]
    size: SizeSpec,
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// Closed-loop rounds; each round runs every path once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 1)]
    recipients: u32,
    /// Pipeline MAIL/RCPT/DATA as a real MTA does.
    #[arg(long)]
    pipelining: bool,
    /// One message per connection (connect, EHLO, message, QUIT), the shape
    /// of mail from many Internet senders.
    #[arg(long)]
    per_connection: bool,
    /// Reference rows: `auto` = direct to the sink, and HAProxy in TCP mode
    /// when it is installed; `direct`; `none`.
    #[arg(long, value_enum, default_value_t = Baselines::Auto)]
    baselines: Baselines,
    /// Open-loop sweep through smtpgate's two paths: `auto` (25, 50 and 75%
    /// of the inspecting path's closed-loop msgs/s), `none`, or rates in
    /// msgs/s: 250,1000,2000.
    #[arg(long, default_value = "auto")]
    rates: Rates,
    /// Length of each sweep run.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    sweep_duration: Duration,
    /// Sweep rounds; each round runs every rate on both paths.
    #[arg(long, default_value_t = 2)]
    sweep_rounds: usize,
    /// Message rates to give "cores needed" for (msgs/s, comma-separated);
    /// default: the decades from the lowest swept rate to 100 x saturation.
    #[arg(long, value_delimiter = ',')]
    cores_for: Vec<f64>,
    /// The smtpgate binary; default: beside this executable, then on PATH.
    #[arg(long)]
    smtpgate: Option<PathBuf>,
    /// smtpgate's executors (its --cores); default: all CPUs.
    #[arg(long)]
    relay_cores: Option<usize>,
    /// smtpgate's executor placement (its --placement).
    #[arg(long, value_enum, default_value_t = Placement::Unbound)]
    placement: Placement,
    /// Executors for the load generator (default: half the cores).
    #[arg(long)]
    cores: Option<usize>,
    /// TLS rows: `on` measures smtpgate terminating STARTTLS and inspecting
    /// (then encrypting again towards a STARTTLS sink) against relaying it
    /// blind (passthrough), under the same STARTTLS client load, plus one
    /// message per connection for the handshake's CPU; `off` skips them.
    #[arg(long, value_enum, default_value_t = TlsRows::On)]
    tls: TlsRows,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsRows {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Baselines {
    Auto,
    Direct,
    None,
}

/// `--rates`.
#[derive(Clone, Debug, PartialEq)]
pub enum Rates {
    /// Fractions of the inspecting path's measured saturation.
    Auto,
    Off,
    Listed(Vec<f64>),
}

impl FromStr for Rates {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "auto" => Ok(Rates::Auto),
            "none" | "" => Ok(Rates::Off),
            list => list
                .split(',')
                .map(|r| match r.trim().parse::<f64>() {
                    Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
                    _ => Err(format!(
                        "invalid rate {r:?} in --rates (auto, none, or msgs/s like 250,1000)"
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Rates::Listed),
        }
    }
}

/// One path the load goes through.
#[derive(Clone)]
struct Path {
    name: &'static str,
    target: SocketAddr,
    /// The relay process whose CPU is charged to this path, if any.
    relay_pid: Option<u32>,
    sink: SinkKind,
    /// `StartTls` on the TLS rows.
    tls: send::TlsMode,
    /// One message per connection, whatever the load says.
    one_message_per_connection: bool,
}

impl Path {
    fn plain(name: &'static str, target: SocketAddr, relay_pid: Option<u32>) -> Path {
        Path {
            name,
            target,
            relay_pid,
            sink: SinkKind::Plain,
            tls: send::TlsMode::Off,
            one_message_per_connection: false,
        }
    }

    fn starttls(name: &'static str, target: SocketAddr, relay_pid: u32) -> Path {
        Path {
            sink: SinkKind::StartTls,
            tls: send::TlsMode::StartTls,
            ..Path::plain(name, target, Some(relay_pid))
        }
    }

    fn per_connection(&self, name: &'static str) -> Path {
        Path {
            name,
            one_message_per_connection: true,
            ..self.clone()
        }
    }
}

/// Runs one load through one path and reads the CPU it cost.
struct Runner<'a> {
    args: &'a CompareArgs,
    loadgen_cores: usize,
    sink: &'a mut ChildGuard,
    tls_sink: Option<&'a mut ChildGuard>,
    gate: &'a mut ChildGuard,
    /// The digests of every message the TLS rows' senders saw accepted,
    /// warm-up included, one per line.
    tls_sent_digests: String,
    scratch: PathBuf,
}

impl Runner<'_> {
    fn run(
        &mut self,
        path: &Path,
        round: usize,
        duration: Duration,
        rate: Option<f64>,
    ) -> io::Result<(RunResult, Report)> {
        self.gate.check_alive()?;
        self.sink.check_alive()?;
        if let Some(tls_sink) = self.tls_sink.as_mut() {
            tls_sink.check_alive()?;
        }
        let sink_pid = match (path.sink, &self.tls_sink) {
            (SinkKind::Plain, _) => self.sink.pid(),
            (SinkKind::StartTls, Some(tls_sink)) => tls_sink.pid(),
            (SinkKind::StartTls, None) => unreachable!("TLS paths exist only with their sink"),
        };
        let digest_log =
            (path.sink == SinkKind::StartTls).then(|| self.scratch.join("sent.sha256"));
        let args = self.args;
        let options = SendOptions {
            target: path.target,
            connections: args.connections,
            messages: None,
            duration: Some(duration),
            size: args.size.clone(),
            recipients: args.recipients,
            pipelining: args.pipelining,
            bdat: false,
            per_connection: args.per_connection || path.one_message_per_connection,
            rate,
            cores: self.loadgen_cores,
            digest_log: digest_log.clone(),
            progress: false,
            timeout: Duration::from_secs(30),
            tls: path.tls,
            tls_ca: None,
        };
        let relay_before = path.relay_pid.map(procs::process_cpu).transpose()?;
        let sink_before = procs::process_cpu(sink_pid)?;
        let report = send::run(options)?;
        let sink_cpu_s = (procs::process_cpu(sink_pid)? - sink_before).as_secs_f64();
        if let Some(log) = &digest_log {
            self.tls_sent_digests += &std::fs::read_to_string(log)?;
        }
        let relay_cpu_s = match (path.relay_pid, relay_before) {
            (Some(pid), Some(before)) => Some((procs::process_cpu(pid)? - before).as_secs_f64()),
            _ => None,
        };
        let ok = report.messages_ok;
        let result = RunResult {
            round,
            path: path.name.to_string(),
            offered_msgs_per_s: rate,
            elapsed_s: report.elapsed_s,
            messages_ok: ok,
            messages_failed: report.messages_failed,
            msgs_per_s: report.msgs_per_s,
            mb_per_s: report.mb_per_s,
            relay_cpu_s,
            relay_cores: relay_cpu_s.map(|cpu| cpu / report.elapsed_s),
            relay_cpu_us_per_msg: relay_cpu_s
                .filter(|_| ok > 0)
                .map(|cpu| cpu * 1e6 / ok as f64),
            loadgen_cpu_s: report.loadgen_cpu_s,
            sink_cpu_s,
            latency_us: report.latency_us.clone(),
            errors: report.errors.clone(),
        };
        Ok((result, report))
    }
}

fn progress_line(series: &str, result: &RunResult) {
    eprintln!(
        "compare: {series} {:<26} {:>8.0} msgs/s{}{}",
        result.path,
        result.msgs_per_s,
        result
            .relay_cores
            .map_or(String::new(), |c| format!("  relay {c:.2} cores")),
        if result.messages_failed > 0 {
            format!("  ({} failed)", result.messages_failed)
        } else {
            String::new()
        }
    );
}

pub fn run(args: CompareArgs) -> io::Result<()> {
    if args.rounds == 0 || args.connections == 0 || args.sweep_rounds == 0 {
        return Err(io::Error::other(
            "--rounds, --sweep-rounds and --connections must be at least 1",
        ));
    }
    let launch = GateLaunch {
        binary: procs::find_smtpgate(&args.smtpgate)?,
        cores: args.relay_cores,
        placement: args.placement,
    };
    std::fs::create_dir_all(&args.out)?;
    let started = Instant::now();
    let loadgen_cores = args.cores.unwrap_or_else(util::default_cores);

    let sink = procs::start_sink(&args.out, SinkKind::Plain)?;
    let (mut sink, sink_addr) = (sink.process, sink.addr);
    let mut tls_sink = None;
    let mut tls_setup = None;
    if args.tls == TlsRows::On {
        let started = procs::start_sink(&args.out, SinkKind::StartTls)?;
        let (cert, key) = procs::write_self_signed_pair(&args.out)?;
        tls_setup = Some(TlsSetup {
            cert,
            key,
            sink: started.addr,
        });
        tls_sink = Some(started);
    }
    let mut gate = procs::start_smtpgate(&launch, &args.out, sink_addr, tls_setup.as_ref())?;
    let mut facts = Facts::gather(&launch, &gate, loadgen_cores);
    eprintln!(
        "compare: sink {sink_addr}; smtpgate {} (inspect {}, exempt {})",
        launch.binary.display(),
        gate.inspect,
        gate.exempt
    );
    let gate_pid = gate.process.pid();
    let mut paths = vec![
        Path::plain(INSPECT, gate.inspect, Some(gate_pid)),
        Path::plain(EXEMPT, gate.exempt, Some(gate_pid)),
    ];
    if let (Some(listeners), Some(setup)) = (gate.tls, &tls_setup) {
        eprintln!(
            "compare: STARTTLS sink {}; TLS inspected {}, TLS exempt {}",
            setup.sink, listeners.inspect, listeners.exempt
        );
        paths.push(Path::starttls(TLS_INSPECT, listeners.inspect, gate_pid));
        paths.push(Path::starttls(TLS_EXEMPT, listeners.exempt, gate_pid));
    }
    let mut haproxy = None;
    if args.baselines == Baselines::Auto {
        match procs::find_on_path("haproxy") {
            Some(binary) => {
                let started = procs::start_haproxy(&binary, &args.out, sink_addr)?;
                facts.haproxy_version = Some(procs::first_line_of(&binary, "-v"));
                paths.push(Path::plain(
                    HAPROXY,
                    started.listen,
                    Some(started.process.pid()),
                ));
                haproxy = Some(started);
            }
            None => eprintln!("compare: haproxy is not on PATH; no HAProxy row"),
        }
    }
    if args.baselines != Baselines::None {
        paths.push(Path::plain(DIRECT, sink_addr, None));
    }
    // With connections reused the handshake is paid once in many messages;
    // this series pays it once per message. With --per-connection the main
    // rows already do.
    let per_connection_paths: Vec<Path> = if gate.tls.is_some() && !args.per_connection {
        vec![
            paths[0].per_connection(INSPECT_PER_CONNECTION),
            paths[2].per_connection(TLS_INSPECT_PER_CONNECTION),
            paths[3].per_connection(TLS_EXEMPT_PER_CONNECTION),
        ]
    } else {
        Vec::new()
    };
    let per_connection_duration = (args.duration / 2).max(Duration::from_secs(1));
    let smtpgate_config = gate.config.clone();
    let scratch = args.out.join("runs");
    std::fs::create_dir_all(&scratch)?;
    let mut runner = Runner {
        args: &args,
        loadgen_cores,
        sink: &mut sink,
        tls_sink: tls_sink.as_mut().map(|s| &mut s.process),
        gate: &mut gate.process,
        tls_sent_digests: String::new(),
        scratch,
    };

    // Warm-up (not counted): connections, caches, the sink's first accepts.
    let warmup = (args.duration / 4).clamp(Duration::from_millis(300), Duration::from_secs(1));
    for path in &paths {
        runner.run(path, 0, warmup, None)?;
    }

    let mut runs = Vec::new();
    let mut histograms: BTreeMap<&str, Latencies> = BTreeMap::new();
    let mut closed_loop_rounds = |paths: &[Path],
                                  series: &str,
                                  duration: Duration,
                                  runner: &mut Runner,
                                  runs: &mut Vec<RunResult>|
     -> io::Result<()> {
        for round in 1..=args.rounds {
            let mut order: Vec<&Path> = paths.iter().collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for path in order {
                let (result, report) = runner.run(path, round, duration, None)?;
                progress_line(&format!("{series} {round}/{}", args.rounds), &result);
                let latencies = Latencies::from_report(&report).map_err(io::Error::other)?;
                histograms.entry(path.name).or_default().merge(&latencies);
                runs.push(result);
            }
        }
        Ok(())
    };
    closed_loop_rounds(&paths, "round", args.duration, &mut runner, &mut runs)?;
    closed_loop_rounds(
        &per_connection_paths,
        "per connection",
        per_connection_duration,
        &mut runner,
        &mut runs,
    )?;
    let closed_loop: Vec<RunResult> = runs.clone();
    let mut summarise = |paths: &[Path]| -> Vec<PathSummary> {
        paths
            .iter()
            .map(|p| {
                let mine: Vec<&RunResult> =
                    closed_loop.iter().filter(|r| r.path == p.name).collect();
                PathSummary::of(
                    p.name,
                    p.relay_pid.is_some(),
                    &mine,
                    &histograms.remove(p.name).unwrap_or_default(),
                )
            })
            .collect()
    };
    let summaries = summarise(&paths);
    let per_connection_summaries = summarise(&per_connection_paths);

    let rates = match &args.rates {
        Rates::Off => Vec::new(),
        Rates::Listed(rates) => rates.clone(),
        Rates::Auto => {
            let saturation = summaries[0].msgs_per_s.median;
            [0.25, 0.5, 0.75]
                .iter()
                .map(|f| round_to_two_digits(saturation * f))
                .filter(|r| *r > 0.0)
                .collect()
        }
    };
    let sweep = if rates.is_empty() {
        None
    } else {
        let swept = &paths[..2];
        for round in 1..=args.sweep_rounds {
            for (i, &rate) in rates.iter().enumerate() {
                let mut order: Vec<&Path> = swept.iter().collect();
                if (round + i) % 2 == 0 {
                    order.reverse();
                }
                for path in order {
                    let (result, _) = runner.run(path, round, args.sweep_duration, Some(rate))?;
                    progress_line(&format!("sweep {rate:.0} msgs/s"), &result);
                    runs.push(result);
                }
            }
        }
        Some(sweep_summary(&args, swept, &rates, &runs))
    };
    let tls_sent_digests = std::mem::take(&mut runner.tls_sent_digests);
    drop(runner);

    let tls = match tls_sink.as_mut() {
        None => None,
        Some(tls_sink) => {
            let sessions_established = procs::tls_established(gate.admin);
            // Stopped, the sink has written every digest it holds.
            tls_sink.process.stop();
            let received = match &tls_sink.digest_log {
                Some(log) => std::fs::read_to_string(log)?,
                None => String::new(),
            };
            let (handshake_minuend, handshake_subtrahend) = if per_connection_paths.is_empty() {
                (TLS_INSPECT, INSPECT)
            } else {
                (TLS_INSPECT_PER_CONNECTION, INSPECT_PER_CONNECTION)
            };
            Some(TlsCost {
                inspected_over_exempt: CostOfInspection::of(&runs, TLS_INSPECT, TLS_EXEMPT),
                tls_over_plaintext: CostOfInspection::of(&runs, TLS_INSPECT, INSPECT),
                per_connection_duration_s: (!per_connection_paths.is_empty())
                    .then_some(per_connection_duration.as_secs_f64()),
                per_connection: per_connection_summaries,
                handshake_cpu_us_per_connection: summary::cpu_per_message_difference(
                    &runs,
                    handshake_minuend,
                    handshake_subtrahend,
                ),
                sessions_established,
                delivery: Delivery::of(&tls_sent_digests, &received),
            })
        }
    };

    let report = CompareReport {
        facts,
        load: Load {
            duration_per_run_s: args.duration.as_secs_f64(),
            rounds: args.rounds,
            connections: args.connections,
            size: args.size.to_string(),
            recipients: args.recipients,
            pipelining: args.pipelining,
            per_connection: args.per_connection,
            tls_rows: tls.is_some(),
        },
        smtpgate_config,
        haproxy_config: haproxy.as_ref().map(|h| h.config.clone()),
        cost_of_inspection: CostOfInspection::of(&runs, INSPECT, EXEMPT),
        tls,
        paths: summaries,
        sweep,
        runs,
    };
    drop(haproxy);
    let text = render::table(&report);
    print!("{text}");
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report).expect("report serializes") + "\n",
    )?;
    std::fs::write(args.out.join("report.html"), render::html(&report))?;
    println!(
        "wrote {0}/report.json and {0}/report.html in {1:.0}s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(tls) = &report.tls {
        if !tls.delivery.digests_match {
            return Err(io::Error::other(format!(
                "the TLS rows' mail did not arrive intact: {} messages accepted, {} received \
                 by the STARTTLS sink, digests differ",
                tls.delivery.messages_sent, tls.delivery.messages_received
            )));
        }
    }
    Ok(())
}

fn sweep_summary(args: &CompareArgs, swept: &[Path], rates: &[f64], runs: &[RunResult]) -> Sweep {
    let mut points = Vec::new();
    for path in swept {
        let mine = |offered: Option<f64>| -> Vec<&RunResult> {
            runs.iter()
                .filter(|r| r.path == path.name && r.offered_msgs_per_s == offered)
                .collect()
        };
        for &rate in rates {
            points.extend(SweepPoint::of(path.name, Some(rate), &mine(Some(rate))));
        }
        points.extend(SweepPoint::of(path.name, None, &mine(None)));
    }
    let inspect_points: Vec<SweepPoint> = points
        .iter()
        .filter(|p| p.path == INSPECT)
        .cloned()
        .collect();
    let targets = if args.cores_for.is_empty() {
        summary::default_targets(&inspect_points)
    } else {
        args.cores_for.clone()
    };
    let cores_needed = swept
        .iter()
        .flat_map(|path| {
            let mine: Vec<&SweepPoint> = points.iter().filter(|p| p.path == path.name).collect();
            targets
                .iter()
                .filter_map(move |&n| CoresNeeded::of(&mine, n))
                .collect::<Vec<_>>()
        })
        .collect();
    Sweep {
        duration_per_run_s: args.sweep_duration.as_secs_f64(),
        rounds: args.sweep_rounds,
        rates: rates.to_vec(),
        points,
        cores_needed,
    }
}

/// 1234 -> 1200, 87.6 -> 88: offered rates a reader can repeat.
fn round_to_two_digits(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 0.0;
    }
    let scale = 10f64.powi(x.log10().floor() as i32 - 1);
    (x / scale).round() * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_as_auto_none_or_a_list() {
        assert_eq!("auto".parse::<Rates>().unwrap(), Rates::Auto);
        assert_eq!("none".parse::<Rates>().unwrap(), Rates::Off);
        assert_eq!(
            "250, 1000,2000.5".parse::<Rates>().unwrap(),
            Rates::Listed(vec![250.0, 1000.0, 2000.5])
        );
        for bad in ["250,x", "0", "-5", "inf"] {
            assert!(bad.parse::<Rates>().is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_rates_are_rounded_to_two_significant_digits() {
        assert_eq!(round_to_two_digits(1234.0), 1200.0);
        assert_eq!(round_to_two_digits(87.6), 88.0);
        assert_eq!(round_to_two_digits(0.0), 0.0);
    }
}
