//! The admin endpoint: a small HTTP/1.1 server on plain threads, off the shards, so
//! it answers even when every core is busy or stalled.
//!
//! - `GET|HEAD /healthz`: 200 while every shard's housekeeping tick is fresh, 503 naming
//!   the stalled shards otherwise (liveness: a stalled shard is a dead dataplane).
//! - `GET|HEAD /readyz`: 200 once every shard listens, 503 before that and while
//!   draining (readiness: a balancer stops sending new clients).
//! - `GET /status` (JSON) and `GET /metrics` (Prometheus text): when `[admin]
//!   token_file` is set, only with `Authorization: Bearer <token>`.
//!
//! Each connection gets its own thread (at most [`MAX_CONNECTIONS`] at once) and one
//! deadline for the whole request, so idle or slow clients cannot delay the probes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::shared::Shared;

/// Concurrent admin connections; more are answered 503 at once and closed.
const MAX_CONNECTIONS: usize = 32;
/// Reading the request and writing the answer, together.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_REQUEST: usize = 8192;
/// A shard whose tick is older than this is stalled (the tick is 200 ms).
const STALE_AFTER: Duration = Duration::from_secs(2);

/// Shard liveness and process readiness, as the probes report them.
pub struct Health {
    origin: Instant,
    beats: Mutex<Vec<Arc<AtomicU64>>>,
    ready: AtomicBool,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            origin: Instant::now(),
            beats: Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
        }
    }
}

/// One shard's heartbeat; `beat` is one relaxed store, no lock.
pub struct Heartbeat {
    origin: Instant,
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Health {
    /// Registers a shard (once, as it starts).
    pub fn heartbeat(&self) -> Heartbeat {
        let last = Arc::new(AtomicU64::new(self.origin.elapsed().as_millis() as u64));
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(last.clone());
        Heartbeat {
            origin: self.origin,
            last,
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Shards (by registration order) whose last tick is older than [`STALE_AFTER`].
    pub fn stalled_shards(&self) -> Vec<usize> {
        let now = self.origin.elapsed().as_millis() as u64;
        let stale = STALE_AFTER.as_millis() as u64;
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .enumerate()
            .filter(|(_, last)| now.saturating_sub(last.load(Ordering::Relaxed)) > stale)
            .map(|(i, _)| i)
            .collect()
    }

    fn shards(&self) -> usize {
        self.beats.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Serves requests until the process exits.
pub fn spawn(
    listener: TcpListener,
    shared: &'static Shared,
    token: Option<String>,
) -> std::io::Result<()> {
    let token: &'static Option<String> = Box::leak(Box::new(token));
    std::thread::Builder::new()
        .name("smtpgate-admin".into())
        .spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming().flatten() {
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    refuse_busy(stream);
                    continue;
                }
                let slot = Slot(active.clone());
                // If the thread cannot start, the closure and its slot are dropped.
                let _ = std::thread::Builder::new()
                    .name("smtpgate-admin-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        let _ = serve(stream, shared, token.as_deref());
                    });
            }
        })?;
    Ok(())
}

/// One of the [`MAX_CONNECTIONS`] places, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

/// A parsed request head: method, path, and the bearer token if one was sent.
struct Request {
    method: String,
    path: String,
    bearer: Option<String>,
}

/// Reads the request head within `until`; `None` if it did not arrive in time.
fn read_request(stream: &mut TcpStream, until: Instant) -> Option<Request> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = until.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || head.len() > MAX_REQUEST {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let mut words = lines.next()?.split_whitespace();
    let method = words.next()?.to_string();
    let path = words.next()?.split('?').next().unwrap_or("").to_string();
    let bearer = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| {
            let value = value.trim();
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    Some(Request {
        method,
        path,
        bearer,
    })
}

struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn text(status: &'static str, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn route(request: &Request, shared: &Shared, token: Option<&str>) -> Answer {
    let head_or_get = matches!(request.method.as_str(), "GET" | "HEAD");
    if !head_or_get {
        return Answer::text("405 Method Not Allowed", "GET or HEAD only\n");
    }
    match request.path.as_str() {
        "/healthz" => healthz(shared),
        "/readyz" => readyz(shared),
        "/status" | "/metrics" if !authorized(request, token) => {
            Answer::text("401 Unauthorized", "bearer token required\n")
        }
        "/status" => Answer {
            status: "200 OK",
            content_type: "application/json",
            body: shared.stats.status_json(&shared.admission),
        },
        "/metrics" => Answer {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: shared.stats.prometheus(&shared.admission),
        },
        _ => Answer::text(
            "404 Not Found",
            "try /healthz, /readyz, /status or /metrics\n",
        ),
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn authorized(request: &Request, token: Option<&str>) -> bool {
    let Some(expected) = token else { return true };
    let Some(given) = request.bearer.as_deref() else {
        return false;
    };
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

fn healthz(shared: &Shared) -> Answer {
    let stalled = shared.health.stalled_shards();
    if stalled.is_empty() && shared.health.shards() > 0 {
        Answer::text("200 OK", "ok\n")
    } else if stalled.is_empty() {
        Answer::text("503 Service Unavailable", "no shard running yet\n")
    } else {
        Answer::text(
            "503 Service Unavailable",
            format!("stalled shards (no tick for over {STALE_AFTER:?}): {stalled:?}\n"),
        )
    }
}

fn readyz(shared: &Shared) -> Answer {
    if shared.is_shutting_down() {
        Answer::text("503 Service Unavailable", "draining\n")
    } else if !shared.health.is_ready() {
        Answer::text("503 Service Unavailable", "starting\n")
    } else {
        Answer::text("200 OK", "ready\n")
    }
}

fn serve(mut stream: TcpStream, shared: &Shared, token: Option<&str>) -> std::io::Result<()> {
    let until = Instant::now() + REQUEST_DEADLINE;
    let Some(request) = read_request(&mut stream, until) else {
        return Ok(());
    };
    let answer = route(&request, shared, token);
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    if answer.status.starts_with("401") {
        out.push_str("WWW-Authenticate: Bearer\r\n");
    }
    out.push_str("\r\n");
    if request.method != "HEAD" {
        out.push_str(&answer.body);
    }
    let left = until
        .checked_duration_since(Instant::now())
        .unwrap_or(Duration::from_millis(1));
    stream.set_write_timeout(Some(left.max(Duration::from_millis(1))))?;
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_whose_tick_stopped_is_reported_stalled() {
        let health = Health {
            origin: Instant::now() - Duration::from_secs(60),
            ..Health::default()
        };
        let ticking = health.heartbeat();
        let stalled = health.heartbeat();
        // The second shard last ticked 10 s ago; the first one just now.
        stalled.last.store(50_000, Ordering::Relaxed);
        ticking.beat();
        assert_eq!(health.stalled_shards(), [1]);
        stalled.beat();
        assert!(health.stalled_shards().is_empty());
    }

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let request = |bearer: Option<&str>| Request {
            method: "GET".into(),
            path: "/metrics".into(),
            bearer: bearer.map(str::to_string),
        };
        assert!(authorized(&request(None), None));
        assert!(authorized(&request(Some("t0k")), Some("t0k")));
        assert!(!authorized(&request(Some("t0K")), Some("t0k")));
        assert!(!authorized(&request(Some("t0k!")), Some("t0k")));
        assert!(!authorized(&request(None), Some("t0k")));
    }
}
