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
            Disposition::Continue => {}
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

#[derive(Default, Debug)]
pub struct ListenerSessions {
    pub accepted: Counter,
    pub exempt: Counter,
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
    pub reset: Counter,
    pub client_bytes: Counter,
    pub server_bytes: Counter,
    pub tls: TlsCounters,
    /// Rule counters by (listen address, policy name, rule text), kept across reloads.
    rule_registry: Mutex<HashMap<(SocketAddr, String, String), Arc<RuleCounters>>>,
    session_registry: Mutex<HashMap<SocketAddr, Arc<ListenerSessions>>>,
    /// The listeners of the config in force, for rendering.
    current: Mutex<Vec<Arc<ListenerStats>>>,
}

impl Stats {
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
                "reset": self.reset.get(),
            },
            "bytes": {
                "from_clients": self.client_bytes.get(),
                "from_upstreams": self.server_bytes.get(),
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
        out
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
