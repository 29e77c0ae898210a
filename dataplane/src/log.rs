//! Event lines, session summaries and diagnostics, written by background threads so a
//! slow or stalled log reader can never block a shard.
//!
//! - Every line is formatted where it happens and handed to a bounded channel
//!   (`try_send`); one writer thread per stream (events, diagnostics) writes it. A full
//!   channel drops the line and counts it (`smtpgate_log_dropped_total`): losing a log
//!   line is better than freezing every session on a core.
//! - Targets: stdout (events) and stderr (diagnostics), with journald's `<N>` priority
//!   prefixes when that stream is the journal (`JOURNAL_STREAM`); or syslog, RFC 5424
//!   datagrams on `/dev/log`, facility mail.
//! - Text events carry the firewall's syslog tag (`%SMTPGATE-<sev>-<id>`) so pipelines
//!   written for `%ASA-…-108004` keep matching with a one-word change; JSON events carry
//!   the same facts as fields. Session summaries use the firewall's teardown ID 302014,
//!   limit refusals its connection-limit ID 201011.
//! - A session logs at most [`SESSION_EVENT_CAP`] event lines; its summary says how many
//!   more were suppressed.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use smtpgate_policy::event::{Direction, Event, MessageId};
use smtpgate_policy::rules::{Actions, Disposition};

use crate::LogFormat;

/// Lines waiting per stream before new ones are dropped.
const CHANNEL_LINES: usize = 4096;
/// After writing a batch that emptied the channel, a writer pauses this long before it
/// waits for lines again: lines logged meanwhile go out together, and a shard's
/// `try_send` finds nobody waiting, so it does not wake the writer (a futex call, and
/// a context switch on the shard's core) for every line, and the writer's own sleep
/// and wake-up come at most a hundred times a second. A line waits at most this long
/// plus a write; a burst of more than 4096 lines inside one pause (400,000 a second)
/// is dropped and counted. A writer that filled a batch goes on without pausing.
const BATCH_PAUSE: Duration = Duration::from_millis(10);
/// Bytes written in one go.
const BATCH_BYTES: usize = 64 << 10;
/// Event lines one session may write; the rest are counted in its summary.
pub const SESSION_EVENT_CAP: u32 = 16;
/// Bytes of peer-supplied text (HELO name, sender) kept in a line.
const TEXT_LIMIT: usize = 128;
/// At most this many limit-refusal lines per second per shard.
const LIMIT_LINES_PER_SECOND: u32 = 5;

/// Where lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// Events on stdout, diagnostics on stderr (journald priority prefixes under systemd).
    Stdout,
    /// RFC 5424 messages on the local syslog socket (`--syslog-socket`), facility mail.
    Syslog,
}

/// Syslog severity (RFC 5424 numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Notice => "notice",
            Level::Info => "info",
        }
    }
}

enum Line {
    Text(Level, String),
    /// Answered once everything sent before it was written.
    Flush(SyncSender<()>),
}

struct Logger {
    format: LogFormat,
    events: SyncSender<Line>,
    diagnostics: SyncSender<Line>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because a writer could not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Starts the writer threads. Before this (and in `check`), diagnostics go straight
/// to stderr.
pub fn init(format: LogFormat, target: LogTarget, syslog_socket: &Path) -> Result<(), String> {
    let (events, diagnostics) = match target {
        LogTarget::Stdout => (Sink::stream(Stream::Stdout), Sink::stream(Stream::Stderr)),
        LogTarget::Syslog => {
            let syslog = Syslog::connect(syslog_socket)
                .map_err(|e| format!("cannot log to {}: {e}", syslog_socket.display()))?;
            let second = syslog.try_clone().map_err(|e| format!("/dev/log: {e}"))?;
            (Sink::Syslog(syslog), Sink::Syslog(second))
        }
    };
    let logger = Logger {
        format,
        events: spawn_writer("smtpgate-log", events)?,
        diagnostics: spawn_writer("smtpgate-diag", diagnostics)?,
    };
    LOGGER
        .set(logger)
        .map_err(|_| "logging started twice".to_string())
}

fn spawn_writer(name: &str, mut sink: Sink) -> Result<SyncSender<Line>, String> {
    let (tx, rx) = sync_channel(CHANNEL_LINES);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || write_lines(&rx, &mut sink))
        .map_err(|e| format!("log thread: {e}"))?;
    Ok(tx)
}

/// The writer loop: takes what is queued in one go and writes it as one batch.
fn write_lines(rx: &Receiver<Line>, sink: &mut Sink) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(line) = next {
            match line {
                Line::Text(level, text) => sink.add(&mut batch, level, &text),
                Line::Flush(done) => flushes.push(done),
            }
            next = if batch.len() < BATCH_BYTES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let filled = batch.len() >= BATCH_BYTES;
        sink.write(&batch);
        batch.clear();
        for done in flushes.drain(..) {
            let _ = done.try_send(());
        }
        if !filled {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}

/// Waits (at most `limit`) until every line logged so far is written: at exit, so the
/// last diagnostics are not lost.
pub fn flush(limit: Duration) {
    let Some(logger) = LOGGER.get() else { return };
    let until = Instant::now() + limit;
    for channel in [&logger.events, &logger.diagnostics] {
        let (tx, rx) = sync_channel(1);
        let mut line = Line::Flush(tx);
        loop {
            match channel.try_send(line) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < until => {
                    line = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = rx.recv_timeout(until.saturating_duration_since(Instant::now()));
    }
}

fn send(channel: &SyncSender<Line>, level: Level, text: String) {
    if channel.try_send(Line::Text(level, text)).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

fn submit_event(level: Level, text: String) {
    match LOGGER.get() {
        Some(logger) => send(&logger.events, level, text),
        None => println!("{text}"),
    }
}

fn format() -> LogFormat {
    LOGGER.get().map_or(LogFormat::Text, |l| l.format)
}

// ---------------------------------------------------------------------------------
// Sinks
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

enum Sink {
    Stream { stream: Stream, journal: bool },
    Syslog(Syslog),
}

impl Sink {
    fn stream(stream: Stream) -> Sink {
        let fd = match stream {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        };
        Sink::Stream {
            stream,
            journal: is_journal(fd),
        }
    }

    fn add(&self, batch: &mut Vec<u8>, level: Level, text: &str) {
        match self {
            Sink::Stream { journal, .. } => {
                if *journal {
                    // sd-daemon(3): a `<N>` prefix sets the journal entry's priority.
                    let _ = write!(batch, "<{}>", level as u8);
                }
                batch.extend_from_slice(text.as_bytes());
                batch.push(b'\n');
            }
            Sink::Syslog(syslog) => {
                let _ = syslog.send(level, text);
            }
        }
    }

    fn write(&mut self, batch: &[u8]) {
        if let Sink::Stream { stream, .. } = self {
            // Blocking is fine here: only this thread waits, the shards do not.
            let _ = match stream {
                Stream::Stdout => std::io::stdout().lock().write_all(batch),
                Stream::Stderr => std::io::stderr().lock().write_all(batch),
            };
        }
    }
}

/// Whether descriptor `fd` is the journal stream systemd connected (its `dev:inode`
/// is in `JOURNAL_STREAM`).
fn is_journal(fd: i32) -> bool {
    let Ok(expected) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    // SAFETY: fstat on a descriptor number with a zeroed, correctly sized buffer.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return false;
    }
    expected == format!("{}:{}", stat.st_dev, stat.st_ino)
}

/// RFC 5424 over the local syslog socket.
struct Syslog {
    socket: UnixDatagram,
    hostname: String,
    pid: u32,
}

impl Syslog {
    /// Facility mail (2), as an MTA's logs are filed.
    const FACILITY: u8 = 2;

    fn connect(path: &Path) -> std::io::Result<Syslog> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Syslog {
            socket,
            hostname: hostname(),
            pid: std::process::id(),
        })
    }

    fn try_clone(&self) -> std::io::Result<Syslog> {
        Ok(Syslog {
            socket: self.socket.try_clone()?,
            hostname: self.hostname.clone(),
            pid: self.pid,
        })
    }

    fn send(&self, level: Level, text: &str) -> std::io::Result<usize> {
        let message = format!(
            "<{}>1 {} {} smtpgate {} - - {text}",
            Self::FACILITY * 8 + level as u8,
            timestamp(SystemTime::now()),
            self.hostname,
            self.pid,
        );
        self.socket.send(message.as_bytes())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".into())
}

// ---------------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------------

/// A diagnostic (start-up, reload, errors), always plain text.
pub fn diag(message: &str) {
    diag_at(Level::Notice, message);
}

pub fn diag_at(level: Level, message: &str) {
    let text = format!("smtpgate: {message}");
    match LOGGER.get() {
        Some(logger) => send(&logger.diagnostics, level, text),
        None => {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }
}

/// A diagnostic that can repeat per connection (an upstream outage, a lost upstream):
/// at most one line per second per shard thread, saying how many were held back, so an
/// outage under load does not flood the log.
pub fn diag_rate_limited(message: &str) {
    thread_local! {
        static LIMIT: RateLimit = const { RateLimit::new(1) };
    }
    if let Some(held_back) = LIMIT.with(RateLimit::admit) {
        match held_back {
            0 => diag_at(Level::Warning, message),
            n => diag_at(
                Level::Warning,
                &format!("{message} (and {n} more held back since the last such line)"),
            ),
        }
    }
}

/// At most `per_second` lines a second; counts what it held back.
struct RateLimit {
    per_second: u32,
    window: std::cell::Cell<Option<Instant>>,
    in_window: std::cell::Cell<u32>,
    held_back: std::cell::Cell<u64>,
}

impl RateLimit {
    const fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            window: std::cell::Cell::new(None),
            in_window: std::cell::Cell::new(0),
            held_back: std::cell::Cell::new(0),
        }
    }

    /// `Some(lines held back before this one)` when a line may be written now.
    fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let fresh = match self.window.get() {
            Some(start) => now.duration_since(start) >= Duration::from_secs(1),
            None => true,
        };
        if fresh {
            self.window.set(Some(now));
            self.in_window.set(0);
        }
        if self.in_window.get() >= self.per_second {
            self.held_back.set(self.held_back.get() + 1);
            return None;
        }
        self.in_window.set(self.in_window.get() + 1);
        Some(self.held_back.replace(0))
    }
}

// ---------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------

/// A process-unique session id: the shard's number in the top bits, a per-shard count
/// below, printed as hex.
pub fn next_session_id() -> u64 {
    thread_local! {
        static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let n = NEXT.with(|next| next.replace(next.get() + 1));
    ((crate::stats::shard_index() as u64) << 48) | (n & ((1 << 48) - 1))
}

/// What a session's lines share, and its event cap.
pub struct SessionLog {
    pub id: u64,
    pub listener: SocketAddr,
    pub client: SocketAddr,
    pub upstream: SocketAddr,
    pub started: Instant,
    logged: u32,
    suppressed: u32,
    rule_hits: u32,
}

/// Envelope facts known when a line is written (empty / zero when not yet known).
#[derive(Clone, Copy, Default)]
pub struct Envelope<'a> {
    pub helo: &'a [u8],
    pub sender: &'a [u8],
    pub recipients: u64,
}

/// How a session ended, for its summary line.
pub struct Summary<'a> {
    /// `finished`, `dropped`, `reset`, `timeout-idle`, `upstream-lost`, ...
    pub result: &'a str,
    pub bytes_from_client: u64,
    pub bytes_from_upstream: u64,
    pub messages: u64,
    pub envelope: Envelope<'a>,
}

impl Summary<'_> {
    /// A session that ended before any byte was relayed.
    pub fn without_traffic(result: &str) -> Summary<'_> {
        Summary {
            result,
            bytes_from_client: 0,
            bytes_from_upstream: 0,
            messages: 0,
            envelope: Envelope::default(),
        }
    }
}

impl SessionLog {
    pub fn new(listener: SocketAddr, client: SocketAddr, upstream: SocketAddr) -> SessionLog {
        SessionLog {
            id: next_session_id(),
            listener,
            client,
            upstream,
            started: Instant::now(),
            logged: 0,
            suppressed: 0,
            rule_hits: 0,
        }
    }

    /// Counts a rule hit and writes its line if the event deserves one and the
    /// session's cap allows.
    pub fn event(&mut self, event: &Event, rule_text: &str, envelope: Envelope<'_>) {
        self.rule_hits += 1;
        if !should_log(event) {
            return;
        }
        if self.logged >= SESSION_EVENT_CAP {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        let line = match format() {
            LogFormat::Text => self.event_text(event, rule_text, envelope),
            LogFormat::Json => self.event_json(event, rule_text, envelope),
        };
        submit_event(severity(event), line);
    }

    /// A TLS line (the firewall's 108007, TLS started): `what` is `established` or
    /// `failed`, `fields` the details (side, version, cipher suite, SNI, ...).
    pub fn tls(&self, what: &str, fields: &[(&str, String)]) {
        let line = match format() {
            LogFormat::Text => {
                let mut line = format!(
                    "{} %SMTPGATE-6-108007: session={:x} TLS {what} client={} server={} listener={}",
                    timestamp(SystemTime::now()),
                    self.id,
                    self.client,
                    self.upstream,
                    self.listener,
                );
                for (key, value) in fields {
                    let _ = write!(line, " {key}={value}");
                }
                line
            }
            LogFormat::Json => {
                let mut json = self.json_head(Level::Info, 108007);
                json.insert("type".into(), "tls".into());
                json.insert("tls".into(), what.into());
                for (key, value) in fields {
                    json.insert((*key).into(), value.clone().into());
                }
                serde_json::Value::Object(json).to_string()
            }
        };
        submit_event(Level::Info, line);
    }

    /// The one line every session ends with (the firewall's teardown, 302014).
    pub fn summary(&self, summary: &Summary<'_>) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let line = match format() {
            LogFormat::Text => {
                let mut line = format!(
                    "{} %SMTPGATE-6-302014: session={:x} result={} duration_ms={duration_ms} client={} server={} listener={} bytes_from_client={} bytes_from_upstream={} messages={} rule_hits={} suppressed={}",
                    timestamp(SystemTime::now()),
                    self.id,
                    summary.result,
                    self.client,
                    self.upstream,
                    self.listener,
                    summary.bytes_from_client,
                    summary.bytes_from_upstream,
                    summary.messages,
                    self.rule_hits,
                    self.suppressed,
                );
                push_envelope_text(&mut line, summary.envelope);
                line
            }
            LogFormat::Json => {
                let mut fields = self.json_head(Level::Info, 302014);
                fields.insert("type".into(), "session".into());
                fields.insert("result".into(), summary.result.into());
                fields.insert("duration_ms".into(), duration_ms.into());
                fields.insert("bytes_from_client".into(), summary.bytes_from_client.into());
                fields.insert(
                    "bytes_from_upstream".into(),
                    summary.bytes_from_upstream.into(),
                );
                fields.insert("messages".into(), summary.messages.into());
                fields.insert("rule_hits".into(), self.rule_hits.into());
                fields.insert("suppressed".into(), self.suppressed.into());
                push_envelope_json(&mut fields, summary.envelope);
                serde_json::Value::Object(fields).to_string()
            }
        };
        submit_event(Level::Info, line);
    }

    fn json_head(
        &self,
        level: Level,
        message_id: u32,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("time".into(), timestamp(SystemTime::now()).into());
        fields.insert("level".into(), level.name().into());
        fields.insert("message_id".into(), message_id.into());
        fields.insert("session".into(), format!("{:x}", self.id).into());
        fields.insert("client".into(), self.client.to_string().into());
        fields.insert("server".into(), self.upstream.to_string().into());
        fields.insert("listener".into(), self.listener.to_string().into());
        fields
    }

    fn event_text(&self, event: &Event, rule_text: &str, envelope: Envelope<'_>) -> String {
        let mut line = format!(
            "{} %SMTPGATE-{}-{}: session={:x} rule=\"{}\" action={} client={} server={} listener={} direction={} value={}",
            timestamp(SystemTime::now()),
            severity(event) as u8,
            event.message_id.code(),
            self.id,
            rule_text.replace('\\', "\\\\").replace('"', "\\\""),
            action_names(&event.actions).join(","),
            self.client,
            self.upstream,
            self.listener,
            direction_name(event.direction),
            event.value,
        );
        if !event.excerpt.as_bytes().is_empty() {
            let _ = write!(
                line,
                " text=\"{}\"",
                escape(event.excerpt.as_bytes(), Quotes::Escape)
            );
        }
        push_envelope_text(&mut line, envelope);
        line
    }

    fn event_json(&self, event: &Event, rule_text: &str, envelope: Envelope<'_>) -> String {
        let mut fields = self.json_head(severity(event), event.message_id.code());
        fields.insert("type".into(), "event".into());
        fields.insert("rule".into(), rule_text.into());
        fields.insert(
            "actions".into(),
            serde_json::Value::from(action_names(&event.actions)),
        );
        fields.insert("direction".into(), direction_name(event.direction).into());
        fields.insert("value".into(), event.value.into());
        if !event.excerpt.as_bytes().is_empty() {
            fields.insert(
                "text".into(),
                escape(event.excerpt.as_bytes(), Quotes::Keep).into(),
            );
        }
        push_envelope_json(&mut fields, envelope);
        serde_json::Value::Object(fields).to_string()
    }
}

fn push_envelope_text(line: &mut String, envelope: Envelope<'_>) {
    if !envelope.helo.is_empty() {
        let _ = write!(line, " helo=\"{}\"", escape(envelope.helo, Quotes::Escape));
    }
    if !envelope.sender.is_empty() {
        let _ = write!(
            line,
            " sender=\"{}\"",
            escape(envelope.sender, Quotes::Escape)
        );
    }
    if envelope.recipients > 0 {
        let _ = write!(line, " recipients={}", envelope.recipients);
    }
}

fn push_envelope_json(
    fields: &mut serde_json::Map<String, serde_json::Value>,
    envelope: Envelope<'_>,
) {
    if !envelope.helo.is_empty() {
        fields.insert("helo".into(), escape(envelope.helo, Quotes::Keep).into());
    }
    if !envelope.sender.is_empty() {
        fields.insert(
            "sender".into(),
            escape(envelope.sender, Quotes::Keep).into(),
        );
    }
    if envelope.recipients > 0 {
        fields.insert("recipients".into(), envelope.recipients.into());
    }
}

/// Whether `"` and `\` need a backslash (text lines) or not (JSON escapes them itself).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Quotes {
    Escape,
    Keep,
}

/// Peer-supplied bytes made safe for one log line: at most [`TEXT_LIMIT`] bytes,
/// printable ASCII kept, anything else as `\xNN`.
pub fn escape(bytes: &[u8], quotes: Quotes) -> String {
    let mut out = String::with_capacity(bytes.len().min(TEXT_LIMIT) + 8);
    for &b in bytes.iter().take(TEXT_LIMIT) {
        match b {
            b'"' | b'\\' if quotes == Quotes::Escape => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > TEXT_LIMIT {
        out.push_str("...");
    }
    out
}

/// A client refused by a connection limit (the firewall's 201011), at most
/// [`LIMIT_LINES_PER_SECOND`] lines a second per shard; the next line written says how
/// many were held back. Every refusal is counted in the metrics regardless.
pub fn limit_refused(limit: &str, client: SocketAddr, listener: SocketAddr) {
    thread_local! {
        static LIMIT: RateLimit = const { RateLimit::new(LIMIT_LINES_PER_SECOND) };
    }
    let Some(held_back) = LIMIT.with(RateLimit::admit) else {
        return;
    };
    let line = match format() {
        LogFormat::Text => format!(
            "{} %SMTPGATE-4-201011: limit={limit} client={client} listener={listener} held_back={held_back}",
            timestamp(SystemTime::now()),
        ),
        LogFormat::Json => serde_json::json!({
            "time": timestamp(SystemTime::now()),
            "level": Level::Warning.name(),
            "message_id": 201011,
            "type": "limit",
            "limit": limit,
            "client": client.to_string(),
            "listener": listener.to_string(),
            "held_back": held_back,
        })
        .to_string(),
    };
    submit_event(Level::Warning, line);
}

/// Whether an event deserves a line: a `log` action, or anything that ends the session
/// or changes what it is (TLS), which an operator must be able to find afterwards.
pub fn should_log(event: &Event) -> bool {
    event.actions.log || event.actions.ends_session() || event.message_id == MessageId::TlsStarted
}

fn action_names(actions: &Actions) -> Vec<&'static str> {
    let mut names = Vec::new();
    match actions.disposition {
        Disposition::Continue => {}
        Disposition::Drop => names.push("drop-connection"),
        Disposition::Reset => names.push("reset"),
        Disposition::Reject => names.push("reject"),
    }
    if actions.mask {
        names.push("mask");
    }
    if actions.rate_limit > 0 {
        names.push("rate-limit");
    }
    if actions.log {
        names.push("log");
    }
    names
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::ClientToServer => "client-to-server",
        Direction::ServerToClient => "server-to-client",
    }
}

/// Syslog severity as the firewall uses it: drops and resets are errors, TLS start
/// informational, the rest warnings.
fn severity(event: &Event) -> Level {
    if event.actions.ends_session() {
        Level::Error
    } else if event.message_id == MessageId::TlsStarted {
        Level::Info
    } else {
        Level::Warning
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(timestamp(at), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn peer_text_is_bounded_and_escaped() {
        assert_eq!(escape(b"mx.example", Quotes::Escape), "mx.example");
        assert_eq!(
            escape(b"a\"b\\c\r\n\x00", Quotes::Escape),
            "a\\\"b\\\\c\\x0d\\x0a\\x00"
        );
        assert_eq!(escape(b"a\"b\x7f", Quotes::Keep), "a\"b\\x7f");
        let long = vec![b'a'; 500];
        assert_eq!(escape(&long, Quotes::Escape).len(), TEXT_LIMIT + 3);
    }

    #[test]
    fn the_rate_limit_admits_its_quota_and_counts_the_rest() {
        let limit = RateLimit::new(2);
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), None);
        assert_eq!(limit.admit(), None);
        limit
            .window
            .set(Some(Instant::now() - Duration::from_secs(2)));
        assert_eq!(limit.admit(), Some(2));
    }
}
