//! Connection admission: `max_connections`, `max_embryonic`, `per_client_max`,
//! `per_client_embryonic_max` and `per_client_rate`, counted exactly across every core.
//!
//! The global counts are atomics reserved with compare-and-swap, so no core can
//! overshoot a limit (the one place shards share mutable state on the accept path).
//! Per-client counts live in a small lock-striped map, touched only when a per-client
//! limit is configured. A [`Ticket`] returns everything it reserved when dropped.
//!
//! `per_client_rate` (new sessions per client per minute) is a token bucket per client
//! holding up to that many sessions, refilled evenly over the minute; buckets outlive
//! their sessions (that is the point) and are forgotten once full again.
//!
//! A session is embryonic from accept until a HELO/EHLO has been accepted (inspected
//! sessions: the inspector says so). Exempt sessions have no inspector; they count as
//! embryonic until the client sends its first bytes, which is the closest verbatim
//! relaying can tell (a silent client is the embryonic flood the limit exists for).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use smtpgate_policy::config::Limits;

/// Which limit refused a client; also the label of its rejection counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    MaxConnections,
    MaxEmbryonic,
    PerClientMax,
    PerClientEmbryonicMax,
    PerClientRate,
}

impl LimitHit {
    pub const ALL: [LimitHit; 5] = [
        LimitHit::MaxConnections,
        LimitHit::MaxEmbryonic,
        LimitHit::PerClientMax,
        LimitHit::PerClientEmbryonicMax,
        LimitHit::PerClientRate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LimitHit::MaxConnections => "max_connections",
            LimitHit::MaxEmbryonic => "max_embryonic",
            LimitHit::PerClientMax => "per_client_max",
            LimitHit::PerClientEmbryonicMax => "per_client_embryonic_max",
            LimitHit::PerClientRate => "per_client_rate",
        }
    }
}

/// A client as the per-client limits see it: IPv4 address, or IPv6 /64 (one site).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey(u32::from(v4) as u128),
            IpAddr::V6(v6) => ClientKey(u128::from(v6) & !((1u128 << 64) - 1) | (1 << 32)),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct ClientCount {
    connections: u64,
    embryonic: u64,
}

const STRIPES: usize = 16;
/// A stripe's rate buckets are pruned of full (forgotten) ones past this many.
const BUCKETS_BEFORE_PRUNE: usize = 4096;

/// One client's `per_client_rate` tokens.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

#[derive(Default)]
pub struct Admission {
    active: AtomicU64,
    embryonic: AtomicU64,
    per_client: [Mutex<HashMap<ClientKey, ClientCount>>; STRIPES],
    rate: [Mutex<HashMap<ClientKey, Bucket>>; STRIPES],
}

fn stripe(key: ClientKey) -> usize {
    let h = (key.0 as u64 ^ (key.0 >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 60) as usize % STRIPES
}

/// Adds one to `counter` unless that would pass `max` (0 = unlimited).
fn reserve(counter: &AtomicU64, max: u64) -> bool {
    if max == 0 {
        counter.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Admission {
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn embryonic(&self) -> u64 {
        self.embryonic.load(Ordering::Relaxed)
    }

    /// The locked stripe of the per-client map holding `key`. A panic elsewhere while
    /// holding it leaves plain counters behind, so a poisoned lock is still used.
    fn clients(&self, key: ClientKey) -> MutexGuard<'_, HashMap<ClientKey, ClientCount>> {
        self.per_client[stripe(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one of the client's `per_client_rate` tokens, if it has one left.
    fn take_rate_token(&self, key: ClientKey, per_minute: u64, now: Instant) -> bool {
        let mut buckets = self.rate[stripe(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let capacity = per_minute as f64;
        let refill = |b: &Bucket| {
            let minutes = now.saturating_duration_since(b.refilled).as_secs_f64() / 60.0;
            (b.tokens + minutes * capacity).min(capacity)
        };
        if buckets.len() >= BUCKETS_BEFORE_PRUNE {
            buckets.retain(|_, b| refill(b) < capacity);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            refilled: now,
        });
        bucket.tokens = refill(bucket);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    /// Admits a new (embryonic) session or says which limit it hit.
    pub fn admit(&'static self, client: IpAddr, limits: &Limits) -> Result<Ticket, LimitHit> {
        self.admit_at(client, limits, Instant::now())
    }

    fn admit_at(
        &'static self,
        client: IpAddr,
        limits: &Limits,
        now: Instant,
    ) -> Result<Ticket, LimitHit> {
        if limits.per_client_rate > 0
            && !self.take_rate_token(ClientKey::of(client), limits.per_client_rate, now)
        {
            return Err(LimitHit::PerClientRate);
        }
        if !reserve(&self.active, limits.max_connections) {
            return Err(LimitHit::MaxConnections);
        }
        if !reserve(&self.embryonic, limits.max_embryonic) {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitHit::MaxEmbryonic);
        }
        let mut ticket = Ticket {
            admission: self,
            client: None,
            embryonic: true,
        };
        if limits.per_client_max > 0 || limits.per_client_embryonic_max > 0 {
            let key = ClientKey::of(client);
            let mut map = self.clients(key);
            let count = map.entry(key).or_default();
            let refused = if limits.per_client_max > 0 && count.connections >= limits.per_client_max
            {
                Some(LimitHit::PerClientMax)
            } else if limits.per_client_embryonic_max > 0
                && count.embryonic >= limits.per_client_embryonic_max
            {
                Some(LimitHit::PerClientEmbryonicMax)
            } else {
                None
            };
            if let Some(hit) = refused {
                if count.connections == 0 {
                    map.remove(&key);
                }
                drop(map);
                // `ticket` (no client yet) gives back the global reservations.
                return Err(hit);
            }
            count.connections += 1;
            count.embryonic += 1;
            ticket.client = Some(key);
        }
        Ok(ticket)
    }
}

/// One admitted session's reservations; dropping it gives them back.
pub struct Ticket {
    admission: &'static Admission,
    client: Option<ClientKey>,
    embryonic: bool,
}

impl Ticket {
    pub fn is_embryonic(&self) -> bool {
        self.embryonic
    }

    /// The session left the embryonic state (a HELO/EHLO was accepted).
    pub fn establish(&mut self) {
        if !self.embryonic {
            return;
        }
        self.embryonic = false;
        self.admission.embryonic.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = self.client {
            if let Some(count) = self.admission.clients(key).get_mut(&key) {
                count.embryonic -= 1;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.establish();
        self.admission.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = self.client {
            let mut map = self.admission.clients(key);
            if let Some(count) = map.get_mut(&key) {
                count.connections -= 1;
                if count.connections == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak() -> &'static Admission {
        Box::leak(Box::default())
    }

    fn limits(max: u64, emb: u64, pc: u64, pce: u64) -> Limits {
        Limits {
            max_connections: max,
            max_embryonic: emb,
            per_client_max: pc,
            per_client_embryonic_max: pce,
            ..Limits::default()
        }
    }

    #[test]
    fn global_limit_is_exact_and_released() {
        let a = leak();
        let l = limits(2, 0, 0, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t1 = a.admit(ip, &l).unwrap();
        let _t2 = a.admit(ip, &l).unwrap();
        assert_eq!(a.admit(ip, &l).err(), Some(LimitHit::MaxConnections));
        drop(t1);
        assert!(a.admit(ip, &l).is_ok());
        assert_eq!(a.active(), 1);
    }

    #[test]
    fn embryonic_limit_frees_on_establish() {
        let a = leak();
        let l = limits(0, 1, 0, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut t1 = a.admit(ip, &l).unwrap();
        assert_eq!(a.admit(ip, &l).err(), Some(LimitHit::MaxEmbryonic));
        assert_eq!(
            a.active(),
            1,
            "refused admission gives its reservation back"
        );
        t1.establish();
        let _t2 = a.admit(ip, &l).unwrap();
        assert_eq!(a.embryonic(), 1);
    }

    #[test]
    fn per_client_counts_ipv6_per_64() {
        let a = leak();
        let l = limits(0, 0, 1, 0);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_site: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let other_site: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _t = a.admit(one, &l).unwrap();
        assert_eq!(a.admit(same_site, &l).err(), Some(LimitHit::PerClientMax));
        assert!(a.admit(other_site, &l).is_ok());
    }

    #[test]
    fn per_client_embryonic() {
        let a = leak();
        let l = limits(0, 0, 0, 1);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let mut t = a.admit(ip, &l).unwrap();
        assert_eq!(a.admit(ip, &l).err(), Some(LimitHit::PerClientEmbryonicMax));
        t.establish();
        let _t2 = a.admit(ip, &l).unwrap();
    }

    #[test]
    fn per_client_rate_refuses_a_burst_and_refills_over_the_minute() {
        let a = leak();
        let l = Limits {
            per_client_rate: 2,
            ..Limits::default()
        };
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.8".parse().unwrap();
        let t0 = Instant::now();
        drop(a.admit_at(ip, &l, t0).unwrap());
        drop(a.admit_at(mapped, &l, t0).unwrap());
        assert_eq!(
            a.admit_at(ip, &l, t0).err(),
            Some(LimitHit::PerClientRate),
            "closed sessions still count against the rate, IPv4-mapped or not"
        );
        assert!(a.admit_at("192.0.2.9".parse().unwrap(), &l, t0).is_ok());
        let half_minute = t0 + std::time::Duration::from_secs(30);
        assert!(
            a.admit_at(ip, &l, half_minute).is_ok(),
            "one token back after 30 s"
        );
        assert!(a.admit_at(ip, &l, half_minute).is_err());
    }
}
