//! STARTTLS terminated by smtpgate (`starttls = "inspect"`, RFC 3207), so every rule
//! keeps applying to the decrypted dialogue.
//!
//! - The EHLO reply offers STARTTLS to the client whether or not the upstream does (a
//!   line is added when the upstream's reply lacks it); once TLS is on towards the
//!   client, the upstream's STARTTLS keyword is masked so it is not offered twice.
//! - The client's STARTTLS goes to the upstream when the upstream offered it and
//!   `upstream_tls` is not `off`. Otherwise, when no reply is owed, we answer
//!   `220 2.0.0 Ready to start TLS` at once and the upstream sees nothing (no round
//!   trip through it per session); when replies are still owed, a same-length line
//!   of `X`s goes instead, so the upstream answers it 5xx in order with them, and
//!   that reply is swallowed and becomes our 220. The driver is told, through
//!   [`Output::start_tls`], to start TLS on the client side (and on the upstream side
//!   when the upstream said 220) right after this call's bytes; what the client sent
//!   behind STARTTLS in the same read is discarded.
//! - What the client pipelined behind STARTTLS is discarded and counted (RFC 3207 §4.2:
//!   nothing sent before the handshake may be acted on), and the session restarts: no
//!   transaction, the client must send EHLO again.
//! - `upstream_tls = verify` with an upstream that does not offer STARTTLS or refuses
//!   it: `421 4.7.0` to the client and nothing more is forwarded.
//!
//! The TLS itself (handshakes, certificates) is the driver's: this crate only says when.

use bytes::Bytes;

use super::framer::LineDecision;
use super::replies::Pending;
use super::{Inspector, Output, Verdict};
use crate::config::UpstreamTls;
use crate::rules::CriterionKind;

const REPLY_READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const REPLY_UPSTREAM_TLS_REQUIRED: &[u8] =
    b"421 4.7.0 TLS to the upstream is required but not available, closing connection\r\n";

/// How a session treats STARTTLS (from the listener's `starttls`, `upstream_tls` and
/// `implicit_tls`; `strip` is a policy without `allow_tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsTermination {
    /// STARTTLS goes to the upstream; after its 220 both directions are opaque.
    Passthrough,
    /// smtpgate answers STARTTLS and terminates TLS itself; with `implicit`, TLS is on
    /// towards the client from the first byte (RFC 8314) and STARTTLS is not offered.
    Inspect {
        upstream: UpstreamTls,
        implicit: bool,
    },
}

/// Which sides switch to TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsSides {
    /// The upstream did not offer or refused STARTTLS (opportunistic), or
    /// `upstream_tls = off`: the upstream leg stays plaintext.
    Client,
    ClientAndUpstream,
}

/// Start TLS on `sides` right after writing this call's bytes to them. With
/// `ClientAndUpstream` the last bytes for the client are our 220: a driver may hold
/// them until the upstream's handshake succeeded, and send `421 4.7.0` instead when it
/// fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartTls {
    pub sides: TlsSides,
    /// Client bytes sent behind STARTTLS, discarded (for the driver's log).
    pub discarded: usize,
}

/// The session's TLS state, for `Inspect`.
pub(super) struct TlsState {
    pub(super) termination: TlsTermination,
    /// TLS is on towards the client.
    pub(super) client_on: bool,
    /// The upstream's last 2xx EHLO reply offered STARTTLS.
    upstream_offers: bool,
    /// STARTTLS was among the lines of the EHLO reply being read.
    seen_in_reply: bool,
}

impl TlsState {
    pub(super) fn new(termination: TlsTermination) -> TlsState {
        TlsState {
            termination,
            client_on: matches!(termination, TlsTermination::Inspect { implicit: true, .. }),
            upstream_offers: false,
            seen_in_reply: false,
        }
    }

    fn upstream(&self) -> Option<UpstreamTls> {
        match self.termination {
            TlsTermination::Inspect { upstream, .. } => Some(upstream),
            TlsTermination::Passthrough => None,
        }
    }
}

/// What the client's STARTTLS becomes under `Inspect`.
pub(super) enum StarttlsCommand {
    /// Forwarded (`to_upstream`) or X-ed (not), queued as `pending`.
    Queue { pending: Pending, mask: bool },
    /// Nothing goes upstream and no reply was owed: this is our 220, and TLS starts
    /// towards the client after it.
    Answer(&'static [u8]),
    /// TLS is already on: an unknown command, X-ed like any other.
    AlreadyOn,
    /// `verify` and the upstream cannot do TLS: the session was stopped.
    Stopped,
}

impl Inspector {
    /// Whether smtpgate terminates TLS in this session.
    pub(super) fn inspects_tls(&self) -> bool {
        self.tls.upstream().is_some()
    }

    /// The client's complete STARTTLS line, under `Inspect`. Holds what follows it.
    pub(super) fn starttls_command(&mut self, out: &mut Output) -> StarttlsCommand {
        let upstream = self.tls.upstream().expect("only under Inspect");
        if self.tls.client_on {
            return StarttlsCommand::AlreadyOn;
        }
        let to_upstream = self.tls.upstream_offers && upstream != UpstreamTls::Off;
        if upstream == UpstreamTls::Verify && !to_upstream {
            let reply = REPLY_UPSTREAM_TLS_REQUIRED;
            self.judge.stop(out, Verdict::Drop { reply });
            return StarttlsCommand::Stopped;
        }
        if !to_upstream && self.replies.queued() == 0 {
            return match self.switch_to_tls(false, out) {
                Some(reply) => StarttlsCommand::Answer(reply),
                None => StarttlsCommand::Stopped,
            };
        }
        self.client.hold = super::commands::Hold::UntilReply;
        StarttlsCommand::Queue {
            pending: Pending::StarttlsInspected { to_upstream },
            mask: !to_upstream,
        }
    }

    /// One line of the upstream's reply to our STARTTLS (or to the X-ed line): never
    /// forwarded; its last line becomes our 220 and the switch.
    pub(super) fn starttls_reply(
        &mut self,
        code: u16,
        last: bool,
        to_upstream: bool,
        out: &mut Output,
    ) -> LineDecision {
        if !last {
            return LineDecision::Replace(Bytes::new());
        }
        let upstream_tls = to_upstream && code == 220;
        if !upstream_tls && self.tls.upstream() == Some(UpstreamTls::Verify) {
            let reply = REPLY_UPSTREAM_TLS_REQUIRED;
            self.judge.stop(out, Verdict::Drop { reply });
            return LineDecision::Stop;
        }
        match self.switch_to_tls(upstream_tls, out) {
            Some(reply) => LineDecision::Replace(Bytes::from_static(reply)),
            None => LineDecision::Stop,
        }
    }

    /// STARTTLS is answered: the session restarts under TLS (on the upstream side too
    /// with `upstream_tls`). Our 220, or `None` when a rule stopped the session.
    fn switch_to_tls(&mut self, upstream_tls: bool, out: &mut Output) -> Option<&'static [u8]> {
        let kind = CriterionKind::TlsStarted;
        let d = crate::event::Direction::ServerToClient;
        if self.judge.check_flag(kind, d, 0, out) == super::judge::Outcome::Stop {
            return None;
        }
        // RFC 3207 §4.2: the session starts over; what the client sent ahead is void.
        let discarded = self.client.discard_held();
        self.client.reset_transaction();
        self.replies.embryonic = false;
        self.tls.client_on = true;
        self.tls.upstream_offers = false;
        out.start_tls = Some(StartTls {
            sides: if upstream_tls {
                TlsSides::ClientAndUpstream
            } else {
                TlsSides::Client
            },
            discarded,
        });
        Some(REPLY_READY)
    }

    /// A keyword line of a 2xx EHLO reply: notes STARTTLS; `true` masks it (TLS is
    /// already on towards the client).
    pub(super) fn tls_ehlo_keyword(&mut self, keyword: &[u8]) -> bool {
        if !self.inspects_tls() || !keyword.eq_ignore_ascii_case(b"STARTTLS") {
            return false;
        }
        self.tls.seen_in_reply = true;
        self.tls.upstream_offers = true;
        self.tls.client_on
    }

    /// The first line of a 2xx EHLO reply: a new reply, nothing seen yet.
    pub(super) fn tls_ehlo_start(&mut self) {
        self.tls.seen_in_reply = false;
        self.tls.upstream_offers = false;
    }

    /// The last line of a 2xx EHLO reply (`line` without its CRLF): when STARTTLS must
    /// be offered and the upstream did not, the line with a STARTTLS line added.
    pub(super) fn tls_ehlo_last(&self, line: &[u8], line_no: u32) -> Option<LineDecision> {
        if !self.inspects_tls() || self.tls.client_on || self.tls.seen_in_reply || line.len() < 3 {
            return None;
        }
        let code = &line[..3];
        let mut lines = Vec::with_capacity(line.len() + 20);
        if line_no == 0 {
            // `250 mx.example.com` → `250-mx.example.com` + `250 STARTTLS`.
            lines.extend_from_slice(code);
            lines.push(b'-');
            lines.extend_from_slice(line.get(4..).unwrap_or(b""));
            lines.extend_from_slice(b"\r\n");
            lines.extend_from_slice(code);
            lines.extend_from_slice(b" STARTTLS\r\n");
        } else {
            lines.extend_from_slice(code);
            lines.extend_from_slice(b"-STARTTLS\r\n");
            lines.extend_from_slice(line);
            lines.extend_from_slice(b"\r\n");
        }
        Some(LineDecision::Replace(Bytes::from(lines)))
    }
}
