//! smtpgate: the thin I/O driver around `smtpgate-policy`. It moves bytes between
//! SMTP clients and the upstream mail server on glommio, one executor per core, and
//! asks the sans-IO inspector what to forward.
//!
//! # Layout
//! - `main` (this file): the command line (`run`, `check`, `import-asa`).
//! - [`config_file`]: reading a config file or the embedded default into a validated `Config`.
//! - [`engine`]: start-up (port probe, executor pool, readiness line), signals, reload, drain.
//! - [`shared`]: what all cores share: the config generation in force, admission, stats.
//! - [`shard`]: what runs on each core: accept loops and the housekeeping tick.
//! - [`session`]: one client connection: real client address, admission, upstream
//!   connect, PROXY header, relay, close.
//! - [`relay`]: the single-task relay loop: two halves (client, upstream), inspected or
//!   verbatim, per-phase deadlines, honest failures.
//! - [`limits`]: global and per-client connection/embryonic/rate admission, exact across cores.
//! - [`clock`]: the shard tick and per-session coarse deadlines it sweeps, not per-read timers.
//! - [`sock`]: the few libc socket calls glommio lacks (half-close, RST, gathered send).
//! - [`bufpool`]: per-shard read buffers, lent to sessions only while they read.
//! - [`budget`]: `buffer_budget`, the bound on bytes all sessions hold; evicts the largest.
//! - [`stats`]: counters shared across cores and their JSON / Prometheus rendering.
//! - [`admin`]: the tiny HTTP/1.1 endpoint serving `/status` and `/metrics`.
//! - [`notify`]: systemd readiness, reload, stop and watchdog notifications.
//! - [`watch`]: `--watch-config`, a reload when the config file's content changes.
//! - [`log`]: event lines, session summaries and diagnostics, written off the shards.
//! - [`proxy_v2`]: the PROXY protocol v2 header sent upstream.
//! - [`proxy_header`]: reading a trusted balancer's PROXY v1/v2 header.
//! - [`panics`]: an inspector panic costs a session; any other on a shard, the process.
//! - [`tls`]: sans-IO TLS per side (rustls) and the certificates and configs it uses.

mod admin;
mod budget;
mod bufpool;
mod clock;
mod config_file;
mod engine;
mod limits;
mod log;
mod notify;
mod panics;
mod proxy_header;
mod proxy_v2;
mod reactor_metrics;
mod relay;
mod session;
mod shard;
mod shared;
mod sock;
mod stats;
mod tls;
mod upstream_starttls;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "smtpgate", version, about = "SMTP inspection dataplane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the dataplane.
    Run {
        /// Config file (TOML). Without it: the embedded default config.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Executors (cores) to run; default: every available core.
        #[arg(long)]
        cores: Option<usize>,
        /// Event line format.
        #[arg(long = "log-format", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Where events and diagnostics go: stdout/stderr (journald priorities when
        /// systemd connected them to the journal), or syslog (RFC 5424 on /dev/log).
        #[arg(long = "log-target", value_enum, default_value_t = log::LogTarget::Stdout)]
        log_target: log::LogTarget,
        /// The local syslog socket for `--log-target syslog`.
        #[arg(
            long = "syslog-socket",
            value_name = "PATH",
            default_value = "/dev/log"
        )]
        syslog_socket: PathBuf,
        /// Admin endpoint address, replacing `[admin] listen` (e.g. a pod's IP).
        #[arg(long = "admin-listen", value_name = "ADDR")]
        admin_listen: Option<std::net::SocketAddr>,
        /// Poll the config file this often (e.g. 10s) and reload when it changes.
        #[arg(long = "watch-config", value_name = "INTERVAL", value_parser = parse_interval)]
        watch_config: Option<std::time::Duration>,
        /// Executor placement on CPUs.
        #[arg(long, value_enum, default_value_t = engine::Placement::Unbound)]
        placement: engine::Placement,
        /// Microseconds an idle executor keeps polling before it sleeps (0 = sleep at
        /// once). Trades CPU for latency on a box smtpgate has to itself.
        #[arg(
            long = "spin-before-park",
            value_name = "MICROSECONDS",
            default_value_t = 0
        )]
        spin_before_park: u64,
    },
    /// Validate a config file: exit 0, or 1 with every error and where it is.
    Check {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Turn a firewall `policy-map type inspect esmtp` block into config TOML.
    ImportAsa {
        /// The firewall config excerpt.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            cores,
            log_format,
            log_target,
            syslog_socket,
            admin_listen,
            watch_config,
            placement,
            spin_before_park,
        } => {
            if let Some(admin) = admin_listen {
                let _ = config_file::ADMIN_LISTEN.set(admin);
            }
            if let Err(e) = log::init(log_format, log_target, &syslog_socket) {
                log::diag(&e);
                return ExitCode::FAILURE;
            }
            let code = engine::run(engine::RunOptions {
                config_path: config,
                cores,
                placement,
                spin_before_park: std::time::Duration::from_micros(spin_before_park),
                watch_config,
            });
            log::flush(std::time::Duration::from_secs(1));
            code
        }
        Command::Check { config } => check(&config),
        Command::ImportAsa { file } => import_asa(&file),
    }
}

/// A positive duration in the config's grammar (`500ms`, `10s`, `1min`).
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    smtpgate_policy::config::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("expected a duration like 500ms, 10s or 1min, found {text:?}"))
}

fn check(path: &std::path::Path) -> ExitCode {
    match config_file::load(path).and_then(|config| {
        tls::TlsContext::load(&config)?;
        Ok(config)
    }) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {}: {warning}", path.display());
            }
            println!(
                "ok: {} ({} listener{})",
                path.display(),
                config.listeners.len(),
                if config.listeners.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn import_asa(path: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("smtpgate: cannot read {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match config_file::import_asa(&text) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
