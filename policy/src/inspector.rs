//! The per-session SMTP inspector: a state machine fed bytes from either direction.
//!
//! CONTRACT with the dataplane (the API below is fixed; the body is being built):
//! - `Inspector::new(policy)` per session; `policy` is shared (`Arc<Policy>`).
//! - The driver reads into a buffer, freezes it into `Bytes` and calls
//!   `on_client_bytes` / `on_server_bytes` with `now` (no clock reads in here).
//! - The inspector appends to `out`: bytes to write to the server and to the client
//!   (slices of the input where unchanged, rewritten bytes where masked), events, and at
//!   most one verdict. The driver writes `to_server` then `to_client` in order, handles
//!   events, then acts on the verdict. `Output::clear` keeps capacity between calls.
//! - Bytes the inspector cannot yet judge (a partial command line or reply) it keeps,
//!   bounded; the driver must not resend them.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::event::Event;
use crate::policy::Policy;

/// What the session must do next, beyond forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Keep relaying.
    #[default]
    Continue,
    /// drop-connection: send `reply` (a `421 4.7.0 ...\r\n` line) to the client, close
    /// both sides; the upstream never sees the end of a partial message.
    Drop { reply: &'static [u8] },
    /// reset: abort both sides (RST) at once.
    Reset,
}

/// The result of feeding bytes, reused between calls.
#[derive(Debug, Default)]
pub struct Output {
    pub to_server: Vec<Bytes>,
    pub to_client: Vec<Bytes>,
    pub events: Vec<Event>,
    pub verdict: Verdict,
}

impl Output {
    pub fn clear(&mut self) {
        self.to_server.clear();
        self.to_client.clear();
        self.events.clear();
        self.verdict = Verdict::Continue;
    }
}

/// One SMTP session's inspection state.
pub struct Inspector {
    policy: Arc<Policy>,
}

impl Inspector {
    pub fn new(policy: Arc<Policy>) -> Inspector {
        Inspector { policy }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Bytes read from the client.
    pub fn on_client_bytes(&mut self, input: Bytes, _now: Instant, out: &mut Output) {
        out.to_server.push(input);
    }

    /// Bytes read from the server.
    pub fn on_server_bytes(&mut self, input: Bytes, _now: Instant, out: &mut Output) {
        out.to_client.push(input);
    }

    /// True until a HELO/EHLO has been answered 2xx (SPEC: embryonic session).
    pub fn is_embryonic(&self) -> bool {
        true
    }

    /// True once STARTTLS was accepted: from here both directions are opaque and the
    /// driver may relay them verbatim without calling the inspector.
    pub fn is_opaque(&self) -> bool {
        false
    }
}
