//! Which panics cost a session and which cost the process.
//!
//! A panic inside the inspector is caught per call ([`caught`]): that session gets a
//! 421 and the shard goes on. Any other panic on a shard thread means the shard is
//! gone (glommio unwinds its executor), and a process serving on with fewer cores and
//! every session of that core silently dropped is worse than a restart: the hook
//! installed by [`report_shard_deaths`] tells the engine, which exits non-zero so
//! systemd or Kubernetes start smtpgate again.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::Sender;
use std::sync::Mutex;

thread_local! {
    /// This thread's shard number, when it runs a shard.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    /// A panic now is caught by [`caught`] and costs one session only.
    static CAUGHT: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as running shard `id`.
pub fn on_shard(id: usize) {
    SHARD.with(|s| s.set(Some(id)));
}

/// Runs `f`, turning a panic into `Err` without reporting the shard dead.
pub fn caught<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    let before = CAUGHT.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CAUGHT.with(|c| c.set(before));
    result
}

/// Installs a panic hook that, after the usual message, sends the shard number of a
/// shard thread that panicked outside [`caught`].
pub fn report_shard_deaths(deaths: Sender<usize>) {
    let deaths = Mutex::new(deaths);
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        previous(info);
        if CAUGHT.with(Cell::get) {
            return;
        }
        if let Some(id) = SHARD.with(Cell::get) {
            let _ = deaths.lock().unwrap_or_else(|e| e.into_inner()).send(id);
        }
    }));
}
