//! What runs on each core: one accept loop per listener (all shards bind the same
//! addresses with SO_REUSEPORT, so the kernel spreads clients across cores) and one
//! housekeeping tick that sweeps session deadlines and notices shutdown. A reloaded
//! config is picked up on the next accept. Shard state is `Rc`/`Cell`: nothing here is
//! shared across cores except through [`Shared`].

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::timer::sleep;
use glommio::{spawn_local, Task};

use smtpgate_policy::inspector::Output;

use crate::budget::Budget;
use crate::bufpool::BufPool;
use crate::clock::{Deadlines, Tick};
use crate::log;
use crate::session::{self, ListenerContext};
use crate::shared::{Generation, Shared};

pub struct Shard {
    pub shared: &'static Shared,
    pub deadlines: Deadlines,
    pub pool: BufPool,
    /// This shard's share of `buffer_budget` and what its sessions hold.
    pub budget: Budget,
    /// How many shards share the budget.
    shards: usize,
    /// Where the inspector writes its output for the one session being fed.
    pub scratch: RefCell<Output>,
    generation: RefCell<Arc<Generation>>,
    live_sessions: Cell<usize>,
}

impl Shard {
    /// The config generation new sessions start with: the latest installed one (one
    /// atomic load per accept; the shared lock is taken only after a reload).
    pub fn generation(&self) -> Arc<Generation> {
        if self.generation.borrow().number != self.shared.generation_number() {
            let current = self.shared.current();
            self.budget
                .set_limit(current.config.limits.buffer_budget, self.shards);
            *self.generation.borrow_mut() = current;
        }
        self.generation.borrow().clone()
    }

    /// Counts a live session on this shard for as long as the guard lives (drain waits on it).
    pub fn session_guard(self: &Rc<Self>) -> LiveSession {
        self.live_sessions.set(self.live_sessions.get() + 1);
        LiveSession(self.clone())
    }
}

pub struct LiveSession(Rc<Shard>);

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.0.live_sessions.set(self.0.live_sessions.get() - 1);
    }
}

/// A shard could not bind one of the listen addresses.
pub struct BindFailed {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// The shard's main future: bind, report readiness, serve until shutdown, drain.
pub async fn run(
    shared: &'static Shared,
    ready: Sender<Result<(), BindFailed>>,
    addresses: Vec<SocketAddr>,
    shards: usize,
    mut tick: Tick,
) {
    static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    crate::stats::set_shard_index(NEXT_SHARD.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let backlog = shared.current().config.limits.listen_backlog;
    let mut listeners = Vec::with_capacity(addresses.len());
    for address in &addresses {
        match TcpListener::bind_with_backlog(address, backlog) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                let _ = ready.send(Err(BindFailed {
                    address: *address,
                    source: e.into(),
                }));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));
    drop(ready);

    let shard = Rc::new(Shard {
        shared,
        deadlines: Deadlines::default(),
        pool: BufPool::default(),
        budget: Budget::new(),
        shards,
        scratch: RefCell::new(Output::default()),
        generation: RefCell::new(shared.current()),
        live_sessions: Cell::new(0),
    });
    shard
        .budget
        .set_limit(shard.generation().config.limits.buffer_budget, shards);
    let faults = Faults::from_env();
    let accepting: Vec<Task<()>> = listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| spawn_local(accept_loop(shard.clone(), index, listener, faults)))
        .collect();

    let heartbeat = shared.health.heartbeat();
    while !shared.is_shutting_down() {
        tick.next().await;
        heartbeat.beat();
        shard.deadlines.sweep(Instant::now());
        shared.stats.buffered.add(shard.budget.take_change());
    }

    // Stop accepting (dropping the tasks closes this shard's listening sockets), then
    // let live sessions finish, up to shutdown_drain.
    drop(accepting);
    shard.deadlines.nudge_all();
    let drain = shard.generation().config.timeouts.shutdown_drain;
    let until = crate::clock::after(Instant::now(), drain);
    while shard.live_sessions.get() > 0 && Instant::now() < until {
        tick.next().await;
        heartbeat.beat();
        shard.deadlines.sweep(Instant::now());
    }
}

/// Faults a test can inject through the environment (read once per shard), to prove
/// what the process does when a shard dies.
#[derive(Clone, Copy)]
struct Faults {
    /// `SMTPGATE_TEST_PANIC_ON_ACCEPT`: the shard panics on its first connection.
    panic_on_accept: bool,
}

impl Faults {
    fn from_env() -> Faults {
        Faults {
            panic_on_accept: std::env::var_os("SMTPGATE_TEST_PANIC_ON_ACCEPT").is_some(),
        }
    }
}

async fn accept_loop(shard: Rc<Shard>, index: usize, listener: TcpListener, faults: Faults) {
    loop {
        match listener.accept().await {
            Ok(client) => {
                assert!(
                    !faults.panic_on_accept,
                    "SMTPGATE_TEST_PANIC_ON_ACCEPT is set"
                );
                let context = ListenerContext::new(shard.generation(), index);
                spawn_local(session::serve(shard.clone(), context, client)).detach();
            }
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                log::diag(&format!("accept failed: {e}"));
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
