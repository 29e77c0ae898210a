// smtpgate patch: reactor counters.
//
// Relaxed counters of what the reactor asks of the kernel: `io_uring_enter` calls,
// parks, SQEs by opcode, CQEs and `membarrier` calls. Each thread counts into its
// own cache line (registered once, kept after the thread exits so totals never go
// back), and `reactor_counters` sums them: an increment is one uncontended add.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc, Mutex,
};

/// The SQE kinds counted apart; everything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqeKind {
    /// `IORING_OP_POLL_ADD`
    PollAdd,
    /// `IORING_OP_POLL_REMOVE`
    PollRemove,
    /// `IORING_OP_ASYNC_CANCEL`
    Cancel,
    /// `IORING_OP_TIMEOUT`
    Timeout,
    /// `IORING_OP_TIMEOUT_REMOVE`
    TimeoutRemove,
    /// `IORING_OP_LINK_TIMEOUT`
    LinkTimeout,
    /// `IORING_OP_SEND`, `IORING_OP_SENDMSG`
    Send,
    /// `IORING_OP_RECV`, `IORING_OP_RECVMSG`
    Recv,
    /// `IORING_OP_READ*` (files and the eventfd)
    Read,
    /// `IORING_OP_WRITE*` (files and the eventfd)
    Write,
    /// `IORING_OP_ACCEPT`
    Accept,
    /// `IORING_OP_CONNECT`
    Connect,
    /// `IORING_OP_CLOSE`
    Close,
    /// Any other opcode.
    Other,
}

impl SqeKind {
    /// Every kind, in the order `ReactorCounters::sqes` reports them.
    pub const ALL: [SqeKind; 14] = [
        SqeKind::PollAdd,
        SqeKind::PollRemove,
        SqeKind::Cancel,
        SqeKind::Timeout,
        SqeKind::TimeoutRemove,
        SqeKind::LinkTimeout,
        SqeKind::Send,
        SqeKind::Recv,
        SqeKind::Read,
        SqeKind::Write,
        SqeKind::Accept,
        SqeKind::Connect,
        SqeKind::Close,
        SqeKind::Other,
    ];

    /// A short lower-case name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            SqeKind::PollAdd => "poll_add",
            SqeKind::PollRemove => "poll_remove",
            SqeKind::Cancel => "cancel",
            SqeKind::Timeout => "timeout",
            SqeKind::TimeoutRemove => "timeout_remove",
            SqeKind::LinkTimeout => "link_timeout",
            SqeKind::Send => "send",
            SqeKind::Recv => "recv",
            SqeKind::Read => "read",
            SqeKind::Write => "write",
            SqeKind::Accept => "accept",
            SqeKind::Connect => "connect",
            SqeKind::Close => "close",
            SqeKind::Other => "other",
        }
    }
}

/// Totals over every executor thread of this process, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReactorCounters {
    /// `io_uring_enter` system calls (submissions and waits).
    pub io_uring_enters: u64,
    /// Times an executor went to sleep in the kernel waiting for events.
    pub parks: u64,
    /// Completions consumed.
    pub cqes: u64,
    /// `membarrier` system calls (one per park in upstream glommio).
    pub membarriers: u64,
    /// SQEs prepared, indexed like [`SqeKind::ALL`].
    pub sqes: [u64; SqeKind::ALL.len()],
}

impl ReactorCounters {
    /// SQEs of one kind.
    pub fn sqes_of(&self, kind: SqeKind) -> u64 {
        self.sqes[kind as usize]
    }
}

#[repr(align(64))]
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) io_uring_enters: AtomicU64,
    pub(crate) parks: AtomicU64,
    pub(crate) cqes: AtomicU64,
    pub(crate) membarriers: AtomicU64,
    sqes: [AtomicU64; SqeKind::ALL.len()],
}

impl Counters {
    pub(crate) fn sqe(&self, kind: SqeKind) {
        bump(&self.sqes[kind as usize]);
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    // A plain load and store: only this thread writes its counters.
    counter.store(counter.load(Relaxed) + 1, Relaxed);
}

static REGISTRY: Mutex<Vec<Arc<Counters>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Arc<Counters> = {
        let counters = Arc::new(Counters::default());
        REGISTRY.lock().unwrap().push(counters.clone());
        counters
    };
}

/// Runs `f` on this thread's counters.
pub(crate) fn count(f: impl FnOnce(&Counters)) {
    LOCAL.with(|c| f(c));
}

/// SQEs of one kind prepared by this thread's executor so far.
#[cfg(test)]
pub(crate) fn local_sqes_of(kind: SqeKind) -> u64 {
    LOCAL.with(|c| c.sqes[kind as usize].load(Relaxed))
}

/// The reactor counters of every executor of this process, summed.
pub fn reactor_counters() -> ReactorCounters {
    let mut total = ReactorCounters::default();
    for c in REGISTRY.lock().unwrap().iter() {
        total.io_uring_enters += c.io_uring_enters.load(Relaxed);
        total.parks += c.parks.load(Relaxed);
        total.cqes += c.cqes.load(Relaxed);
        total.membarriers += c.membarriers.load(Relaxed);
        for (sum, n) in total.sqes.iter_mut().zip(&c.sqes) {
            *sum += n.load(Relaxed);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_of_every_thread_add_up_and_survive_the_thread() {
        let before = reactor_counters();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(|| {
                    count(|c| {
                        bump(&c.parks);
                        c.sqe(SqeKind::PollAdd);
                    })
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let after = reactor_counters();
        assert!(after.parks >= before.parks + 2);
        assert!(after.sqes_of(SqeKind::PollAdd) >= before.sqes_of(SqeKind::PollAdd) + 2);
    }
}
