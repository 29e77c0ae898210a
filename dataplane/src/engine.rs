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
//! - A shard that dies (a panic outside the inspector's guard) takes the process down
//!   with a non-zero exit and a clear message, so systemd or Kubernetes restart it,
//!   instead of serving on with fewer cores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use smtpgate_policy::config::Config;

use crate::clock::TickSource;
use crate::log;
use crate::panics;
use crate::shared::Shared;
use crate::tls::TlsContext;
use crate::{admin, config_file, notify, shard};

/// io_uring registered memory per executor. glommio only uses it for file I/O, which
/// smtpgate does not do; the default (10 MiB) exceeds a non-root RLIMIT_MEMLOCK. 64 KiB
/// is glommio's floor, so even 64 cores stay within an 8 MiB limit.
const IO_MEMORY: usize = 64 << 10;
/// How long shards may take to bind their listeners.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);
/// How long start-up waits for a listen address to be released by a process that has
/// just exited (see `bind_probe`).
const PREDECESSOR_GRACE: Duration = Duration::from_secs(2);

pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    pub cores: Option<usize>,
    pub placement: Placement,
    pub spin_before_park: Duration,
    /// Poll the config file this often and reload when it changes.
    pub watch_config: Option<Duration>,
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

enum Message {
    Signal(i32),
    ShardsExited(Vec<String>),
    ShardDied(usize),
}

/// Why smtpgate could not start, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("listen address {0} is configured twice")]
    ListenTwice(SocketAddr),
    #[error("cannot listen on {address}: {source}{}", bind_hint(.address, .source))]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on admin address {address}: {source}")]
    Admin {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the {what}: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("executors failed to start: {0}")]
    Executors(String),
    #[error("executors did not start in time")]
    ExecutorsLate,
    #[error(
        "shard {0} died (a panic, see above); exiting so that the supervisor restarts smtpgate"
    )]
    ShardDied(usize),
    #[error("executors stopped unexpectedly: {0}")]
    ExecutorsStopped(String),
}

pub fn run(options: RunOptions) -> ExitCode {
    match start(options) {
        Ok(code) => code,
        Err(e) => {
            log::diag(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Option<PathBuf>) -> Result<Config, StartError> {
    match path {
        Some(path) => config_file::load(path).map_err(StartError::Config),
        None => Ok(config_file::embedded_default()),
    }
}

/// Refuses a listen address another process holds (bound without SO_REUSEPORT, so a
/// live listener conflicts even when it shares the option) and resolves port 0 to the
/// port the shards will bind. A port-0 listener's port stays reserved by the returned
/// socket (bound with SO_REUSEPORT, never listening) until the shards have bound it:
/// released earlier, an outgoing connection could take it in between.
fn probe_listen_addresses(config: &mut Config) -> Result<Vec<socket2::Socket>, StartError> {
    let mut seen = Vec::new();
    let mut reservations = Vec::new();
    for listener in &mut config.listeners {
        if seen.contains(&listener.listen) {
            return Err(StartError::ListenTwice(listener.listen));
        }
        let address = listener.listen;
        let listen_error = |source| StartError::Listen { address, source };
        listener.listen = if address.port() == 0 {
            let reservation = reserve_port(address).map_err(listen_error)?;
            let bound = reservation.local_addr().map_err(listen_error)?;
            reservations.push(reservation);
            bound.as_socket().ok_or_else(|| {
                listen_error(std::io::Error::other("bound address is not an IP address"))
            })?
        } else {
            let probe = bind_probe(address).map_err(listen_error)?;
            probe.local_addr().map_err(listen_error)?
        };
        seen.push(listener.listen);
    }
    Ok(reservations)
}

/// Binds `address` (std sets SO_REUSEADDR), retrying for up to [`PREDECESSOR_GRACE`]
/// while it is in use. A process that has just exited still holds its listening sockets
/// until the kernel tears down its io_uring rings, a few milliseconds later (measured:
/// 0-7 ms), so a restart right after a stop would otherwise find its own predecessor's
/// listener. A port another live process holds is still refused, after the grace.
fn bind_probe(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let deadline = Instant::now() + PREDECESSOR_GRACE;
    loop {
        match std::net::TcpListener::bind(address) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// A TCP socket bound to `address` with SO_REUSEADDR and SO_REUSEPORT, as the shards'
/// listeners are, so they can bind beside it.
fn reserve_port(address: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// The fix an operator needs for a listen address that cannot be bound.
fn bind_hint(address: &SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => " (is another process holding the port?)".to_string(),
        std::io::ErrorKind::PermissionDenied => format!(
            " (port {} is privileged: grant CAP_NET_BIND_SERVICE (systemd AmbientCapabilities=, \
             or `setcap cap_net_bind_service=+ep` on the binary) or lower \
             net.ipv4.ip_unprivileged_port_start)",
            address.port()
        ),
        _ => String::new(),
    }
}

fn thread_error(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Thread { what, source }
}

fn start(options: RunOptions) -> Result<ExitCode, StartError> {
    let mut config = load(&options.config_path)?;
    let tls = Arc::new(TlsContext::load(&config).map_err(StartError::Config)?);
    let port_reservations = probe_listen_addresses(&mut config)?;
    let configured_listens: Vec<SocketAddr> = config.listeners.iter().map(|l| l.listen).collect();
    let admin_listener = match config.admin.listen {
        Some(address) => Some(
            std::net::TcpListener::bind(address)
                .map_err(|source| StartError::Admin { address, source })?,
        ),
        None => None,
    };

    let shared = Shared::leak(config, tls);

    // Registered before the shards start so an early signal is queued, not fatal.
    let mut signals =
        Signals::new([SIGHUP, SIGTERM, SIGINT]).map_err(thread_error("signal handler"))?;
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
        .map_err(thread_error("signal thread"))?;

    let cores = options
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let (ready_tx, ready) = mpsc::channel::<Result<(), shard::BindFailed>>();
    let addresses = configured_listens.clone();
    let placement = match options.placement {
        Placement::Pinned => PoolPlacement::MaxSpread(cores, None),
        Placement::Unbound => PoolPlacement::Unbound(cores),
    };
    let ticks = TickSource::start(cores).map_err(thread_error("tick thread"))?;
    let (deaths_tx, deaths) = mpsc::channel::<usize>();
    panics::report_shard_deaths(deaths_tx);
    let death_tx = messages_tx.clone();
    std::thread::Builder::new()
        .name("smtpgate-deaths".into())
        .spawn(move || {
            if let Ok(id) = deaths.recv() {
                let _ = death_tx.send(Message::ShardDied(id));
            }
        })
        .map_err(thread_error("shard watch thread"))?;
    let mut builder = LocalExecutorPoolBuilder::new(placement);
    if !options.spin_before_park.is_zero() {
        builder = builder.spin_before_park(options.spin_before_park);
    }
    let pool = builder
        .name("smtpgate")
        .io_memory(IO_MEMORY)
        .on_all_shards(move || {
            let tick = ticks.take();
            async move {
                panics::on_shard(glommio::executor().id());
                shard::run(shared, ready_tx, addresses, cores, tick).await
            }
        })
        .map_err(|e| StartError::Executors(e.to_string()))?;
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
        .map_err(thread_error("join thread"))?;

    wait_until_bound(shared, &ready, cores, &messages)?;
    drop(port_reservations);
    // The readiness line names the bound admin port, which differs from the configured
    // one when that is 0 (tests bind port 0 and read the line instead of racing).
    let admin_bound = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    shared.health.set_ready();
    if let Some(listener) = admin_listener {
        let token = admin_token(&shared.current().config).map_err(StartError::Config)?;
        admin::spawn(listener, shared, token).map_err(thread_error("admin thread"))?;
    }
    // Before the readiness line, so an edit made right after it is seen as a change.
    if let (Some(path), Some(every)) = (&options.config_path, options.watch_config) {
        crate::watch::start(path.clone(), every);
    }
    announce(shared, cores, admin_bound);
    let serving = format!(
        "serving {} listener(s) on {cores} shard(s)",
        configured_listens.len()
    );
    notify::ready(&serving);
    notify::start_watchdog(shared);

    let mut drain_started: Option<Instant> = None;
    for message in messages.iter() {
        match message {
            Message::Signal(SIGHUP) => {
                notify::reloading();
                let ok = reload(shared, &options.config_path, &configured_listens);
                shared.stats.reloaded(ok);
                notify::ready(if ok {
                    &serving
                } else {
                    "serving; the last reload failed, the previous config is in force"
                });
            }
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
                notify::stopping("draining live sessions");
                shared.begin_shutdown();
            }
            Message::ShardDied(id) => return Err(StartError::ShardDied(id)),
            Message::ShardsExited(errors) => {
                signal_handle.close();
                if drain_started.is_some() && errors.is_empty() {
                    log::diag("stopped");
                    return Ok(ExitCode::SUCCESS);
                }
                return Err(StartError::ExecutorsStopped(errors.join("; ")));
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
    ready: &mpsc::Receiver<Result<(), shard::BindFailed>>,
    cores: usize,
    messages: &mpsc::Receiver<Message>,
) -> Result<(), StartError> {
    let until = Instant::now() + STARTUP_LIMIT;
    let mut bound = 0;
    while bound < cores {
        let left = until.saturating_duration_since(Instant::now());
        match ready.recv_timeout(left) {
            Ok(Ok(())) => bound += 1,
            Ok(Err(shard::BindFailed { address, source })) => {
                shared.begin_shutdown();
                return Err(StartError::Listen { address, source });
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
                return Err(StartError::Executors(format!("{detail}{hint}")));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                shared.begin_shutdown();
                return Err(StartError::ExecutorsLate);
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

/// Whether the file was taken (the counters and `/metrics` report it).
fn reload(shared: &Shared, path: &Option<PathBuf>, listens: &[SocketAddr]) -> bool {
    let Some(path) = path else {
        log::diag("SIGHUP: running on the embedded default config, nothing to reload");
        return true;
    };
    let mut config = match config_file::load(path) {
        Ok(config) => config,
        Err(errors) => {
            log::diag(&format!(
                "SIGHUP: keeping the current config; the new one has errors:\n{errors}"
            ));
            return false;
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
        return false;
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
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_0_listener_keeps_its_port_reserved_until_the_shards_bind() {
        let mut config = Config::from_toml_str(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:25\"\n",
        )
        .unwrap();
        let reservations = probe_listen_addresses(&mut config).unwrap();
        let resolved = config.listeners[0].listen;
        assert_ne!(resolved.port(), 0);
        assert_eq!(reservations.len(), 1);
        // Held: a socket without the reuse options cannot bind it. (The kernel's
        // choice of a local port for an outgoing connection likewise skips every port
        // a bind() holds, which is the race this reservation closes.)
        let plain = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
        assert!(plain.unwrap().bind(&resolved.into()).is_err());
        // A shard's listener (SO_REUSEADDR + SO_REUSEPORT) binds beside the reservation.
        let shard_like = reserve_port(resolved).unwrap();
        shard_like.listen(16).unwrap();
        drop(reservations);
        assert_eq!(shard_like.local_addr().unwrap().as_socket(), Some(resolved));
    }
}
