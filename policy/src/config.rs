//! The TOML config (serde, `deny_unknown_fields`) and its validation into one
//! immutable [`Config`] the dataplane shares across cores.
//!
//! CONTRACT (the dataplane reads these validated types; the raw serde types and the
//! parser/validator live below them and are private to this crate).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::policy::Policy;

/// A validated config. Cheap to share: `Arc<Config>`; policies are `Arc<Policy>`.
#[derive(Clone, Debug)]
pub struct Config {
    pub admin: Admin,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub listeners: Vec<Listener>,
}

#[derive(Clone, Debug)]
pub struct Admin {
    /// `None` when the admin endpoint is switched off (`listen = ""`).
    pub listen: Option<SocketAddr>,
}

/// Connection limits; 0 = unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u64,
    pub max_embryonic: u64,
    pub per_client_max: u64,
    pub per_client_embryonic_max: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// No HELO/EHLO accepted yet.
    pub embryonic: Duration,
    pub idle: Duration,
    pub upstream_connect: Duration,
    pub shutdown_drain: Duration,
}

#[derive(Clone, Debug)]
pub struct Listener {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// The compiled policy; `policy.inspect == false` for `none` (exempt all).
    pub policy: Arc<Policy>,
    /// Client networks relayed verbatim, never inspected.
    pub exempt: Vec<IpNet>,
    /// Send a PROXY protocol v2 header to the upstream.
    pub proxy_protocol: bool,
}

impl Listener {
    /// Whether a client is relayed verbatim (exempt CIDR or `policy = "none"`).
    pub fn is_exempt(&self, client: std::net::IpAddr) -> bool {
        !self.policy.inspect || self.exempt.iter().any(|net| net.contains(&client))
    }
}
