//! Per-shard coarse deadlines for the embryonic and idle timeouts.
//!
//! A glommio `Timer` polled on every wake-up would re-insert itself in the reactor's
//! timer map each time, and a timer per read costs more than the read. Instead each
//! session owns a [`Deadline`] (a `Cell<Instant>` it moves forward on activity) and the
//! shard's housekeeping tick sweeps all of them a few times a second, waking the
//! expired ones. Timeouts are therefore precise to one tick ([`TICK`]).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

/// How often the shard sweeps deadlines (and checks for reload and shutdown).
pub const TICK: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Deadline {
    at: Cell<Instant>,
    expired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Deadline {
    /// Moves the deadline (forward on activity); an expiry not yet acted on is undone.
    pub fn set(&self, at: Instant) {
        self.at.set(at);
        self.expired.set(false);
    }

    pub fn expired(&self) -> bool {
        self.expired.get()
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
            waker: RefCell::new(None),
        });
        self.all.borrow_mut().push(Rc::downgrade(&deadline));
        deadline
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
