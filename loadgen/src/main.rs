//! smtpgate-loadgen: SMTP load generator, sink, and the
//! inspection-vs-exemption comparison.
//!
//! # Layout
//! - `main`    — command line (clap) and exit codes.
//! - `sink`    — SMTP server that counts, hashes and discards mail; fault injection.
//! - `send`    — thread-per-core load generator, open or closed loop.
//! - `compare` — starts a sink and `smtpgate`, runs the same load through an
//!   inspecting and an exempt listener in alternation, writes JSON and HTML.
//! - `merge`   — one report from the `send --json` results of several processes.
//! - `message` — the realistic message corpus, built once.
//! - `reply`   — client-side SMTP reply reader.
//! - `report`  — latency histograms per SMTP step, text and JSON report.
//! - `tls`     — TLS streams and configs for `send --starttls/--implicit-tls` and `sink --starttls`.
//! - `util`    — PRNG, parsing, counters, ports, CPU time.
//!
//! The loadgen has its own minimal SMTP client and server code (it does not
//! use smtpgate-policy): it must never be the bottleneck of what it measures.

mod compare;
mod merge;
mod reply;
mod report;
mod send;
mod sink;
mod tls;

use clap::{Parser, Subcommand};
use smtpgate_loadgen::{message, util};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use util::{parse_duration, SizeSpec};

#[derive(Parser)]
#[command(name = "smtpgate-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// SMTP server that accepts and discards mail, counting (and hashing) it.
    /// Prints "sink: listening on ADDR" on stderr when ready and a summary
    /// line on stdout at SIGTERM/SIGINT.
    Sink {
        /// Address to listen on; port 0 picks a free port (printed).
        #[arg(long, default_value = "127.0.0.1:2526")]
        listen: String,
        /// Write the SHA-256 (lowercase hex) of each accepted message, one per line.
        #[arg(long)]
        digest_log: Option<PathBuf>,
        /// Fraction of transactions answered 451 (at MAIL or end of data).
        #[arg(long, default_value_t = 0.0)]
        tempfail_rate: f64,
        /// Fraction of transactions answered 550/554 (at MAIL or end of data).
        #[arg(long, default_value_t = 0.0)]
        permfail_rate: f64,
        /// Wait this long before answering end of data (e.g. 20ms).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        delay: Duration,
        /// Executors (one per core); default: half the available cores, at least 1.
        #[arg(long)]
        cores: Option<usize>,
        /// Print a progress line on stderr this often while mail flows (0 = never).
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        report_interval: Duration,
        /// Advertise and accept STARTTLS (a self-signed certificate made at start
        /// unless --tls-cert/--tls-key give one).
        #[arg(long)]
        starttls: bool,
        /// PEM certificate chain for STARTTLS (implies --starttls).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Drive SMTP load and report msgs/s, MB/s, errors and latency percentiles.
    ///
    /// Exit status: 0 when every message was accepted, 1 when any message
    /// failed (refused or I/O error; the report is printed either way),
    /// 2 for usage or setup errors.
    Send {
        /// Server to send to, host:port.
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 10)]
        connections: usize,
        /// Total messages to send (split over the connections).
        #[arg(long, required_unless_present = "duration")]
        messages: Option<u64>,
        /// Send for this long instead of a fixed count (e.g. 30s).
        #[arg(long, value_parser = parse_duration, conflicts_with = "messages")]
        duration: Option<Duration>,
        /// Message size in bytes or a mix: 1k, 10240, 1k:60,10k:30,100k:10.
        #[arg(long, default_value = "1k")]
        size: SizeSpec,
        #[arg(long, default_value_t = 1)]
        recipients: u32,
        /// Send MAIL, RCPTs and DATA (or BDAT) as one group when advertised.
        #[arg(long)]
        pipelining: bool,
        /// Send the body with BDAT (CHUNKING) instead of DATA.
        #[arg(long)]
        bdat: bool,
        /// One message per connection (connect, EHLO, message, QUIT).
        #[arg(long)]
        per_connection: bool,
        /// Open loop at this total rate (messages/s); latencies are measured
        /// from the scheduled send time (coordinated-omission corrected).
        #[arg(long)]
        rate: Option<f64>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Executors (one per core); default: half the available cores, at least 1.
        #[arg(long)]
        cores: Option<usize>,
        /// Write the SHA-256 of each accepted message, one per line.
        #[arg(long)]
        digest_log: Option<PathBuf>,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
        /// Give up on a connection that makes no progress for this long.
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        timeout: Duration,
        /// STARTTLS after EHLO (a server that does not offer it is an error).
        #[arg(long, conflicts_with = "implicit_tls")]
        starttls: bool,
        /// TLS from the first byte (port 465 style, RFC 8314).
        #[arg(long)]
        implicit_tls: bool,
        /// Verify the server's certificate against this PEM CA file (default: any
        /// certificate is accepted, as opportunistic STARTTLS does).
        #[arg(long)]
        tls_ca: Option<PathBuf>,
    },
    /// Measure the cost of inspection: the same load through smtpgate with
    /// policy "default" and with policy "none", in alternation, into a sink;
    /// and a STARTTLS load through smtpgate terminating and inspecting TLS and
    /// passing it through (`--tls off` skips these).
    /// Needs the smtpgate binary (cargo build --release --workspace).
    Compare(compare::CompareArgs),
    /// Combine the `send --json` results of processes that ran side by side
    /// into one report: counters and rates summed, latency histograms merged.
    ///
    /// Exit status: 0 when no merged message failed, 1 when any did, 2 for
    /// unreadable or incompatible inputs.
    Merge {
        /// Two or more `send --json` files.
        #[arg(required = true, num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// Also write the merged report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Sink {
            listen,
            digest_log,
            tempfail_rate,
            permfail_rate,
            delay,
            cores,
            report_interval,
            starttls,
            tls_cert,
            tls_key,
        } => {
            let listen = match util::resolve(&listen) {
                Ok(addr) => addr,
                Err(e) => return fail(&format!("sink: --listen {listen}: {e}")),
            };
            for (name, rate) in [("tempfail", tempfail_rate), ("permfail", permfail_rate)] {
                if !(0.0..=1.0).contains(&rate) {
                    return fail(&format!("sink: --{name}-rate must be within 0..1"));
                }
            }
            let options = sink::SinkOptions {
                listen,
                digest_log,
                tempfail_rate,
                permfail_rate,
                delay,
                cores: cores.unwrap_or_else(util::default_cores),
                report_interval,
                starttls: starttls || tls_cert.is_some(),
                tls_cert_key: tls_cert.zip(tls_key),
            };
            match sink::run(options) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("sink: {e}")),
            }
        }
        Command::Send {
            target,
            connections,
            messages,
            duration,
            size,
            recipients,
            pipelining,
            bdat,
            per_connection,
            rate,
            json,
            cores,
            digest_log,
            quiet,
            timeout,
            starttls,
            implicit_tls,
            tls_ca,
        } => {
            let target = match util::resolve(&target) {
                Ok(addr) => addr,
                Err(e) => return fail(&format!("send: --target {target}: {e}")),
            };
            let options = send::SendOptions {
                target,
                connections,
                messages,
                duration,
                size,
                recipients,
                pipelining,
                bdat,
                per_connection,
                rate,
                cores: cores.unwrap_or_else(util::default_cores),
                digest_log,
                progress: !quiet,
                timeout,
                tls: if implicit_tls {
                    send::TlsMode::Implicit
                } else if starttls {
                    send::TlsMode::StartTls
                } else {
                    send::TlsMode::Off
                },
                tls_ca,
            };
            let report = match send::run(options) {
                Ok(report) => report,
                Err(e) => return fail(&format!("send: {e}")),
            };
            print!("{}", report.text());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).expect("report serializes");
                if let Err(e) = std::fs::write(&path, text + "\n") {
                    return fail(&format!("send: writing {}: {e}", path.display()));
                }
            }
            if report.messages_failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Compare(args) => match compare::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("compare: {e}")),
        },
        Command::Merge { inputs, json } => run_merge(&inputs, json.as_deref()),
    }
}

fn run_merge(inputs: &[PathBuf], json: Option<&std::path::Path>) -> ExitCode {
    let mut reports = Vec::new();
    for path in inputs {
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(report) => reports.push((path.display().to_string(), report)),
            Err(e) => return fail(&format!("merge: {}: {e}", path.display())),
        }
    }
    let merged = match merge::merge(&reports) {
        Ok(merged) => merged,
        Err(e) => return fail(&format!("merge: {e}")),
    };
    println!("merged {} reports", merged.merged_from.len());
    print!("{}", merged.report.text());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&merged).expect("report serializes");
        if let Err(e) = std::fs::write(path, text + "\n") {
            return fail(&format!("merge: writing {}: {e}", path.display()));
        }
    }
    if merged.report.messages_failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(2)
}
