//! `--watch-config`: polls the config file and reloads when its content changes, for
//! deployments that replace the file without sending SIGHUP (a Kubernetes ConfigMap
//! volume swaps a symlink). The reload is the SIGHUP path itself: this thread signals
//! the process, so a watched change and `systemctl reload` behave the same.

use std::path::PathBuf;
use std::time::Duration;

/// Starts the watcher; it lives as long as the process.
pub fn start(path: PathBuf, every: Duration) {
    let _ = std::thread::Builder::new()
        .name("smtpgate-watch".into())
        .spawn(move || {
            let mut seen = std::fs::read(&path).ok();
            loop {
                std::thread::sleep(every);
                let now = std::fs::read(&path).ok();
                // A file caught mid-replacement (missing) is not a change yet.
                if now.is_some() && now != seen {
                    seen = now;
                    crate::log::diag(&format!("{} changed: reloading", path.display()));
                    // SAFETY: signalling our own process; SIGHUP is handled (reload).
                    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
                }
            }
        });
}
