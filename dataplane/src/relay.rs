//! The relay: one task per session drives both directions.
//!
//! Shape, chosen for few wake-ups per message: a single `poll_fn` polls, in one pass,
//! the pending writes of both sides and then the reads whose counterpart's outgoing
//! queue is empty. One task, one waker, no channels and no per-read timers (deadlines
//! are swept per shard, see [`crate::clock`]).
//!
//! Each side is one [`Half`]: its socket, the read buffer lent while it is read, and
//! the bytes queued to be written to it. Bytes read from a socket enter the session in
//! one place ([`Half::poll_read`]) and bytes to a socket leave from one place
//! ([`Half::poll_flush`]), so TLS wraps a side there: a [`TlsLayer`] per side turns
//! ciphertext read into plaintext for the inspector and the bytes queued for the peer
//! into ciphertext. Handshakes run inside this task; the inspector says when a side
//! switches (`Output::start_tls`, after its STARTTLS reply went out in the clear), and
//! implicit TLS starts the client side before the first byte. When both sides switch,
//! the upstream's handshake goes first: the client's 220 is held until it succeeded,
//! and a failure (verification) gives the client `421 4.7.0` in the clear instead.
//!
//! Rules the loop keeps:
//! - Backpressure: a side is read only when everything destined for the other side
//!   has been written and less than [`MAX_QUEUED_BACK`] waits to be written back to it,
//!   so a stalled peer stops the reading of its counterpart, and a peer that does not
//!   read what it is sent (a pipelining client that never reads its replies) stops
//!   being read itself: its own writes then block in TCP. The client is also not read
//!   while [`MAX_OWED_REPLIES`] commands await their replies, so the inspector never
//!   has to hold more than one read of a fast pipeliner. A session gives its read
//!   buffers back to the shard whenever it waits (blocked, idle or closing) or
//!   yields, so it holds them only while it runs. Each session therefore holds at
//!   most about one read per direction plus what its inspector keeps; the shard's
//!   [`Budget`] bounds the sum over sessions (`[limits] buffer_budget`): a session it
//!   evicts drops what it queued and gets `421 4.3.2`.
//! - Read sizes: reads start at 16 KiB; one that fills its buffer grows the next to
//!   64 KiB while the session carries bulk (message content, verbatim bytes), and one
//!   that 16 KiB would have held shrinks it back ([`crate::bufpool`]): a 100 KiB
//!   message takes three reads, not seven. Commands and replies are always read
//!   16 KiB at a time, so a pipeliner's read stays small for the inspector to hold.
//! - Order: bytes go out in the order the inspector produced them (`to_server`, then
//!   `to_client`), appended behind anything still queued in that direction.
//! - Half-close: a peer's EOF becomes `shutdown(SHUT_WR)` towards the other peer once
//!   its queue is written; the other direction keeps flowing until it ends too.
//! - Deadlines follow what the session waits for ([`Phase`]): the upstream's greeting
//!   (`upstream_connect`), each complete command line from the previous reply (`idle`,
//!   bytes inside a line do not extend it; `embryonic` until HELO/EHLO), message
//!   content (`data`, extended by bytes received / `min_data_rate`), and the reply to
//!   an end of data (`data_termination`, during which the client is not cut).
//! - Honest failures: when the upstream goes away, the client first gets every byte
//!   already owed to it, then `421 4.4.2`, unless the reply to an end of data is owed:
//!   then it is closed without a reply, because either answer could be false.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use smtpgate_policy::config::Timeouts;
use smtpgate_policy::envelope::Envelope;
use smtpgate_policy::event::Event;
use smtpgate_policy::inspector::{
    Inspector, Output, Phase, StartTls, TlsSides, Verdict, QUEUE_CAP,
};

use crate::budget::{Budget, Holding};
use crate::bufpool::{refill, BufPool, ReadSize};
use crate::clock::{after, Deadline, Deadlines};
use crate::limits::Ticket;
use crate::panics;
use crate::sock;
use crate::tls::{self, Established, SessionTls, TlsFailure, TlsLayer};
use crate::upstream_starttls::Prelude;

/// After a goodbye reply or the upstream's close, how long the client gets to read
/// what is left before the session is torn down.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Reads in a row without yielding to the shard's other tasks.
const READS_BEFORE_YIELD: u32 = 32;
/// A side with more than this queued to it and not yet written (it does not read what
/// it is sent) is not read either.
const MAX_QUEUED_BACK: usize = 16 * 1024;
/// Commands forwarded and awaiting replies past which the client is not read: half
/// the inspector's queue, so one more read (at most a buffer of pipelined commands)
/// still fits without holding bytes past its cap.
const MAX_OWED_REPLIES: usize = QUEUE_CAP / 2;

pub const REPLY_INTERNAL_ERROR: &[u8] =
    b"421 4.3.0 smtpgate: internal error, closing connection\r\n";
pub const REPLY_UPSTREAM_LOST: &[u8] =
    b"421 4.4.2 smtpgate: upstream connection lost, closing connection\r\n";
pub const REPLY_SHUTTING_DOWN: &[u8] = b"421 4.3.2 smtpgate: shutting down\r\n";
pub const REPLY_UPSTREAM_TLS_FAILED: &[u8] =
    b"421 4.7.0 smtpgate: TLS to the upstream failed, closing connection\r\n";
pub const REPLY_OVER_BUDGET: &[u8] =
    b"421 4.3.2 smtpgate: buffer memory exhausted, closing connection\r\n";

/// Which peer: indexes the two [`Half`]s, and says which side failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Upstream = 1,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// Which deadline ended a session: the reason in its 421 and its counter's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The upstream did not greet within `upstream_connect` (an upstream failure).
    UpstreamGreeting,
    /// No HELO/EHLO accepted within `embryonic`.
    Embryonic,
    /// No complete command line within `idle` of the previous reply.
    Idle,
    /// Message content slower than `data` plus bytes / `min_data_rate`.
    Data,
    /// The upstream did not answer an end of data within `data_termination`.
    DataTermination,
}

impl Expiry {
    /// What the client is told; `None` when the reply to an end of data is owed (an
    /// answer either way could be false, so the connection just closes).
    fn reply(self) -> Option<&'static [u8]> {
        match self {
            Expiry::UpstreamGreeting => {
                Some(b"421 4.4.1 smtpgate: upstream did not greet in time, try again later\r\n")
            }
            Expiry::Embryonic => {
                Some(b"421 4.4.2 smtpgate: timeout waiting for HELO/EHLO, closing connection\r\n")
            }
            Expiry::Idle => Some(b"421 4.4.2 smtpgate: idle timeout, closing connection\r\n"),
            Expiry::Data => Some(b"421 4.4.2 smtpgate: data timeout, closing connection\r\n"),
            Expiry::DataTermination => None,
        }
    }
}

/// How a relay ended. Whatever the client had to be told has been queued and flushed
/// (within [`CLOSE_GRACE`]) by then.
#[derive(Debug)]
pub enum End {
    /// Both sides closed in order.
    Finished,
    /// The client reset the connection or a write to it failed.
    ClientFailed,
    /// The upstream closed or failed mid-session; `None` for a close without error.
    UpstreamLost(Option<io::Error>),
    /// drop-connection (or an inspector failure): the reply was written.
    Dropped,
    /// reset: both sides are to be aborted.
    Reset,
    /// A deadline passed.
    TimedOut(Expiry),
    /// The shard is shutting down and the session was idle between transactions.
    ShutDown,
    /// The shard's share of `buffer_budget` ran out and this session held the most.
    OverBudget,
}

/// Receives what the inspector and the TLS layers report, so the relay needs no
/// knowledge of logs or stats.
pub trait EventSink {
    /// A rule fired; `envelope` is the session's as the inspector knows it now.
    fn event(&mut self, event: &Event, envelope: &Envelope);
    /// A TLS handshake completed on `side`.
    fn tls_established(&mut self, side: Side, established: &Established);
    /// TLS failed on `side` (counted when it was during the handshake).
    fn tls_failed(&mut self, side: Side, failure: &TlsFailure);
    /// Client bytes sent behind STARTTLS were discarded (RFC 3207 4.2).
    fn tls_discarded(&mut self, bytes: usize);
    /// Bytes just read from `side` (called per read, so counters move live).
    fn bytes(&mut self, _side: Side, _bytes: usize) {}
    /// The inspector after it took a read, before its events (for envelope facts and
    /// phase timing).
    fn inspected(&mut self, _inspector: &Inspector, _now: Instant) {}
}

pub struct Relay<'a, S> {
    pub client: TcpStream,
    pub server: TcpStream,
    /// `None` on the exempt path: bytes go through verbatim. Boxed: it is the largest
    /// part of a session, and a boxed value is not copied between future states.
    pub inspector: Option<Box<Inspector>>,
    pub ticket: Ticket,
    pub deadline: Rc<Deadline>,
    pub timeouts: &'a Timeouts,
    pub accepted_at: Instant,
    /// When the upstream connection was established (its greeting is due from then).
    pub connected_at: Instant,
    pub pool: &'a BufPool,
    pub tls: SessionTls,
    /// Implicit TLS: the upstream leg as the STARTTLS prelude left it (its greeting,
    /// already read, and TLS when it was started).
    pub upstream_prelude: Option<Box<Prelude>>,
    /// The shard's scratch space for the inspector's output.
    pub scratch: &'a RefCell<Output>,
    /// The shard's share of the buffer budget, and its sessions (to find the largest
    /// holders when it runs out).
    pub budget: &'a Budget,
    pub sessions: &'a Deadlines,
    /// Where events, TLS results and byte counts go.
    pub sink: S,
}

/// Bytes read from each side, for the counters.
#[derive(Default, Clone, Copy)]
pub struct Traffic {
    pub from_client: u64,
    pub from_server: u64,
}

/// What a finished relay hands back: how it ended, the bytes moved, and the sockets
/// (so the caller decides how to close them).
pub struct Outcome {
    pub end: End,
    pub traffic: Traffic,
    /// What the inspector learnt of the envelope (`None` for a verbatim session).
    pub envelope: Option<Envelope>,
    pub client: TcpStream,
    pub server: TcpStream,
}

/// One side of the session.
struct Half {
    stream: TcpStream,
    /// Lent by the shard's pool while this side is read; `None` while it waits.
    read_buf: Option<BytesMut>,
    /// The size of `read_buf`, and of the next one taken: large while reads fill
    /// buffers (bulk), small otherwise.
    read_size: ReadSize,
    /// Bytes waiting to be written to this side, in order.
    outgoing: VecDeque<Bytes>,
    /// Their total length.
    queued: usize,
    /// The peer sent FIN: nothing more to read.
    read_closed: bool,
    /// We sent FIN (the other side ended and everything queued here was written).
    write_closed: bool,
    bytes_read: u64,
    /// TLS on this side: bytes read are ciphertext, bytes queued are sealed by it.
    /// Boxed: a TLS layer is over 1 KiB, and most sessions never start one.
    tls: Option<Box<TlsSide>>,
    /// Plaintext read before the relay started (the upstream's greeting, read by the
    /// implicit-TLS prelude): the first read hands it out.
    replay: Option<Bytes>,
}

/// A side's TLS: the layer and what the relay tracks of it.
struct TlsSide {
    layer: TlsLayer,
    /// Plaintext decrypted from this side's reads, cut off per read; reused.
    plaintext: BytesMut,
    /// The peer's close_notify arrived: the next read is the end of stream.
    peer_closed: bool,
    /// close_notify was queued before our FIN.
    close_sent: bool,
    /// A handshake result not yet reported to the event sink.
    report: Option<Result<Established, TlsFailure>>,
}

impl TlsSide {
    fn new(layer: TlsLayer) -> TlsSide {
        TlsSide {
            layer,
            plaintext: tls::record_buffer(),
            peer_closed: false,
            close_sent: false,
            report: None,
        }
    }
}

impl Half {
    fn new(stream: TcpStream) -> Half {
        Half {
            stream,
            read_buf: None,
            read_size: ReadSize::Small,
            outgoing: VecDeque::new(),
            queued: 0,
            read_closed: false,
            write_closed: false,
            bytes_read: 0,
            tls: None,
            replay: None,
        }
    }

    /// The one place bytes enter the session: a read into the lent buffer, frozen into
    /// `Bytes` (no copy), of at most `largest`. `Ok(None)` is the peer's end of stream.
    fn poll_read(
        &mut self,
        pool: &BufPool,
        largest: ReadSize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if self.tls.as_ref().is_some_and(|tls| tls.peer_closed) {
            return Poll::Ready(Ok(None));
        }
        if let Some(replayed) = self.replay.take() {
            self.bytes_read += replayed.len() as u64;
            return Poll::Ready(Ok(Some(replayed)));
        }
        self.resize(pool, self.read_size.min(largest));
        let mut buf = self
            .read_buf
            .take()
            .unwrap_or_else(|| pool.take(self.read_size));
        refill(&mut buf, self.read_size);
        let room = buf.len();
        match Pin::new(&mut self.stream).poll_read(cx, &mut buf[..]) {
            Poll::Ready(Ok(0)) => {
                pool.give(buf, self.read_size);
                if let Some(tls) = self.tls.as_deref_mut() {
                    if let Err(failure) = tls.layer.eof() {
                        tls.report = Some(Err(failure));
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Poll::Ready(Ok(None))
            }
            Poll::Ready(Ok(n)) => {
                self.bytes_read += n as u64;
                let read = buf.split_to(n).freeze();
                self.read_buf = Some(buf);
                self.resize(pool, self.read_size.after_read(room, n).min(largest));
                match self.tls.as_mut() {
                    None => Poll::Ready(Ok(Some(read))),
                    // May be empty (handshake records only): the caller goes round the
                    // loop, which writes the handshake's answer.
                    Some(_) => Poll::Ready(self.decrypt(&read).map(Some)),
                }
            }
            Poll::Ready(Err(e)) => {
                pool.give(buf, self.read_size);
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                // Idle: the buffer goes back to the shard while we wait, and so does
                // the queue's allocation when nothing waits in it (an idle session
                // keeps neither; a busy one pays a small allocation per exchange). A
                // TLS side keeps its queue: its layer holds kilobytes anyway, and
                // every record it sends passes through the queue.
                pool.give(buf, self.read_size);
                if self.outgoing.is_empty() && self.tls.is_none() {
                    self.outgoing = VecDeque::new();
                }
                Poll::Pending
            }
        }
    }

    /// Ciphertext read on a TLS side: the plaintext it carried.
    fn decrypt(&mut self, ciphertext: &[u8]) -> io::Result<Bytes> {
        let tls = self.tls.as_deref_mut().expect("a TLS side");
        match tls.layer.receive(ciphertext, &mut tls.plaintext) {
            Ok(received) => {
                tls.peer_closed |= received.closed;
                if received.acknowledge_now {
                    sock::acknowledge_now(&self.stream);
                }
                if let Some(established) = tls.layer.take_established() {
                    tls.report = Some(Ok(established));
                }
                Ok(tls::cut(&mut tls.plaintext))
            }
            Err(failure) => {
                // What rustls has to say (an alert) still goes out before the close.
                if let Some(alert) = tls.layer.take_ciphertext() {
                    self.queued += alert.len();
                    self.outgoing.push_back(alert);
                }
                let error = io::Error::new(io::ErrorKind::InvalidData, failure.to_string());
                tls.report = Some(Err(failure));
                Err(error)
            }
        }
    }

    /// Starts TLS on this side: what is queued goes out in the clear first.
    fn start_tls(&mut self, layer: TlsLayer) {
        self.tls = Some(Box::new(TlsSide::new(layer)));
    }

    /// Nothing waits to be written to this side (counting plaintext a TLS handshake
    /// still holds back).
    fn nothing_to_write(&self) -> bool {
        self.outgoing.is_empty()
            && !self
                .tls
                .as_ref()
                .is_some_and(|tls| tls.layer.is_handshaking())
    }

    /// The one place bytes leave the session: writes what is queued until done or the
    /// socket would block. Several chunks (the inspector's slices and rewritten lines)
    /// go out in one gathered `sendmsg`, so a masked reply costs one syscall. On a TLS
    /// side, what the layer sealed since the last call joins the queue first.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(sealed) = self
            .tls
            .as_deref_mut()
            .and_then(|tls| tls.layer.take_ciphertext())
        {
            self.queued += sealed.len();
            self.outgoing.push_back(sealed);
        }
        while !self.outgoing.is_empty() {
            let written = if self.outgoing.len() == 1 {
                match Pin::new(&mut self.stream).poll_write(cx, &self.outgoing[0]) {
                    Poll::Ready(result) => result?,
                    Poll::Pending => break,
                }
            } else {
                match sock::send_gathered(&self.stream, &self.outgoing) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Register for writability through glommio (it retries the send).
                        match Pin::new(&mut self.stream).poll_write(cx, &self.outgoing[0]) {
                            Poll::Ready(result) => result?,
                            Poll::Pending => break,
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            consume(&mut self.outgoing, written);
            self.queued -= written;
        }
        Ok(())
    }

    /// Forgets what is queued for this side (it failed, or the session is evicted).
    fn discard_outgoing(&mut self) {
        self.outgoing.clear();
        self.queued = 0;
    }

    fn queue(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        match self.tls.as_mut() {
            // Sealed into records when the side is next flushed.
            Some(tls) => tls.layer.send(&bytes),
            None => {
                self.queued += bytes.len();
                self.outgoing.push_back(bytes);
            }
        }
    }

    fn release(&mut self, pool: &BufPool) {
        if let Some(buf) = self.read_buf.take() {
            pool.give(buf, self.read_size);
        }
    }

    /// The next read uses a buffer of `size` (what is left of the current one goes
    /// back to its pool when the size changes).
    fn resize(&mut self, pool: &BufPool, size: ReadSize) {
        if size != self.read_size {
            self.release(pool);
            self.read_size = size;
        }
    }
}

enum Step {
    Read(Side, io::Result<Option<Bytes>>),
    WriteFailed(Side, io::Error),
    Expired,
    /// The shard began to drain.
    Nudged,
    /// The buffer budget evicted this session.
    Evicted,
    Drained,
    Finished,
}

/// What ends the session once the queues are written (set when closing starts).
enum Closing {
    Open,
    /// A drop with replies still owed for what was already forwarded (above all the
    /// reply to an end of data): only the upstream is read, within [`CLOSE_GRACE`],
    /// until the inspector has passed them on; then this reply, and `Flushing`.
    Owed(&'static [u8]),
    /// Write what is queued (within [`CLOSE_GRACE`]), then end with this.
    Flushing(End),
}

struct Pump<'p> {
    halves: [Half; 2],
    pool: &'p BufPool,
    deadline: Rc<Deadline>,
    closing: Closing,
    /// Alternates which side is read first, so a busy side cannot starve the other.
    upstream_first: bool,
    /// [`MAX_OWED_REPLIES`] commands await replies: the client is not read.
    replies_owed: bool,
    /// Bytes the inspector keeps between reads (as of its last call).
    inspector_held: usize,
    /// The largest read buffer either side may use now (see [`largest_read`]).
    largest_read: ReadSize,
    budget: &'p Budget,
    sessions: &'p Deadlines,
}

impl Pump<'_> {
    fn half(&mut self, side: Side) -> &mut Half {
        &mut self.halves[side as usize]
    }

    fn queues_empty(&self) -> bool {
        self.halves.iter().all(Half::nothing_to_write)
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if self.deadline.take_nudge() {
            return Poll::Ready(Step::Nudged);
        }
        if self.deadline.expired() {
            return Poll::Ready(Step::Expired);
        }
        if self.deadline.take_eviction() {
            return Poll::Ready(Step::Evicted);
        }
        for side in [Side::Upstream, Side::Client] {
            if let Err(e) = self.half(side).poll_flush(cx) {
                return Poll::Ready(Step::WriteFailed(side, e));
            }
        }
        // Pass a peer's EOF on once everything before it has been written (on a TLS
        // side, close_notify first).
        for side in [Side::Upstream, Side::Client] {
            let other_ended = self.halves[side.other() as usize].read_closed;
            let half = self.half(side);
            if other_ended && !half.write_closed && half.nothing_to_write() {
                if let Some(tls) = half.tls.as_deref_mut().filter(|tls| !tls.close_sent) {
                    tls.layer.close();
                    tls.close_sent = true;
                    if let Err(e) = half.poll_flush(cx) {
                        return Poll::Ready(Step::WriteFailed(side, e));
                    }
                    if !half.outgoing.is_empty() {
                        continue;
                    }
                }
                half.write_closed = true;
                sock::shutdown_write(&half.stream);
            }
        }
        let queues_empty = self.queues_empty();
        match self.closing {
            Closing::Flushing(_) if queues_empty => return Poll::Ready(Step::Drained),
            Closing::Flushing(_) => {}
            Closing::Owed(_) => {
                if let Poll::Ready(read) = self.poll_read_side(Side::Upstream, cx) {
                    return Poll::Ready(Step::Read(Side::Upstream, read));
                }
            }
            Closing::Open => {
                if self.halves.iter().all(|h| h.read_closed) && queues_empty {
                    return Poll::Ready(Step::Finished);
                }
                self.upstream_first = !self.upstream_first;
                let order = if self.upstream_first {
                    [Side::Upstream, Side::Client]
                } else {
                    [Side::Client, Side::Upstream]
                };
                for side in order {
                    if let Poll::Ready(read) = self.poll_read_side(side, cx) {
                        return Poll::Ready(Step::Read(side, read));
                    }
                }
            }
        }
        self.deadline.register(cx.waker());
        // A waiting session holds no read buffer: a side that was blocked, ended or
        // not read while closing gives its buffer back to the shard too.
        self.release_buffers();
        // What was just written no longer counts against the budget.
        self.report_held();
        Poll::Pending
    }

    /// Tells the shard's budget what this session holds now.
    fn report_held(&self) {
        let held = self.halves[0].queued + self.halves[1].queued + self.inspector_held;
        self.budget.report(self.sessions, &self.deadline, held);
    }

    fn poll_read_side(
        &mut self,
        side: Side,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let blocked = !self.halves[side.other() as usize].outgoing.is_empty()
            || self.halves[side as usize].queued > MAX_QUEUED_BACK
            || (side == Side::Client && self.replies_owed);
        let (pool, largest) = (self.pool, self.largest_read);
        let half = self.half(side);
        if half.read_closed || blocked {
            // Backpressure: nothing is read here until the other side drains.
            return Poll::Pending;
        }
        half.poll_read(pool, largest, cx)
    }

    /// Starts the goodbye: nothing more is read; `reply` (if any) is queued behind what
    /// the client is already owed; the session ends with `end` once it is written.
    fn close_with(&mut self, reply: Option<&'static [u8]>, end: End, now: Instant) {
        if let Some(reply) = reply {
            self.half(Side::Client).queue(Bytes::from_static(reply));
        }
        self.closing = Closing::Flushing(end);
        self.deadline.set(after(now, CLOSE_GRACE));
    }

    fn release_buffers(&mut self) {
        let pool = self.pool;
        for half in &mut self.halves {
            half.release(pool);
        }
    }
}

/// Which deadline is armed, and what it was armed for, so it is re-armed only when
/// the session moves on (a new phase, a complete line or reply, content bytes).
struct Watch<'a> {
    timeouts: &'a Timeouts,
    embryonic_until: Instant,
    connected_at: Instant,
    expiry: Expiry,
    phase: Option<Phase>,
    progress: u64,
    content_started: Instant,
    content_bytes: u64,
    /// Verbatim sessions: the upstream has sent its first bytes (its greeting).
    upstream_spoke: bool,
}

impl Watch<'_> {
    /// Sets the deadline for what the session waits for now; `from` is the side and
    /// length of the read just handled.
    fn arm(
        &mut self,
        inspector: Option<&Inspector>,
        ticket: &Ticket,
        deadline: &Deadline,
        now: Instant,
        from: Option<(Side, usize)>,
    ) {
        if from.is_some_and(|(side, _)| side == Side::Upstream) {
            self.upstream_spoke = true;
        }
        let phase = match inspector {
            Some(i) => i.phase(),
            // Verbatim: the greeting is the first upstream byte; after it, any byte
            // restarts the idle deadline.
            None if self.upstream_spoke => Phase::Opaque,
            None => Phase::Greeting,
        };
        let progress = inspector.map_or(0, Inspector::progress);
        let entered = self.phase != Some(phase);
        let moved = progress != self.progress;
        self.phase = Some(phase);
        self.progress = progress;
        let timeouts = self.timeouts;
        let idle_or_embryonic = || {
            let idle_until = after(now, timeouts.idle);
            if ticket.is_embryonic() && self.embryonic_until < idle_until {
                (Expiry::Embryonic, self.embryonic_until)
            } else {
                (Expiry::Idle, idle_until)
            }
        };
        let armed = match phase {
            Phase::Greeting if entered => Some((
                Expiry::UpstreamGreeting,
                after(self.connected_at, timeouts.upstream_connect),
            )),
            Phase::Command if entered || moved => Some(idle_or_embryonic()),
            Phase::Opaque if entered || from.is_some() => Some(idle_or_embryonic()),
            Phase::AwaitingEndOfData if entered => Some((
                Expiry::DataTermination,
                after(now, timeouts.data_termination),
            )),
            Phase::Content => {
                if entered {
                    self.content_started = now;
                    self.content_bytes = 0;
                }
                if let Some((Side::Client, n)) = from {
                    self.content_bytes += n as u64;
                }
                let extension = match timeouts.min_data_rate {
                    0 => Duration::ZERO,
                    rate => Duration::from_secs(self.content_bytes / rate),
                };
                Some((
                    Expiry::Data,
                    after(after(self.content_started, timeouts.data), extension),
                ))
            }
            _ => None,
        };
        if let Some((expiry, at)) = armed {
            self.expiry = expiry;
            deadline.set(at);
        }
    }
}

/// Drops `n` written bytes from the front of the queue.
fn consume(queue: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let front = queue.front_mut().expect("wrote no more than was queued");
        if n < front.len() {
            front.advance(n);
            return;
        }
        n -= front.len();
        queue.pop_front();
    }
}

/// The reply code of the last complete line in `bytes`, if `bytes` ends one and the
/// line starts within `bytes` (or `bytes` starts at a line start).
fn last_reply_code(bytes: &[u8], starts_line: bool) -> Option<[u8; 3]> {
    let body = bytes.strip_suffix(b"\n")?;
    let start = match memchr_last_newline(body) {
        Some(i) => i + 1,
        None if starts_line => 0,
        None => return None,
    };
    let line = &body[start..];
    (line.len() >= 3).then(|| [line[0], line[1], line[2]])
}

fn memchr_last_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().rposition(|&b| b == b'\n')
}

impl<'a, S: EventSink + 'a> Relay<'a, S> {
    /// Relays until the session ends; hands back the sink with the outcome.
    ///
    /// Not an `async fn`: such a function keeps its arguments in its future beside
    /// the copies its body works on, and an idle session's memory is mostly this
    /// future. The state is built here and the future holds it once.
    pub fn run(self) -> impl Future<Output = (Outcome, S)> + 'a {
        let (mut relaying, mut sink) = Relaying::new(self);
        async move {
            let end = relaying.relay(&mut sink).await;
            (relaying.finish(end), sink)
        }
    }
}

/// A running relay: everything a session keeps between reads.
struct Relaying<'a> {
    pump: Pump<'a>,
    inspector: Option<Box<Inspector>>,
    /// The envelope of an inspector the relay let go (it went verbatim, or the
    /// session is closing), kept for the session's summary.
    envelope: Option<Box<Envelope>>,
    ticket: Ticket,
    tls: SessionTls,
    scratch: &'a RefCell<Output>,
    watch: Watch<'a>,
    _holding: Holding<'a>,
    /// The inspector's 220 to the client's STARTTLS, held while TLS to the upstream
    /// is being set up.
    ready_after_upstream_tls: Option<Bytes>,
    /// The upstream's TLS handshake failed: the client is told 421 4.7.0.
    upstream_tls_failed: bool,
    /// The reply code of the upstream's last complete line, and whether its next
    /// byte starts a line: a close right after 221 or 421 is the upstream's own
    /// goodbye, not a lost upstream.
    last_code: Option<[u8; 3]>,
    upstream_at_line_start: bool,
    draining: bool,
    reads_since_yield: u32,
}

impl<'a> Relaying<'a> {
    fn new<S>(relay: Relay<'a, S>) -> (Relaying<'a>, S) {
        let Relay {
            client,
            server,
            inspector,
            ticket,
            deadline,
            timeouts,
            accepted_at,
            connected_at,
            pool,
            tls,
            upstream_prelude,
            scratch,
            budget,
            sessions,
            sink,
        } = relay;
        let mut pump = Pump {
            halves: [Half::new(client), Half::new(server)],
            pool,
            deadline: deadline.clone(),
            closing: Closing::Open,
            upstream_first: false,
            replies_owed: false,
            inspector_held: 0,
            largest_read: largest_read(inspector.as_deref()),
            budget,
            sessions,
        };
        if tls.implicit {
            match &tls.server {
                Some(config) => pump.half(Side::Client).start_tls(TlsLayer::server(config)),
                None => unreachable!("implicit TLS is refused without [tls] by the config"),
            }
        }
        if let Some(prelude) = upstream_prelude {
            let upstream = pump.half(Side::Upstream);
            upstream.tls = prelude.tls.map(|(layer, _)| Box::new(TlsSide::new(layer)));
            upstream.replay = Some(prelude.greeting);
        }
        let mut watch = Watch {
            timeouts,
            embryonic_until: after(accepted_at, timeouts.embryonic),
            connected_at,
            expiry: Expiry::UpstreamGreeting,
            phase: None,
            progress: 0,
            content_started: connected_at,
            content_bytes: 0,
            upstream_spoke: false,
        };
        watch.arm(inspector.as_deref(), &ticket, &deadline, connected_at, None);
        let relaying = Relaying {
            pump,
            inspector,
            envelope: None,
            ticket,
            tls,
            scratch,
            watch,
            _holding: Holding {
                budget,
                sessions,
                session: deadline,
            },
            ready_after_upstream_tls: None,
            upstream_tls_failed: false,
            last_code: None,
            upstream_at_line_start: true,
            draining: false,
            reads_since_yield: 0,
        };
        (relaying, sink)
    }

    async fn relay(&mut self, sink: &mut dyn EventSink) -> End {
        loop {
            self.pump.largest_read = largest_read(self.inspector.as_deref());
            let step = poll_fn(|cx| self.pump.poll_step(cx)).await;
            let now = Instant::now();
            for side in [Side::Client, Side::Upstream] {
                let tls = self.pump.half(side).tls.as_deref_mut();
                match tls.and_then(|tls| tls.report.take()) {
                    Some(Ok(established)) => {
                        sink.tls_established(side, &established);
                        if let Some(ready) = self.ready_after_upstream_tls.take() {
                            self.pump.half(Side::Client).queue(ready);
                            if let Err(reply) = start_client_tls(&mut self.pump, &self.tls) {
                                self.pump.close_with(Some(reply), End::Dropped, now);
                            }
                        }
                    }
                    Some(Err(failure)) => {
                        self.upstream_tls_failed |= side == Side::Upstream && failure.in_handshake;
                        sink.tls_failed(side, &failure);
                    }
                    None => {}
                }
            }
            if let Step::Read(_, Ok(Some(input))) = &step {
                if input.is_empty() {
                    // TLS records with no plaintext (handshake, tickets): their answer
                    // is written by the next pass.
                    continue;
                }
            }
            let (side, input) = match step {
                Step::Read(side, Ok(Some(input))) => (side, input),
                Step::Read(Side::Client, Ok(None)) => {
                    self.pump.half(Side::Client).read_closed = true;
                    continue;
                }
                Step::Read(Side::Upstream, Ok(None)) => {
                    self.pump.half(Side::Upstream).read_closed = true;
                    // 221 (QUIT), 421 and 554 are the upstream's own goodbyes.
                    let goodbye = matches!(&self.last_code, Some(code) if [b"221", b"421", b"554"].contains(&code));
                    if let Closing::Owed(reply) = self.pump.closing {
                        self.pump.close_with(Some(reply), End::Dropped, now);
                    } else if self.inspector.is_some() && !goodbye {
                        upstream_lost(&mut self.pump, self.inspector.as_deref(), None, now);
                    } else if !self.pump.half(Side::Client).read_closed {
                        // The server is done; the client only gets a short while to finish.
                        self.pump
                            .deadline
                            .set(after(now, CLOSE_GRACE.min(self.watch.timeouts.idle)));
                    }
                    continue;
                }
                Step::Read(Side::Client, Err(_)) | Step::WriteFailed(Side::Client, _) => {
                    return End::ClientFailed
                }
                Step::Read(Side::Upstream, Err(e)) if self.upstream_tls_failed => {
                    self.pump.half(Side::Upstream).discard_outgoing();
                    self.pump.half(Side::Upstream).read_closed = true;
                    let end = End::UpstreamLost(Some(e));
                    self.pump
                        .close_with(Some(REPLY_UPSTREAM_TLS_FAILED), end, now);
                    continue;
                }
                Step::Read(Side::Upstream, Err(e)) | Step::WriteFailed(Side::Upstream, e) => {
                    match self.pump.closing {
                        Closing::Open => {
                            upstream_lost(&mut self.pump, self.inspector.as_deref(), Some(e), now)
                        }
                        Closing::Owed(reply) => {
                            self.pump.close_with(Some(reply), End::Dropped, now)
                        }
                        // Already saying goodbye: the upstream no longer matters.
                        Closing::Flushing(_) => self.pump.half(Side::Upstream).discard_outgoing(),
                    }
                    continue;
                }
                Step::Expired => match std::mem::replace(&mut self.pump.closing, Closing::Open) {
                    // The goodbye could not be delivered in time.
                    Closing::Flushing(end) => return end,
                    // The owed replies did not come in time: the drop reply goes now.
                    Closing::Owed(reply) => {
                        self.pump.close_with(Some(reply), End::Dropped, now);
                        continue;
                    }
                    // The server closed and its FIN was passed on; the client kept its
                    // side open past the grace period. The session is over, not timed out.
                    Closing::Open if self.pump.halves[Side::Upstream as usize].read_closed => {
                        return End::Finished
                    }
                    Closing::Open => {
                        let expiry = self.watch.expiry;
                        self.pump
                            .close_with(expiry.reply(), End::TimedOut(expiry), now);
                        continue;
                    }
                },
                Step::Nudged => {
                    self.draining = true;
                    if idle_between_transactions(&self.pump, self.inspector.as_deref()) {
                        self.pump
                            .close_with(Some(REPLY_SHUTTING_DOWN), End::ShutDown, now);
                    }
                    continue;
                }
                Step::Evicted => {
                    if !matches!(self.pump.closing, Closing::Flushing(_)) {
                        // What it queued is what the budget wants back; the client is
                        // told why after at most the chunk being written to it (all
                        // of it on a TLS side: records cannot be cut).
                        self.pump.half(Side::Upstream).discard_outgoing();
                        let client = self.pump.half(Side::Client);
                        if client.tls.is_none() {
                            client.outgoing.truncate(1);
                            client.queued = client.outgoing.front().map_or(0, Bytes::len);
                        }
                        stop_inspecting(&mut self.inspector, &mut self.envelope);
                        self.pump.inspector_held = 0;
                        self.pump
                            .close_with(Some(REPLY_OVER_BUDGET), End::OverBudget, now);
                    }
                    continue;
                }
                Step::Drained => match std::mem::replace(&mut self.pump.closing, Closing::Open) {
                    Closing::Flushing(end) => return end,
                    Closing::Open | Closing::Owed(_) => unreachable!("drained only while closing"),
                },
                Step::Finished => return End::Finished,
            };
            if side == Side::Upstream {
                if let Some(code) = last_reply_code(&input, self.upstream_at_line_start) {
                    self.last_code = Some(code);
                }
                self.upstream_at_line_start = input.ends_with(b"\n");
            }
            let n = input.len();
            sink.bytes(side, n);

            let mut verdict = Verdict::Continue;
            match self.inspector.as_deref_mut() {
                Some(inspector) => {
                    // The shard's one Output, borrowed for this call only (no await while
                    // held): its vectors' capacity is not kept per session.
                    let mut out = self.scratch.borrow_mut();
                    out.clear();
                    // A bug in the inspector must cost one session, not the shard and
                    // every session on it: the panic is caught, nothing the broken call
                    // produced is forwarded, and the client is told to retry elsewhere.
                    let fed = panics::caught(|| match side {
                        Side::Client => inspector.on_client_bytes(input, now, &mut out),
                        Side::Upstream => inspector.on_server_bytes(input, now, &mut out),
                    });
                    if fed.is_err() {
                        crate::log::diag("inspector failed; session closed with 421 4.3.0");
                        out.clear();
                        stop_inspecting(&mut self.inspector, &mut self.envelope);
                        self.pump
                            .close_with(Some(REPLY_INTERNAL_ERROR), End::Dropped, now);
                        continue;
                    }
                    for bytes in out.to_server.drain(..) {
                        self.pump.half(Side::Upstream).queue(bytes);
                    }
                    let start = out.start_tls.take();
                    if start.is_some_and(|s| s.sides == TlsSides::ClientAndUpstream) {
                        // The client's 220 (the last bytes for it) waits until TLS to
                        // the upstream is up: if that fails, it gets 421 4.7.0 instead.
                        self.ready_after_upstream_tls = out.to_client.pop();
                    }
                    for bytes in out.to_client.drain(..) {
                        self.pump.half(Side::Client).queue(bytes);
                    }
                    sink.inspected(inspector, now);
                    for event in &out.events {
                        sink.event(event, inspector.envelope());
                    }
                    verdict = out.verdict;
                    if let Some(start) = start {
                        if let Err(reply) = start_tls(&mut self.pump, &self.tls, start, sink) {
                            self.pump.close_with(Some(reply), End::Dropped, now);
                            continue;
                        }
                    }
                    if self.ticket.is_embryonic() && !inspector.is_embryonic() {
                        self.ticket.establish();
                    }
                }
                None => {
                    self.pump.half(side.other()).queue(input);
                    if side == Side::Client {
                        // Exempt: the client spoke after the greeting; see crate::limits.
                        self.ticket.establish();
                    }
                }
            }

            let inspector = self.inspector.as_deref();
            self.pump.replies_owed =
                inspector.is_some_and(|i| i.owed_replies() >= MAX_OWED_REPLIES);
            self.pump.inspector_held = inspector.map_or(0, Inspector::buffered_bytes);
            self.pump.report_held();

            match verdict {
                Verdict::Continue => {}
                Verdict::Drop { reply } => {
                    if self.inspector.as_deref().map_or(0, Inspector::owed_replies) > 0 {
                        self.pump.closing = Closing::Owed(reply);
                        self.pump.deadline.set(after(now, CLOSE_GRACE));
                    } else {
                        self.pump.close_with(Some(reply), End::Dropped, now);
                    }
                    continue;
                }
                Verdict::Reset => return End::Reset,
            }
            if let Closing::Owed(reply) = self.pump.closing {
                if self.inspector.as_deref().map_or(0, Inspector::owed_replies) == 0 {
                    self.pump.close_with(Some(reply), End::Dropped, now);
                }
                continue;
            }
            if self.inspector.as_deref().is_some_and(Inspector::is_opaque) {
                // STARTTLS accepted: nothing left to inspect, relay verbatim.
                stop_inspecting(&mut self.inspector, &mut self.envelope);
            }
            if self.draining && idle_between_transactions(&self.pump, self.inspector.as_deref()) {
                self.pump
                    .close_with(Some(REPLY_SHUTTING_DOWN), End::ShutDown, now);
                continue;
            }
            if !self.pump.halves[Side::Upstream as usize].read_closed {
                self.watch.arm(
                    self.inspector.as_deref(),
                    &self.ticket,
                    &self.pump.deadline,
                    now,
                    Some((side, n)),
                );
            }
            self.reads_since_yield += 1;
            if self.reads_since_yield >= READS_BEFORE_YIELD {
                self.reads_since_yield = 0;
                // Read buffers are the shard's while other sessions run.
                self.pump.release_buffers();
                glommio::yield_if_needed().await;
            }
        }
    }

    fn finish(self, end: End) -> Outcome {
        let mut pump = self.pump;
        pump.release_buffers();
        let traffic = Traffic {
            from_client: pump.halves[Side::Client as usize].bytes_read,
            from_server: pump.halves[Side::Upstream as usize].bytes_read,
        };
        let [client, server] = pump.halves;
        let envelope = match (self.inspector, self.envelope) {
            (Some(inspector), _) => Some(*inspector.envelope()),
            (None, kept) => kept.map(|envelope| *envelope),
        };
        Outcome {
            end,
            traffic,
            envelope,
            client: client.stream,
            server: server.stream,
        }
    }
}

/// The inspector answered STARTTLS (its 220 is queued in the clear): the sides it
/// names switch to TLS from the next byte.
fn start_tls(
    pump: &mut Pump<'_>,
    tls: &SessionTls,
    start: StartTls,
    sink: &mut dyn EventSink,
) -> Result<(), &'static [u8]> {
    if start.discarded > 0 {
        sink.tls_discarded(start.discarded);
    }
    match start.sides {
        TlsSides::Client => start_client_tls(pump, tls),
        TlsSides::ClientAndUpstream => {
            // The client side follows once this handshake completes.
            let (config, address) = tls.upstream.as_ref().ok_or(REPLY_INTERNAL_ERROR)?;
            pump.half(Side::Upstream)
                .start_tls(TlsLayer::client(config, *address));
            Ok(())
        }
    }
}

fn start_client_tls(pump: &mut Pump<'_>, tls: &SessionTls) -> Result<(), &'static [u8]> {
    let server = tls.server.as_ref().ok_or(REPLY_INTERNAL_ERROR)?;
    pump.half(Side::Client).start_tls(TlsLayer::server(server));
    Ok(())
}

/// The largest read buffer the session may use now. Large reads are for bulk
/// (message content, verbatim bytes); commands and replies are read small, since a
/// read of pipelined commands is what the inspector may have to hold.
fn largest_read(inspector: Option<&Inspector>) -> ReadSize {
    match inspector.map(Inspector::phase) {
        None | Some(Phase::Content | Phase::Opaque) => ReadSize::Large,
        Some(_) => ReadSize::Small,
    }
}

/// Ends inspection: the relay goes verbatim, or the session is closing. The
/// envelope the inspector gathered is kept for the session's summary.
fn stop_inspecting(inspector: &mut Option<Box<Inspector>>, kept: &mut Option<Box<Envelope>>) {
    if let Some(inspector) = inspector.take() {
        *kept = Some(Box::new(*inspector.envelope()));
    }
}

/// The upstream closed or failed: the client gets what it is owed, then `421 4.4.2`,
/// unless the reply to an end of data is owed (then no reply at all). Verbatim
/// sessions get no reply either: their bytes are the peers' own.
fn upstream_lost(
    pump: &mut Pump<'_>,
    inspector: Option<&Inspector>,
    error: Option<io::Error>,
    now: Instant,
) {
    pump.half(Side::Upstream).discard_outgoing();
    pump.half(Side::Upstream).read_closed = true;
    let reply = inspector
        .is_some_and(|i| i.phase() != Phase::AwaitingEndOfData)
        .then_some(REPLY_UPSTREAM_LOST);
    pump.close_with(reply, End::UpstreamLost(error), now);
}

/// Between transactions with nothing on its way to the upstream: a shutting-down
/// shard may close it (its goodbye goes behind replies still queued to the client).
fn idle_between_transactions(pump: &Pump<'_>, inspector: Option<&Inspector>) -> bool {
    matches!(pump.closing, Closing::Open)
        && inspector.is_some_and(|i| i.phase() == Phase::Command && !i.in_transaction())
        && pump.halves[Side::Upstream as usize].outgoing.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_advances_across_chunks() {
        let mut q: VecDeque<Bytes> = ["abc", "de", "fgh"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        consume(&mut q, 4);
        assert_eq!(q, [Bytes::from_static(b"e"), Bytes::from_static(b"fgh")]);
        consume(&mut q, 4);
        assert!(q.is_empty());
    }

    #[test]
    fn the_last_reply_code_is_read_only_from_a_whole_line() {
        assert_eq!(last_reply_code(b"221 2.0.0 Bye\r\n", true), Some(*b"221"));
        assert_eq!(
            last_reply_code(b"250 ok\r\n421 4.4.2 bye\r\n", false),
            Some(*b"421")
        );
        assert_eq!(last_reply_code(b"tail of a line\r\n", false), None);
        assert_eq!(last_reply_code(b"250 partial", true), None);
    }
}
