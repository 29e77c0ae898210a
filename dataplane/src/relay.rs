//! The relay: one task per session drives both directions.
//!
//! Shape, chosen for few wake-ups per message (see issue 3's performance notes): a
//! single `poll_fn` polls, in one pass, the pending writes of both directions and then
//! the reads whose outgoing queue is empty. One task, one waker, no channels and no
//! per-read timers (deadlines are swept per shard, see [`crate::clock`]).
//!
//! Rules the loop keeps:
//! - Backpressure: a side is read only when everything destined for the other side
//!   has been written, so a stalled peer stops the reading of its counterpart; the only
//!   other bytes queued are the inspector's own injected replies (bounded per read).
//! - Order: bytes go out in the order the inspector produced them (`to_server`, then
//!   `to_client`), appended behind anything still queued in that direction.
//! - Half-close: a peer's EOF becomes `shutdown(SHUT_WR)` towards the other peer once
//!   its queue is written; the other direction keeps flowing until it ends too.
//! - Buffers: read buffers are borrowed from the shard's pool only while a read
//!   completes; a session waiting for input holds none.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use smtpgate_policy::config::Timeouts;
use smtpgate_policy::event::Event;
use smtpgate_policy::inspector::{Inspector, Output, Verdict};

use crate::bufpool::{refill, BufPool};
use crate::clock::Deadline;
use crate::limits::Ticket;

/// After a drop verdict or the upstream's close, how long the client gets to read
/// what is left before the session is torn down.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Reads in a row without yielding to the shard's other tasks.
const READS_BEFORE_YIELD: u32 = 32;

/// Which peer an error came from (for logs and counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed in order.
    Finished,
    /// A peer reset the connection or a write to it failed.
    Failed(Side, io::Error),
    /// drop-connection: the reply was written (or the grace ran out).
    Dropped,
    /// reset: both sides were aborted.
    Reset,
    /// The embryonic or idle deadline passed.
    TimedOut { embryonic: bool },
}

const REPLY_INTERNAL_ERROR: &[u8] = b"421 4.3.0 Internal error, closing connection\r\n";

/// Receives what the inspector reports, so the relay needs no knowledge of logs or stats.
pub trait EventSink {
    fn event(&mut self, event: &Event);
}

pub struct Relay<'a> {
    pub client: TcpStream,
    pub server: TcpStream,
    /// `None` on the exempt path: bytes go through verbatim.
    pub inspector: Option<Inspector>,
    pub ticket: &'a mut Ticket,
    pub deadline: Rc<Deadline>,
    pub timeouts: Timeouts,
    pub accepted_at: Instant,
    pub pool: &'a BufPool,
}

/// Bytes read from each side, for the counters.
#[derive(Default, Clone, Copy)]
pub struct Traffic {
    pub from_client: u64,
    pub from_server: u64,
}

enum Step {
    FromClient(io::Result<usize>),
    FromServer(io::Result<usize>),
    WriteFailed(Side, io::Error),
    Expired,
    Drained,
    Finished,
}

struct Pump<'p> {
    client: &'p mut TcpStream,
    server: &'p mut TcpStream,
    pool: &'p BufPool,
    deadline: &'p Deadline,
    to_server: VecDeque<Bytes>,
    to_client: VecDeque<Bytes>,
    client_buf: Option<BytesMut>,
    server_buf: Option<BytesMut>,
    client_eof: bool,
    server_eof: bool,
    server_write_shut: bool,
    client_write_shut: bool,
    /// A drop verdict: read nothing more, write what is queued, then end.
    closing: bool,
    /// Alternates which side is read first, so a busy side cannot starve the other.
    server_first: bool,
}

impl Pump<'_> {
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if self.deadline.expired() {
            return Poll::Ready(Step::Expired);
        }
        if let Err(e) = flush(self.server, &mut self.to_server, cx) {
            return Poll::Ready(Step::WriteFailed(Side::Upstream, e));
        }
        if let Err(e) = flush(self.client, &mut self.to_client, cx) {
            return Poll::Ready(Step::WriteFailed(Side::Client, e));
        }
        // Pass a peer's EOF on once everything before it has been written.
        if self.client_eof && !self.server_write_shut && self.to_server.is_empty() {
            self.server_write_shut = true;
            shutdown_write(self.server);
        }
        if self.server_eof && !self.client_write_shut && self.to_client.is_empty() {
            self.client_write_shut = true;
            shutdown_write(self.client);
        }
        let queues_empty = self.to_server.is_empty() && self.to_client.is_empty();
        if self.closing && queues_empty {
            return Poll::Ready(Step::Drained);
        }
        if self.client_eof && self.server_eof && queues_empty {
            return Poll::Ready(Step::Finished);
        }
        if !self.closing {
            self.server_first = !self.server_first;
            for server in [self.server_first, !self.server_first] {
                if let Poll::Ready(step) = self.poll_read_side(server, cx) {
                    return Poll::Ready(step);
                }
            }
        }
        self.deadline.register(cx.waker());
        Poll::Pending
    }

    fn poll_read_side(&mut self, server: bool, cx: &mut Context<'_>) -> Poll<Step> {
        let (stream, slot, eof, blocked) = if server {
            (
                &mut *self.server,
                &mut self.server_buf,
                self.server_eof,
                !self.to_client.is_empty(),
            )
        } else {
            (
                &mut *self.client,
                &mut self.client_buf,
                self.client_eof,
                !self.to_server.is_empty(),
            )
        };
        if eof || blocked {
            return Poll::Pending;
        }
        let mut buf = slot.take().unwrap_or_else(|| self.pool.take());
        refill(&mut buf);
        match Pin::new(stream).poll_read(cx, &mut buf[..]) {
            Poll::Ready(result) => {
                *slot = Some(buf);
                Poll::Ready(if server {
                    Step::FromServer(result)
                } else {
                    Step::FromClient(result)
                })
            }
            Poll::Pending => {
                // Idle: the buffer goes back to the shard while we wait.
                self.pool.give(buf);
                Poll::Pending
            }
        }
    }

    /// The bytes just read into `slot`'s buffer, as a `Bytes` slice (no copy).
    fn take_read(slot: &mut Option<BytesMut>, n: usize) -> Bytes {
        slot.as_mut()
            .expect("a completed read keeps its buffer")
            .split_to(n)
            .freeze()
    }

    fn release_buffers(&mut self) {
        for buf in [self.client_buf.take(), self.server_buf.take()]
            .into_iter()
            .flatten()
        {
            self.pool.give(buf);
        }
    }
}

/// At most this many queued chunks go out in one `sendmsg`.
const MAX_IOVECS: usize = 16;

/// Writes queued bytes until done or the socket would block. Several chunks (the
/// inspector's slices and rewritten lines) go out in one gathered `sendmsg`, so a
/// masked reply costs one syscall, not one per slice.
fn flush(
    stream: &mut TcpStream,
    queue: &mut VecDeque<Bytes>,
    cx: &mut Context<'_>,
) -> io::Result<()> {
    while !queue.is_empty() {
        let written = if queue.len() == 1 {
            match Pin::new(&mut *stream).poll_write(cx, &queue[0]) {
                Poll::Ready(result) => result?,
                Poll::Pending => break,
            }
        } else {
            match send_gathered(stream, queue) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Register for writability through glommio (it retries the send first).
                    match Pin::new(&mut *stream).poll_write(cx, &queue[0]) {
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
        consume(queue, written);
    }
    Ok(())
}

/// One non-blocking `sendmsg` of the first [`MAX_IOVECS`] chunks.
fn send_gathered(stream: &TcpStream, queue: &VecDeque<Bytes>) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOVECS];
    let mut count = 0;
    for (slot, chunk) in iov.iter_mut().zip(queue.iter()) {
        *slot = libc::iovec {
            iov_base: chunk.as_ptr() as *mut libc::c_void,
            iov_len: chunk.len(),
        };
        count += 1;
    }
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = count as _;
    // SAFETY: every iovec points into a live `Bytes` of `queue`, borrowed for the call.
    let n = unsafe {
        libc::sendmsg(
            stream.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
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

pub fn shutdown_write(stream: &TcpStream) {
    // SAFETY: a plain syscall on a descriptor the stream owns and keeps open.
    unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
}

/// Makes the next close send RST instead of FIN (the `reset` action).
pub fn set_abortive_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized, initialised struct on an owned descriptor.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

impl Relay<'_> {
    /// Relays until the session ends; returns how, the bytes moved, and the sockets
    /// (so the caller decides how to close them).
    pub async fn run(mut self, sink: &mut dyn EventSink) -> (End, Traffic, TcpStream, TcpStream) {
        let mut traffic = Traffic::default();
        let mut out = Output::default();
        let embryonic_until = self.accepted_at + self.timeouts.embryonic;
        let mut reads_since_yield = 0u32;
        let mut pump = Pump {
            client: &mut self.client,
            server: &mut self.server,
            pool: self.pool,
            deadline: &self.deadline,
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            client_buf: None,
            server_buf: None,
            client_eof: false,
            server_eof: false,
            server_write_shut: false,
            client_write_shut: false,
            closing: false,
            server_first: false,
        };
        let end = loop {
            let step = poll_fn(|cx| pump.poll_step(cx)).await;
            let now = Instant::now();
            let from_client = matches!(step, Step::FromClient(_));
            let input = match step {
                Step::FromClient(Ok(0)) => {
                    pump.client_eof = true;
                    continue;
                }
                Step::FromServer(Ok(0)) => {
                    pump.server_eof = true;
                    // The server is done; the client only gets a short while to finish.
                    if !pump.client_eof {
                        pump.deadline.set(now + CLOSE_GRACE.min(self.timeouts.idle));
                    }
                    continue;
                }
                Step::FromClient(Ok(n)) => {
                    traffic.from_client += n as u64;
                    Pump::take_read(&mut pump.client_buf, n)
                }
                Step::FromServer(Ok(n)) => {
                    traffic.from_server += n as u64;
                    Pump::take_read(&mut pump.server_buf, n)
                }
                Step::FromClient(Err(e)) => break End::Failed(Side::Client, e),
                Step::FromServer(Err(e)) => break End::Failed(Side::Upstream, e),
                Step::WriteFailed(side, e) => break End::Failed(side, e),
                Step::Expired if pump.closing => break End::Dropped,
                // The server closed and its FIN was passed on; the client kept its side
                // open past the grace period. The session is over, not timed out.
                Step::Expired if pump.server_eof => break End::Finished,
                Step::Expired => {
                    break End::TimedOut {
                        embryonic: self.ticket.is_embryonic(),
                    }
                }
                Step::Drained => break End::Dropped,
                Step::Finished => break End::Finished,
            };

            let mut verdict = Verdict::Continue;
            match self.inspector.as_mut() {
                Some(inspector) => {
                    out.clear();
                    // A bug in the inspector must cost one session, not the shard and
                    // every session on it: the panic is caught, nothing the broken call
                    // produced is forwarded, and the client is told to retry elsewhere.
                    let fed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        if from_client {
                            inspector.on_client_bytes(input, now, &mut out);
                        } else {
                            inspector.on_server_bytes(input, now, &mut out);
                        }
                    }));
                    if fed.is_err() {
                        crate::log::diag("inspector failed; session closed with 421 4.3.0");
                        out.clear();
                        self.inspector = None;
                        pump.to_client
                            .push_back(Bytes::from_static(REPLY_INTERNAL_ERROR));
                        pump.closing = true;
                        pump.deadline.set(now + CLOSE_GRACE);
                        continue;
                    }
                    let non_empty = |b: &Bytes| !b.is_empty();
                    pump.to_server
                        .extend(out.to_server.drain(..).filter(non_empty));
                    pump.to_client
                        .extend(out.to_client.drain(..).filter(non_empty));
                    for event in &out.events {
                        sink.event(event);
                    }
                    verdict = out.verdict;
                    if self.ticket.is_embryonic() && !inspector.is_embryonic() {
                        self.ticket.establish();
                    }
                    if inspector.is_opaque() {
                        // STARTTLS accepted: nothing left to inspect, relay verbatim.
                        self.inspector = None;
                    }
                }
                None if from_client => {
                    pump.to_server.push_back(input);
                    // Exempt: the client spoke after the greeting; see crate::limits.
                    self.ticket.establish();
                }
                None => pump.to_client.push_back(input),
            }

            match verdict {
                Verdict::Continue => {}
                Verdict::Drop { reply } => {
                    pump.to_client.push_back(Bytes::from_static(reply));
                    pump.closing = true;
                    pump.deadline.set(now + CLOSE_GRACE);
                    continue;
                }
                Verdict::Reset => break End::Reset,
            }

            if !pump.server_eof {
                let idle_until = now + self.timeouts.idle;
                pump.deadline.set(if self.ticket.is_embryonic() {
                    idle_until.min(embryonic_until)
                } else {
                    idle_until
                });
            }
            reads_since_yield += 1;
            if reads_since_yield >= READS_BEFORE_YIELD {
                reads_since_yield = 0;
                glommio::yield_if_needed().await;
            }
        };
        pump.release_buffers();
        drop(pump);
        (end, traffic, self.client, self.server)
    }
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
}
