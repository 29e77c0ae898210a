//! Event lines on stdout (one per event, text or JSON) and diagnostics on stderr.
//!
//! Text events carry the firewall's syslog tag (`%SMTPGATE-<sev>-<id>`) so log
//! pipelines written for `%ASA-…-108004` keep matching with a one-word change.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use smtpgate_policy::event::{Direction, Event, MessageId};
use smtpgate_policy::rules::Actions;

use crate::LogFormat;

/// Everything an event line says besides the event itself.
pub struct EventContext<'a> {
    pub listener: SocketAddr,
    pub client: SocketAddr,
    pub upstream: SocketAddr,
    pub rule_text: &'a str,
}

/// Whether an event deserves a line: a `log` action, or anything that ends the session
/// or changes what it is (TLS), which an operator must be able to find afterwards.
pub fn should_log(event: &Event) -> bool {
    event.actions.log
        || event.actions.drop_connection
        || event.actions.reset
        || event.message_id == MessageId::TlsStarted
}

pub fn event(format: LogFormat, event: &Event, ctx: &EventContext<'_>) {
    let line = match format {
        LogFormat::Text => text_line(event, ctx),
        LogFormat::Json => json_line(event, ctx),
    };
    // One write per line so concurrent shards never interleave inside a line.
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

fn action_names(actions: &Actions) -> Vec<&'static str> {
    let mut names = Vec::new();
    if actions.drop_connection {
        names.push("drop-connection");
    }
    if actions.reset {
        names.push("reset");
    }
    if actions.mask {
        names.push("mask");
    }
    if actions.rate_limit > 0 {
        names.push("rate-limit");
    }
    if actions.log {
        names.push("log");
    }
    names
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::ClientToServer => "client-to-server",
        Direction::ServerToClient => "server-to-client",
    }
}

/// Syslog severity as the firewall uses it: drops and resets are errors (3),
/// TLS start informational (6), the rest warnings (4).
fn severity(event: &Event) -> u8 {
    if event.actions.drop_connection || event.actions.reset {
        3
    } else if event.message_id == MessageId::TlsStarted {
        6
    } else {
        4
    }
}

fn text_line(event: &Event, ctx: &EventContext<'_>) -> String {
    format!(
        "{} %SMTPGATE-{}-{}: rule=\"{}\" action={} client={} server={} listener={} direction={} value={}\n",
        timestamp(SystemTime::now()),
        severity(event),
        event.message_id.code(),
        ctx.rule_text.replace('"', "\\\""),
        action_names(&event.actions).join(","),
        ctx.client,
        ctx.upstream,
        ctx.listener,
        direction_name(event.direction),
        event.value,
    )
}

fn json_line(event: &Event, ctx: &EventContext<'_>) -> String {
    let mut line = serde_json::json!({
        "time": timestamp(SystemTime::now()),
        "message_id": event.message_id.code(),
        "rule": ctx.rule_text,
        "actions": action_names(&event.actions),
        "client": ctx.client.to_string(),
        "server": ctx.upstream.to_string(),
        "listener": ctx.listener.to_string(),
        "direction": direction_name(event.direction),
        "value": event.value,
    })
    .to_string();
    line.push('\n');
    line
}

/// A diagnostic (start-up, reload, errors) on stderr, always plain text.
pub fn diag(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "smtpgate: {message}");
}

/// A diagnostic that can repeat per connection (an upstream outage, a lost upstream):
/// at most one line per second per shard thread, saying how many were held back, so an
/// outage under load does not flood the log.
pub fn diag_rate_limited(message: &str) {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
        static HELD_BACK: Cell<u64> = const { Cell::new(0) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(at) if now.duration_since(at).as_secs() < 1 => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if !due {
        HELD_BACK.with(|n| n.set(n.get() + 1));
        return;
    }
    match HELD_BACK.with(|n| n.replace(0)) {
        0 => diag(message),
        n => diag(&format!(
            "{message} (and {n} more held back since the last such line)"
        )),
    }
}

/// RFC 3339 UTC with milliseconds, without a date-time crate.
pub fn timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(timestamp(at), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
