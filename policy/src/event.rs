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
}
