//! One client connection from accept to close: admission against the limits, the
//! upstream connect (bounded by `upstream_connect`), the optional PROXY v2 header, the
//! relay (inspected or exempt), and what the client is told when something fails.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use smtpgate_policy::event::Event;
use smtpgate_policy::inspector::Inspector;

use crate::engine::Shared;
use crate::log::{self, SessionLog};
use crate::proxy_v2;
use crate::relay::{self, End, EventSink, Relay, Side};
use crate::shard::Shard;
use crate::stats::ListenerStats;

pub const REPLY_TOO_MANY: &[u8] = b"421 4.7.0 smtpgate: too many connections, try again later\r\n";
pub const REPLY_UPSTREAM_DOWN: &[u8] =
    b"421 4.4.1 smtpgate: upstream unavailable, try again later\r\n";
pub const REPLY_EMBRYONIC_TIMEOUT: &[u8] =
    b"421 4.4.2 smtpgate: timeout waiting for HELO/EHLO, closing connection\r\n";
pub const REPLY_IDLE_TIMEOUT: &[u8] = b"421 4.4.2 smtpgate: idle timeout, closing connection\r\n";

/// How long a goodbye write and the lingering close may take.
const GOODBYE_WRITE: Duration = Duration::from_secs(2);
const LINGER: Duration = Duration::from_secs(1);

pub async fn serve(shard: Rc<Shard>, listener_index: usize, client: TcpStream) {
    let shared = shard.shared;
    let generation = shard.generation();
    let config = &generation.config;
    let listener = &config.listeners[listener_index];
    let stats = generation.listeners[listener_index].clone();
    let Ok(client_addr) = client.peer_addr() else {
        return;
    };
    shared.stats.accepted.inc();
    stats.sessions.accepted.inc();
    let _ = client.set_nodelay(true);

    let mut ticket = match shared.admission.admit(client_addr.ip(), &config.limits) {
        Ok(ticket) => ticket,
        Err(hit) => {
            shared.stats.rejected(hit).inc();
            log::limit_refused(hit.name(), client_addr, listener.listen);
            goodbye(client, REPLY_TOO_MANY).await;
            return;
        }
    };
    let _live = shard.session_guard();
    let timeouts = config.timeouts;
    let accepted_at = Instant::now();
    let deadline = shard
        .deadlines
        .add(accepted_at + timeouts.embryonic.min(timeouts.idle));

    let mut server = match connect_upstream(listener.upstream, timeouts.upstream_connect).await {
        Ok(server) => server,
        Err(e) => {
            shared.stats.upstream_failures.inc();
            log::diag_rate_limited(&format!(
                "upstream {} unavailable for client {client_addr}: {e}",
                listener.upstream
            ));
            SessionLog::new(listener.listen, client_addr, listener.upstream)
                .summary(&log::Summary::without_traffic("upstream-unavailable"));
            goodbye(client, REPLY_UPSTREAM_DOWN).await;
            return;
        }
    };
    if listener.proxy_protocol {
        let local = client.local_addr().unwrap_or(listener.listen);
        if let Err(e) = server
            .write_all(&proxy_v2::header(client_addr, local))
            .await
        {
            shared.stats.upstream_failures.inc();
            log::diag_rate_limited(&format!(
                "upstream {}: PROXY header: {e}",
                listener.upstream
            ));
            goodbye(client, REPLY_UPSTREAM_DOWN).await;
            return;
        }
    }
    let peers = Peers {
        client,
        server,
        client_addr,
    };
    relay_session(
        shared,
        &shard,
        peers,
        listener_index,
        &generation,
        stats,
        &mut ticket,
        deadline,
        accepted_at,
    )
    .await
}

struct Peers {
    client: TcpStream,
    server: TcpStream,
    client_addr: SocketAddr,
}

#[allow(clippy::too_many_arguments)]
async fn relay_session(
    shared: &'static Shared,
    shard: &Shard,
    peers: Peers,
    listener_index: usize,
    generation: &crate::engine::Generation,
    stats: Arc<ListenerStats>,
    ticket: &mut crate::limits::Ticket,
    deadline: Rc<crate::clock::Deadline>,
    accepted_at: Instant,
) {
    let Peers {
        client,
        server,
        client_addr,
    } = peers;
    let listener = &generation.config.listeners[listener_index];
    let exempt = listener.is_exempt(client_addr.ip());
    if exempt {
        shared.stats.exempt.inc();
        stats.sessions.exempt.inc();
    }
    let inspector = (!exempt).then(|| Inspector::new(listener.policy.clone()));
    let mut sink = SessionEvents {
        stats: &stats,
        log: SessionLog::new(listener.listen, client_addr, listener.upstream),
    };
    let relay = Relay {
        client,
        server,
        inspector,
        ticket,
        deadline,
        timeouts: generation.config.timeouts,
        accepted_at,
        pool: &shard.pool,
    };
    let (end, traffic, client, server) = relay.run(&mut sink).await;
    shared.stats.client_bytes.add(traffic.from_client);
    shared.stats.server_bytes.add(traffic.from_server);
    sink.log.summary(&log::Summary {
        result: result_name(&end),
        bytes_from_client: traffic.from_client,
        bytes_from_upstream: traffic.from_server,
        messages: 0,
        envelope: log::Envelope::default(),
    });
    match end {
        End::Finished => {}
        End::Failed(Side::Client, _) => drop((client, server)),
        End::Failed(Side::Upstream, e) => {
            shared.stats.upstream_lost.inc();
            log::diag_rate_limited(&format!(
                "upstream {} lost, closing client {client_addr}: {e}",
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
            relay::set_abortive_close(&client);
            relay::set_abortive_close(&server);
        }
        End::TimedOut { embryonic } => {
            let (counter, reply) = if embryonic {
                (&shared.stats.timeout_embryonic, REPLY_EMBRYONIC_TIMEOUT)
            } else {
                (&shared.stats.timeout_idle, REPLY_IDLE_TIMEOUT)
            };
            counter.inc();
            drop(server);
            goodbye(client, reply).await;
        }
    }
}

/// How the session ended, as its summary line says it.
fn result_name(end: &End) -> &'static str {
    match end {
        End::Finished => "finished",
        End::Failed(Side::Client, _) => "client-lost",
        End::Failed(Side::Upstream, _) => "upstream-lost",
        End::Dropped => "dropped",
        End::Reset => "reset",
        End::TimedOut { embryonic: true } => "timeout-embryonic",
        End::TimedOut { embryonic: false } => "timeout-idle",
    }
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
    relay::shutdown_write(&client);
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

/// Counts every event against its rule and logs the ones an operator must see.
struct SessionEvents<'a> {
    stats: &'a ListenerStats,
    log: SessionLog,
}

impl EventSink for SessionEvents<'_> {
    fn event(&mut self, event: &Event) {
        let rule = self.stats.rules.get(event.rule as usize);
        if let Some((_, counters)) = rule {
            counters.count(&event.actions);
        }
        let rule_text = rule.map(|(text, _)| text.as_str()).unwrap_or("");
        self.log.event(event, rule_text, log::Envelope::default());
    }
}
