//! Counters shared by all cores, and their rendering for `/status` (JSON) and
//! `/metrics` (Prometheus text format).
//!
//! Counters are relaxed atomics bumped at most a few times per session (accept, limit,
//! upstream failure, rule hit), never per byte or per read, so cross-core traffic stays
//! off the relay's hot path; they are read and summed only when the admin endpoint asks.
//! Rule counters are keyed by listener and rule text and survive a reload for rules that
//! did not change, as `show service-policy inspect esmtp` counters do.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use smtpgate_policy::config::{Config, Listener};
use smtpgate_policy::rules::{Actions, Disposition};

use crate::limits::{Admission, LimitHit};
use crate::tls::FailureReason;

thread_local! {
    static SHARD_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// This thread's shard number (0 on threads that are not shards).
pub fn shard_index() -> usize {
    SHARD_INDEX.with(|i| i.get())
}

/// Called once by each shard as it starts.
pub fn set_shard_index(index: usize) {
    SHARD_INDEX.with(|i| i.set(index));
}

#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A figure that goes up and down, summed over shards (each adds its changes).
#[derive(Default, Debug)]
pub struct Gauge(std::sync::atomic::AtomicI64);

impl Gauge {
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed).max(0) as u64
    }
}

/// One rule's counters (the firewall's match / drop / reset / log / mask columns).
#[derive(Default, Debug)]
pub struct RuleCounters {
    pub matched: Counter,
    pub drop: Counter,
    pub reset: Counter,
    pub log: Counter,
    pub mask: Counter,
}

impl RuleCounters {
    pub fn count(&self, actions: &Actions) {
        self.matched.inc();
        match actions.disposition {
            Disposition::Continue | Disposition::Reject => {}
            Disposition::Drop => self.drop.inc(),
            Disposition::Reset => self.reset.inc(),
        }
        if actions.log {
            self.log.inc();
        }
        if actions.mask {
            self.mask.inc();
        }
    }
}

/// Per-listener counters; `rules[i]` counts `policy.rules[i]` of the config generation
/// this value was built for.
#[derive(Debug)]
pub struct ListenerStats {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub policy: String,
    pub rules: Vec<(String, Arc<RuleCounters>)>,
    pub sessions: Arc<ListenerSessions>,
}

#[derive(Debug)]
pub struct ListenerSessions {
    pub accepted: Counter,
    pub exempt: Counter,
    /// Indexed by shard: each shard writes only its own slot, the scrape sums them.
    meters: Box<[ShardMeter]>,
}

impl Default for ListenerSessions {
    fn default() -> ListenerSessions {
        ListenerSessions {
            accepted: Counter::default(),
            exempt: Counter::default(),
            meters: (0..MAX_SHARDS).map(|_| ShardMeter::default()).collect(),
        }
    }
}

impl ListenerSessions {
    /// This shard's live counters for the listener.
    pub fn meter(&self) -> &ShardMeter {
        &self.meters[shard_index() % MAX_SHARDS]
    }

    fn total(&self, counter: impl Fn(&ShardMeter) -> &Counter) -> u64 {
        self.meters.iter().map(|m| counter(m).get()).sum()
    }
}

/// Shard slots per listener and histogram; a shard past this shares a slot (still
/// exact: the counters are atomics, only the cache line is shared).
const MAX_SHARDS: usize = 256;

/// One shard's counters for one listener, on its own cache line. Bytes are added per
/// read, so the counters move while sessions are still open.
#[derive(Default, Debug)]
#[repr(align(64))]
pub struct ShardMeter {
    pub connections: Counter,
    pub bytes_from_client: Counter,
    pub bytes_from_upstream: Counter,
    pub messages: Counter,
    pub transactions: Counter,
}

/// Upper bounds (seconds) of every latency histogram's buckets; the last is +Inf.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A latency histogram: per-shard buckets, merged when scraped; observing is three
/// relaxed adds on the shard's own cache line, no lock.
#[derive(Debug)]
pub struct Histogram {
    shards: Box<[ShardHistogram]>,
}

#[derive(Default, Debug)]
#[repr(align(64))]
struct ShardHistogram {
    /// Non-cumulative; index `BUCKETS.len()` is above the last bound.
    buckets: [Counter; BUCKETS.len() + 1],
    sum_micros: Counter,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            shards: (0..MAX_SHARDS).map(|_| ShardHistogram::default()).collect(),
        }
    }
}

impl Histogram {
    pub fn observe(&self, elapsed: std::time::Duration) {
        let shard = &self.shards[shard_index() % MAX_SHARDS];
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        shard.buckets[bucket].inc();
        shard.sum_micros.add(elapsed.as_micros() as u64);
    }

    fn render(&self, out: &mut Exposition, name: &str, help: &str) {
        out.family(name, "histogram", help);
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().map(Some).chain([None]).enumerate() {
            cumulative += self.shards.iter().map(|s| s.buckets[i].get()).sum::<u64>();
            let le = bound.map_or("+Inf".to_string(), |b| b.to_string());
            out.sample(
                &format!("{name}_bucket"),
                &format!("{{le=\"{le}\"}}"),
                cumulative,
            );
        }
        let micros: u64 = self.shards.iter().map(|s| s.sum_micros.get()).sum();
        out.sample(
            &format!("{name}_sum"),
            "",
            format!("{:.6}", micros as f64 / 1e6),
        );
        out.sample(&format!("{name}_count"), "", cumulative);
    }
}

/// Picks one counter of a [`ShardMeter`] (a label value's series).
type MeterField = fn(&ShardMeter) -> &Counter;

/// Prometheus text exposition, one family at a time.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.text, "{name}{labels} {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }
}

/// Process and reload facts for `/metrics`.
pub struct Process {
    started: std::time::SystemTime,
    reloads_ok: Counter,
    reloads_failed: Counter,
    last_reload_ok: std::sync::atomic::AtomicBool,
    /// Unix seconds of the last successful load (start-up counts).
    last_reload_success: AtomicU64,
}

impl Default for Process {
    fn default() -> Process {
        let started = std::time::SystemTime::now();
        Process {
            started,
            reloads_ok: Counter::default(),
            reloads_failed: Counter::default(),
            last_reload_ok: std::sync::atomic::AtomicBool::new(true),
            last_reload_success: AtomicU64::new(unix_seconds(started)),
        }
    }
}

fn unix_seconds(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Process-wide counters.
#[derive(Default)]
pub struct Stats {
    pub accepted: Counter,
    pub exempt: Counter,
    pub rejected: [Counter; LimitHit::ALL.len()],
    /// Upstream connects refused or timed out, and upstreams that did not greet in time.
    pub upstream_failures: Counter,
    pub upstream_lost: Counter,
    /// Connections from `accept_proxy` sources closed for a missing or bad PROXY header.
    pub proxy_header_refused: Counter,
    pub timeout_embryonic: Counter,
    pub timeout_idle: Counter,
    pub timeout_data: Counter,
    pub timeout_data_termination: Counter,
    pub dropped: Counter,
    /// Sessions closed with 421 4.3.2 because `buffer_budget` ran out.
    pub over_budget: Counter,
    /// Bytes sessions hold (queued to a peer or kept by the inspector), as of each
    /// shard's last tick.
    pub buffered: Gauge,
    pub reset: Counter,
    pub client_bytes: Counter,
    pub server_bytes: Counter,
    pub tls: TlsCounters,
    pub upstream_connect_time: Histogram,
    pub session_duration: Histogram,
    /// From forwarding an end of data (final dot, BDAT LAST) to the server's reply.
    pub end_of_data_turnaround: Histogram,
    pub process: Process,
    /// Rule counters by (listen address, policy name, rule text), kept across reloads.
    rule_registry: Mutex<HashMap<(SocketAddr, String, String), Arc<RuleCounters>>>,
    session_registry: Mutex<HashMap<SocketAddr, Arc<ListenerSessions>>>,
    /// The listeners of the config in force, for rendering.
    current: Mutex<Vec<Arc<ListenerStats>>>,
}

impl Stats {
    /// Records a SIGHUP's outcome.
    pub fn reloaded(&self, ok: bool) {
        let process = &self.process;
        process.last_reload_ok.store(ok, Ordering::Relaxed);
        if ok {
            process.reloads_ok.inc();
            process.last_reload_success.store(
                unix_seconds(std::time::SystemTime::now()),
                Ordering::Relaxed,
            );
        } else {
            process.reloads_failed.inc();
        }
    }

    pub fn rejected(&self, hit: LimitHit) -> &Counter {
        &self.rejected[hit as usize]
    }

    /// Counters for a (new or reloaded) config's listeners; becomes what is rendered.
    pub fn for_config(&self, config: &Config) -> Vec<Arc<ListenerStats>> {
        let listeners: Vec<_> = config.listeners.iter().map(|l| self.listener(l)).collect();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = listeners.clone();
        listeners
    }

    fn listener(&self, listener: &Listener) -> Arc<ListenerStats> {
        let mut registry = self.rule_registry.lock().unwrap_or_else(|e| e.into_inner());
        let rules = listener
            .policy
            .rules
            .iter()
            .map(|rule| {
                let key = (
                    listener.listen,
                    listener.policy.name.clone(),
                    rule.text.clone(),
                );
                let counters = registry.entry(key).or_default().clone();
                (rule.text.clone(), counters)
            })
            .collect();
        let sessions = self
            .session_registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(listener.listen)
            .or_default()
            .clone();
        Arc::new(ListenerStats {
            listen: listener.listen,
            upstream: listener.upstream,
            policy: listener.policy.name.clone(),
            rules,
            sessions,
        })
    }

    fn listeners(&self) -> Vec<Arc<ListenerStats>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn status_json(&self, admission: &Admission) -> String {
        let rejected: serde_json::Map<_, _> = LimitHit::ALL
            .iter()
            .map(|&hit| (hit.name().to_string(), json!(self.rejected(hit).get())))
            .collect();
        let listeners: Vec<_> = self
            .listeners()
            .iter()
            .map(|l| {
                json!({
                    "listen": l.listen.to_string(),
                    "upstream": l.upstream.to_string(),
                    "policy": l.policy,
                    "accepted": l.sessions.accepted.get(),
                    "exempt": l.sessions.exempt.get(),
                    "rules": l.rules.iter().map(|(text, c)| json!({
                        "rule": text,
                        "matched": c.matched.get(),
                        "drop": c.drop.get(),
                        "reset": c.reset.get(),
                        "log": c.log.get(),
                        "mask": c.mask.get(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let status = json!({
            "connections": {
                "accepted": self.accepted.get(),
                "active": admission.active(),
                "embryonic": admission.embryonic(),
                "exempt": self.exempt.get(),
                "rejected": rejected,
                "upstream_failures": self.upstream_failures.get(),
                "upstream_lost": self.upstream_lost.get(),
                "proxy_header_refused": self.proxy_header_refused.get(),
                "timeouts": {
                    "embryonic": self.timeout_embryonic.get(),
                    "idle": self.timeout_idle.get(),
                    "data": self.timeout_data.get(),
                    "data_termination": self.timeout_data_termination.get(),
                },
                "dropped": self.dropped.get(),
                "over_buffer_budget": self.over_budget.get(),
                "reset": self.reset.get(),
            },
            "bytes": {
                "from_clients": self.client_bytes.get(),
                "from_upstreams": self.server_bytes.get(),
                "buffered": self.buffered.get(),
            },
            "tls": self.tls.json(),
            "listeners": listeners,
            "log_dropped": crate::log::dropped(),
        });
        let mut text = serde_json::to_string_pretty(&status).unwrap_or_default();
        text.push('\n');
        text
    }

    pub fn prometheus(&self, admission: &Admission) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP smtpgate_{name} {help}");
            let _ = writeln!(out, "# TYPE smtpgate_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "smtpgate_{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v)];
        metric(
            "connections_accepted_total",
            "counter",
            "Client connections accepted.",
            &one(self.accepted.get()),
        );
        metric(
            "connections_active",
            "gauge",
            "Client sessions open now.",
            &one(admission.active()),
        );
        metric(
            "connections_embryonic",
            "gauge",
            "Sessions with no HELO/EHLO accepted yet.",
            &one(admission.embryonic()),
        );
        metric(
            "connections_exempt_total",
            "counter",
            "Sessions relayed verbatim (exempt).",
            &one(self.exempt.get()),
        );
        let rejected: Vec<_> = LimitHit::ALL
            .iter()
            .map(|&hit| {
                (
                    format!("{{limit=\"{}\"}}", hit.name()),
                    self.rejected(hit).get(),
                )
            })
            .collect();
        metric(
            "connections_rejected_total",
            "counter",
            "Clients refused by a connection limit.",
            &rejected,
        );
        metric(
            "upstream_failures_total",
            "counter",
            "Upstream connects refused or timed out.",
            &one(self.upstream_failures.get()),
        );
        metric(
            "upstream_lost_total",
            "counter",
            "Upstream connections that failed mid-session.",
            &one(self.upstream_lost.get()),
        );
        metric(
            "timeouts_total",
            "counter",
            "Sessions closed by a timeout.",
            &[
                (
                    "{timeout=\"embryonic\"}".into(),
                    self.timeout_embryonic.get(),
                ),
                ("{timeout=\"idle\"}".into(), self.timeout_idle.get()),
                ("{timeout=\"data\"}".into(), self.timeout_data.get()),
                (
                    "{timeout=\"data_termination\"}".into(),
                    self.timeout_data_termination.get(),
                ),
            ],
        );
        metric(
            "proxy_header_refused_total",
            "counter",
            "Connections from accept_proxy sources closed for a missing or bad PROXY header.",
            &one(self.proxy_header_refused.get()),
        );
        metric(
            "sessions_dropped_total",
            "counter",
            "Sessions ended by drop-connection.",
            &one(self.dropped.get()),
        );
        metric(
            "buffered_bytes",
            "gauge",
            "Bytes sessions hold, queued to a peer or kept by the inspector (as of the last tick; bounded by buffer_budget).",
            &one(self.buffered.get()),
        );
        metric(
            "sessions_over_buffer_budget_total",
            "counter",
            "Sessions closed with 421 4.3.2: they held the most when buffer_budget ran out.",
            &one(self.over_budget.get()),
        );
        metric(
            "sessions_reset_total",
            "counter",
            "Sessions ended by reset.",
            &one(self.reset.get()),
        );
        metric(
            "bytes_total",
            "counter",
            "Bytes read from each side.",
            &[
                ("{from=\"client\"}".into(), self.client_bytes.get()),
                ("{from=\"upstream\"}".into(), self.server_bytes.get()),
            ],
        );
        metric(
            "log_dropped_total",
            "counter",
            "Log lines dropped because the log writer could not keep up.",
            &one(crate::log::dropped()),
        );
        let mut established = Vec::new();
        let mut failures = Vec::new();
        for (side, name) in TlsCounters::SIDES.iter().enumerate() {
            established.push((
                format!("{{side=\"{name}\"}}"),
                self.tls.established[side].get(),
            ));
            for reason in FailureReason::ALL {
                failures.push((
                    format!("{{side=\"{name}\",reason=\"{}\"}}", reason.name()),
                    self.tls.failed(side, reason).get(),
                ));
            }
        }
        metric(
            "tls_established_total",
            "counter",
            "TLS sessions established, towards clients and towards the upstream.",
            &established,
        );
        metric(
            "tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed, by side and reason.",
            &failures,
        );
        let mut matches = Vec::new();
        let mut actions = Vec::new();
        for l in self.listeners() {
            for (text, c) in &l.rules {
                let labels = format!(
                    "listener=\"{}\",policy=\"{}\",rule=\"{}\"",
                    l.listen,
                    escape_label(&l.policy),
                    escape_label(text)
                );
                matches.push((format!("{{{labels}}}"), c.matched.get()));
                for (action, counter) in [
                    ("drop", &c.drop),
                    ("reset", &c.reset),
                    ("log", &c.log),
                    ("mask", &c.mask),
                ] {
                    actions.push((format!("{{{labels},action=\"{action}\"}}"), counter.get()));
                }
            }
        }
        metric(
            "rule_matches_total",
            "counter",
            "Policy rule matches.",
            &matches,
        );
        metric(
            "rule_actions_total",
            "counter",
            "Policy rule actions taken.",
            &actions,
        );
        let mut more = Exposition::default();
        self.render_process(&mut more);
        self.render_listeners(&mut more);
        self.upstream_connect_time.render(
            &mut more,
            "smtpgate_upstream_connect_seconds",
            "Time to connect to the upstream.",
        );
        self.session_duration.render(
            &mut more,
            "smtpgate_session_duration_seconds",
            "Client session lifetime, accept to close.",
        );
        self.end_of_data_turnaround.render(
            &mut more,
            "smtpgate_end_of_data_turnaround_seconds",
            "From forwarding an end of data to the server's reply.",
        );
        out.push_str(&more.text);
        crate::reactor_metrics::append_prometheus(&mut out);
        out
    }

    fn render_listeners(&self, out: &mut Exposition) {
        let listeners = self.listeners();
        let per_listener =
            |out: &mut Exposition, name: &str, help: &str, series: &[(&str, MeterField)]| {
                out.family(name, "counter", help);
                for l in &listeners {
                    for (extra, counter) in series {
                        out.sample(
                            name,
                            &format!("{{listener=\"{}\"{extra}}}", l.listen),
                            l.sessions.total(counter),
                        );
                    }
                }
            };
        per_listener(
            out,
            "smtpgate_listener_connections_total",
            "Client sessions relayed, per listener.",
            &[("", |m| &m.connections)],
        );
        per_listener(
            out,
            "smtpgate_listener_bytes_total",
            "Bytes read from each side, per listener, counted as they are read.",
            &[
                (",from=\"client\"", |m| &m.bytes_from_client),
                (",from=\"upstream\"", |m| &m.bytes_from_upstream),
            ],
        );
        per_listener(
            out,
            "smtpgate_listener_messages_total",
            "Messages the upstream accepted (2xx to end of data), per listener.",
            &[("", |m| &m.messages)],
        );
        per_listener(
            out,
            "smtpgate_listener_transactions_total",
            "MAIL transactions the upstream accepted, per listener.",
            &[("", |m| &m.transactions)],
        );
    }

    /// The standard process metrics (as Prometheus client libraries name them), build
    /// facts and the config's reload state.
    fn render_process(&self, out: &mut Exposition) {
        out.family(
            "smtpgate_build_info",
            "gauge",
            "Version and git commit of this binary (value 1).",
        );
        out.sample(
            "smtpgate_build_info",
            &format!(
                "{{version=\"{}\",commit=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                option_env!("SMTPGATE_GIT_COMMIT").unwrap_or("unknown")
            ),
            1,
        );
        let p = &self.process;
        out.single(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            unix_seconds(p.started),
        );
        let usage = process_usage();
        if let Some(cpu) = usage.cpu_seconds {
            out.single(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent, in seconds.",
                format!("{cpu:.2}"),
            );
        }
        if let Some(rss) = usage.resident_bytes {
            out.single(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                rss,
            );
        }
        if let Some(fds) = usage.open_fds {
            out.single("process_open_fds", "gauge", "Open file descriptors.", fds);
        }
        if let Some(max) = usage.max_fds {
            out.single(
                "process_max_fds",
                "gauge",
                "Limit on open file descriptors.",
                max,
            );
        }
        out.single(
            "smtpgate_config_last_reload_successful",
            "gauge",
            "Whether the last config reload succeeded (1) or kept the old config (0).",
            u8::from(p.last_reload_ok.load(Ordering::Relaxed)),
        );
        out.single(
            "smtpgate_config_last_reload_success_timestamp_seconds",
            "gauge",
            "When the config in force was loaded, Unix seconds.",
            p.last_reload_success.load(Ordering::Relaxed),
        );
        out.family(
            "smtpgate_config_reloads_total",
            "counter",
            "SIGHUP reloads, by outcome.",
        );
        out.sample(
            "smtpgate_config_reloads_total",
            "{result=\"success\"}",
            p.reloads_ok.get(),
        );
        out.sample(
            "smtpgate_config_reloads_total",
            "{result=\"failure\"}",
            p.reloads_failed.get(),
        );
    }
}

/// TLS counters: sessions established and handshakes failed, per side (index 0 the
/// client side, 1 the upstream side) and failure reason.
#[derive(Default)]
pub struct TlsCounters {
    pub established: [Counter; 2],
    failed: [[Counter; FailureReason::ALL.len()]; 2],
}

impl TlsCounters {
    pub const SIDES: [&'static str; 2] = ["client", "upstream"];

    pub fn failed(&self, side: usize, reason: FailureReason) -> &Counter {
        &self.failed[side][reason as usize]
    }

    fn json(&self) -> serde_json::Value {
        let side = |i: usize| {
            let failures: serde_json::Map<_, _> = FailureReason::ALL
                .iter()
                .map(|&r| (r.name().to_string(), json!(self.failed(i, r).get())))
                .collect();
            json!({"established": self.established[i].get(), "handshake_failures": failures})
        };
        json!({"client": side(0), "upstream": side(1)})
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What `/proc` says about this process; `None` where it cannot be read.
struct Usage {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

fn process_usage() -> Usage {
    // SAFETY: sysconf and getrlimit only read process facts into owned values.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name (which may hold spaces) start at `state` (3rd).
    let cpu_seconds = stat.as_deref().and_then(|stat| {
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        (ticks > 0).then(|| (utime + stime) / ticks as f64)
    });
    let resident_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page.max(0) as u64);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as u64);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let max_fds = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
        .then_some(limit.rlim_cur);
    Usage {
        cpu_seconds,
        resident_bytes,
        open_fds,
        max_fds,
    }
}
