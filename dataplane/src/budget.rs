//! `[limits] buffer_budget`: a bound on the bytes all sessions hold, past which the
//! largest holders are dropped with `421 4.3.2`.
//!
//! What a session holds is what it has queued towards either peer and not yet written,
//! plus what its inspector keeps between reads (partial lines, client bytes held behind
//! a DATA/STARTTLS/AUTH or a full reply queue). Each session is bounded on its own by
//! the relay's backpressure (see [`crate::relay`]); the budget bounds their sum, which
//! the session count alone would not.
//!
//! Each shard keeps its share (the budget divided by the shards) in plain `Cell`s: a
//! session reports its figure after each step it takes, and only a figure that changed
//! touches the shard's total. Over the share, the shard looks for the largest holders
//! (one pass over its sessions, only then), marks them evicted and wakes them; their
//! bytes leave the total at once, so one overrun evicts only as many as it takes.

use std::cell::Cell;
use std::rc::Rc;

use crate::clock::{Deadline, Deadlines};

/// One shard's share of the budget and what its sessions hold.
pub struct Budget {
    /// This shard's share in bytes; `usize::MAX` when the budget is off.
    limit: Cell<usize>,
    /// Bytes held by all sessions on this shard (the sum of their last reports).
    total: Cell<usize>,
    /// [`Budget::total`] as last published to the process-wide gauge.
    published: Cell<usize>,
}

impl Budget {
    pub fn new() -> Budget {
        Budget {
            limit: Cell::new(usize::MAX),
            total: Cell::new(0),
            published: Cell::new(0),
        }
    }

    /// Sets this shard's share of `buffer_budget` (0 = no budget).
    pub fn set_limit(&self, buffer_budget: u64, shards: usize) {
        let share = match buffer_budget {
            0 => usize::MAX,
            budget => usize::try_from(budget / shards.max(1) as u64).unwrap_or(usize::MAX),
        };
        self.limit.set(share);
    }

    /// Bytes held on this shard now.
    #[cfg(test)]
    pub fn total(&self) -> usize {
        self.total.get()
    }

    /// The change in [`Budget::total`] since the last call: what the shard adds to
    /// the process-wide gauge on its tick (one atomic add per tick, none per read).
    pub fn take_change(&self) -> i64 {
        let total = self.total.get();
        let change = total as i64 - self.published.get() as i64;
        self.published.set(total);
        change
    }

    /// `session` now holds `held` bytes. Past the shard's share, the largest holders
    /// (possibly `session` itself) are evicted until the rest fit.
    pub fn report(&self, sessions: &Deadlines, session: &Deadline, held: usize) {
        let before = session.held();
        if before == held {
            return;
        }
        session.set_held(held);
        let total = self.total.get() - before + held;
        self.total.set(total);
        if total > self.limit.get() {
            self.evict_largest(sessions);
        }
    }

    fn evict_largest(&self, sessions: &Deadlines) {
        while self.total.get() > self.limit.get() {
            let Some(largest) = sessions.largest_holder() else {
                return;
            };
            self.total.set(self.total.get() - largest.held());
            largest.set_held(0);
            largest.evict();
        }
    }
}

/// A session's place in the budget: whatever it still held leaves the total when
/// this is dropped, however the session ends.
pub struct Holding<'a> {
    pub budget: &'a Budget,
    pub sessions: &'a Deadlines,
    pub session: Rc<Deadline>,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.budget.report(self.sessions, &self.session, 0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn past_the_share_the_largest_holders_go_first_and_only_as_many_as_needed() {
        let sessions = Deadlines::default();
        let budget = Budget::new();
        budget.set_limit(1000, 2); // 500 bytes for this shard
        let now = Instant::now();
        let small = sessions.add(now);
        let large = sessions.add(now);
        let larger = sessions.add(now);
        budget.report(&sessions, &small, 100);
        budget.report(&sessions, &large, 200);
        assert_eq!(budget.total(), 300);
        budget.report(&sessions, &larger, 300);
        assert!(larger.take_eviction(), "the largest holder is evicted");
        assert!(!large.take_eviction() && !small.take_eviction());
        assert_eq!(budget.total(), 300, "its bytes left the total at once");
        // An unchanged figure costs nothing and evicts nobody.
        budget.report(&sessions, &large, 200);
        assert!(!large.take_eviction());
    }

    #[test]
    fn a_session_that_ends_leaves_the_total() {
        let sessions = Deadlines::default();
        let budget = Budget::new();
        let session = sessions.add(Instant::now());
        {
            let holding = Holding {
                budget: &budget,
                sessions: &sessions,
                session: session.clone(),
            };
            budget.report(&sessions, &holding.session, 4096);
            assert_eq!(budget.total(), 4096);
        }
        assert_eq!(budget.total(), 0);
    }

    #[test]
    fn a_budget_of_zero_is_no_budget() {
        let sessions = Deadlines::default();
        let budget = Budget::new();
        budget.set_limit(0, 2);
        let session = sessions.add(Instant::now());
        budget.report(&sessions, &session, usize::MAX / 2);
        assert!(!session.take_eviction());
    }
}
