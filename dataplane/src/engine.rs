//! Start-up, signals, reload and shutdown.
//!
//! - Start-up: every listen address is first bound once with a plain socket *without*
//!   SO_REUSEPORT and released. glommio's listeners always set SO_REUSEPORT, so without
//!   this probe a port already held by another process would be silently shared.
//! - One glommio executor per core (`--placement`: unbound by default, pinned =
//!   `PoolPlacement::MaxSpread`); each binds every listener and reports back; the
//!   readiness line is printed once all have.
//! - SIGHUP re-reads the config file: new sessions use it, live ones keep theirs, a bad
//!   file keeps the old config and says why. SIGTERM/SIGINT stop accepting and drain
//!   live sessions for up to `shutdown_drain`, then exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use smtpgate_policy::config::Config;

use crate::limits::Admission;
use crate::log;
use crate::stats::{ListenerStats, Stats};
use crate::tls::TlsContext;
use crate::{admin, config_file, shard};

/// io_uring registered memory per executor. glommio only uses it for file I/O, which
/// smtpgate does not do; the default (10 MiB) exceeds a non-root RLIMIT_MEMLOCK. 64 KiB
/// is glommio's floor, so even 64 cores stay within an 8 MiB limit.
const IO_MEMORY: usize = 64 << 10;
/// How long shards may take to bind their listeners.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);

pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    pub cores: Option<usize>,
    pub placement: Placement,
    pub spin_before_park: Duration,
}

/// How executors are placed on CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// One executor pinned per core, spread over packages (glommio `MaxSpread`): best
    /// when smtpgate has the cores to itself.
    Pinned,
    /// Executors not pinned: the kernel may move them. Measured 20-40% less CPU per
    /// message on a 2-core box shared with the mail server and the load generator.
    Unbound,
}

/// The housekeeping tick of every shard, delivered as one byte per tick over a
/// socketpair from a plain thread. A glommio timer would do, but any armed timer makes
/// the executor submit and then cancel an io_uring timeout every time it parks, which
/// is on every message; a readable socket costs nothing until it fires.
struct Ticks {
    readers: Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
}

impl Clone for Ticks {
    fn clone(&self) -> Self {
        Ticks {
            readers: self.readers.clone(),
        }
    }
}

impl Ticks {
    fn start(shards: usize) -> std::io::Result<Ticks> {
        let mut writers = Vec::with_capacity(shards);
        let mut readers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (w, r) = std::os::unix::net::UnixStream::pair()?;
            // A shard that stopped reading must never block the ticker.
            w.set_nonblocking(true)?;
            writers.push(w);
            readers.push(r);
        }
        std::thread::Builder::new()
            .name("smtpgate-tick".into())
            .spawn(move || loop {
                std::thread::sleep(crate::clock::TICK);
                for mut w in &writers {
                    let _ = std::io::Write::write(&mut w, &[0]);
                }
            })?;
        Ok(Ticks {
            readers: Arc::new(std::sync::Mutex::new(readers)),
        })
    }

    /// This shard's end of a tick socket.
    fn take(&self) -> Option<std::os::unix::net::UnixStream> {
        self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }
}

/// One loaded config with the counters of its listeners.
pub struct Generation {
    pub number: u64,
    pub config: Arc<Config>,
    pub listeners: Vec<Arc<ListenerStats>>,
    /// The certificates and TLS configs this config named, read from their files.
    pub tls: Arc<TlsContext>,
}

/// State shared by all cores and the main thread (leaked: it lives as long as the process).
pub struct Shared {
    pub admission: Admission,
    pub stats: Stats,
    pub health: admin::Health,
    current: RwLock<Arc<Generation>>,
    generation: AtomicU64,
    shutdown: AtomicBool,
}

impl Shared {
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn generation_number(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    fn install(&self, config: Config, tls: Arc<TlsContext>) {
        let number = self.generation_number() + 1;
        let listeners = self.stats.for_config(&config);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Generation {
            number,
            config: Arc::new(config),
            listeners,
            tls,
        });
        self.generation.store(number, Ordering::Release);
    }
}

enum Message {
    Signal(i32),
    ShardsExited(Vec<String>),
}

pub fn run(options: RunOptions) -> ExitCode {
    match start(options) {
        Ok(code) => code,
        Err(message) => {
            log::diag(&message);
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(path) => config_file::load(path),
        None => Ok(config_file::embedded_default()),
    }
}

/// Binds each address once without SO_REUSEPORT; returns the addresses with any
/// port 0 replaced by the port the kernel chose.
fn probe_listen_addresses(config: &mut Config) -> Result<(), String> {
    let mut seen = Vec::new();
    for listener in &mut config.listeners {
        if seen.contains(&listener.listen) {
            return Err(format!(
                "listen address {} is configured twice",
                listener.listen
            ));
        }
        let probe = std::net::TcpListener::bind(listener.listen)
            .map_err(|e| bind_error(listener.listen, &e))?;
        listener.listen = probe.local_addr().map_err(|e| e.to_string())?;
        seen.push(listener.listen);
    }
    Ok(())
}

/// Why a listen address cannot be bound, with the fix an operator needs.
fn bind_error(address: SocketAddr, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => "is another process holding the port?".to_string(),
        std::io::ErrorKind::PermissionDenied => format!(
            "port {} is privileged: grant CAP_NET_BIND_SERVICE (systemd AmbientCapabilities=, \
             or `setcap cap_net_bind_service=+ep` on the binary) or lower \
             net.ipv4.ip_unprivileged_port_start",
            address.port()
        ),
        _ => return format!("cannot listen on {address}: {e}"),
    };
    format!("cannot listen on {address}: {e} ({hint})")
}

fn start(options: RunOptions) -> Result<ExitCode, String> {
    let mut config = load(&options.config_path)?;
    let tls = Arc::new(TlsContext::load(&config)?);
    probe_listen_addresses(&mut config)?;
    let configured_listens: Vec<SocketAddr> = config.listeners.iter().map(|l| l.listen).collect();
    let admin_listener = match config.admin.listen {
        Some(address) => Some(
            std::net::TcpListener::bind(address)
                .map_err(|e| format!("cannot listen on admin address {address}: {e}"))?,
        ),
        None => None,
    };

    let shared: &'static Shared = Box::leak(Box::new(Shared {
        admission: Admission::default(),
        stats: Stats::default(),
        health: admin::Health::default(),
        current: RwLock::new(Arc::new(Generation {
            number: 0,
            config: Arc::new(config.clone()),
            listeners: Vec::new(),
            tls: tls.clone(),
        })),
        generation: AtomicU64::new(0),
        shutdown: AtomicBool::new(false),
    }));
    shared.install(config, tls);

    // Registered before the shards start so an early signal is queued, not fatal.
    let mut signals =
        Signals::new([SIGHUP, SIGTERM, SIGINT]).map_err(|e| format!("signals: {e}"))?;
    let signal_handle = signals.handle();
    let (messages_tx, messages) = mpsc::channel::<Message>();
    let signal_tx = messages_tx.clone();
    std::thread::Builder::new()
        .name("smtpgate-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal_tx.send(Message::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("signal thread: {e}"))?;

    let cores = options
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
    let addresses = configured_listens.clone();
    let placement = match options.placement {
        Placement::Pinned => PoolPlacement::MaxSpread(cores, None),
        Placement::Unbound => PoolPlacement::Unbound(cores),
    };
    let ticks = Ticks::start(cores).map_err(|e| format!("tick thread: {e}"))?;
    let mut builder = LocalExecutorPoolBuilder::new(placement);
    if !options.spin_before_park.is_zero() {
        builder = builder.spin_before_park(options.spin_before_park);
    }
    let pool = builder
        .name("smtpgate")
        .io_memory(IO_MEMORY)
        .on_all_shards(move || {
            let tick = ticks.take();
            shard::run(shared, ready_tx, addresses, tick)
        })
        .map_err(|e| format!("cannot start executors: {e}"))?;
    // Executor start-up errors only surface at join: a watcher thread reports them.
    std::thread::Builder::new()
        .name("smtpgate-join".into())
        .spawn(move || {
            let errors = pool
                .join_all()
                .into_iter()
                .filter_map(|r| r.err().map(|e| e.to_string()))
                .collect();
            let _ = messages_tx.send(Message::ShardsExited(errors));
        })
        .map_err(|e| format!("join thread: {e}"))?;

    wait_until_bound(shared, &ready, cores, &messages)?;
    // The readiness line names the bound admin port, which differs from the configured
    // one when that is 0 (tests bind port 0 and read the line instead of racing).
    let admin_bound = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    shared.health.set_ready();
    if let Some(listener) = admin_listener {
        let token = admin_token(&shared.current().config)?;
        admin::spawn(listener, shared, token).map_err(|e| format!("admin thread: {e}"))?;
    }
    announce(shared, cores, admin_bound);

    let mut drain_started: Option<Instant> = None;
    for message in messages.iter() {
        match message {
            Message::Signal(SIGHUP) => reload(shared, &options.config_path, &configured_listens),
            Message::Signal(signal) => {
                if drain_started.is_some() {
                    log::diag("second stop signal: exiting now");
                    return Ok(ExitCode::SUCCESS);
                }
                log::diag(&format!(
                    "signal {signal}: no longer accepting, draining live sessions for up to {:?}",
                    shared.current().config.timeouts.shutdown_drain
                ));
                drain_started = Some(Instant::now());
                shared.shutdown.store(true, Ordering::Release);
            }
            Message::ShardsExited(errors) => {
                signal_handle.close();
                if drain_started.is_some() && errors.is_empty() {
                    log::diag("stopped");
                    return Ok(ExitCode::SUCCESS);
                }
                return Err(format!(
                    "executors stopped unexpectedly: {}",
                    errors.join("; ")
                ));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The admin bearer token from `[admin] token_file`, if one is configured.
fn admin_token(config: &Config) -> Result<Option<String>, String> {
    let Some(path) = &config.admin.token_file else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("admin token file {} is empty", path.display()));
    }
    Ok(Some(token.to_string()))
}

fn wait_until_bound(
    shared: &Shared,
    ready: &mpsc::Receiver<Result<(), String>>,
    cores: usize,
    messages: &mpsc::Receiver<Message>,
) -> Result<(), String> {
    let until = Instant::now() + STARTUP_LIMIT;
    let mut bound = 0;
    while bound < cores {
        let left = until.saturating_duration_since(Instant::now());
        match ready.recv_timeout(left) {
            Ok(Ok(())) => bound += 1,
            Ok(Err(e)) => {
                shared.shutdown.store(true, Ordering::Release);
                return Err(e);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Every shard's sender is gone without all reporting: an executor failed
                // to start; its error comes from the join thread.
                let detail = match messages.recv_timeout(Duration::from_secs(5)) {
                    Ok(Message::ShardsExited(errors)) => errors.join("; "),
                    _ => "unknown error".into(),
                };
                let hint = if detail.contains("MemLockLimit") {
                    " (glommio needs RLIMIT_MEMLOCK of at least 512 KiB: raise `ulimit -l` or \
                     LimitMEMLOCK= in the systemd unit)"
                } else {
                    ""
                };
                return Err(format!("executors failed to start: {detail}{hint}"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                shared.shutdown.store(true, Ordering::Release);
                return Err("executors did not start in time".into());
            }
        }
    }
    Ok(())
}

fn announce(shared: &Shared, cores: usize, admin: Option<SocketAddr>) {
    let generation = shared.current();
    let listeners: Vec<String> = generation
        .config
        .listeners
        .iter()
        .map(|l| {
            format!(
                "{} -> {} (policy {}{}{})",
                l.listen,
                l.upstream,
                l.policy.name,
                if l.exempt.is_empty() {
                    ""
                } else {
                    ", exemptions"
                },
                if l.proxy_protocol { ", PROXY v2" } else { "" }
            )
        })
        .collect();
    let admin = admin.map_or("off".to_string(), |a| a.to_string());
    log::diag(&format!(
        "listening on {}; admin {admin}; {cores} shard{}",
        listeners.join(", "),
        if cores == 1 { "" } else { "s" }
    ));
}

fn reload(shared: &Shared, path: &Option<PathBuf>, listens: &[SocketAddr]) {
    let Some(path) = path else {
        log::diag("SIGHUP: running on the embedded default config, nothing to reload");
        return;
    };
    let mut config = match config_file::load(path) {
        Ok(config) => config,
        Err(errors) => {
            log::diag(&format!(
                "SIGHUP: keeping the current config; the new one has errors:\n{errors}"
            ));
            return;
        }
    };
    // Listening sockets are bound at start; a reload may change everything else.
    let same_listeners = config.listeners.len() == listens.len()
        && config.listeners.iter().zip(listens).all(|(l, bound)| {
            l.listen == *bound || (l.listen.port() == 0 && l.listen.ip() == bound.ip())
        });
    if !same_listeners {
        log::diag(
            "SIGHUP: keeping the current config; listen addresses changed (that needs a restart)",
        );
        return;
    }
    for (listener, bound) in config.listeners.iter_mut().zip(listens) {
        listener.listen = *bound;
    }
    if config.admin.listen != shared.current().config.admin.listen {
        log::diag("SIGHUP: admin address change ignored until restart");
    }
    // New certificates that fail to load keep the ones in use (and say why); the
    // rest of the new config applies.
    let previous = shared.current().tls.clone();
    let tls = match TlsContext::reload(&config, &previous) {
        Ok(tls) => Arc::new(tls),
        Err(why) => {
            log::diag(&format!(
                "SIGHUP: keeping the current TLS certificates and settings: {why}"
            ));
            previous
        }
    };
    shared.install(config, tls);
    log::diag(&format!("SIGHUP: reloaded {}", path.display()));
}
