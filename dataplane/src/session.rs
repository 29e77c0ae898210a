//! One client connection from accept to close: the real client address (a PROXY
//! header from a trusted balancer), admission against the limits, the upstream
//! connect (bounded by `upstream_connect`), the optional PROXY v2 header upstream, the
//! relay (inspected or exempt), and how the sockets are closed afterwards.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use smtpgate_policy::config::StartTls;
use smtpgate_policy::config::{Listener, Timeouts};
use smtpgate_policy::envelope::Envelope;
use smtpgate_policy::event::Event;
use smtpgate_policy::inspector::{Inspector, Phase, TlsTermination};

use crate::log::{self, SessionLog};
use crate::relay::{End, EventSink, Expiry, Outcome, Relay, Side};
use crate::shard::{LiveSession, Shard};
use crate::shared::{Generation, Shared};
use crate::stats::{ListenerStats, TlsCounters};
use crate::tls::{Established, SessionTls, TlsFailure};
use crate::upstream_starttls::{self, PreludeError};
use crate::{proxy_header, proxy_v2, sock};

pub const REPLY_TOO_MANY: &[u8] = b"421 4.7.0 smtpgate: too many connections, try again later\r\n";
pub const REPLY_UPSTREAM_DOWN: &[u8] =
    b"421 4.4.1 smtpgate: upstream unavailable, try again later\r\n";

/// How long a goodbye write and the lingering close may take.
const GOODBYE_WRITE: Duration = Duration::from_secs(2);
const LINGER: Duration = Duration::from_secs(1);
/// Longest wait for a trusted balancer's PROXY header (it sends it at once).
const PROXY_HEADER_WAIT: Duration = Duration::from_secs(5);

/// The listener that accepted a session, resolved once at accept from the config
/// generation in force; the session keeps it (and so its policy) to the end.
pub struct ListenerContext {
    generation: Arc<Generation>,
    index: usize,
}

impl ListenerContext {
    pub fn new(generation: Arc<Generation>, index: usize) -> ListenerContext {
        ListenerContext { generation, index }
    }

    pub fn listener(&self) -> &Listener {
        &self.generation.config.listeners[self.index]
    }

    pub fn stats(&self) -> &ListenerStats {
        &self.generation.listeners[self.index]
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.generation.config.timeouts
    }

    /// What the session may do with TLS, and how its inspector treats STARTTLS.
    fn tls(&self) -> (SessionTls, TlsTermination) {
        let listener = self.listener();
        let context = &self.generation.tls;
        let session = SessionTls {
            server: context.server.clone(),
            upstream: context.upstream[self.index]
                .clone()
                .map(|config| (config, listener.upstream.ip())),
            implicit: listener.implicit_tls,
        };
        let termination = if listener.starttls == StartTls::Inspect || listener.implicit_tls {
            TlsTermination::Inspect {
                upstream: listener.upstream_tls,
                implicit: listener.implicit_tls,
            }
        } else {
            TlsTermination::Passthrough
        };
        (session, termination)
    }
}

pub async fn serve(shard: Rc<Shard>, context: ListenerContext, client: TcpStream) {
    // The steps before the relay run in a boxed future of their own, freed when they
    // are done: the session's task keeps room only for the relay, which is what an
    // idle session's memory is made of.
    let Some(relay) = Box::pin(open(&shard, &context, client)).await else {
        return;
    };
    let (outcome, sink) = relay.run().await;
    let shared = shard.shared;
    // The byte totals first: /metrics, read from another thread, never counts a
    // session's duration without its bytes.
    shared.stats.client_bytes.add(outcome.traffic.from_client);
    shared.stats.server_bytes.add(outcome.traffic.from_server);
    shared
        .stats
        .session_duration
        .observe(sink.accepted_at.elapsed());
    let envelope = outcome.envelope.unwrap_or_default();
    sink.log.summary(&log::Summary {
        result: result_name(&outcome.end),
        bytes_from_client: outcome.traffic.from_client,
        bytes_from_upstream: outcome.traffic.from_server,
        messages: envelope.messages(),
        envelope: log_envelope(&envelope),
    });
    let client_addr = sink.log.client;
    drop(sink);
    Box::pin(finish(shared, context.listener(), client_addr, outcome)).await;
}

/// Everything before the relay: the real client address, admission, the upstream
/// connect, the PROXY header upstream and, for implicit TLS, the upstream's TLS.
/// `None` when the session ended on the way (its client has been answered).
async fn open<'a>(
    shard: &'a Rc<Shard>,
    context: &'a ListenerContext,
    mut client: TcpStream,
) -> Option<Relay<'a, SessionEvents<'a>>> {
    let shared = shard.shared;
    let listener = context.listener();
    let timeouts = context.timeouts();
    let Ok(peer) = client.peer_addr() else {
        return None;
    };
    let peer = canonical(peer);
    shared.stats.accepted.inc();
    context.stats().sessions.accepted.inc();
    let _ = client.set_nodelay(true);

    let client_addr = if listener.expects_proxy_header(peer.ip()) {
        let wait = PROXY_HEADER_WAIT.min(timeouts.embryonic);
        // Each wait is boxed: while it runs only its own state is allocated, so the
        // memory of thousands of sessions opening at once stays small.
        let header = Box::pin(future::or(
            async { Some(proxy_header::read(&mut client, peer).await) },
            async {
                sleep(wait).await;
                None
            },
        ))
        .await;
        match header {
            Some(Ok(addr)) => canonical(addr),
            failed => {
                shared.stats.proxy_header_refused.inc();
                let why = match failed {
                    Some(Err(e)) => e.to_string(),
                    _ => format!("no PROXY header within {wait:?}"),
                };
                log::diag_rate_limited(&format!("balancer {peer}: {why}; connection closed"));
                return None;
            }
        }
    } else {
        peer
    };

    let ticket = match shared
        .admission
        .admit(client_addr.ip(), &context.generation.config.limits)
    {
        Ok(ticket) => ticket,
        Err(hit) => {
            shared.stats.rejected(hit).inc();
            log::limit_refused(hit.name(), client_addr, listener.listen);
            Box::pin(goodbye(client, REPLY_TOO_MANY)).await;
            return None;
        }
    };
    let live = shard.session_guard();
    let accepted_at = Instant::now();
    let deadline = shard
        .deadlines
        .add(crate::clock::after(accepted_at, timeouts.upstream_connect));

    context.stats().sessions.meter().connections.inc();
    let mut server = match Box::pin(connect_upstream(
        listener.upstream,
        timeouts.upstream_connect,
    ))
    .await
    {
        Ok(server) => {
            shared
                .stats
                .upstream_connect_time
                .observe(accepted_at.elapsed());
            server
        }
        Err(e) => {
            shared.stats.upstream_failures.inc();
            log::diag_rate_limited(&format!(
                "upstream {} unavailable for client {client_addr}: {e}",
                listener.upstream
            ));
            SessionLog::new(listener.listen, client_addr, listener.upstream)
                .summary(&log::Summary::without_traffic("upstream-unavailable"));
            Box::pin(goodbye(client, REPLY_UPSTREAM_DOWN)).await;
            return None;
        }
    };
    let connected_at = Instant::now();
    if listener.proxy_protocol {
        let local = client.local_addr().unwrap_or(listener.listen);
        if let Err(e) = Box::pin(server.write_all(&proxy_v2::header(client_addr, local))).await {
            shared.stats.upstream_failures.inc();
            log::diag_rate_limited(&format!(
                "upstream {}: PROXY header: {e}",
                listener.upstream
            ));
            Box::pin(goodbye(client, REPLY_UPSTREAM_DOWN)).await;
            return None;
        }
    }

    let exempt = listener.is_exempt(client_addr.ip());
    if exempt {
        shared.stats.exempt.inc();
        context.stats().sessions.exempt.inc();
    }
    let (tls, termination) = context.tls();
    let mut sink = SessionEvents {
        tls: &shared.stats.tls,
        shared,
        stats: context.stats(),
        log: SessionLog::new(listener.listen, client_addr, listener.upstream),
        messages: 0,
        transactions: 0,
        end_of_data_since: None,
        accepted_at,
        _live: live,
    };
    let upstream_prelude = match (&tls.upstream, tls.implicit) {
        (Some((config, address)), true) => {
            let started = Box::pin(upstream_starttls::start(
                &mut server,
                listener.upstream_tls,
                config,
                *address,
                &banner_name(&listener.banner_name),
                timeouts.upstream_connect,
            ))
            .await;
            match started {
                Ok(prelude) => {
                    if let Some((_, established)) = &prelude.tls {
                        sink.tls_established(Side::Upstream, established);
                    }
                    Some(Box::new(prelude))
                }
                Err(e) => {
                    // The client is inside TLS that is not set up yet: no reply can
                    // reach it, the connection is closed.
                    match e {
                        PreludeError::Tls(failure) => sink.tls_failed(Side::Upstream, &failure),
                        PreludeError::NotOffered => log::diag_rate_limited(&format!(
                            "upstream {}: no STARTTLS, and upstream_tls = verify; closing {client_addr}",
                            listener.upstream
                        )),
                        PreludeError::Upstream(e) => {
                            shared.stats.upstream_failures.inc();
                            log::diag_rate_limited(&format!(
                                "upstream {} before TLS: {e}; closing {client_addr}",
                                listener.upstream
                            ));
                        }
                    }
                    sink.log
                        .summary(&log::Summary::without_traffic("upstream-tls-failed"));
                    return None;
                }
            }
        }
        _ => None,
    };
    Some(Relay {
        client,
        server,
        inspector: (!exempt).then(|| {
            Box::new(
                Inspector::with_tls(listener.policy.clone(), termination)
                    .with_banner_name(banner_name(&listener.banner_name)),
            )
        }),
        ticket,
        deadline,
        timeouts,
        accepted_at,
        connected_at,
        pool: &shard.pool,
        tls,
        upstream_prelude,
        scratch: &shard.scratch,
        budget: &shard.budget,
        sessions: &shard.deadlines,
        sink,
    })
}

/// How the session ended, as its summary line says it.
fn result_name(end: &End) -> &'static str {
    match end {
        End::Finished => "finished",
        End::ClientFailed => "client-lost",
        End::UpstreamLost(_) => "upstream-lost",
        End::Dropped => "dropped",
        End::Reset => "reset",
        End::TimedOut(Expiry::UpstreamGreeting) => "upstream-greeting-timeout",
        End::TimedOut(Expiry::Embryonic) => "timeout-embryonic",
        End::TimedOut(Expiry::Idle) => "timeout-idle",
        End::TimedOut(Expiry::Data) => "timeout-data",
        End::TimedOut(Expiry::DataTermination) => "timeout-data-termination",
        End::ShutDown => "shut-down",
        End::OverBudget => "over-buffer-budget",
    }
}

/// Counts how the session ended and closes both sockets accordingly.
async fn finish(shared: &Shared, listener: &Listener, client_addr: SocketAddr, outcome: Outcome) {
    let Outcome {
        end,
        traffic: _,
        client,
        server,
        envelope: _,
    } = outcome;
    match end {
        End::Finished => {}
        End::ClientFailed => drop((client, server)),
        End::UpstreamLost(e) => {
            shared.stats.upstream_lost.inc();
            let why = e.map_or("closed mid-session".to_string(), |e| e.to_string());
            log::diag_rate_limited(&format!(
                "upstream {} lost, closing client {client_addr}: {why}",
                listener.upstream
            ));
            drop(server);
            lingering_close(client).await;
        }
        End::Dropped => {
            shared.stats.dropped.inc();
            // Closing the upstream mid-transaction: it never sees a final dot.
            drop(server);
            lingering_close(client).await;
        }
        End::Reset => {
            shared.stats.reset.inc();
            sock::set_abortive_close(&client);
            sock::set_abortive_close(&server);
        }
        End::TimedOut(expiry) => {
            match expiry {
                Expiry::UpstreamGreeting => shared.stats.upstream_failures.inc(),
                Expiry::Embryonic => shared.stats.timeout_embryonic.inc(),
                Expiry::Idle => shared.stats.timeout_idle.inc(),
                Expiry::Data => shared.stats.timeout_data.inc(),
                Expiry::DataTermination => shared.stats.timeout_data_termination.inc(),
            }
            drop(server);
            lingering_close(client).await;
        }
        End::ShutDown => {
            drop(server);
            lingering_close(client).await;
        }
        End::OverBudget => {
            shared.stats.over_budget.inc();
            log::diag_rate_limited(&format!(
                "buffer_budget exhausted: client {client_addr}, the largest holder, closed with 421 4.3.2"
            ));
            drop(server);
            lingering_close(client).await;
        }
    }
}

/// An IPv4 client on a dual-stack listener arrives as `::ffff:a.b.c.d`; every CIDR
/// match, limit key and log line uses its IPv4 form.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Tries the upstream within `limit`; glommio links an io_uring timeout to the connect.
async fn connect_upstream(address: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    let limit = limit.max(Duration::from_millis(1));
    let server = TcpStream::connect_timeout(address, limit)
        .await
        .map_err(std::io::Error::from)?;
    let _ = server.set_nodelay(true);
    Ok(server)
}

/// Writes a final reply (bounded in time) and closes without losing it.
async fn goodbye(mut client: TcpStream, reply: &[u8]) {
    let write = async { client.write_all(reply).await.is_ok() };
    let written = future::or(write, async {
        sleep(GOODBYE_WRITE).await;
        false
    })
    .await;
    if written {
        lingering_close(client).await;
    }
}

/// Sends FIN, then reads and discards what the client still sends for a moment, so the
/// close does not turn into a RST that could destroy our last reply in flight.
async fn lingering_close(mut client: TcpStream) {
    sock::shutdown_write(&client);
    let drain = async {
        let mut scrap = [0u8; 512];
        while let Ok(n) = client.read(&mut scrap).await {
            if n == 0 {
                break;
            }
        }
    };
    future::or(drain, sleep(LINGER)).await;
}

/// Counts every event against its rule and logs the ones an operator must see; keeps
/// the listener's live counters and the latency histograms.
struct SessionEvents<'a> {
    tls: &'a TlsCounters,
    shared: &'static Shared,
    stats: &'a ListenerStats,
    log: SessionLog,
    /// Messages and transactions the inspector had counted as of its latest read
    /// (the listener's live counters move by the difference).
    messages: u64,
    transactions: u64,
    /// An end of data was forwarded at this time and its reply is owed.
    end_of_data_since: Option<Instant>,
    accepted_at: Instant,
    /// Counts the session as live on its shard until the end.
    _live: LiveSession,
}

fn log_envelope(envelope: &Envelope) -> log::Envelope<'_> {
    log::Envelope {
        helo: envelope.helo(),
        sender: envelope.sender(),
        recipients: envelope.recipients(),
    }
}

impl EventSink for SessionEvents<'_> {
    fn event(&mut self, event: &Event, envelope: &Envelope) {
        let rule = self.stats.rules.get(event.rule as usize);
        if let Some((_, counters)) = rule {
            counters.count(&event.actions);
        }
        let rule_text = rule.map(|(text, _)| text.as_str()).unwrap_or("");
        self.log.event(event, rule_text, log_envelope(envelope));
    }

    fn bytes(&mut self, side: Side, bytes: usize) {
        let meter = self.stats.sessions.meter();
        match side {
            Side::Client => meter.bytes_from_client.add(bytes as u64),
            Side::Upstream => meter.bytes_from_upstream.add(bytes as u64),
        }
    }

    fn inspected(&mut self, inspector: &Inspector, now: Instant) {
        let latest = inspector.envelope();
        let meter = self.stats.sessions.meter();
        meter.messages.add(latest.messages() - self.messages);
        meter
            .transactions
            .add(latest.transactions() - self.transactions);
        self.messages = latest.messages();
        self.transactions = latest.transactions();
        let awaiting = inspector.phase() == Phase::AwaitingEndOfData;
        match (awaiting, self.end_of_data_since) {
            (true, None) => self.end_of_data_since = Some(now),
            (false, Some(since)) => {
                self.end_of_data_since = None;
                self.shared
                    .stats
                    .end_of_data_turnaround
                    .observe(now.saturating_duration_since(since));
            }
            _ => {}
        }
    }

    fn tls_established(&mut self, side: Side, established: &Established) {
        self.tls.established[side as usize].inc();
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
        let mut fields = vec![
            ("side", side_name(side).to_string()),
            ("version", established.version.to_string()),
            ("cipher", established.cipher_suite.to_string()),
            ("resumed", yes_no(established.resumed)),
        ];
        if side == Side::Client {
            let sni = established.sni.clone().unwrap_or_else(|| "-".to_string());
            fields.push(("sni", sni));
            fields.push(("client_certificate", yes_no(established.peer_certificate)));
        }
        self.log.tls("established", &fields);
    }

    fn tls_failed(&mut self, side: Side, failure: &TlsFailure) {
        if failure.in_handshake {
            self.tls.failed(side as usize, failure.reason).inc();
        }
        let fields = [
            ("side", side_name(side).to_string()),
            ("reason", failure.reason.name().to_string()),
            ("detail", format!("{:?}", failure.detail)),
        ];
        self.log.tls("failed", &fields);
    }

    fn tls_discarded(&mut self, bytes: usize) {
        let fields = [("discarded_after_starttls", bytes.to_string())];
        self.log.tls("starting", &fields);
    }
}

fn side_name(side: Side) -> &'static str {
    TlsCounters::SIDES[side as usize]
}

/// The name a neutrally masked greeting shows: the listener's `banner_name`, else this
/// host's name (libc `gethostname`, read once).
fn banner_name(configured: &str) -> bytes::Bytes {
    static HOST: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    if !configured.is_empty() {
        return bytes::Bytes::copy_from_slice(configured.as_bytes());
    }
    HOST.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
        // within it or truncates.
        let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        match ok && len > 0 {
            true => bytes::Bytes::copy_from_slice(&buf[..len]),
            false => bytes::Bytes::from_static(b"localhost"),
        }
    })
    .clone()
}
