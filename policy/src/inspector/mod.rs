//! The per-session SMTP inspector: a state machine fed bytes from either direction.
//!
//! # Driving it
//! - `Inspector::new(policy)` per session; `policy` is shared (`Arc<Policy>`) and holds
//!   everything precompiled (rules, their index), so a session starts with no work.
//! - The driver reads into a buffer, freezes it into `Bytes` and calls
//!   `on_client_bytes` / `on_server_bytes` with `now` (no clock reads in here).
//! - The inspector appends to `out`: bytes to write to the server and to the client
//!   (slices of the input where unchanged, rewritten bytes where masked), events, and at
//!   most one verdict. The driver writes `to_server` then `to_client` in order, handles
//!   events, then acts on the verdict. `Output::clear` keeps capacity between calls.
//! - Bytes the inspector cannot yet judge (a partial command line or reply) it keeps,
//!   bounded; the driver must not resend them.
//! - [`Inspector::phase`] says which deadline applies (greeting, command, content, the
//!   reply owed to an end of message, opaque); [`Inspector::progress`] changes with each
//!   complete command line or reply, so an idle deadline restarts per line, not per byte.
//!
//! # Layout
//! - this file: the public API and the two entry points, where each read is dispatched
//!   and where the effects of a server reply on the client side are applied.
//! - `commands`: the client side (RFC 5321 §4.1, RFC 2920): command lines, the hold of
//!   bytes sent ahead of a reply, MAIL/RCPT arguments, transactions.
//! - `replies`: the server side: reply framing and pairing with the commands they
//!   answer, the greeting, EHLO keyword masking.
//! - `content`: one message-content pipeline for DATA (dot framing, smuggling defence)
//!   and BDAT (counted chunks), feeding [`crate::mime::MessageScanner`].
//! - `framer`: command and reply line framing across reads, overlong lines.
//! - `forward`: coalescing unchanged input into slices, mask fills.
//! - `judge`: rule firing: events, verdicts, rate windows, behind one context.
//!
//! # How a session is followed
//! - Client side, command mode: lines framed at LF; a line split across reads is copied
//!   into a buffer of at most [`CMD_LINE_CAP`]` + 1` bytes; a longer line is judged on
//!   its first [`CMD_LINE_CAP`] bytes (`gt` length rules fire then) and the rest of it
//!   streams through. Verbs outside `allowed_commands` (and `cmd verb` rules with
//!   `mask`) are forwarded as a same-length line of `X`s, CRLF kept, so the server
//!   answers each with its own 5xx, in order.
//! - Every forwarded command is queued (`Pending`) so each server reply pairs with
//!   its command under PIPELINING (RFC 2920 §3). Transactions (RCPT counts) end at
//!   RSET, HELO/EHLO and the end of a message (RFC 5321 §4.1.4).
//! - DATA, STARTTLS and AUTH end a pipelined group (RFC 2920 §3.1, RFC 3207 §4,
//!   RFC 4954 §4): the client must wait for the reply. Bytes it sends before the reply
//!   are held (at most [`HOLD_CAP`]) and judged once the reply says what they are:
//!   message content after `354`, TLS after `220`, an AUTH line after `334`, commands
//!   otherwise — so content pipelined ahead of a refused DATA is judged as the
//!   commands the server will take it for. Past the cap the session is dropped
//!   (`421 4.7.0 Improper command pipelining`). The reply that releases them is
//!   forwarded first; the held bytes are then judged as if they had just been read.
//! - Exchange's XEXCH50, when `allow_verbs` passes it, waits for its `354` the same
//!   way; its blob of the announced size is then relayed untouched.
//! - DATA content (RFC 5321 §4.1.1.4): strict CRLF framing ([`crate::scanner::ContentScanner`]),
//!   dot-stuffing undone for the checks, end of data only at CRLF.CRLF; a bare CR or
//!   LF is SMTP smuggling, judged by the `bare_newline` rule before the bare byte goes
//!   out (a CR ending a read waits for the next byte). A lone dot beside a bare line
//!   end or a NUL always ends the session (`smuggled-end-of-data`): its line end never
//!   goes out. Other NULs are judged by `nul_in_content`, once per message. BDAT (RFC
//!   3030) content is
//!   counted by `bytes_left`, one message stream across chunks. Both go through
//!   [`crate::mime::MessageScanner`] for header, body and MIME rules.
//! - Server side: reply lines framed like commands; the greeting is masked by the
//!   `Banner` rule (code and separator kept, the rest `*`), EHLO keywords by
//!   `ehlo-reply-parameter` rules with `mask` (same-length `X`s).
//! - Decisions: every match emits one [`Event`]; `drop-connection` and `reset` end the
//!   session with a verdict and nothing from the offending point on is forwarded: a
//!   bare CR/LF, the byte where a DATA line crosses a dropping length limit, else the
//!   line end of the offending line (for a command or reply, the whole line). So in
//!   DATA the final dot and in BDAT the last byte of the LAST chunk never reach the
//!   server. These cut points do not depend on how reads split the input: the same
//!   transcript in any chunks gives the same bytes, events and verdict.
//!   `rate-limit N`: more than N matches of that rule within one second of `now` ends
//!   the session with `421 4.7.0 Message rate limit exceeded`.
//!
//! # What the rules measure
//! - `cmd line length`, `header line length`, `body line length`: bytes of one line,
//!   CRLF excluded, a doubled leading dot counted once. `header length`: bytes of the
//!   top-level header section, line ends included, the empty line excluded. `body
//!   length`: bytes after that empty line up to the final dot, line ends included.
//!   A `gt` total that ends the session fires on the line that crosses it (nothing
//!   after that line is forwarded); other forms are judged on the final total.
//! - `header to-fields count`: the addresses in the To: fields (all of them, folded
//!   lines included; commas inside quotes, comments and angle brackets do not count).
//! - `cmd RCPT count`: RCPT commands in the transaction. `invalid-recipients count`:
//!   RCPTs the server answered 5xx, in the session.
//! - `MIME filetype`: the regex against every Content-Type field's `type/subtype`
//!   (lower-cased); `MIME encoding`: each part's Content-Transfer-Encoding (7bit where
//!   absent, RFC 2045 §6.1); `MIME filename length`: every Content-Disposition
//!   `filename=` and Content-Type `name=`, RFC 2231 `filename*=` measured without its
//!   charset prefix and `filename*0*=`, `filename*1=`... as their joined length, however
//!   long the field (parsed as it streams). `MIME parse-limit`: a bound of the MIME
//!   parser stopped it (nesting past 8, a boundary over 250 characters, ...); the
//!   event's value names which ([`crate::mime::ParseLimit`]).
//! - MAIL FROM / RCPT TO arguments are parsed as RFC 5321 paths ([`crate::path`]); one
//!   that is not a path is masked like an unknown verb (`malformed-path`), so the
//!   server answers it 5xx. A `|` in the address ends the session in every inspecting
//!   policy (`address-pipe`, not configurable). `special_character` (backquote, NUL)
//!   looks at the path as written. `sender-address length`: the path as written inside
//!   `<>`; `sender-address regex` and `mail_relay` compare the canonical address
//!   (source route dropped, quoted local part unquoted when it is a dot-string, domain
//!   lower-cased without its trailing dot); a mailbox without a domain such as
//!   `<postmaster>` is not relaying.
//!
//! Per line the hot path allocates nothing: forwarded bytes are slices of the input,
//! contiguous unchanged ranges coalesced into one slice per read; rewrites (masking,
//! a line re-joined across reads, released held bytes) allocate, and are rare.

mod commands;
mod content;
mod forward;
mod framer;
mod judge;
mod replies;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod tls;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::envelope::Envelope;
use crate::event::{Direction, Event};
use crate::policy::Policy;

use commands::{ClientMode, ClientSide};
use content::Content;
use judge::Judge;
use replies::ReplyTracker;
use tls::TlsState;
pub use tls::{StartTls, TlsSides, TlsTermination};

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

/// What the session waits for, so the driver picks the deadline that applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The server's greeting has not reached the client yet.
    Greeting,
    /// The client owes a command line (none, or one partly received).
    Command,
    /// Message content: DATA after its 354, or inside a BDAT chunk.
    Content,
    /// An end of message (final dot, BDAT LAST) was forwarded; its reply is owed.
    AwaitingEndOfData,
    /// Relayed opaquely (STARTTLS passthrough): only the idle deadline applies.
    Opaque,
}

/// The result of feeding bytes, reused between calls.
#[derive(Debug, Default)]
pub struct Output {
    pub to_server: Vec<Bytes>,
    pub to_client: Vec<Bytes>,
    pub events: Vec<Event>,
    pub verdict: Verdict,
    /// STARTTLS terminated here: start TLS once this call's bytes are written.
    pub start_tls: Option<StartTls>,
}

impl Output {
    pub fn clear(&mut self) {
        self.to_server.clear();
        self.to_client.clear();
        self.events.clear();
        self.verdict = Verdict::Continue;
        self.start_tls = None;
    }

    /// Where bytes travelling in `direction` go.
    #[inline]
    fn sink(&mut self, direction: Direction) -> &mut Vec<Bytes> {
        match direction {
            Direction::ClientToServer => &mut self.to_server,
            Direction::ServerToClient => &mut self.to_client,
        }
    }
}

/// A command line split across reads is buffered up to this many bytes; a longer one
/// is judged on these first bytes and the rest streams through (RFC 5321 §4.5.3.1.4
/// allows 512; extensions push real commands to a few hundred more).
pub const CMD_LINE_CAP: usize = 4096;
/// Same for a server reply line.
pub const REPLY_LINE_CAP: usize = 4096;
/// Client bytes held while DATA / STARTTLS / AUTH await their reply.
pub const HOLD_CAP: usize = 64 * 1024;
/// Outstanding pipelined commands tracked; beyond it client bytes wait (held).
pub const QUEUE_CAP: usize = 1024;

/// One SMTP session's inspection state: a client side, a reply tracker and a content
/// pipeline, with rule firing shared by all three.
pub struct Inspector {
    judge: Judge,
    client: ClientSide,
    replies: ReplyTracker,
    content: Content,
    /// Complete client command lines plus complete server replies seen.
    progress: u64,
    tls: TlsState,
    /// HELO name, sender, accepted recipients / messages / transactions, for logs.
    envelope: Envelope,
    /// The name a neutrally masked greeting shows (the edge's own, never the
    /// upstream's).
    banner_name: Bytes,
    /// The early-talker rule was judged (once per session).
    early_talk_judged: bool,
}

impl Inspector {
    /// A session whose STARTTLS goes to the upstream (`starttls = "passthrough"`).
    pub fn new(policy: Arc<Policy>) -> Inspector {
        Inspector::with_tls(policy, TlsTermination::Passthrough)
    }

    /// The same session, its neutrally masked greeting being `220 <banner_name> ESMTP
    /// ready` (the listener's `banner_name`, by default this host's name; without it,
    /// `localhost`).
    pub fn with_banner_name(mut self, banner_name: Bytes) -> Inspector {
        self.banner_name = banner_name;
        self
    }

    /// A session with its STARTTLS handling (see [`TlsTermination`]).
    pub fn with_tls(policy: Arc<Policy>, termination: TlsTermination) -> Inspector {
        let content = Content::new(&policy);
        Inspector {
            client: ClientSide::new(policy.inspect),
            replies: ReplyTracker::new(),
            content,
            progress: 0,
            tls: TlsState::new(termination),
            envelope: Envelope::default(),
            banner_name: Bytes::from_static(b"localhost"),
            early_talk_judged: false,
            judge: Judge::new(policy),
        }
    }

    /// HELO name, sender and the counts the session's logs and metrics report.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    pub fn policy(&self) -> &Arc<Policy> {
        self.judge.policy_arc()
    }

    /// Bytes read from the client. After a verdict they are ignored.
    pub fn on_client_bytes(&mut self, input: Bytes, now: Instant, out: &mut Output) {
        self.judge.set_now(now);
        if self.judge.stopped() {
            return;
        }
        if !self.replies.greeted() && !input.is_empty() && !self.early_talk_judged {
            // RFC 5321 §4.3.1: the client waits for the greeting. One that talks first
            // is usually a spam engine that does not read replies.
            self.early_talk_judged = true;
            let (kind, d) = (
                crate::rules::CriterionKind::EarlyTalker,
                Direction::ClientToServer,
            );
            self.judge.check_flag(kind, d, 0, out);
            if self.judge.stopped() {
                return;
            }
        }
        if self.is_opaque() {
            if !input.is_empty() {
                self.replies.tls_hello_sent = true;
                out.to_server.push(input);
            }
            return;
        }
        self.client_input(input, out);
    }

    /// Bytes read from the server. After a drop only the replies still owed for what
    /// was forwarded go on to the client ([`Inspector::owed_replies`]).
    pub fn on_server_bytes(&mut self, input: Bytes, now: Instant, out: &mut Output) {
        self.judge.set_now(now);
        if self.judge.stopped() {
            self.drain_owed(&input, 0, out);
            return;
        }
        let replies = &self.replies;
        if self.is_opaque()
            && (replies.tls_hello_sent || replies.tls_injection_judged || input.is_empty())
        {
            if !input.is_empty() {
                out.to_client.push(input);
            }
            return;
        }
        self.server_input(input, out);
    }

    /// What the session waits for (which deadline applies).
    pub fn phase(&self) -> Phase {
        match self.client.mode {
            ClientMode::Opaque => Phase::Opaque,
            _ if !self.replies.greeted() => Phase::Greeting,
            ClientMode::Data | ClientMode::Bdat { .. } | ClientMode::Blob { .. } => Phase::Content,
            _ if self.replies.owes_end_of_data() => Phase::AwaitingEndOfData,
            _ => Phase::Command,
        }
    }

    /// Counts complete client command lines plus complete server replies seen; the
    /// driver restarts the idle deadline whenever it changes (bytes inside a line do not).
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// A MAIL transaction is open (MAIL accepted or pending, not yet ended).
    pub fn in_transaction(&self) -> bool {
        self.client.transaction
    }

    /// True until a HELO/EHLO has been answered 2xx (an embryonic session, which the
    /// driver caps and times out separately).
    pub fn is_embryonic(&self) -> bool {
        self.replies.embryonic
    }

    /// True once STARTTLS was accepted: from here both directions are opaque and the
    /// driver may relay them verbatim without calling the inspector.
    pub fn is_opaque(&self) -> bool {
        self.client.mode == ClientMode::Opaque
    }

    /// True once a drop or reset verdict was given: nothing more from the client will
    /// be forwarded.
    pub fn is_stopped(&self) -> bool {
        self.judge.stopped()
    }

    /// Replies the server still owes for commands already forwarded to it (a BDAT
    /// whose chunk a stop cut short is owed none). After a drop, the driver stops
    /// reading the client, keeps feeding server bytes until this is 0 (bounded by its
    /// close grace), and only then sends the drop reply: so the reply to a message's
    /// end of data always reaches the client first.
    pub fn owed_replies(&self) -> usize {
        self.replies.owed()
    }

    /// Bytes the inspector keeps between calls (partial lines, held bytes, parser
    /// state); bounded by the caps above whatever the peers send.
    pub fn buffered_bytes(&self) -> usize {
        self.client.buffered() + self.content.buffered_bytes() + self.replies.buffered()
    }
}

/// What a complete server reply does to the client side, beyond its own forwarding.
/// Returned by the reply path and applied in one place, [`Inspector::server_input`],
/// after the reply line went out: the client path is never entered from inside reply
/// judging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplyEffect {
    /// Judge the client bytes held behind the command this reply answered.
    ReleaseHeld,
    /// A 5xx to a BDAT whose chunk went out as content: end the session.
    BdatRefused,
}
