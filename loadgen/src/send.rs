//! `send`: drives SMTP load, thread-per-core.
//!
//! Connections are spread round-robin over one glommio executor per core;
//! each runs EHLO then transactions (MAIL, RCPT×R, DATA or BDAT), reusing the
//! connection unless `--per-connection`. Messages come from a [`Corpus`]
//! built once; a transaction only writes precomputed bytes and parses reply
//! codes, so the generator costs a few syscalls per message.
//!
//! Closed loop by default (each connection sends its next message when the
//! previous one is answered). With `--rate`, open loop: every connection has
//! a fixed schedule and the `message` latency is measured from the scheduled
//! time, so a stalled server shows up in the percentiles instead of silently
//! slowing the generator (coordinated omission).
//!
//! Shards keep their histograms and error maps locally and hand them back at
//! the end; only progress counters are shared (single-writer atomics).

use crate::message::{Corpus, Message};
use crate::reply::{Extensions, ReplyReader};
use crate::report::{Latencies, Report, Step};
use crate::tls::Stream;
use crate::util::{self, ShardCounter, SizeSpec, XorShift};
use glommio::net::TcpStream;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// BDAT chunk size; larger messages are sent as several chunks.
const BDAT_CHUNK: usize = 64 * 1024;
/// Up to this size a command and its data go out in one write (copying is
/// cheaper than a second syscall).
const COALESCE_LIMIT: usize = 16 * 1024;
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct SendOptions {
    pub target: SocketAddr,
    pub connections: usize,
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub size: SizeSpec,
    pub recipients: u32,
    pub pipelining: bool,
    pub bdat: bool,
    pub per_connection: bool,
    pub rate: Option<f64>,
    pub cores: usize,
    pub digest_log: Option<PathBuf>,
    /// Show progress (bar on a terminal, plain lines otherwise).
    pub progress: bool,
    /// A connection making no progress for this long is closed and its
    /// message counted as an I/O error ("TimedOut").
    pub timeout: Duration,
    pub tls: TlsMode,
    /// Verify the server's certificate against this PEM CA file; without it any
    /// certificate is accepted.
    pub tls_ca: Option<PathBuf>,
}

/// TLS towards the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    /// STARTTLS after the first EHLO (required: a server not offering it is an error).
    StartTls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
}

#[derive(Default)]
struct Progress {
    ok: ShardCounter,
    failed: ShardCounter,
}

/// What a shard hands back at the end.
#[derive(Default)]
struct ShardResult {
    latencies: Latencies,
    errors: BTreeMap<String, u64>,
    attempted: u64,
    ok: u64,
    failed: u64,
    bytes_ok: u64,
    connections: u64,
    /// Corpus index of every accepted message, for the digest log.
    accepted: Vec<u32>,
}

struct Shared {
    options: SendOptions,
    /// Built once when TLS is on.
    tls: Option<Arc<rustls::ClientConfig>>,
    corpus: Corpus,
    /// "RCPT TO:<sinkN@recipient.example>" for N in 0..recipients, built once.
    rcpt_commands: Vec<Vec<u8>>,
    started: Instant,
    progress: Vec<Progress>,
    shards_done: AtomicUsize,
    next_shard: AtomicUsize,
    bdat_warned: std::sync::atomic::AtomicBool,
    pipelining_warned: std::sync::atomic::AtomicBool,
}

struct Shard {
    shared: Arc<Shared>,
    index: usize,
    result: RefCell<ShardResult>,
    /// Open connections and their sockets, for the watchdog.
    live: RefCell<Vec<(Weak<Watch>, RawFd)>>,
}

impl Shard {
    fn progress(&self) -> &Progress {
        &self.shared.progress[self.index]
    }

    fn error(&self, key: String) {
        *self.result.borrow_mut().errors.entry(key).or_insert(0) += 1;
    }

    fn record(&self, step: Step, elapsed: Duration) {
        self.result.borrow_mut().latencies.record(step, elapsed);
    }

    fn failed(&self, key: String) {
        self.result.borrow_mut().failed += 1;
        self.progress().failed.add(1);
        self.error(key);
    }
}

/// How one transaction ended.
enum Outcome {
    Accepted,
    /// Refused with this reply at this step; `fatal` when the server closes
    /// the session (421) so the connection must be replaced.
    Refused {
        step: &'static str,
        code: u16,
        fatal: bool,
    },
}

/// Liveness of one connection, shared with the shard watchdog.
struct Watch {
    /// Bumped after the handshake and every transaction.
    last_progress: Cell<Instant>,
    /// Set when the watchdog shut the socket down.
    timed_out: Cell<bool>,
}

impl Watch {
    /// The error to report: a watchdog shutdown surfaces as EOF or reset,
    /// but what happened is a timeout.
    fn explain(&self, e: io::Error) -> io::Error {
        if self.timed_out.get() {
            io::Error::new(io::ErrorKind::TimedOut, "no progress within --timeout")
        } else {
            e
        }
    }
}

struct Connection {
    stream: Stream,
    reader: ReplyReader,
    extensions: Extensions,
    out: Vec<u8>,
    watch: Rc<Watch>,
    /// When the next transaction's envelope was already sent, chained
    /// behind the previous body (pipelined DATA, closed loop).
    envelope_sent: Option<Instant>,
}

impl Connection {
    async fn open(shard: &Shard) -> io::Result<Connection> {
        let started = Instant::now();
        let options = &shard.shared.options;
        let tcp = TcpStream::connect_timeout(options.target, options.timeout).await?;
        tcp.set_nodelay(true)?;
        // No per-read timeouts: glommio arms an io_uring timeout per read,
        // a measurable cost per message. The shard watchdog handles stalls.
        let watch = Rc::new(Watch {
            last_progress: Cell::new(Instant::now()),
            timed_out: Cell::new(false),
        });
        shard
            .live
            .borrow_mut()
            .push((Rc::downgrade(&watch), tcp.as_raw_fd()));
        let mut reader = ReplyReader::new();
        match handshake(shard, Stream::Plain(tcp), &mut reader, started).await {
            Ok((stream, extensions)) => {
                watch.last_progress.set(Instant::now());
                Ok(Connection {
                    stream,
                    reader,
                    extensions,
                    out: Vec::with_capacity(4096),
                    watch,
                    envelope_sent: None,
                })
            }
            Err(e) => Err(watch.explain(e)),
        }
    }

    async fn command(&mut self, line: &[u8]) -> io::Result<u16> {
        self.stream.send(line).await?;
        self.reader.read(&mut self.stream).await
    }

    async fn quit(mut self) {
        // Best effort: the session is over either way.
        if self.stream.send(b"QUIT\r\n").await.is_ok() {
            let _ = self.reader.read(&mut self.stream).await;
        }
    }
}

/// Greeting and EHLO; with `--implicit-tls` the TLS handshake first, with
/// `--starttls` STARTTLS after EHLO, the handshake and EHLO again (RFC 3207).
async fn handshake(
    shard: &Shard,
    mut stream: Stream,
    reader: &mut ReplyReader,
    started: Instant,
) -> io::Result<(Stream, Extensions)> {
    let options = &shard.shared.options;
    let tls = shard.shared.tls.as_ref();
    if let (TlsMode::Implicit, Some(config)) = (options.tls, tls) {
        stream = stream.connect(config, options.target.ip()).await?;
    }
    let greeting = reader.read(&mut stream).await?;
    shard.result.borrow_mut().connections += 1;
    if greeting != 220 {
        return Err(refused("greeting", greeting));
    }
    shard.record(Step::Connect, started.elapsed());
    let started = Instant::now();
    stream.send(b"EHLO loadgen.smtpgate.test\r\n").await?;
    let (code, mut extensions) = reader.read_ehlo(&mut stream).await?;
    if code != 250 {
        return Err(refused("EHLO", code));
    }
    if let (TlsMode::StartTls, Some(config)) = (options.tls, tls) {
        if !extensions.starttls {
            return Err(io::Error::other("EHLO reply without STARTTLS"));
        }
        stream.send(b"STARTTLS\r\n").await?;
        let code = reader.read(&mut stream).await?;
        if code != 220 {
            return Err(refused("STARTTLS", code));
        }
        if reader.has_buffered() {
            // RFC 3207 5: nothing may follow the 220 in the clear.
            return Err(io::Error::other("plaintext after the 220 to STARTTLS"));
        }
        stream = stream.connect(config, options.target.ip()).await?;
        stream.send(b"EHLO loadgen.smtpgate.test\r\n").await?;
        let (code, after) = reader.read_ehlo(&mut stream).await?;
        if code != 250 {
            return Err(refused("EHLO after STARTTLS", code));
        }
        extensions = after;
    }
    shard.record(Step::Ehlo, started.elapsed());
    Ok((stream, extensions))
}

/// A refusal during connection setup, carried as an io::Error so the
/// caller's single error path reports it as "greeting 421" and the like.
fn refused(step: &str, code: u16) -> io::Error {
    io::Error::other(format!("{step} {code}"))
}

fn is_positive(code: u16) -> bool {
    (200..300).contains(&code)
}

fn rcpt_commands(recipients: u32) -> Vec<Vec<u8>> {
    (0..recipients)
        .map(|n| format!("RCPT TO:<sink{n}@recipient.example>\r\n").into_bytes())
        .collect()
}

/// A pipelined envelope group: MAIL, the RCPTs and, for DATA, the DATA verb.
fn push_envelope(out: &mut Vec<u8>, message: &Message, rcpt_commands: &[Vec<u8>], data: bool) {
    out.extend_from_slice(&message.mail_command);
    for rcpt in rcpt_commands {
        out.extend_from_slice(rcpt);
    }
    if data {
        out.extend_from_slice(b"DATA\r\n");
    }
}

fn bdat_chunks(content: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let count = content.len().div_ceil(BDAT_CHUNK).max(1);
    (0..count).map(move |i| {
        let chunk = &content[i * BDAT_CHUNK..((i + 1) * BDAT_CHUNK).min(content.len())];
        (chunk, i + 1 == count)
    })
}

/// Sends BDAT chunks (header + data); coalesces small ones with `out`.
async fn write_bdat(conn: &mut Connection, chunk: &[u8], last: bool) -> io::Result<()> {
    let _ = write!(
        conn.out,
        "BDAT {}{}\r\n",
        chunk.len(),
        if last { " LAST" } else { "" }
    );
    if chunk.len() <= COALESCE_LIMIT {
        conn.out.extend_from_slice(chunk);
        conn.stream.send(&conn.out).await?;
    } else {
        conn.stream.send(&conn.out).await?;
        conn.stream.send(chunk).await?;
    }
    conn.out.clear();
    Ok(())
}

/// Reply times of one transaction. The clock is read once per reply: that
/// reading is the reply's arrival and, in lock-step, also when the next command
/// goes out (a few hundred nanoseconds later, below the histograms' 1 µs unit).
struct Clock {
    last: Instant,
}

impl Clock {
    /// Reads the clock; returns the time since the previous reading.
    fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let lap = now - self.last;
        self.last = now;
        lap
    }

    /// Reads the clock; returns the time since `since`.
    fn since(&mut self, since: Instant) -> Duration {
        self.last = Instant::now();
        self.last - since
    }
}

/// One transaction from MAIL to its final reply. `clock.last` is when it
/// starts (its first command goes out then, unless the envelope was chained
/// behind the previous body) and, on return, when its last reply arrived.
async fn transaction(
    shard: &Shard,
    conn: &mut Connection,
    message: &Message,
    next: Option<&Message>,
    clock: &mut Clock,
) -> io::Result<Outcome> {
    let options = &shard.shared.options;
    let pipelined = options.pipelining && conn.extensions.pipelining;
    let bdat = options.bdat && conn.extensions.chunking;
    if options.pipelining
        && !pipelined
        && !shard.shared.pipelining_warned.swap(true, Ordering::Relaxed)
    {
        eprintln!("send: server does not advertise PIPELINING; sending one command at a time");
    }
    if options.bdat && !bdat && !shard.shared.bdat_warned.swap(true, Ordering::Relaxed) {
        eprintln!("send: server does not advertise CHUNKING; sending with DATA instead");
    }
    let refuse = |step, code| {
        Ok(Outcome::Refused {
            step,
            code,
            fatal: code == 421,
        })
    };

    // Envelope: MAIL and RCPTs, one write when pipelined (RFC 2920), with
    // DATA (or, for BDAT, the chunks themselves) in the same group.
    let mut rcpt_accepted = 0;
    let mut first_rcpt_refusal = 0;
    let mail_code;
    if pipelined {
        let sent = match conn.envelope_sent.take() {
            // Already on the wire, chained behind the previous message.
            Some(sent) => sent,
            None => {
                conn.out.clear();
                push_envelope(&mut conn.out, message, &shard.shared.rcpt_commands, !bdat);
                let sent = clock.last;
                if bdat {
                    for (chunk, last) in bdat_chunks(&message.content) {
                        write_bdat(conn, chunk, last).await?;
                    }
                } else {
                    conn.stream.send(&conn.out).await?;
                }
                sent
            }
        };
        mail_code = conn.reader.read(&mut conn.stream).await?;
        shard.record(Step::Mail, clock.since(sent));
        for _ in 0..options.recipients {
            let code = conn.reader.read(&mut conn.stream).await?;
            shard.record(Step::Rcpt, clock.since(sent));
            if is_positive(code) {
                rcpt_accepted += 1;
            } else if first_rcpt_refusal == 0 {
                first_rcpt_refusal = code;
            }
        }
        if bdat {
            let chunk_count = bdat_chunks(&message.content).count();
            let mut final_code = 0;
            for i in 0..chunk_count {
                final_code = conn.reader.read(&mut conn.stream).await?;
                if i + 1 == chunk_count {
                    shard.record(Step::EndOfData, clock.since(sent));
                }
            }
            return finish(shard, mail_code, rcpt_accepted, first_rcpt_refusal, || {
                if is_positive(final_code) {
                    Ok(Outcome::Accepted)
                } else {
                    refuse("end-of-data", final_code)
                }
            });
        }
        let data_code = conn.reader.read(&mut conn.stream).await?;
        shard.record(Step::DataCommand, clock.since(sent));
        if data_code == 354 {
            // Whatever the envelope replies were, a 354 obliges us to send
            // the message; it only counts if the envelope was accepted.
            let sent = clock.last;
            match next {
                // RFC 2920 §3.1: message content may open a group, so the
                // next envelope rides in the same segment as this body.
                Some(next) if message.data_wire.len() <= COALESCE_LIMIT => {
                    conn.out.clear();
                    conn.out.extend_from_slice(&message.data_wire);
                    push_envelope(&mut conn.out, next, &shard.shared.rcpt_commands, true);
                    conn.stream.send(&conn.out).await?;
                    conn.envelope_sent = Some(sent);
                }
                Some(next) => {
                    conn.stream.send(&message.data_wire).await?;
                    conn.out.clear();
                    push_envelope(&mut conn.out, next, &shard.shared.rcpt_commands, true);
                    conn.stream.send(&conn.out).await?;
                    conn.envelope_sent = Some(Instant::now());
                }
                None => conn.stream.send(&message.data_wire).await?,
            }
            let code = conn.reader.read(&mut conn.stream).await?;
            shard.record(Step::EndOfData, clock.since(sent));
            return finish(shard, mail_code, rcpt_accepted, first_rcpt_refusal, || {
                if is_positive(code) {
                    Ok(Outcome::Accepted)
                } else {
                    refuse("end-of-data", code)
                }
            });
        }
        let outcome = finish(shard, mail_code, rcpt_accepted, first_rcpt_refusal, || {
            refuse("DATA", data_code)
        });
        if is_positive(mail_code) && data_code != 421 {
            conn.command(b"RSET\r\n").await?;
        }
        return outcome;
    }

    // One command at a time (RFC 5321 §4.3): each command goes out when the
    // previous reply arrived, so one clock reading per reply times both.
    conn.stream.send(&message.mail_command).await?;
    mail_code = conn.reader.read(&mut conn.stream).await?;
    shard.record(Step::Mail, clock.lap());
    if !is_positive(mail_code) {
        return refuse("MAIL", mail_code);
    }
    for rcpt in &shard.shared.rcpt_commands {
        conn.stream.send(rcpt).await?;
        let code = conn.reader.read(&mut conn.stream).await?;
        shard.record(Step::Rcpt, clock.lap());
        if is_positive(code) {
            rcpt_accepted += 1;
        } else if code == 421 {
            return refuse("RCPT", code);
        } else if first_rcpt_refusal == 0 {
            first_rcpt_refusal = code;
        }
    }
    if rcpt_accepted == 0 {
        conn.command(b"RSET\r\n").await?;
        return refuse("RCPT", first_rcpt_refusal);
    }
    if bdat {
        let mut final_code = 0;
        for (chunk, last) in bdat_chunks(&message.content) {
            write_bdat(conn, chunk, last).await?;
            final_code = conn.reader.read(&mut conn.stream).await?;
            let lap = clock.lap();
            if last {
                shard.record(Step::EndOfData, lap);
            } else if !is_positive(final_code) {
                break;
            }
        }
        return finish(shard, mail_code, rcpt_accepted, first_rcpt_refusal, || {
            if is_positive(final_code) {
                Ok(Outcome::Accepted)
            } else {
                refuse("end-of-data", final_code)
            }
        });
    }
    let data_code = conn.command(b"DATA\r\n").await?;
    shard.record(Step::DataCommand, clock.lap());
    if data_code != 354 {
        if data_code != 421 {
            conn.command(b"RSET\r\n").await?;
        }
        return refuse("DATA", data_code);
    }
    // Content and its terminating ".\r\n" in one write.
    conn.stream.send(&message.data_wire).await?;
    let code = conn.reader.read(&mut conn.stream).await?;
    shard.record(Step::EndOfData, clock.lap());
    if is_positive(code) {
        Ok(Outcome::Accepted)
    } else {
        refuse("end-of-data", code)
    }
}

/// Decides a transaction's outcome from its envelope replies, then from
/// `data_outcome` when the envelope was accepted. Refused recipients of a
/// message that was still delivered are counted as errors on their own.
fn finish(
    shard: &Shard,
    mail_code: u16,
    rcpt_accepted: u32,
    first_rcpt_refusal: u16,
    data_outcome: impl FnOnce() -> io::Result<Outcome>,
) -> io::Result<Outcome> {
    let fatal = |code| code == 421;
    if !is_positive(mail_code) {
        return Ok(Outcome::Refused {
            step: "MAIL",
            code: mail_code,
            fatal: fatal(mail_code),
        });
    }
    if rcpt_accepted == 0 {
        return Ok(Outcome::Refused {
            step: "RCPT",
            code: first_rcpt_refusal,
            fatal: fatal(first_rcpt_refusal),
        });
    }
    if first_rcpt_refusal != 0 {
        shard.error(format!("RCPT {first_rcpt_refusal}"));
    }
    data_outcome()
}

/// Per-connection message budget and schedule.
struct Plan {
    quota: Option<u64>,
    deadline: Option<Instant>,
    /// Open loop: time between this connection's messages, and its first slot.
    interval: Option<Duration>,
    first_slot: Instant,
}

impl Plan {
    fn slot(&self, n: u64) -> Option<Instant> {
        self.interval.map(|i| self.first_slot + i.mul_f64(n as f64))
    }

    fn more(&self, attempted: u64) -> bool {
        if let Some(quota) = self.quota {
            if attempted >= quota {
                return false;
            }
        }
        match self.deadline {
            Some(deadline) => self.slot(attempted).unwrap_or_else(Instant::now) < deadline,
            None => true,
        }
    }
}

async fn connection_loop(shard: Rc<Shard>, connection_index: usize, plan: Plan) {
    let shared = shard.shared.clone();
    let options = &shared.options;
    let mut rng = XorShift::new(connection_index as u64 + 1);
    let mut attempted = 0u64;
    // A message picked ahead, whose envelope may already be on the wire.
    let mut next_index: Option<usize> = None;
    'session: while plan.more(attempted) {
        // Open loop with one message per connection: the schedule covers the
        // connect too, so a slow accept shows in the `message` latency.
        let mut scheduled = None;
        if options.per_connection {
            if let Some(slot) = plan.slot(attempted) {
                sleep_until(slot).await;
                scheduled = Some(slot);
            }
        }
        let mut conn = match Connection::open(&shard).await {
            Ok(conn) => conn,
            Err(e) => {
                attempted += 1;
                shard.result.borrow_mut().attempted += 1;
                shard.failed(io_error_key("connect", &e));
                glommio::timer::sleep(RECONNECT_BACKOFF).await;
                continue;
            }
        };
        // Chaining the next envelope behind a body only makes sense when the
        // next message goes out at once: closed loop, connection reused.
        let can_chain = options.pipelining
            && conn.extensions.pipelining
            && !(options.bdat && conn.extensions.chunking)
            && plan.interval.is_none()
            && !options.per_connection;
        while conn.envelope_sent.is_some() || plan.more(attempted) {
            // When the transaction should have started (the `message` latency
            // counts from there) and the clock its steps are timed with.
            let (intended_start, mut clock) = match (conn.envelope_sent, scheduled.take()) {
                (Some(sent), _) => (sent, Clock { last: sent }),
                (None, Some(slot)) => (
                    slot,
                    Clock {
                        last: Instant::now(),
                    },
                ),
                (None, None) => match plan.slot(attempted) {
                    Some(slot) => {
                        sleep_until(slot).await;
                        (
                            slot,
                            Clock {
                                last: Instant::now(),
                            },
                        )
                    }
                    None => {
                        let now = Instant::now();
                        (now, Clock { last: now })
                    }
                },
            };
            attempted += 1;
            let index = next_index
                .take()
                .unwrap_or_else(|| shared.corpus.pick(&mut rng));
            let message = &shared.corpus.messages[index];
            let next = if can_chain && plan.more(attempted) {
                let picked = shared.corpus.pick(&mut rng);
                next_index = Some(picked);
                Some(&shared.corpus.messages[picked])
            } else {
                None
            };
            shard.result.borrow_mut().attempted += 1;
            let outcome = transaction(&shard, &mut conn, message, next, &mut clock).await;
            conn.watch.last_progress.set(clock.last);
            match outcome {
                Ok(Outcome::Accepted) => {
                    shard.record(Step::Message, clock.last - intended_start);
                    let mut result = shard.result.borrow_mut();
                    result.ok += 1;
                    result.bytes_ok += message.content.len() as u64;
                    if options.digest_log.is_some() {
                        result.accepted.push(index as u32);
                    }
                    drop(result);
                    shard.progress().ok.add(1);
                }
                Ok(Outcome::Refused { step, code, fatal }) => {
                    shard.failed(format!("{step} {code}"));
                    if fatal {
                        continue 'session;
                    }
                }
                Err(e) => {
                    shard.failed(io_error_key("transaction", &conn.watch.explain(e)));
                    continue 'session;
                }
            }
            if options.per_connection {
                break;
            }
        }
        conn.quit().await;
    }
}

async fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        glommio::timer::sleep(when - now).await;
    }
}

fn io_error_key(step: &str, e: &io::Error) -> String {
    // Refusals during setup carry "greeting 421"-style text already.
    if e.kind() == io::ErrorKind::Other {
        let text = e.to_string();
        if text.split(' ').count() == 2 && text.ends_with(|c: char| c.is_ascii_digit()) {
            return text;
        }
    }
    format!("io {step} {:?}", e.kind())
}

/// Shuts down connections that made no progress within `--timeout`, so a
/// server that stops answering turns into counted errors, not a hang.
async fn watchdog(shard: &Shard) {
    let timeout = shard.shared.options.timeout;
    let period = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        glommio::timer::sleep(period).await;
        let now = Instant::now();
        shard.live.borrow_mut().retain(|(watch, fd)| {
            let Some(watch) = watch.upgrade() else {
                return false;
            };
            if !watch.timed_out.get() && now.duration_since(watch.last_progress.get()) > timeout {
                watch.timed_out.set(true);
                // SAFETY: the fd belongs to a live Connection (the Weak
                // upgraded, and the Rc dies with the socket on this thread).
                unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
            }
            true
        });
    }
}

async fn shard_main(shared: Arc<Shared>) -> ShardResult {
    let index = shared.next_shard.fetch_add(1, Ordering::Relaxed);
    let options = &shared.options;
    let shard = Rc::new(Shard {
        shared: shared.clone(),
        index,
        result: RefCell::new(ShardResult::default()),
        live: RefCell::new(Vec::new()),
    });
    let n = options.connections as u64;
    let interval = options
        .rate
        .map(|rate| Duration::from_secs_f64(n as f64 / rate));
    let deadline = options.duration.map(|d| shared.started + d);
    let mut tasks = Vec::new();
    for connection in (index..options.connections).step_by(options.cores) {
        let c = connection as u64;
        let quota = options.messages.map(|m| m / n + u64::from(c < m % n));
        // Stagger open-loop schedules so the total rate is smooth.
        let first_slot =
            shared.started + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / n as f64));
        let plan = Plan {
            quota,
            deadline,
            interval,
            first_slot,
        };
        tasks.push(glommio::spawn_local(connection_loop(
            shard.clone(),
            connection,
            plan,
        )));
    }
    let all_done = async {
        for task in tasks {
            task.await;
        }
    };
    futures_lite::future::or(all_done, watchdog(&shard)).await;
    shared.shards_done.fetch_add(1, Ordering::Release);
    let result = std::mem::take(&mut *shard.result.borrow_mut());
    result
}

/// Runs the load and returns the report (printing nothing but progress).
pub fn run(options: SendOptions) -> io::Result<Report> {
    if options.connections == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--connections must be at least 1",
        ));
    }
    if options.messages.is_none() && options.duration.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "give --messages or --duration",
        ));
    }
    if let Some(rate) = options.rate {
        if rate.is_nan() || rate <= 0.0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--rate must be positive",
            ));
        }
    }
    if options.timeout.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--timeout must be positive",
        ));
    }
    let cores = options.cores.min(options.connections).max(1);
    let options = SendOptions { cores, ..options };
    let tls = match options.tls {
        TlsMode::Off => None,
        TlsMode::StartTls | TlsMode::Implicit => {
            Some(crate::tls::client_config(options.tls_ca.as_deref())?)
        }
    };
    let corpus = Corpus::build(&options.size);
    let cpu_before = util::process_cpu_time();
    let shared = Arc::new(Shared {
        progress: (0..cores).map(|_| Progress::default()).collect(),
        options: options.clone(),
        tls,
        corpus,
        rcpt_commands: rcpt_commands(options.recipients),
        started: Instant::now(),
        shards_done: AtomicUsize::new(0),
        next_shard: AtomicUsize::new(0),
        bdat_warned: Default::default(),
        pipelining_warned: Default::default(),
    });
    let handles = {
        let shared = shared.clone();
        // Not pinned: pinning spreads each process's executors from the first CPU, so a
        // sender and a sink on one machine (compare, the benches) would share the same
        // CPUs and leave the others to the relay.
        LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(cores))
            .name("send")
            .on_all_shards(move || shard_main(shared))
            .map_err(|e| io::Error::other(e.to_string()))?
    };
    if options.progress {
        show_progress(&shared);
    }
    let mut total = ShardResult::default();
    for result in handles.join_all() {
        let r = result.map_err(|e| io::Error::other(e.to_string()))?;
        total.latencies.merge(&r.latencies);
        for (key, count) in r.errors {
            *total.errors.entry(key).or_insert(0) += count;
        }
        total.attempted += r.attempted;
        total.ok += r.ok;
        total.failed += r.failed;
        total.bytes_ok += r.bytes_ok;
        total.connections += r.connections;
        total.accepted.extend(r.accepted);
    }
    let elapsed = shared.started.elapsed().as_secs_f64();
    let cpu = (util::process_cpu_time() - cpu_before).as_secs_f64();

    if let Some(path) = &options.digest_log {
        let mut text = String::with_capacity(total.accepted.len() * 65);
        for &index in &total.accepted {
            text.push_str(&util::hex(&shared.corpus.messages[index as usize].digest));
            text.push('\n');
        }
        std::fs::write(path, text)?;
    }

    let mut errors_by_code = BTreeMap::new();
    for (key, count) in &total.errors {
        let code = key.rsplit(' ').next().unwrap_or("");
        let code = if key.starts_with("io ") { "io" } else { code };
        *errors_by_code.entry(code.to_string()).or_insert(0) += count;
    }
    let mut report = Report {
        target: options.target.to_string(),
        connections: options.connections,
        cores,
        size: options.size.to_string(),
        recipients: options.recipients,
        pipelining: options.pipelining,
        bdat: options.bdat,
        per_connection: options.per_connection,
        mode: if options.rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        }
        .to_string(),
        target_rate: options.rate,
        elapsed_s: elapsed,
        messages_attempted: total.attempted,
        messages_ok: total.ok,
        messages_failed: total.failed,
        bytes_ok: total.bytes_ok,
        msgs_per_s: total.ok as f64 / elapsed,
        mb_per_s: total.bytes_ok as f64 / 1e6 / elapsed,
        connections_opened: total.connections,
        connections_per_s: total.connections as f64 / elapsed,
        errors: total.errors,
        errors_by_code,
        latency_us: BTreeMap::new(),
        histograms: BTreeMap::new(),
        loadgen_cpu_s: cpu,
        loadgen_cpu_us_per_msg: if total.attempted > 0 {
            cpu * 1e6 / total.attempted as f64
        } else {
            0.0
        },
    };
    report.fill_latencies(&total.latencies);
    Ok(report)
}

/// Until all shards are done: an indicatif bar on a terminal, otherwise a
/// plain line every 5 s (logs and CI keep readable output).
fn show_progress(shared: &Shared) {
    use std::io::IsTerminal;
    let cores = shared.progress.len();
    let counts = || {
        shared.progress.iter().fold((0, 0), |(ok, failed), p| {
            (ok + p.ok.get(), failed + p.failed.get())
        })
    };
    let options = &shared.options;
    if std::io::stderr().is_terminal() {
        let (length, template) = match (options.messages, options.duration) {
            (Some(m), _) => (m, "{bar:40} {pos}/{len} messages {msg}"),
            (None, Some(d)) => (d.as_secs().max(1), "{bar:40} {pos}/{len} s {msg}"),
            (None, None) => (0, "{msg}"),
        };
        let bar = indicatif::ProgressBar::new(length);
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        while shared.shards_done.load(Ordering::Acquire) < cores {
            std::thread::sleep(Duration::from_millis(200));
            let (ok, failed) = counts();
            let elapsed = shared.started.elapsed().as_secs_f64();
            bar.set_position(if options.messages.is_some() {
                ok + failed
            } else {
                elapsed as u64
            });
            bar.set_message(format!(
                "ok {ok} failed {failed} {:.0} msgs/s",
                ok as f64 / elapsed
            ));
        }
        bar.finish_and_clear();
    } else {
        let mut last = Instant::now();
        let mut last_ok = 0;
        while shared.shards_done.load(Ordering::Acquire) < cores {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(5) {
                let (ok, failed) = counts();
                eprintln!(
                    "send: {:.0}s ok {ok} failed {failed} {:.0} msgs/s",
                    shared.started.elapsed().as_secs_f64(),
                    (ok - last_ok) as f64 / last.elapsed().as_secs_f64()
                );
                last = Instant::now();
                last_ok = ok;
            }
        }
    }
}
