//! Readiness lines: a server under test binds port 0 and prints the addresses it got;
//! tests read them here instead of picking a "free" port and racing for it.

use std::net::SocketAddr;

/// What `smtpgate run` bound, from its line
/// `smtpgate: listening on A -> U (policy P), B -> U (policy Q); admin X; 2 shards`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Each listener's bound address, in config order.
    pub listeners: Vec<SocketAddr>,
    /// The admin endpoint's bound address, `None` when it is off.
    pub admin: Option<SocketAddr>,
}

/// Parses smtpgate's readiness line out of its log (the first such complete line: a
/// line without its newline may still be being written).
pub fn smtpgate_ready(log: &str) -> Option<Ready> {
    let line = log
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .find_map(|l| l.strip_prefix("smtpgate: listening on "))?;
    let (listeners, rest) = line.split_once("; admin ")?;
    let (admin, _shards) = rest.split_once(';')?;
    // Each listener reads "ADDR -> UPSTREAM (...)": a listener's address is the last
    // word before each arrow.
    let segments: Vec<&str> = listeners.split(" -> ").collect();
    let listeners = segments[..segments.len() - 1]
        .iter()
        .map(|segment| segment.rsplit(' ').next()?.parse().ok())
        .collect::<Option<Vec<SocketAddr>>>()?;
    let admin = match admin.trim() {
        "off" => None,
        addr => Some(addr.parse().ok()?),
    };
    Some(Ready { listeners, admin })
}

/// The address in the load generator sink's line `sink: listening on ADDR`.
pub fn sink_ready(line: &str) -> Option<SocketAddr> {
    line.trim()
        .strip_prefix("sink: listening on ")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_and_admin_are_read_from_smtpgate_s_line() {
        let log = "smtpgate: listening on 127.0.0.1:40001 -> 127.0.0.1:25 (policy default), \
                   [::1]:40002 -> 127.0.0.1:25 (policy none, exemptions, PROXY v2); \
                   admin 127.0.0.1:40003; 2 shards\n";
        let ready = smtpgate_ready(log).unwrap();
        assert_eq!(
            ready.listeners,
            vec![
                "127.0.0.1:40001".parse::<SocketAddr>().unwrap(),
                "[::1]:40002".parse().unwrap()
            ]
        );
        assert_eq!(ready.admin, Some("127.0.0.1:40003".parse().unwrap()));
    }

    #[test]
    fn admin_off_and_a_missing_line_are_told_apart() {
        let line =
            "smtpgate: listening on 127.0.0.1:1 -> 127.0.0.1:2 (policy none); admin off; 1 shard";
        assert_eq!(
            smtpgate_ready(line),
            None,
            "no newline yet: still being written"
        );
        let ready = smtpgate_ready(&format!("{line}\n")).unwrap();
        assert_eq!(ready.admin, None);
        assert_eq!(ready.listeners.len(), 1);
        assert_eq!(smtpgate_ready("smtpgate: starting\n"), None);
    }

    #[test]
    fn the_sink_s_line_gives_its_address() {
        assert_eq!(
            sink_ready("sink: listening on 127.0.0.1:2526\n"),
            Some("127.0.0.1:2526".parse().unwrap())
        );
        assert_eq!(sink_ready("sink: starting"), None);
    }
}
