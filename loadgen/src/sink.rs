//! `sink`: an SMTP server that accepts and discards mail, thread-per-core.
//!
//! [`Session`] is the protocol (sans-IO: bytes in, replies out, tested on
//! byte literals); [`run`] is the glommio driver: one executor per core, each
//! binding the same address (SO_REUSEPORT), answering everything found in one
//! read with one write, so pipelined clients get one reply segment per batch.
//!
//! The sink is strict about framing (RFC 5321 §4.1.1.4): only CRLF.CRLF ends
//! DATA, a bare LF never ends a line, so smuggling attempts that a relay
//! lets through show up as altered digests rather than as extra messages.
//!
//! Content hashing (SHA-256 over the message as delivered: un-dot-stuffed
//! DATA without its terminating ".\r\n", or the concatenated BDAT chunks) is
//! done only with `--digest-log`, so the sink stays cheap when not asked.

use crate::tls::Stream;
use crate::util::{self, hex, ShardCounter, XorShift};
use futures_lite::io::AsyncReadExt;
use glommio::net::TcpListener;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct SinkOptions {
    pub listen: SocketAddr,
    pub digest_log: Option<PathBuf>,
    pub tempfail_rate: f64,
    pub permfail_rate: f64,
    pub delay: Duration,
    pub cores: usize,
    pub report_interval: Duration,
    /// Advertise and accept STARTTLS.
    pub starttls: bool,
    /// The certificate and key for STARTTLS; `None`: self-signed, made at start.
    pub tls_cert_key: Option<(PathBuf, PathBuf)>,
}

/// Counters of one shard, summed by the main thread.
#[derive(Default)]
pub struct SinkCounters {
    pub connections: ShardCounter,
    pub messages: ShardCounter,
    pub bytes: ShardCounter,
    pub tempfail: ShardCounter,
    pub permfail: ShardCounter,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkTotals {
    pub connections: u64,
    pub messages: u64,
    pub bytes: u64,
    pub tempfail: u64,
    pub permfail: u64,
}

fn totals(shards: &[SinkCounters]) -> SinkTotals {
    let mut t = SinkTotals::default();
    for s in shards {
        t.connections += s.connections.get();
        t.messages += s.messages.get();
        t.bytes += s.bytes.get();
        t.tempfail += s.tempfail.get();
        t.permfail += s.permfail.get();
    }
    t
}

impl std::fmt::Display for SinkTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connections={} messages={} bytes={} tempfail={} permfail={}",
            self.connections, self.messages, self.bytes, self.tempfail, self.permfail
        )
    }
}

// ---------------------------------------------------------------------------
// Protocol

const GREETING: &[u8] = b"220 sink.smtpgate.test ESMTP smtpgate-loadgen sink\r\n";
const EHLO_REPLY: &[u8] = b"250-sink.smtpgate.test\r\n\
250-PIPELINING\r\n\
250-8BITMIME\r\n\
250-CHUNKING\r\n\
250-SIZE 1073741824\r\n\
250-SMTPUTF8\r\n\
250 ENHANCEDSTATUSCODES\r\n";
const EHLO_REPLY_STARTTLS: &[u8] = b"250-sink.smtpgate.test\r\n\
250-PIPELINING\r\n\
250-8BITMIME\r\n\
250-CHUNKING\r\n\
250-STARTTLS\r\n\
250-SIZE 1073741824\r\n\
250-SMTPUTF8\r\n\
250 ENHANCEDSTATUSCODES\r\n";
const TLS_READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const HELO_REPLY: &[u8] = b"250 sink.smtpgate.test\r\n";
const OK: &[u8] = b"250 2.0.0 Ok\r\n";
const MAIL_OK: &[u8] = b"250 2.1.0 Ok\r\n";
const RCPT_OK: &[u8] = b"250 2.1.5 Ok\r\n";
const DATA_GO: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
const QUEUED: &[u8] = b"250 2.0.0 Ok: queued\r\n";
const CHUNK_OK: &[u8] = b"250 2.0.0 Ok: chunk received\r\n";
const BYE: &[u8] = b"221 2.0.0 Bye\r\n";
const NEED_MAIL: &[u8] = b"503 5.5.1 Error: need MAIL command\r\n";
const NESTED_MAIL: &[u8] = b"503 5.5.1 Error: nested MAIL command\r\n";
const NEED_RCPT: &[u8] = b"554 5.5.1 Error: no valid recipients\r\n";
const BAD_BDAT: &[u8] = b"501 5.5.4 Syntax: BDAT size [LAST]\r\n";
const UNKNOWN: &[u8] = b"502 5.5.2 Error: command not recognized\r\n";
const VRFY_REPLY: &[u8] = b"252 2.0.0 Cannot VRFY user\r\n";
const TOO_LONG: &[u8] = b"500 5.5.2 Error: line too long\r\n";
const TEMPFAIL_MAIL: &[u8] = b"451 4.3.0 Temporary failure injected by sink\r\n";
const PERMFAIL_MAIL: &[u8] = b"550 5.7.1 Sender rejected by sink (injected)\r\n";
const TEMPFAIL_END: &[u8] = b"451 4.3.0 Message deferred by sink (injected)\r\n";
const PERMFAIL_END: &[u8] = b"554 5.6.0 Message rejected by sink (injected)\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Command,
    /// Inside DATA; `line_start` is true when the next byte begins a line.
    Data {
        line_start: bool,
    },
    /// Inside a BDAT chunk; `accept` is false when there is no valid
    /// transaction (RFC 3030: the chunk is still read, then refused).
    Bdat {
        remaining: u64,
        last: bool,
        accept: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Injected {
    None,
    Temp,
    Perm,
}

/// What one end of message did, for the driver's counters and digest log.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Accepted {
        bytes: u64,
        digest: Option<[u8; 32]>,
    },
    Tempfail,
    Permfail,
}

pub struct Session {
    mode: Mode,
    in_transaction: bool,
    recipients: u32,
    hasher: Option<Sha256>,
    message_bytes: u64,
    fail_at_end: Injected,
    skipping_long_line: bool,
    rng: XorShift,
    tempfail_rate: f64,
    permfail_rate: f64,
    pub out: Vec<u8>,
    pub events: Vec<Event>,
    pub quit: bool,
    /// STARTTLS is offered (the sink has a certificate and TLS is not on yet).
    offer_starttls: bool,
    /// STARTTLS was accepted: the driver starts TLS once `out` is written and
    /// discards anything the client sent behind the command (RFC 3207 4.2).
    pub start_tls: bool,
}

impl Session {
    pub fn new(hash: bool, tempfail_rate: f64, permfail_rate: f64, seed: u64) -> Session {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(GREETING);
        Session {
            mode: Mode::Command,
            in_transaction: false,
            recipients: 0,
            hasher: hash.then(Sha256::new),
            message_bytes: 0,
            fail_at_end: Injected::None,
            skipping_long_line: false,
            rng: XorShift::new(seed),
            tempfail_rate,
            permfail_rate,
            out,
            events: Vec::new(),
            quit: false,
            offer_starttls: false,
            start_tls: false,
        }
    }

    /// A session that advertises STARTTLS.
    pub fn offering_starttls(mut self) -> Session {
        self.offer_starttls = true;
        self
    }

    /// The session after the TLS handshake: a fresh start without a greeting
    /// (RFC 3207 4.2), STARTTLS no longer offered.
    pub fn restart_after_tls(&mut self) {
        self.reset();
        self.out.clear();
        self.offer_starttls = false;
        self.start_tls = false;
    }

    /// Consumes as much of `input` as can be acted on and returns how many
    /// bytes were consumed; the caller keeps the rest and appends more.
    pub fn process(&mut self, input: &[u8]) -> usize {
        let mut pos = 0;
        while pos < input.len() && !self.quit && !self.start_tls {
            let rest = &input[pos..];
            let used = match self.mode {
                Mode::Command => self.command(rest),
                Mode::Data { line_start } => self.data(rest, line_start),
                Mode::Bdat {
                    remaining,
                    last,
                    accept,
                } => self.bdat(rest, remaining, last, accept),
            };
            if used == 0 {
                break;
            }
            pos += used;
        }
        pos
    }

    /// Called when the buffer is full without a complete command line: drop
    /// what we have and answer once the line finally ends.
    pub fn overlong_line(&mut self) {
        self.skipping_long_line = true;
    }

    fn command(&mut self, input: &[u8]) -> usize {
        let Some(nl) = memchr::memchr(b'\n', input) else {
            return 0;
        };
        let line = &input[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if std::mem::take(&mut self.skipping_long_line) {
            self.out.extend_from_slice(TOO_LONG);
            return nl + 1;
        }
        let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        let (verb, args) = (&line[..verb_end], &line[verb_end..]);
        let is = |name: &[u8]| verb.eq_ignore_ascii_case(name);
        if is(b"EHLO") {
            self.reset();
            self.out.extend_from_slice(if self.offer_starttls {
                EHLO_REPLY_STARTTLS
            } else {
                EHLO_REPLY
            });
        } else if is(b"STARTTLS") && self.offer_starttls {
            self.reset();
            self.out.extend_from_slice(TLS_READY);
            self.start_tls = true;
        } else if is(b"HELO") {
            self.reset();
            self.out.extend_from_slice(HELO_REPLY);
        } else if is(b"MAIL") {
            self.mail();
        } else if is(b"RCPT") {
            if self.in_transaction {
                self.recipients += 1;
                self.out.extend_from_slice(RCPT_OK);
            } else {
                self.out.extend_from_slice(NEED_MAIL);
            }
        } else if is(b"DATA") {
            if !self.in_transaction {
                self.out.extend_from_slice(NEED_MAIL);
            } else if self.recipients == 0 {
                self.out.extend_from_slice(NEED_RCPT);
            } else {
                self.out.extend_from_slice(DATA_GO);
                self.mode = Mode::Data { line_start: true };
            }
        } else if is(b"BDAT") {
            self.bdat_command(args);
        } else if is(b"RSET") {
            self.reset();
            self.out.extend_from_slice(OK);
        } else if is(b"NOOP") {
            self.out.extend_from_slice(OK);
        } else if is(b"VRFY") {
            self.out.extend_from_slice(VRFY_REPLY);
        } else if is(b"QUIT") {
            self.out.extend_from_slice(BYE);
            self.quit = true;
        } else {
            self.out.extend_from_slice(UNKNOWN);
        }
        nl + 1
    }

    fn mail(&mut self) {
        if self.in_transaction {
            self.out.extend_from_slice(NESTED_MAIL);
            return;
        }
        // One roll per transaction decides the fault; a second picks whether
        // it is answered to MAIL or at end of data, so both paths get hit.
        let roll = self.rng.next_f64();
        let injected = if roll < self.tempfail_rate {
            Injected::Temp
        } else if roll < self.tempfail_rate + self.permfail_rate {
            Injected::Perm
        } else {
            Injected::None
        };
        if injected != Injected::None && self.rng.next_u64() & 1 == 0 {
            let (reply, event) = match injected {
                Injected::Temp => (TEMPFAIL_MAIL, Event::Tempfail),
                _ => (PERMFAIL_MAIL, Event::Permfail),
            };
            self.out.extend_from_slice(reply);
            self.events.push(event);
            return;
        }
        self.in_transaction = true;
        self.recipients = 0;
        self.fail_at_end = injected;
        self.message_bytes = 0;
        if let Some(h) = self.hasher.as_mut() {
            h.reset();
        }
        self.out.extend_from_slice(MAIL_OK);
    }

    fn bdat_command(&mut self, args: &[u8]) {
        let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let size = words
            .next()
            .and_then(|w| std::str::from_utf8(w).ok())
            .and_then(|w| w.parse::<u64>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case(b"LAST") => Some(true),
            Some(_) => None,
        };
        match (size, last) {
            (Some(remaining), Some(last)) => {
                let accept = self.in_transaction && self.recipients > 0;
                self.mode = Mode::Bdat {
                    remaining,
                    last,
                    accept,
                };
                if remaining == 0 {
                    self.end_chunk(last, accept);
                }
            }
            // Without a valid size we cannot know where the chunk ends.
            _ => {
                self.out.extend_from_slice(BAD_BDAT);
                self.quit = true;
            }
        }
    }

    fn bdat(&mut self, input: &[u8], remaining: u64, last: bool, accept: bool) -> usize {
        let take = (input.len() as u64).min(remaining) as usize;
        if accept {
            self.absorb(&input[..take]);
        }
        let remaining = remaining - take as u64;
        self.mode = Mode::Bdat {
            remaining,
            last,
            accept,
        };
        if remaining == 0 {
            self.end_chunk(last, accept);
        }
        take
    }

    fn end_chunk(&mut self, last: bool, accept: bool) {
        self.mode = Mode::Command;
        if !accept {
            self.out.extend_from_slice(if self.in_transaction {
                NEED_RCPT
            } else {
                NEED_MAIL
            });
            if last {
                self.reset();
            }
        } else if last {
            self.end_message();
        } else {
            self.out.extend_from_slice(CHUNK_OK);
        }
    }

    /// DATA content: find "\r\n." with memmem and hash whole runs between
    /// them; only a line that starts with '.' needs a closer look
    /// (RFC 5321 §4.5.2: strip one '.', or ".\r\n" ends the message).
    fn data(&mut self, input: &[u8], line_start: bool) -> usize {
        if line_start {
            if input[0] != b'.' {
                self.mode = Mode::Data { line_start: false };
                return self.data(input, false);
            }
            if input.len() < 3 {
                // Cannot tell ".\r\n" from ".x" yet.
                if b".\r\n".starts_with(input) {
                    return 0;
                }
            } else if &input[..3] == b".\r\n" {
                self.mode = Mode::Command;
                self.end_message();
                return 3;
            }
            self.mode = Mode::Data { line_start: false };
            return 1; // the stuffed dot
        }
        match memchr::memmem::find(input, b"\r\n.") {
            Some(i) => {
                self.absorb(&input[..i + 2]);
                self.mode = Mode::Data { line_start: true };
                i + 2
            }
            None => {
                // Keep a trailing "\r" back: with the next read it may be
                // the start of "\r\n.".
                let keep = usize::from(input.ends_with(b"\r"));
                let used = input.len() - keep;
                self.absorb(&input[..used]);
                self.mode = Mode::Data {
                    line_start: input.ends_with(b"\r\n"),
                };
                used
            }
        }
    }

    fn absorb(&mut self, content: &[u8]) {
        self.message_bytes += content.len() as u64;
        if let Some(h) = self.hasher.as_mut() {
            h.update(content);
        }
    }

    fn end_message(&mut self) {
        let injected = std::mem::replace(&mut self.fail_at_end, Injected::None);
        let digest = self.hasher.as_mut().map(|h| h.finalize_reset().into());
        match injected {
            Injected::Temp => {
                self.out.extend_from_slice(TEMPFAIL_END);
                self.events.push(Event::Tempfail);
            }
            Injected::Perm => {
                self.out.extend_from_slice(PERMFAIL_END);
                self.events.push(Event::Permfail);
            }
            Injected::None => {
                self.out.extend_from_slice(QUEUED);
                self.events.push(Event::Accepted {
                    bytes: self.message_bytes,
                    digest,
                });
            }
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.in_transaction = false;
        self.recipients = 0;
        self.message_bytes = 0;
        self.fail_at_end = Injected::None;
    }
}

// ---------------------------------------------------------------------------
// Driver

struct Shard {
    options: SinkOptions,
    /// Present with `--starttls`.
    tls: Option<Arc<rustls::ServerConfig>>,
    counters: Arc<Vec<SinkCounters>>,
    index: usize,
    digests: RefCell<Vec<u8>>,
    digest_file: Option<RefCell<File>>,
    next_seed: std::cell::Cell<u64>,
}

impl Shard {
    fn counters(&self) -> &SinkCounters {
        &self.counters[self.index]
    }

    fn flush_digests(&self) {
        let (Some(file), mut pending) = (&self.digest_file, self.digests.borrow_mut()) else {
            return;
        };
        if !pending.is_empty() {
            // O_APPEND, one write per batch: lines of different shards
            // never interleave mid-line.
            if let Err(e) = file.borrow_mut().write_all(&pending) {
                eprintln!("sink: writing digest log: {e}");
            }
            pending.clear();
        }
    }

    fn record(&self, events: &mut Vec<Event>) {
        let counters = self.counters();
        for event in events.drain(..) {
            match event {
                Event::Accepted { bytes, digest } => {
                    counters.messages.add(1);
                    counters.bytes.add(bytes);
                    if let Some(digest) = digest {
                        let mut pending = self.digests.borrow_mut();
                        pending.extend_from_slice(hex(&digest).as_bytes());
                        pending.push(b'\n');
                    }
                }
                Event::Tempfail => counters.tempfail.add(1),
                Event::Permfail => counters.permfail.add(1),
            }
        }
        if self.digests.borrow().len() >= 64 * 1024 {
            self.flush_digests();
        }
    }
}

async fn serve(shard: Rc<Shard>, tcp: glommio::net::TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut stream = Stream::Plain(tcp);
    shard.counters().connections.add(1);
    let seed = shard.next_seed.get();
    shard.next_seed.set(seed + 1);
    let options = &shard.options;
    let mut session = Session::new(
        options.digest_log.is_some(),
        options.tempfail_rate,
        options.permfail_rate,
        seed,
    );
    if shard.tls.is_some() {
        session = session.offering_starttls();
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        if !session.out.is_empty() {
            if !options.delay.is_zero() && !session.events.is_empty() {
                glommio::timer::sleep(options.delay).await;
            }
            shard.record(&mut session.events);
            stream.send(&session.out).await?;
            session.out.clear();
        }
        if session.start_tls {
            let config = shard
                .tls
                .as_ref()
                .expect("STARTTLS is offered with a config");
            stream = stream.accept(config).await?;
            session.restart_after_tls();
            filled = 0;
            continue;
        }
        if session.quit {
            return Ok(());
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let consumed = session.process(&buf[..filled]);
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        if filled == buf.len() {
            session.overlong_line();
            filled = 0;
        }
    }
}

async fn shard_main(
    shard: Rc<Shard>,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let listener = match TcpListener::bind(shard.options.listen) {
        Ok(l) => {
            let _ = ready.send(Ok(()));
            l
        }
        Err(e) => {
            let _ = ready.send(Err(format!("bind {}: {e}", shard.options.listen)));
            return;
        }
    };
    let accept_loop = {
        let shard = shard.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        let shard = shard.clone();
                        glommio::spawn_local(async move {
                            // Peers vanishing mid-session is normal for a sink.
                            let _ = serve(shard, stream).await;
                        })
                        .detach();
                    }
                    Err(e) => {
                        eprintln!("sink: accept: {e}");
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    };
    let housekeeping = {
        let shard = shard.clone();
        async move {
            while !stop.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                shard.flush_digests();
            }
        }
    };
    futures_lite::future::or(accept_loop, housekeeping).await;
    shard.flush_digests();
}

/// Runs the sink until SIGTERM or SIGINT, then prints the summary line.
pub fn run(options: SinkOptions) -> io::Result<SinkTotals> {
    let (placeholder, bound) = util::reserve_port(options.listen)?;
    let options = SinkOptions {
        listen: bound,
        ..options
    };
    if let Some(path) = &options.digest_log {
        File::create(path)?; // start empty; shards append
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let counters: Arc<Vec<SinkCounters>> = Arc::new(
        (0..options.cores)
            .map(|_| SinkCounters::default())
            .collect(),
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let next_index = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let tls = if options.starttls {
        let paths = options.tls_cert_key.as_ref();
        Some(crate::tls::server_config(
            paths.map(|(c, k)| (c.as_path(), k.as_path())),
        )?)
    } else {
        None
    };
    let handles = {
        let (options, counters, stop) = (options.clone(), counters.clone(), stop.clone());
        // Not pinned, like the sender (see send::run): two pinned processes would share
        // the first CPUs.
        LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(options.cores))
            .name("sink")
            .on_all_shards(move || async move {
                let index = next_index.fetch_add(1, Ordering::Relaxed);
                let digest_file = options.digest_log.as_ref().map(|path| {
                    RefCell::new(
                        std::fs::OpenOptions::new()
                            .append(true)
                            .open(path)
                            .expect("open digest log"),
                    )
                });
                let shard = Rc::new(Shard {
                    tls: tls.clone(),
                    options,
                    counters,
                    index,
                    digests: RefCell::new(Vec::new()),
                    digest_file,
                    next_seed: std::cell::Cell::new((index as u64) << 32),
                });
                shard_main(shard, stop, ready_tx).await;
            })
            .map_err(|e| io::Error::other(e.to_string()))?
    };
    for _ in 0..options.cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io::Error::new(io::ErrorKind::AddrInUse, e)),
            Err(_) => return Err(io::Error::other("a sink shard died")),
        }
    }
    drop(placeholder);
    eprintln!("sink: listening on {bound}");

    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut last_messages = 0;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if !options.report_interval.is_zero() && last_report.elapsed() >= options.report_interval {
            let now = totals(&counters);
            if now.messages != last_messages {
                let rate =
                    (now.messages - last_messages) as f64 / last_report.elapsed().as_secs_f64();
                eprintln!(
                    "sink: {:.0}s {now} rate={rate:.0}/s",
                    started.elapsed().as_secs_f64()
                );
                last_messages = now.messages;
            }
            last_report = Instant::now();
        }
    }
    handles.join_all();
    let final_totals = totals(&counters);
    println!("sink: {final_totals}");
    Ok(final_totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let mut s = Session::new(true, 0.0, 0.0, 1);
        s.out.clear();
        s
    }

    fn feed(s: &mut Session, input: &[u8]) -> usize {
        s.process(input)
    }

    fn digest_of(content: &[u8]) -> [u8; 32] {
        Sha256::digest(content).into()
    }

    #[test]
    fn pipelined_transaction_answers_each_command_in_order() {
        let mut s = session();
        let input =
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n..dot\r\n.\r\nQUIT\r\n";
        assert_eq!(feed(&mut s, input), input.len());
        let mut expected = EHLO_REPLY.to_vec();
        for r in [MAIL_OK, RCPT_OK, DATA_GO, QUEUED, BYE] {
            expected.extend_from_slice(r);
        }
        assert_eq!(s.out, expected);
        assert_eq!(
            s.events,
            vec![Event::Accepted {
                bytes: 10,
                digest: Some(digest_of(b"hi\r\n.dot\r\n"))
            }]
        );
    }

    #[test]
    fn data_split_at_every_offset_gives_the_same_digest() {
        let content = crate::message::build_content(3000, 4);
        let wire = crate::message::dot_stuff(&content);
        let mut input = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(&wire);
        input.extend_from_slice(b"NOOP\r\n");
        for split in 0..input.len() {
            let mut s = session();
            let mut pending = input[..split].to_vec();
            let used = feed(&mut s, &pending);
            pending.drain(..used);
            pending.extend_from_slice(&input[split..]);
            let used = feed(&mut s, &pending);
            assert_eq!(used, pending.len(), "split {split}");
            assert_eq!(
                s.events,
                vec![Event::Accepted {
                    bytes: content.len() as u64,
                    digest: Some(digest_of(&content))
                }],
                "split {split}"
            );
            assert!(s.out.ends_with(OK));
        }
    }

    #[test]
    fn bdat_chunks_are_concatenated_and_counted_by_size() {
        let mut s = session();
        let input =
            b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 4\r\nab\r\nBDAT 4 LAST\r\n..\r\nNOOP\r\n";
        assert_eq!(feed(&mut s, input), input.len());
        assert_eq!(
            s.events,
            vec![Event::Accepted {
                bytes: 8,
                digest: Some(digest_of(b"ab\r\n..\r\n"))
            }]
        );
        let mut expected = MAIL_OK.to_vec();
        for r in [RCPT_OK, CHUNK_OK, QUEUED, OK] {
            expected.extend_from_slice(r);
        }
        assert_eq!(s.out, expected);
    }

    /// Any chunking of the input (as TCP may deliver it) gives the same
    /// replies and digests as feeding it whole.
    #[test]
    fn random_chunking_changes_nothing() {
        let content = crate::message::build_content(5000, 2);
        let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(&crate::message::dot_stuff(&content));
        input.extend_from_slice(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
        for chunk in content.chunks(1500) {
            input.extend_from_slice(format!("BDAT {}\r\n", chunk.len()).as_bytes());
            input.extend_from_slice(chunk);
        }
        input.extend_from_slice(b"BDAT 0 LAST\r\nNOOP\r\nQUIT\r\n");

        let mut whole = session();
        assert_eq!(feed(&mut whole, &input), input.len());
        assert_eq!(whole.events.len(), 2);
        assert!(whole.quit);

        let mut rng = XorShift::new(11);
        for _ in 0..300 {
            let mut s = session();
            let mut pending = Vec::new();
            let mut offset = 0;
            while offset < input.len() {
                let take = (1 + rng.below(60) as usize).min(input.len() - offset);
                pending.extend_from_slice(&input[offset..offset + take]);
                offset += take;
                let used = feed(&mut s, &pending);
                pending.drain(..used);
            }
            assert!(pending.is_empty());
            assert_eq!(s.out, whole.out);
            assert_eq!(s.events, whole.events);
        }
    }

    #[test]
    fn starttls_is_offered_only_with_a_certificate_and_discards_what_follows_it() {
        let mut s = session().offering_starttls();
        s.out.clear();
        let input = b"EHLO a\r\nSTARTTLS\r\nMAIL FROM:<smuggled@x>\r\n";
        assert_eq!(feed(&mut s, input), b"EHLO a\r\nSTARTTLS\r\n".len());
        let mut expected = EHLO_REPLY_STARTTLS.to_vec();
        expected.extend_from_slice(TLS_READY);
        assert_eq!(s.out, expected);
        assert!(s.start_tls);
        s.restart_after_tls();
        feed(&mut s, b"EHLO a\r\n");
        assert_eq!(s.out, EHLO_REPLY, "no STARTTLS inside TLS");
    }

    #[test]
    fn bdat_without_transaction_is_read_then_refused() {
        let mut s = session();
        let input = b"BDAT 6 LAST\r\nMAIL\r\nNOOP\r\n";
        assert_eq!(feed(&mut s, input), input.len());
        assert!(s.events.is_empty());
        let mut expected = NEED_MAIL.to_vec();
        expected.extend_from_slice(OK);
        assert_eq!(s.out, expected);
    }

    #[test]
    fn injected_failures_hit_mail_and_end_of_data() {
        let mut s = Session::new(false, 0.5, 0.5, 3);
        let mut mail_rejects = 0;
        for _ in 0..200 {
            s.out.clear();
            feed(
                &mut s,
                b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n",
            );
            if s.out.starts_with(b"451") || s.out.starts_with(b"550") {
                mail_rejects += 1;
            }
            feed(&mut s, b"RSET\r\n");
        }
        let temp = s.events.iter().filter(|e| **e == Event::Tempfail).count();
        let perm = s.events.iter().filter(|e| **e == Event::Permfail).count();
        assert_eq!(temp + perm, 200);
        assert!(temp > 50 && perm > 50, "{temp} {perm}");
        assert!(mail_rejects > 50 && mail_rejects < 150, "{mail_rejects}");
    }

    #[test]
    fn unknown_and_masked_verbs_get_5xx() {
        let mut s = session();
        feed(&mut s, b"XXXXXXXX\r\nSTARTTLS\r\n");
        assert_eq!(s.out, [UNKNOWN, UNKNOWN].concat());
    }
}
