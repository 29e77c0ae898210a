//! Time on a shard: the housekeeping tick and the per-session coarse deadlines it sweeps.
//! A session's [`Deadline`] is also where the shard finds it for anything else it must
//! tell it: a drain nudge, or an eviction by the buffer budget ([`crate::budget`]).
//!
//! A glommio `Timer` polled on every wake-up would re-insert itself in the reactor's
//! timer map each time, and a timer per read costs more than the read. Instead each
//! session owns a [`Deadline`] (a `Cell<Instant>` it moves on activity) and the
//! shard's housekeeping tick sweeps all of them a few times a second, waking the
//! expired ones. Timeouts are therefore precise to one tick ([`TICK`]).
//!
//! The tick itself comes from one plain thread ([`TickSource`]) as one byte per tick
//! over a socketpair per shard: any armed glommio timer makes the executor submit and
//! then cancel an io_uring timeout every time it parks, which is on every message; a
//! readable socket costs nothing until it fires.

use std::cell::{Cell, RefCell};
use std::os::unix::net::UnixStream;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use glommio::timer::sleep;

/// How often the shard sweeps deadlines (and checks for reload and shutdown).
pub const TICK: Duration = Duration::from_millis(200);

/// `at + d`, saturating: a deadline too far to represent is a week away (config
/// bounds every duration to that), never a panic.
pub fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(smtpgate_policy::config::MAX_DURATION))
        .unwrap_or(at)
}

#[derive(Debug)]
pub struct Deadline {
    at: Cell<Instant>,
    expired: Cell<bool>,
    /// The shard began draining: the session looks once whether it may close now.
    nudged: Cell<bool>,
    /// Bytes the session last reported holding (see [`crate::budget`]).
    held: Cell<usize>,
    /// The shard's buffer budget ran out and this session held the most: it is to
    /// close with `421 4.3.2`.
    evicted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Deadline {
    /// Whether the shard's drain nudged this session since it last looked.
    pub fn take_nudge(&self) -> bool {
        self.nudged.replace(false)
    }

    /// Moves the deadline (forward on activity); an expiry not yet acted on is undone.
    pub fn set(&self, at: Instant) {
        self.at.set(at);
        self.expired.set(false);
    }

    pub fn expired(&self) -> bool {
        self.expired.get()
    }

    pub fn held(&self) -> usize {
        self.held.get()
    }

    pub fn set_held(&self, bytes: usize) {
        self.held.set(bytes);
    }

    /// Marks the session evicted and wakes it.
    pub fn evict(&self) {
        self.evicted.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Whether the session was evicted since it last looked.
    pub fn take_eviction(&self) -> bool {
        self.evicted.replace(false)
    }

    /// Remembers who to wake; cheap when the same task registers again.
    pub fn register(&self, waker: &Waker) {
        let mut slot = self.waker.borrow_mut();
        match slot.as_ref() {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }
}

/// All live deadlines of one shard.
#[derive(Default)]
pub struct Deadlines {
    all: RefCell<Vec<Weak<Deadline>>>,
}

impl Deadlines {
    pub fn add(&self, at: Instant) -> Rc<Deadline> {
        let deadline = Rc::new(Deadline {
            at: Cell::new(at),
            expired: Cell::new(false),
            nudged: Cell::new(false),
            held: Cell::new(0),
            evicted: Cell::new(false),
            waker: RefCell::new(None),
        });
        self.all.borrow_mut().push(Rc::downgrade(&deadline));
        deadline
    }

    /// Nudges and wakes every session once: the shard is draining.
    pub fn nudge_all(&self) {
        let mut to_wake = Vec::new();
        for d in self.all.borrow().iter().filter_map(Weak::upgrade) {
            d.nudged.set(true);
            if let Some(w) = d.waker.borrow_mut().take() {
                to_wake.push(w);
            }
        }
        to_wake.into_iter().for_each(Waker::wake);
    }

    /// The live session holding the most bytes, if any holds some.
    pub fn largest_holder(&self) -> Option<Rc<Deadline>> {
        self.all
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|d| d.held.get() > 0)
            .max_by_key(|d| d.held.get())
    }

    /// Marks and wakes every session whose deadline passed; forgets finished ones.
    pub fn sweep(&self, now: Instant) {
        let mut to_wake = Vec::new();
        self.all.borrow_mut().retain(|weak| {
            let Some(d) = weak.upgrade() else {
                return false;
            };
            if !d.expired.get() && d.at.get() <= now {
                d.expired.set(true);
                if let Some(w) = d.waker.borrow_mut().take() {
                    to_wake.push(w);
                }
            }
            true
        });
        // Woken outside the borrow: a woken task may add a deadline.
        to_wake.into_iter().for_each(Waker::wake);
    }
}

/// The thread that ticks every shard, and the shards' ends of its sockets.
#[derive(Clone)]
pub struct TickSource {
    readers: Arc<Mutex<Vec<UnixStream>>>,
}

impl TickSource {
    /// Starts the tick thread for `shards` shards.
    pub fn start(shards: usize) -> std::io::Result<TickSource> {
        let mut writers = Vec::with_capacity(shards);
        let mut readers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (w, r) = UnixStream::pair()?;
            // A shard that stopped reading must never block the ticker.
            w.set_nonblocking(true)?;
            writers.push(w);
            readers.push(r);
        }
        std::thread::Builder::new()
            .name("smtpgate-tick".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                for mut w in &writers {
                    let _ = std::io::Write::write(&mut w, &[0]);
                }
            })?;
        Ok(TickSource {
            readers: Arc::new(Mutex::new(readers)),
        })
    }

    /// One shard's tick (each shard takes one).
    pub fn take(&self) -> Tick {
        let socket = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Tick::new(socket)
    }
}

/// A shard's end of the tick; falls back to a glommio timer if the socket is missing
/// or broken.
pub struct Tick {
    socket: Option<glommio::net::UnixStream>,
}

impl Tick {
    fn new(socket: Option<UnixStream>) -> Tick {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let socket = socket.and_then(|s| {
            s.set_nonblocking(true).ok()?;
            // SAFETY: the descriptor is owned and handed over whole to glommio.
            Some(unsafe { glommio::net::UnixStream::from_raw_fd(s.into_raw_fd()) })
        });
        Tick { socket }
    }

    /// Waits for the next tick.
    pub async fn next(&mut self) {
        use futures_lite::io::AsyncReadExt;
        if let Some(socket) = self.socket.as_mut() {
            let mut scrap = [0u8; 64];
            match socket.read(&mut scrap).await {
                Ok(n) if n > 0 => return,
                _ => self.socket = None,
            }
        }
        sleep(TICK).await;
    }
}
