//! systemd's readiness protocol (sd_notify(3)), spoken directly: one datagram per
//! state change to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//! Without that variable (not under `Type=notify`) every call does nothing.
//!
//! - `READY=1` once every shard listens, and again after a reload;
//! - `RELOADING=1` while a SIGHUP is handled, `STOPPING=1` when draining starts;
//! - `STATUS=...` a one-line summary `systemctl status` shows;
//! - `WATCHDOG=1` every half `WatchdogSec=`, only while every shard's tick is fresh, so
//!   systemd restarts a process whose shards stalled.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::shared::Shared;

fn send(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let _ = match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|address| socket.send_to_addr(state.as_bytes(), &address))
        }
        None => socket.send_to(state.as_bytes(), &target),
    };
}

pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

pub fn reloading() {
    // MONOTONIC_USEC lets systemd (253+, Type=notify-reload) match this to its SIGHUP.
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading"
    ));
}

pub fn stopping(status: &str) {
    send(&format!("STOPPING=1\nSTATUS={status}"));
}

/// Starts the watchdog pinger when systemd asked for one (`WATCHDOG_USEC`).
pub fn start_watchdog(shared: &'static Shared) {
    let Some(interval) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|usec| usec.parse::<u64>().ok())
        .filter(|&usec| usec > 0)
        .map(|usec| Duration::from_micros(usec / 2))
    else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("smtpgate-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            if shared.health.stalled_shards().is_empty() {
                send("WATCHDOG=1");
            }
        });
}
