//! Events: what the inspector reports to its driver. Plain `Copy` data; the
//! dataplane formats, logs and counts them.

use crate::rules::{Actions, RuleId};

/// Which peer sent the bytes an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → server: commands and message content.
    ClientToServer,
    /// Server → client: greeting and replies.
    ServerToClient,
}

/// The firewall's syslog message IDs, so existing log pipelines keep working.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageId {
    /// 108002: a string was replaced (masked banner, EHLO keyword, command verb).
    ReplacedString = 108002,
    /// 108003: a malicious pattern (e.g. special characters in an address) ended the session.
    MaliciousPattern = 108003,
    /// 108004: a policy action (drop-connection, reset, mask) was taken.
    PolicyAction = 108004,
    /// 108005: a policy `log` action on a match, traffic goes on.
    PolicyLog = 108005,
    /// 108007: TLS started on the session; the rest is relayed opaquely.
    TlsStarted = 108007,
}

impl MessageId {
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// One rule match (or a built-in protocol event such as TLS started).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Index into `Policy::rules`; its text and counters live there.
    pub rule: RuleId,
    /// The actions the rule carries (the driver counts drop/reset/log/mask from these).
    pub actions: Actions,
    pub message_id: MessageId,
    pub direction: Direction,
    /// The measured length or count that matched (0 where not applicable).
    pub value: u64,
    /// The start of the command or reply line being judged (empty for message
    /// content), for the log line.
    pub excerpt: Excerpt,
}

/// The first [`Excerpt::CAP`] bytes of a line, copied (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Excerpt {
    bytes: [u8; Excerpt::CAP],
    len: u8,
}

impl Excerpt {
    pub const CAP: usize = 64;
    pub const EMPTY: Excerpt = Excerpt {
        bytes: [0; Excerpt::CAP],
        len: 0,
    };

    /// `line` without its line ending, cut at [`Excerpt::CAP`] bytes.
    pub fn of(line: &[u8]) -> Excerpt {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let kept = line.len().min(Excerpt::CAP);
        let mut excerpt = Excerpt::EMPTY;
        excerpt.bytes[..kept].copy_from_slice(&line[..kept]);
        excerpt.len = kept as u8;
        excerpt
    }

    /// Becomes [`Excerpt::of`]`(line)` in place: only the bytes that change are written,
    /// which on a hot path (every command and reply line) costs less than building a
    /// new excerpt and moving it. Bytes past `len` stay zero, as in `of`.
    pub fn set(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let kept = line.len().min(Excerpt::CAP);
        let old = self.len as usize;
        self.bytes[..kept].copy_from_slice(&line[..kept]);
        if kept < old {
            self.bytes[kept..old].fill(0);
        }
        self.len = kept as u8;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for Excerpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_excerpt_set_in_place_equals_a_new_one() {
        let mut excerpt = Excerpt::of(&[b'a'; 80]);
        for line in [&b"VRFY root\r\n"[..], b"", &[b'b'; 70], b"NOOP"] {
            excerpt.set(line);
            assert_eq!(excerpt, Excerpt::of(line));
        }
    }

    #[test]
    fn an_excerpt_drops_the_line_ending_and_keeps_at_most_64_bytes() {
        assert_eq!(Excerpt::of(b"VRFY root\r\n").as_bytes(), b"VRFY root");
        assert_eq!(Excerpt::of(b"bare\n").as_bytes(), b"bare");
        assert_eq!(Excerpt::of(&[b'x'; 300]).as_bytes().len(), Excerpt::CAP);
        assert!(Excerpt::EMPTY.as_bytes().is_empty());
    }
}
