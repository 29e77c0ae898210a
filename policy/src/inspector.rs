//! The per-session SMTP inspector: a state machine fed bytes from either direction.
//!
//! CONTRACT with the dataplane (the API below is fixed):
//! - `Inspector::new(policy)` per session; `policy` is shared (`Arc<Policy>`).
//! - The driver reads into a buffer, freezes it into `Bytes` and calls
//!   `on_client_bytes` / `on_server_bytes` with `now` (no clock reads in here).
//! - The inspector appends to `out`: bytes to write to the server and to the client
//!   (slices of the input where unchanged, rewritten bytes where masked), events, and at
//!   most one verdict. The driver writes `to_server` then `to_client` in order, handles
//!   events, then acts on the verdict. `Output::clear` keeps capacity between calls.
//! - Bytes the inspector cannot yet judge (a partial command line or reply) it keeps,
//!   bounded; the driver must not resend them.
//!
//! # How a session is followed
//! - Client side, command mode: lines framed at LF ([`scanner::line_end`]); a line split
//!   across reads is copied into a buffer of at most [`CMD_LINE_CAP`]` + 1` bytes; a
//!   longer line is judged on its first [`CMD_LINE_CAP`] bytes (`gt` length rules fire
//!   then) and the rest of it streams through. Verbs outside `allowed_commands` (and
//!   `cmd verb` rules with `mask`) are forwarded as a same-length line of `X`s, CRLF
//!   kept, so the server answers each with its own 5xx, in order.
//! - Every forwarded command is queued (`Pending`) so each server reply pairs with
//!   its command under PIPELINING (RFC 2920 §3). Transactions (RCPT counts) end at
//!   RSET, HELO/EHLO and the end of a message (RFC 5321 §4.1.4).
//! - DATA, STARTTLS and AUTH end a pipelined group (RFC 2920 §3.1, RFC 3207 §4,
//!   RFC 4954 §4): the client must wait for the reply. Bytes it sends before the reply
//!   are held (at most [`HOLD_CAP`]) and judged once the reply says what they are:
//!   message content after `354`, TLS after `220`, an AUTH line after `334`, commands
//!   otherwise — so content pipelined ahead of a refused DATA is judged as the
//!   commands the server will take it for. Past the cap the session is dropped
//!   (`421 4.7.0 Improper command pipelining`).
//! - Exchange's XEXCH50, when `allow_verbs` passes it, waits for its `354` the same
//!   way; its blob of the announced size is then relayed untouched.
//! - DATA content (RFC 5321 §4.1.1.4): strict CRLF framing ([`scanner::ContentScanner`]),
//!   dot-stuffing undone for the checks, end of data only at CRLF.CRLF; a bare CR or
//!   LF is SMTP smuggling, judged by the `bare_newline` rule before the bare byte goes
//!   out (a CR ending a read waits for the next byte). BDAT (RFC 3030) content is
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
//! - `MIME filetype`: the regex against each part's `type/subtype` (lower-cased);
//!   `MIME encoding`: each part's Content-Transfer-Encoding (7bit where absent, RFC
//!   2045 §6.1); `MIME
//!   filename length`: Content-Disposition `filename=` (or Content-Type `name=`),
//!   RFC 2231 `filename*=` measured without its charset prefix.
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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::event::{Direction, Event, MessageId};
use crate::mime::{MessageScanner, Observation, Observer, LINE_HEAD_CAP};
use crate::path::{self, Address, PathKind};
use crate::policy::Policy;
use crate::rules::{Cmp, Criterion, Rule, RuleId};
use crate::scanner::{self, ContentScanner, Scan};
use crate::verb::Verb;

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
}

impl Output {
    pub fn clear(&mut self) {
        self.to_server.clear();
        self.to_client.clear();
        self.events.clear();
        self.verdict = Verdict::Continue;
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

const REPLY_IMPROPER_PIPELINING: &[u8] =
    b"421 4.7.0 Improper command pipelining, closing connection\r\n";
const REPLY_RATE_LIMIT: &[u8] = b"421 4.7.0 Message rate limit exceeded, closing connection\r\n";

/// The `421 4.7.0` reply naming why a rule dropped the session.
fn drop_reply(criterion: &Criterion) -> &'static [u8] {
    match criterion {
        Criterion::CmdLineLength(_) => b"421 4.7.0 Command line too long, closing connection\r\n",
        Criterion::CmdRcptCount(_) => b"421 4.7.0 Too many recipients, closing connection\r\n",
        Criterion::CmdVerb(_) | Criterion::UnknownVerb => {
            b"421 4.7.0 Command not allowed, closing connection\r\n"
        }
        Criterion::EhloReplyParameter(_) => {
            b"421 4.7.0 EHLO reply parameter not allowed, closing connection\r\n"
        }
        Criterion::HeaderLineLength(_) => {
            b"421 4.7.0 Message header line too long, closing connection\r\n"
        }
        Criterion::HeaderLength(_) => b"421 4.7.0 Message header too long, closing connection\r\n",
        Criterion::HeaderToFieldsCount(_) => {
            b"421 4.7.0 Too many To: recipients, closing connection\r\n"
        }
        Criterion::BodyLineLength(_) => {
            b"421 4.7.0 Message body line too long, closing connection\r\n"
        }
        Criterion::BodyLength(_) => b"421 4.7.0 Message body too long, closing connection\r\n",
        Criterion::SenderAddressLength(_) => {
            b"421 4.7.0 Sender address too long, closing connection\r\n"
        }
        Criterion::SenderAddressRegex(_) => {
            b"421 4.7.0 Sender address not allowed, closing connection\r\n"
        }
        Criterion::MimeFilenameLength(_) => {
            b"421 4.7.0 MIME filename too long, closing connection\r\n"
        }
        Criterion::MimeFiletype(_) => {
            b"421 4.7.0 MIME file type not allowed, closing connection\r\n"
        }
        Criterion::MimeEncoding(_) => {
            b"421 4.7.0 MIME encoding not allowed, closing connection\r\n"
        }
        Criterion::InvalidRecipientsCount(_) => {
            b"421 4.7.0 Too many invalid recipients, closing connection\r\n"
        }
        Criterion::Banner => b"421 4.7.0 Server banner not allowed, closing connection\r\n",
        Criterion::BareNewline => {
            b"421 4.7.0 Bare CR or LF in message (SMTP smuggling), closing connection\r\n"
        }
        Criterion::SpecialCharacter => {
            b"421 4.7.0 Special character in address, closing connection\r\n"
        }
        Criterion::MailRelay => b"421 4.7.0 Relaying denied, closing connection\r\n",
        Criterion::TlsStarted => b"421 4.7.0 TLS not allowed, closing connection\r\n",
        Criterion::AddressPipe => b"421 4.7.0 Pipe in address, closing connection\r\n",
        Criterion::MalformedPath => b"421 4.7.0 Malformed address, closing connection\r\n",
    }
}

// ---------------------------------------------------------------------------------
// Rule index: the rules of each criterion kind, found without scanning per line.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Kind {
    CmdLineLength,
    CmdRcptCount,
    CmdVerb,
    EhloReplyParameter,
    HeaderLineLength,
    HeaderLength,
    HeaderToFieldsCount,
    BodyLineLength,
    BodyLength,
    SenderAddressLength,
    SenderAddressRegex,
    MimeFilenameLength,
    MimeFiletype,
    MimeEncoding,
    InvalidRecipientsCount,
    Banner,
    UnknownVerb,
    BareNewline,
    SpecialCharacter,
    MailRelay,
    TlsStarted,
    AddressPipe,
    MalformedPath,
}

const KINDS: usize = Kind::MalformedPath as usize + 1;

fn kind_of(c: &Criterion) -> Kind {
    match c {
        Criterion::CmdLineLength(_) => Kind::CmdLineLength,
        Criterion::CmdRcptCount(_) => Kind::CmdRcptCount,
        Criterion::CmdVerb(_) => Kind::CmdVerb,
        Criterion::EhloReplyParameter(_) => Kind::EhloReplyParameter,
        Criterion::HeaderLineLength(_) => Kind::HeaderLineLength,
        Criterion::HeaderLength(_) => Kind::HeaderLength,
        Criterion::HeaderToFieldsCount(_) => Kind::HeaderToFieldsCount,
        Criterion::BodyLineLength(_) => Kind::BodyLineLength,
        Criterion::BodyLength(_) => Kind::BodyLength,
        Criterion::SenderAddressLength(_) => Kind::SenderAddressLength,
        Criterion::SenderAddressRegex(_) => Kind::SenderAddressRegex,
        Criterion::MimeFilenameLength(_) => Kind::MimeFilenameLength,
        Criterion::MimeFiletype(_) => Kind::MimeFiletype,
        Criterion::MimeEncoding(_) => Kind::MimeEncoding,
        Criterion::InvalidRecipientsCount(_) => Kind::InvalidRecipientsCount,
        Criterion::Banner => Kind::Banner,
        Criterion::UnknownVerb => Kind::UnknownVerb,
        Criterion::BareNewline => Kind::BareNewline,
        Criterion::SpecialCharacter => Kind::SpecialCharacter,
        Criterion::MailRelay => Kind::MailRelay,
        Criterion::TlsStarted => Kind::TlsStarted,
        Criterion::AddressPipe => Kind::AddressPipe,
        Criterion::MalformedPath => Kind::MalformedPath,
    }
}

/// Rule ids grouped by kind: `ids[start[k]..start[k + 1]]` are the rules of kind `k`.
struct RuleIndex {
    ids: Box<[RuleId]>,
    start: [u16; KINDS + 1],
    /// Per-line fast path: a body / header line this long or shorter matches no
    /// length rule (`None` when a rule is not a plain `gt`, so every line is checked).
    body_line_floor: Option<u64>,
    header_line_floor: Option<u64>,
    /// The lowest `gt` threshold of a body / header line length rule that ends the
    /// session (drop-connection or reset): such a line is cut as it crosses it.
    body_line_drop: Option<u64>,
    header_line_drop: Option<u64>,
    /// The same for `body length` / `header length`: checked as the totals grow.
    body_len_drop: Option<u64>,
    header_len_drop: Option<u64>,
}

impl RuleIndex {
    fn new(policy: &Policy) -> RuleIndex {
        let mut ids: Vec<RuleId> = (0..policy.rules.len() as RuleId).collect();
        ids.sort_by_key(|&id| kind_of(&policy.rules[id as usize].criterion) as u8);
        let mut start = [0u16; KINDS + 1];
        for k in 0..KINDS {
            start[k + 1] = start[k]
                + ids
                    .iter()
                    .filter(|&&id| kind_of(&policy.rules[id as usize].criterion) as usize == k)
                    .count() as u16;
        }
        let floor = |kind: Kind| {
            policy
                .rules
                .iter()
                .filter(|r| kind_of(&r.criterion) == kind)
                .try_fold(u64::MAX, |floor, r| match (&r.criterion, r.negate) {
                    (
                        Criterion::BodyLineLength(Cmp::Gt(n))
                        | Criterion::HeaderLineLength(Cmp::Gt(n)),
                        false,
                    ) => Some(floor.min(*n)),
                    _ => None,
                })
        };
        let drop_floor = |kind: Kind| {
            policy
                .rules
                .iter()
                .filter(|r| kind_of(&r.criterion) == kind && !r.negate)
                .filter(|r| r.actions.drop_connection || r.actions.reset)
                .filter_map(|r| match r.criterion {
                    Criterion::BodyLineLength(Cmp::Gt(n))
                    | Criterion::HeaderLineLength(Cmp::Gt(n))
                    | Criterion::BodyLength(Cmp::Gt(n))
                    | Criterion::HeaderLength(Cmp::Gt(n)) => Some(n),
                    _ => None,
                })
                .min()
        };
        RuleIndex {
            ids: ids.into_boxed_slice(),
            start,
            body_line_floor: floor(Kind::BodyLineLength),
            header_line_floor: floor(Kind::HeaderLineLength),
            body_line_drop: drop_floor(Kind::BodyLineLength),
            header_line_drop: drop_floor(Kind::HeaderLineLength),
            body_len_drop: drop_floor(Kind::BodyLength),
            header_len_drop: drop_floor(Kind::HeaderLength),
        }
    }

    #[inline]
    fn of(&self, kind: Kind) -> &[RuleId] {
        let k = kind as usize;
        &self.ids[self.start[k] as usize..self.start[k + 1] as usize]
    }
}

/// What a rule check asks of the line being judged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Pass,
    Mask,
    Stop,
}

impl Outcome {
    #[inline]
    fn and(self, other: Outcome) -> Outcome {
        match (self, other) {
            (Outcome::Stop, _) | (_, Outcome::Stop) => Outcome::Stop,
            (Outcome::Mask, _) | (_, Outcome::Mask) => Outcome::Mask,
            _ => Outcome::Pass,
        }
    }
}

/// Applies rule actions: events, verdicts, rate windows.
struct Actor {
    dead: bool,
    now: Option<Instant>,
    /// Per rule (only when the policy has `rate-limit` rules): window start and count.
    rate: Vec<(Option<Instant>, u32)>,
}

impl Actor {
    fn fire(
        &mut self,
        id: RuleId,
        rule: &Rule,
        direction: Direction,
        value: u64,
        out: &mut Output,
    ) -> Outcome {
        let a = rule.actions;
        let message_id = match rule.criterion {
            Criterion::SpecialCharacter | Criterion::BareNewline | Criterion::AddressPipe => {
                MessageId::MaliciousPattern
            }
            Criterion::TlsStarted => MessageId::TlsStarted,
            _ if a.drop_connection || a.reset => MessageId::PolicyAction,
            _ if a.mask => MessageId::ReplacedString,
            _ => MessageId::PolicyLog,
        };
        out.events.push(Event {
            rule: id,
            actions: a,
            message_id,
            direction,
            value,
        });
        if a.reset {
            return self.stop(out, Verdict::Reset);
        }
        if a.drop_connection {
            return self.stop(
                out,
                Verdict::Drop {
                    reply: drop_reply(&rule.criterion),
                },
            );
        }
        if a.rate_limit > 0 {
            if let (Some(now), Some(slot)) = (self.now, self.rate.get_mut(id as usize)) {
                match slot.0 {
                    Some(start)
                        if now.saturating_duration_since(start) < Duration::from_secs(1) =>
                    {
                        slot.1 += 1
                    }
                    _ => *slot = (Some(now), 1),
                }
                if slot.1 > a.rate_limit {
                    return self.stop(
                        out,
                        Verdict::Drop {
                            reply: REPLY_RATE_LIMIT,
                        },
                    );
                }
            }
        }
        if a.mask {
            Outcome::Mask
        } else {
            Outcome::Pass
        }
    }

    fn stop(&mut self, out: &mut Output, verdict: Verdict) -> Outcome {
        if !self.dead {
            out.verdict = verdict;
            self.dead = true;
        }
        Outcome::Stop
    }
}

/// Fires every rule in `ids` that `applies`, in order, until one stops the session.
/// The one loop every check below shares.
#[inline]
fn fire_where(
    policy: &Policy,
    ids: &[RuleId],
    actor: &mut Actor,
    out: &mut Output,
    direction: Direction,
    value: u64,
    applies: impl Fn(&Rule) -> bool,
) -> Outcome {
    let mut outcome = Outcome::Pass;
    for &id in ids {
        let rule = &policy.rules[id as usize];
        if applies(rule) {
            outcome = outcome.and(actor.fire(id, rule, direction, value, out));
            if outcome == Outcome::Stop {
                break;
            }
        }
    }
    outcome
}

/// Runs every rule in `ids` whose criterion `matches` (after `match not`).
#[inline]
fn check(
    policy: &Policy,
    ids: &[RuleId],
    actor: &mut Actor,
    out: &mut Output,
    direction: Direction,
    value: u64,
    matches: impl Fn(&Criterion) -> bool,
) -> Outcome {
    fire_where(policy, ids, actor, out, direction, value, |rule| {
        matches(&rule.criterion) != rule.negate
    })
}

/// The session-ending `gt` rules of a running total (`header length`, `body length`)
/// that `value` has just passed: they fire now rather than at the end of the section,
/// so a message over the limit is not streamed whole to the server first. Rules that
/// only log, or are negated, wait for the final total as before.
fn check_crossed(
    policy: &Policy,
    index: &RuleIndex,
    kind: Kind,
    actor: &mut Actor,
    out: &mut Output,
    direction: Direction,
    value: u64,
) -> Outcome {
    fire_where(
        policy,
        index.of(kind),
        actor,
        out,
        direction,
        value,
        |rule| {
            let ends_session = rule.actions.drop_connection || rule.actions.reset;
            let crossed = matches!(rule.criterion.threshold(), Some(Cmp::Gt(n)) if value > n);
            ends_session && !rule.negate && crossed
        },
    )
}

/// A comparison rule of a given kind against `value`.
#[inline]
fn check_cmp(
    policy: &Policy,
    index: &RuleIndex,
    kind: Kind,
    actor: &mut Actor,
    out: &mut Output,
    direction: Direction,
    value: u64,
) -> Outcome {
    let ids = index.of(kind);
    if ids.is_empty() {
        return Outcome::Pass;
    }
    check(policy, ids, actor, out, direction, value, |c| {
        c.threshold().is_some_and(|cmp| cmp.matches(value))
    })
}

/// When a `cmd line length` check runs.
#[derive(Clone, Copy)]
enum LenCheck {
    /// The line crossed the buffer cap and is still growing: only non-negated `gt`
    /// rules can already be sure (its final length can only be larger).
    Partial,
    /// The line ended; `early` is the length at which a partial check ran, so a `gt`
    /// rule that fired then does not fire twice.
    Final { early: Option<u64> },
}

fn check_line_length(
    policy: &Policy,
    index: &RuleIndex,
    actor: &mut Actor,
    out: &mut Output,
    len: u64,
    when: LenCheck,
) -> Outcome {
    let ids = index.of(Kind::CmdLineLength);
    fire_where(
        policy,
        ids,
        actor,
        out,
        Direction::ClientToServer,
        len,
        |rule| {
            let Criterion::CmdLineLength(cmp) = rule.criterion else {
                return false;
            };
            let decidable_early = matches!(cmp, Cmp::Gt(_)) && !rule.negate;
            let skip = match when {
                LenCheck::Partial => !decidable_early,
                LenCheck::Final { early: Some(at) } => decidable_early && cmp.matches(at),
                LenCheck::Final { early: None } => false,
            };
            !skip && cmp.matches(len) != rule.negate
        },
    )
}

/// A built-in rule (parameter) that matched: no comparison, `match not` not applicable.
fn check_flag(
    policy: &Policy,
    index: &RuleIndex,
    kind: Kind,
    actor: &mut Actor,
    out: &mut Output,
    direction: Direction,
    value: u64,
) -> Outcome {
    fire_where(policy, index.of(kind), actor, out, direction, value, |_| {
        true
    })
}

/// Message rules, fed by [`MessageScanner`].
struct Judge<'a> {
    policy: &'a Policy,
    index: &'a RuleIndex,
    actor: &'a mut Actor,
    out: &'a mut Output,
}

impl Observer for Judge<'_> {
    #[inline]
    fn observe(&mut self, o: Observation<'_>) -> bool {
        let d = Direction::ClientToServer;
        let (p, i) = (self.policy, self.index);
        let outcome = match o {
            Observation::BodyLine { len } => {
                if i.body_line_floor.is_some_and(|floor| len <= floor) {
                    return true;
                }
                check_cmp(p, i, Kind::BodyLineLength, self.actor, self.out, d, len)
            }
            Observation::HeaderLine { len } => {
                if i.header_line_floor.is_some_and(|floor| len <= floor) {
                    return true;
                }
                check_cmp(p, i, Kind::HeaderLineLength, self.actor, self.out, d, len)
            }
            Observation::HeaderEnd { len, to_recipients } => {
                match check_cmp(p, i, Kind::HeaderLength, self.actor, self.out, d, len) {
                    Outcome::Stop => Outcome::Stop,
                    first => first.and(check_cmp(
                        p,
                        i,
                        Kind::HeaderToFieldsCount,
                        self.actor,
                        self.out,
                        d,
                        to_recipients,
                    )),
                }
            }
            Observation::HeaderLengthCrossed { len } => {
                check_crossed(p, i, Kind::HeaderLength, self.actor, self.out, d, len)
            }
            Observation::BodyLengthCrossed { len } => {
                check_crossed(p, i, Kind::BodyLength, self.actor, self.out, d, len)
            }
            Observation::MessageEnd { body_len } => {
                check_cmp(p, i, Kind::BodyLength, self.actor, self.out, d, body_len)
            }
            Observation::MimeFilenameLength { len } => {
                check_cmp(p, i, Kind::MimeFilenameLength, self.actor, self.out, d, len)
            }
            Observation::MimeType { value } => check(
                p,
                i.of(Kind::MimeFiletype),
                self.actor,
                self.out,
                d,
                value.len() as u64,
                |c| matches!(c, Criterion::MimeFiletype(re) if re.is_match(value)),
            ),
            Observation::MimeEncoding { encoding } => check(
                p,
                i.of(Kind::MimeEncoding),
                self.actor,
                self.out,
                d,
                encoding as u64,
                |c| matches!(c, Criterion::MimeEncoding(set) if set & encoding != 0),
            ),
        };
        outcome != Outcome::Stop
    }
}

// ---------------------------------------------------------------------------------
// Forwarding: coalesce unchanged ranges of one read into one slice.

/// The pending unchanged range `[start, end)` of the current input.
#[derive(Default)]
struct Fwd {
    start: usize,
    end: usize,
}

impl Fwd {
    #[inline]
    fn pass(&mut self, input: &Bytes, from: usize, to: usize, sink: &mut Vec<Bytes>) {
        if from == to {
            return;
        }
        if from != self.end {
            self.flush(input, sink);
            self.start = from;
        }
        self.end = to;
    }

    #[inline]
    fn flush(&mut self, input: &Bytes, sink: &mut Vec<Bytes>) {
        if self.end > self.start {
            sink.push(input.slice(self.start..self.end));
        }
        self.start = self.end;
    }

    fn emit(&mut self, input: &Bytes, bytes: Bytes, sink: &mut Vec<Bytes>) {
        self.flush(input, sink);
        if !bytes.is_empty() {
            sink.push(bytes);
        }
    }

    /// Takes back the last pending byte (the LAST BDAT chunk's end, when a check at
    /// the end of the message stops the session).
    fn retract_last(&mut self, sink: &mut Vec<Bytes>) {
        if self.end > self.start {
            self.end -= 1;
        } else if let Some(last) = sink.last_mut() {
            last.truncate(last.len() - 1);
            if last.is_empty() {
                sink.pop();
            }
        }
    }
}

static XS: [u8; 1024] = [b'X'; 1024];
static STARS: [u8; 1024] = [b'*'; 1024];

/// `n` copies of a mask byte, as static slices (no allocation).
fn emit_fill(fwd: &mut Fwd, input: &Bytes, fill: u8, mut n: usize, sink: &mut Vec<Bytes>) {
    let src: &'static [u8; 1024] = if fill == b'*' { &STARS } else { &XS };
    fwd.flush(input, sink);
    while n > 0 {
        let k = n.min(src.len());
        sink.push(Bytes::from_static(&src[..k]));
        n -= k;
    }
}

// ---------------------------------------------------------------------------------
// Command and reply lines: framed at LF, judged on their first `cap` bytes.

/// What a side decided about a line from its content (or its head, when overlong).
enum LineDecision {
    Pass,
    /// Every content byte becomes this byte (`X` for a masked command).
    Fill(u8),
    /// These bytes replace the judged content (same length); `Some(fill)` masks the
    /// rest of an overlong line too.
    Rewrite(Bytes, Option<u8>),
    Stop,
}

/// A side of the session as the framer sees it.
trait LineSide {
    /// Judges a line from its content, CRLF excluded: the whole of it (`complete`), or
    /// for a line longer than the cap its first `cap` bytes, `len` then being `cap + 1`
    /// (all that is known wherever the reads split it).
    fn head(&mut self, content: &[u8], len: u64, complete: bool, out: &mut Output) -> LineDecision;
    /// An overlong line ended with `len` content bytes; `false` stops the session before
    /// its line end goes out.
    fn overlong_end(&mut self, len: u64, out: &mut Output) -> bool;
    /// The session was stopped (possibly while judging a line for another reason,
    /// e.g. held client bytes it released): nothing of the line goes out then.
    fn stopped(&self) -> bool;
}

/// The tail of an overlong line, streaming through.
#[derive(Clone, Copy, Debug)]
struct Stream {
    fill: Option<u8>,
    /// Content bytes so far.
    len: u64,
    /// The previous read ended with a CR: content, or the start of the line end.
    held_cr: bool,
}

/// Incremental line framing for commands and replies. A line split across reads is
/// copied (at most `cap + 1` bytes) until complete; a longer one is judged on its first
/// `cap` bytes, then streams through. The cut points (what is forwarded before a stop)
/// do not depend on where reads split the input: content before a line end, never the
/// line end itself, and a CR at the end of a read waits for the next byte.
#[derive(Default)]
struct LineFramer {
    /// Bytes of a line begun in an earlier read; then, while judging, its head.
    buf: Vec<u8>,
    stream: Option<Stream>,
}

fn sink_of(out: &mut Output, to_server: bool) -> &mut Vec<Bytes> {
    if to_server {
        &mut out.to_server
    } else {
        &mut out.to_client
    }
}

/// Forwards line content that is `held` (copied from earlier reads) followed by
/// `input[from..to]`, skipping its first `skip` bytes, unchanged or as `fill`.
#[allow(clippy::too_many_arguments)]
fn emit_content(
    fwd: &mut Fwd,
    input: &Bytes,
    sink: &mut Vec<Bytes>,
    held: &[u8],
    from: usize,
    to: usize,
    skip: usize,
    fill: Option<u8>,
) {
    let held_skip = skip.min(held.len());
    let held = &held[held_skip..];
    let from = (from + (skip - held_skip)).min(to);
    match fill {
        Some(f) => emit_fill(fwd, input, f, held.len() + (to - from), sink),
        None => {
            if !held.is_empty() {
                fwd.emit(input, Bytes::copy_from_slice(held), sink);
            }
            fwd.pass(input, from, to, sink);
        }
    }
}

/// One content CR (a CR held at the end of a read that turned out not to end the line).
fn emit_cr(fwd: &mut Fwd, input: &Bytes, fill: Option<u8>, sink: &mut Vec<Bytes>) {
    match fill {
        Some(f) => emit_fill(fwd, input, f, 1, sink),
        None => fwd.emit(input, Bytes::from_static(b"\r"), sink),
    }
}

impl LineFramer {
    fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Frames from `pos`: returns after one line, at the end of the input, or where a
    /// stop left it.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        cap: usize,
        input: &Bytes,
        pos: usize,
        fwd: &mut Fwd,
        to_server: bool,
        out: &mut Output,
        side: &mut impl LineSide,
    ) -> usize {
        let rest = &input[pos..];
        let lf = memchr::memchr(b'\n', rest);
        if let Some(s) = self.stream.take() {
            return self.stream_step(s, input, pos, lf, fwd, to_server, out, side);
        }
        let held = self.buf.len();
        match lf {
            Some(i) => {
                let n = i + 1;
                let ends_crlf = if i > 0 {
                    rest[i - 1] == b'\r'
                } else {
                    held > 0 && self.buf[held - 1] == b'\r'
                };
                let len = held + i - ends_crlf as usize;
                let held_content = held.min(len);
                let rest_content = len - held_content;
                let overlong = len > cap;
                let head_len = len.min(cap);
                if held > 0 && held_content == held {
                    let want = head_len.saturating_sub(held);
                    self.buf.extend_from_slice(&rest[..want]);
                }
                let head: &[u8] = if held == 0 {
                    &rest[..head_len]
                } else {
                    &self.buf[..head_len]
                };
                let judged_len = if overlong { cap as u64 + 1 } else { len as u64 };
                let mut decision = side.head(head, judged_len, !overlong, out);
                if side.stopped() {
                    decision = LineDecision::Stop;
                }
                let held_bytes = &self.buf[..held_content];
                let sink = sink_of(out, to_server);
                let (from, to) = (pos, pos + rest_content);
                match decision {
                    LineDecision::Stop => {
                        self.buf.clear();
                        return pos;
                    }
                    LineDecision::Pass => {
                        emit_content(fwd, input, sink, held_bytes, from, to, 0, None)
                    }
                    LineDecision::Fill(f) => {
                        emit_content(fwd, input, sink, held_bytes, from, to, 0, Some(f))
                    }
                    LineDecision::Rewrite(bytes, fill) => {
                        let covered = bytes.len();
                        fwd.emit(input, bytes, sink);
                        emit_content(fwd, input, sink, held_bytes, from, to, covered, fill);
                    }
                }
                self.buf.clear();
                if overlong && !side.overlong_end(len as u64, out) {
                    return to;
                }
                let sink = sink_of(out, to_server);
                if ends_crlf && i == 0 {
                    fwd.emit(input, Bytes::from_static(b"\r"), sink);
                }
                fwd.pass(input, to, pos + n, sink);
                pos + n
            }
            None if held + rest.len() < cap + 2 => {
                // cap content bytes and a CR still fit: wait for the rest of the line.
                self.buf.extend_from_slice(rest);
                input.len()
            }
            None => {
                // More than `cap` content bytes: judge the head, stream the rest.
                let trailing_cr = rest.last() == Some(&b'\r');
                let rest_content = rest.len() - trailing_cr as usize;
                let len = held + rest_content;
                if held < cap {
                    self.buf.extend_from_slice(&rest[..cap - held]);
                }
                let mut decision = side.head(&self.buf[..cap], cap as u64 + 1, false, out);
                if side.stopped() {
                    decision = LineDecision::Stop;
                }
                let held_bytes = &self.buf[..held];
                let sink = sink_of(out, to_server);
                let (from, to) = (pos, pos + rest_content);
                let fill = match decision {
                    LineDecision::Stop => {
                        self.buf.clear();
                        return pos;
                    }
                    LineDecision::Pass => {
                        emit_content(fwd, input, sink, held_bytes, from, to, 0, None);
                        None
                    }
                    LineDecision::Fill(f) => {
                        emit_content(fwd, input, sink, held_bytes, from, to, 0, Some(f));
                        Some(f)
                    }
                    LineDecision::Rewrite(bytes, fill) => {
                        let covered = bytes.len();
                        fwd.emit(input, bytes, sink);
                        emit_content(fwd, input, sink, held_bytes, from, to, covered, fill);
                        fill
                    }
                };
                self.buf.clear();
                self.stream = Some(Stream {
                    fill,
                    len: len as u64,
                    held_cr: trailing_cr,
                });
                input.len()
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_step(
        &mut self,
        mut s: Stream,
        input: &Bytes,
        pos: usize,
        lf: Option<usize>,
        fwd: &mut Fwd,
        to_server: bool,
        out: &mut Output,
        side: &mut impl LineSide,
    ) -> usize {
        let rest = &input[pos..];
        let Some(i) = lf else {
            let sink = sink_of(out, to_server);
            if s.held_cr {
                emit_cr(fwd, input, s.fill, sink);
                s.len += 1;
            }
            let trailing_cr = rest.last() == Some(&b'\r');
            let content = rest.len() - trailing_cr as usize;
            emit_content(fwd, input, sink, &[], pos, pos + content, 0, s.fill);
            s.len += content as u64;
            s.held_cr = trailing_cr;
            self.stream = Some(s);
            return input.len();
        };
        let ends_crlf = if i > 0 {
            rest[i - 1] == b'\r'
        } else {
            s.held_cr
        };
        let sink = sink_of(out, to_server);
        if s.held_cr && i > 0 {
            emit_cr(fwd, input, s.fill, sink);
            s.len += 1;
        }
        let content = i - (ends_crlf && i > 0) as usize;
        emit_content(fwd, input, sink, &[], pos, pos + content, 0, s.fill);
        s.len += content as u64;
        if !side.overlong_end(s.len, out) {
            return pos + content;
        }
        let sink = sink_of(out, to_server);
        if ends_crlf && i == 0 {
            fwd.emit(input, Bytes::from_static(b"\r"), sink);
        }
        fwd.pass(input, pos + content, pos + i + 1, sink);
        pos + i + 1
    }
}

/// The client's command lines.
struct CommandSide<'a>(&'a mut Inspector);

impl LineSide for CommandSide<'_> {
    fn head(&mut self, content: &[u8], len: u64, complete: bool, out: &mut Output) -> LineDecision {
        if complete {
            self.0.progress += 1;
        }
        match self.0.on_command(content, len, complete, out) {
            Outcome::Pass => LineDecision::Pass,
            Outcome::Mask => LineDecision::Fill(b'X'),
            Outcome::Stop => LineDecision::Stop,
        }
    }

    fn overlong_end(&mut self, len: u64, out: &mut Output) -> bool {
        let i = &mut *self.0;
        i.progress += 1;
        let early = Some(CMD_LINE_CAP as u64 + 1);
        check_line_length(
            &i.policy,
            &i.index,
            &mut i.actor,
            out,
            len,
            LenCheck::Final { early },
        ) != Outcome::Stop
    }

    fn stopped(&self) -> bool {
        self.0.actor.dead
    }
}

/// The server's reply lines.
struct ReplySide<'a>(&'a mut Inspector);

impl LineSide for ReplySide<'_> {
    fn head(
        &mut self,
        content: &[u8],
        _len: u64,
        _complete: bool,
        out: &mut Output,
    ) -> LineDecision {
        self.0.on_reply(content, out)
    }

    fn overlong_end(&mut self, _len: u64, _out: &mut Output) -> bool {
        true
    }

    fn stopped(&self) -> bool {
        self.0.actor.dead
    }
}

// ---------------------------------------------------------------------------------
// Session state.

/// What a queued command's reply means to us.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pending {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Starttls,
    Auth,
    /// Exchange's `XEXCH50 <size> <auth>` (when `allow_verbs` passes it): after `354`
    /// the client sends `size` octets of binary routing data.
    Xexch50 {
        size: u64,
    },
    /// A message's end: the final dot of DATA content, or a `BDAT ... LAST` line (its
    /// reply follows the chunk). RFC 5321 §4.1.1.4: the reply says whether the server
    /// took responsibility for the message.
    EndOfData,
    /// Every other command.
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ClientMode {
    Command,
    /// After `334`: the next line is an AUTH response (RFC 4954 §4), not a command.
    AuthLine,
    /// After `354`: message content until CRLF.CRLF.
    Data,
    /// Inside a BDAT chunk: `left` octets to go.
    Bdat {
        left: u64,
        last: bool,
    },
    /// The XEXCH50 blob: `left` octets relayed untouched, then commands again.
    Blob {
        left: u64,
    },
    /// After STARTTLS was accepted: relayed untouched.
    Opaque,
}

/// One SMTP session's inspection state.
pub struct Inspector {
    policy: Arc<Policy>,
    index: RuleIndex,
    actor: Actor,
    pending: VecDeque<Pending>,
    embryonic: bool,
    opaque: bool,

    // ---- client side ----
    mode: ClientMode,
    cmd_framer: LineFramer,
    /// Client bytes waiting for a DATA / STARTTLS / AUTH reply (or queue room).
    hold: Vec<u8>,
    holding: bool,
    /// A DATA / STARTTLS / AUTH is outstanding.
    barrier: bool,
    rcpt_count: u64,
    /// A BDAT message has started and has not had its LAST chunk.
    bdat_message: bool,
    content: ContentScanner,
    /// First bytes of a content line that spans reads.
    carry: Vec<u8>,
    /// BDAT content framing: length of the current line so far, last byte CR.
    bdat_line_len: u64,
    bdat_last_cr: bool,
    msg: MessageScanner,

    // ---- server side ----
    reply_framer: LineFramer,
    greeted: bool,
    /// Line number within the reply being read.
    reply_line: u32,
    banner_mask: bool,
    invalid_rcpts: u64,

    // ---- what the driver's deadlines follow ----
    /// Complete client command lines plus complete server replies seen.
    progress: u64,
    /// `EndOfData` entries in `pending`.
    owed_end_of_data: u32,
    /// A MAIL was forwarded and its transaction has not ended (refused MAIL, RSET,
    /// HELO/EHLO, or the reply to its end of data).
    transaction: bool,
}

impl Inspector {
    pub fn new(policy: Arc<Policy>) -> Inspector {
        let index = RuleIndex::new(&policy);
        let mut msg = MessageScanner::new();
        msg.watch_lengths(
            index.header_len_drop.unwrap_or(u64::MAX),
            index.body_len_drop.unwrap_or(u64::MAX),
        );
        let rate = if policy.rules.iter().any(|r| r.actions.rate_limit > 0) {
            vec![(None, 0); policy.rules.len()]
        } else {
            Vec::new()
        };
        Inspector {
            index,
            actor: Actor {
                dead: false,
                now: None,
                rate,
            },
            pending: VecDeque::with_capacity(16),
            embryonic: true,
            opaque: !policy.inspect,
            mode: if policy.inspect {
                ClientMode::Command
            } else {
                ClientMode::Opaque
            },
            cmd_framer: LineFramer::default(),
            hold: Vec::new(),
            holding: false,
            barrier: false,
            rcpt_count: 0,
            bdat_message: false,
            content: ContentScanner::new(),
            carry: Vec::new(),
            bdat_line_len: 0,
            bdat_last_cr: false,
            msg,
            reply_framer: LineFramer::default(),
            greeted: false,
            reply_line: 0,
            banner_mask: false,
            invalid_rcpts: 0,
            progress: 0,
            owed_end_of_data: 0,
            transaction: false,
            policy,
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Bytes read from the client.
    pub fn on_client_bytes(&mut self, input: Bytes, now: Instant, out: &mut Output) {
        self.actor.now = Some(now);
        if self.actor.dead {
            return;
        }
        if self.opaque && self.mode == ClientMode::Opaque {
            if !input.is_empty() {
                out.to_server.push(input);
            }
            return;
        }
        self.client_input(input, out);
    }

    /// Bytes read from the server.
    pub fn on_server_bytes(&mut self, input: Bytes, now: Instant, out: &mut Output) {
        self.actor.now = Some(now);
        if self.actor.dead {
            return;
        }
        if self.opaque {
            if !input.is_empty() {
                out.to_client.push(input);
            }
            return;
        }
        self.server_input(input, out);
    }

    /// What the session waits for (which deadline applies).
    pub fn phase(&self) -> Phase {
        match self.mode {
            ClientMode::Opaque => Phase::Opaque,
            _ if !self.greeted => Phase::Greeting,
            ClientMode::Data | ClientMode::Bdat { .. } | ClientMode::Blob { .. } => Phase::Content,
            _ if self.owed_end_of_data > 0 => Phase::AwaitingEndOfData,
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
        self.transaction
    }

    /// True until a HELO/EHLO has been answered 2xx (SPEC: embryonic session).
    pub fn is_embryonic(&self) -> bool {
        self.embryonic
    }

    /// True once STARTTLS was accepted: from here both directions are opaque and the
    /// driver may relay them verbatim without calling the inspector.
    pub fn is_opaque(&self) -> bool {
        self.opaque
    }

    /// True once a drop or reset verdict was given: nothing more will be forwarded.
    pub fn is_stopped(&self) -> bool {
        self.actor.dead
    }

    /// Bytes the inspector keeps between calls (partial lines, held bytes, parser
    /// state); bounded by the caps above whatever the peers send.
    pub fn buffered_bytes(&self) -> usize {
        self.cmd_framer.buffered()
            + self.hold.len()
            + self.carry.len()
            + self.reply_framer.buffered()
            + self.msg.buffered_bytes()
    }

    // ---------------------------------------------------------------------------
    // Client side.

    fn client_input(&mut self, input: Bytes, out: &mut Output) {
        let mut fwd = Fwd::default();
        let mut pos = 0;
        // `BDAT 0 LAST` ends a message with no further input.
        let empty_chunk = |mode: ClientMode| matches!(mode, ClientMode::Bdat { left: 0, .. });
        while (pos < input.len() || empty_chunk(self.mode)) && !self.actor.dead {
            if self.holding {
                let rest = &input[pos..];
                if self.hold.len() + rest.len() > HOLD_CAP {
                    self.improper_pipelining(out);
                } else {
                    self.hold.extend_from_slice(rest);
                }
                break;
            }
            pos = match self.mode {
                ClientMode::Command => self.client_commands(&input, pos, &mut fwd, out),
                ClientMode::AuthLine => self.client_auth_line(&input, pos, &mut fwd, out),
                ClientMode::Data => self.client_data(&input, pos, &mut fwd, out),
                ClientMode::Bdat { .. } => self.client_bdat(&input, pos, &mut fwd, out),
                ClientMode::Blob { left } => {
                    let end = pos + left.min((input.len() - pos) as u64) as usize;
                    fwd.pass(&input, pos, end, &mut out.to_server);
                    let left = left - (end - pos) as u64;
                    self.mode = if left == 0 {
                        ClientMode::Command
                    } else {
                        ClientMode::Blob { left }
                    };
                    end
                }
                ClientMode::Opaque => {
                    fwd.pass(&input, pos, input.len(), &mut out.to_server);
                    input.len()
                }
            };
        }
        // Whatever was judged clean before a stop still goes out, in order.
        fwd.flush(&input, &mut out.to_server);
    }

    fn improper_pipelining(&mut self, out: &mut Output) {
        // Attributed to the smuggling rule when there is one: content sent before the
        // server's go-ahead is how pipelined smuggling works.
        let ids = self.index.of(Kind::BareNewline);
        if let Some(&id) = ids.first() {
            let rule = &self.policy.rules[id as usize];
            out.events.push(Event {
                rule: id,
                actions: rule.actions,
                message_id: MessageId::PolicyAction,
                direction: Direction::ClientToServer,
                value: HOLD_CAP as u64,
            });
        }
        self.actor.stop(
            out,
            Verdict::Drop {
                reply: REPLY_IMPROPER_PIPELINING,
            },
        );
    }

    /// Releases held client bytes after the reply that decides what they are.
    fn release_hold(&mut self, out: &mut Output) {
        self.holding = false;
        if self.hold.is_empty() || self.actor.dead {
            return;
        }
        let held = Bytes::from(std::mem::take(&mut self.hold));
        if self.opaque {
            out.to_server.push(held);
        } else {
            self.client_input(held, out);
        }
    }

    /// Command mode: frames lines, judges each, returns where it stopped.
    fn client_commands(
        &mut self,
        input: &Bytes,
        mut pos: usize,
        fwd: &mut Fwd,
        out: &mut Output,
    ) -> usize {
        let mut framer = std::mem::take(&mut self.cmd_framer);
        while pos < input.len()
            && self.mode == ClientMode::Command
            && !self.holding
            && !self.actor.dead
        {
            pos = framer.step(
                CMD_LINE_CAP,
                input,
                pos,
                fwd,
                true,
                out,
                &mut CommandSide(self),
            );
        }
        self.cmd_framer = framer;
        pos
    }

    /// Judges one command from its content (CRLF excluded; for an overlong line its
    /// first [`CMD_LINE_CAP`] bytes, `len` then being `CMD_LINE_CAP + 1`). Queues it for
    /// reply pairing.
    fn on_command(
        &mut self,
        content: &[u8],
        len: u64,
        complete: bool,
        out: &mut Output,
    ) -> Outcome {
        let d = Direction::ClientToServer;
        let (policy, index) = (&*self.policy, &self.index);
        // An overlong line is judged when it crosses the cap, on `gt` rules (its final
        // length can only be larger); the others wait for its end.
        let when = if complete {
            LenCheck::Final { early: None }
        } else {
            LenCheck::Partial
        };
        if check_line_length(policy, index, &mut self.actor, out, len, when) == Outcome::Stop {
            return Outcome::Stop;
        }
        let word_end = memchr::memchr(b' ', content).unwrap_or(content.len());
        let word = &content[..word_end];
        let args = &content[word_end..];
        let verb = Verb::parse(word);

        let mut outcome = Outcome::Pass;
        // An empty line has nothing to mask; the server answers it 500 on its own.
        // (A line starting with a space is X-ed: a lenient server might trim it.)
        if !content.is_empty() && !policy.allowed_commands.contains(verb, word) {
            outcome = check_flag(
                policy,
                index,
                Kind::UnknownVerb,
                &mut self.actor,
                out,
                d,
                len,
            );
            // SPEC: a command outside the allowed set is always X-ed, rule or not.
            if outcome != Outcome::Stop {
                outcome = Outcome::Mask;
            }
        }
        if outcome != Outcome::Stop {
            let ids = index.of(Kind::CmdVerb);
            if !ids.is_empty() {
                outcome = outcome.and(check(
                    policy,
                    ids,
                    &mut self.actor,
                    out,
                    d,
                    0,
                    |c| matches!(c, Criterion::CmdVerb(set) if set.contains(verb, word)),
                ));
            }
        }
        match outcome {
            Outcome::Stop => return Outcome::Stop,
            Outcome::Mask => {
                self.queue(Pending::Other);
                return Outcome::Mask;
            }
            Outcome::Pass => {}
        }

        let pending = match verb {
            Verb::Helo | Verb::Ehlo => {
                // RFC 5321 §4.1.4: HELO/EHLO clears any transaction.
                self.reset_transaction();
                if verb == Verb::Helo {
                    Pending::Helo
                } else {
                    Pending::Ehlo
                }
            }
            Verb::Rset => {
                self.reset_transaction();
                Pending::Other
            }
            Verb::Mail => match self.check_path(args, verb, out) {
                Outcome::Pass => {
                    self.transaction = true;
                    Pending::Mail
                }
                Outcome::Mask => {
                    self.queue(Pending::Other);
                    return Outcome::Mask;
                }
                Outcome::Stop => return Outcome::Stop,
            },
            Verb::Rcpt => {
                self.rcpt_count += 1;
                let (policy, index) = (&*self.policy, &self.index);
                let count = self.rcpt_count;
                if check_cmp(
                    policy,
                    index,
                    Kind::CmdRcptCount,
                    &mut self.actor,
                    out,
                    d,
                    count,
                ) == Outcome::Stop
                {
                    return Outcome::Stop;
                }
                match self.check_path(args, verb, out) {
                    Outcome::Pass => Pending::Rcpt,
                    Outcome::Mask => {
                        self.queue(Pending::Other);
                        return Outcome::Mask;
                    }
                    Outcome::Stop => return Outcome::Stop,
                }
            }
            // An overlong DATA/STARTTLS/AUTH/BDAT line is a syntax error the server
            // rejects; it changes no state.
            // These end a pipelined group (RFC 2920 §3.1): hold what follows until
            // their reply says what it is.
            Verb::Data | Verb::Starttls | Verb::Auth if complete => {
                self.barrier = true;
                self.holding = true;
                match verb {
                    Verb::Data => Pending::Data,
                    Verb::Starttls => Pending::Starttls,
                    _ => Pending::Auth,
                }
            }
            Verb::Bdat if complete => {
                if let Some((size, last)) = bdat_arguments(args) {
                    if !self.bdat_message {
                        self.start_message();
                        self.bdat_message = true;
                    }
                    self.mode = ClientMode::Bdat { left: size, last };
                    if last {
                        // Its reply is the one to the end of the message.
                        self.queue(Pending::EndOfData);
                        return Outcome::Pass;
                    }
                }
                Pending::Other
            }
            // Passed only when the policy allows it (`allow_verbs`): its blob follows
            // the server's 354, like DATA content, so the client waits for the reply.
            Verb::Other if complete && word.eq_ignore_ascii_case(b"XEXCH50") => {
                match xexch50_size(args) {
                    Some(size) => {
                        self.barrier = true;
                        self.holding = true;
                        Pending::Xexch50 { size }
                    }
                    None => Pending::Other,
                }
            }
            _ => Pending::Other,
        };
        self.queue(pending);
        Outcome::Pass
    }

    fn queue(&mut self, pending: Pending) {
        if pending == Pending::EndOfData {
            self.owed_end_of_data += 1;
        }
        self.pending.push_back(pending);
        if self.pending.len() >= QUEUE_CAP {
            self.holding = true;
        }
    }

    fn reset_transaction(&mut self) {
        self.transaction = false;
        self.rcpt_count = 0;
        self.bdat_message = false;
    }

    /// The end of a message was forwarded: the next MAIL starts a new transaction; this
    /// one stays open (for [`Inspector::in_transaction`]) until its reply arrives.
    fn end_message(&mut self) {
        let open = self.transaction;
        self.reset_transaction();
        self.transaction = open;
    }

    fn start_message(&mut self) {
        self.msg.reset();
        self.content.reset();
        self.carry.clear();
        self.bdat_line_len = 0;
        self.bdat_last_cr = false;
    }

    /// The argument of MAIL FROM / RCPT TO, read as an RFC 5321 path: a pipe anywhere
    /// in the address ends the session, `special_character` looks at the address as
    /// written (the whole argument when it is not a path), an argument that is not a
    /// path is masked, and the sender and relay rules compare the canonical address.
    fn check_path(&mut self, args: &[u8], verb: Verb, out: &mut Output) -> Outcome {
        let d = Direction::ClientToServer;
        let (keyword, kind): (&[u8], PathKind) = match verb {
            Verb::Mail => (b"FROM:", PathKind::Reverse),
            _ => (b"TO:", PathKind::Forward),
        };
        let parsed = path::parse(args, keyword, kind);
        let written = parsed.map_or(args, |p| p.raw);
        let len = written.len() as u64;
        let (policy, index) = (&*self.policy, &self.index);
        if memchr::memchr(b'|', written).is_some() {
            let kind = Kind::AddressPipe;
            if check_flag(policy, index, kind, &mut self.actor, out, d, len) == Outcome::Stop {
                return Outcome::Stop;
            }
        }
        let mut outcome = Outcome::Pass;
        if has_special_character(written) {
            let kind = Kind::SpecialCharacter;
            outcome = check_flag(policy, index, kind, &mut self.actor, out, d, len);
            if outcome == Outcome::Stop {
                return outcome;
            }
        }
        let canonical = parsed.ok().and_then(|p| Address::of(&p));
        let Some(address) = canonical else {
            let kind = Kind::MalformedPath;
            return match check_flag(policy, index, kind, &mut self.actor, out, d, len) {
                Outcome::Stop => Outcome::Stop,
                // Masked whatever the rule's actions: a server must not act on a path
                // the rules could not read.
                _ => Outcome::Mask,
            };
        };
        outcome.and(match verb {
            Verb::Mail => self.check_sender(len, &address, out),
            _ => self.check_recipient(len, &address, out),
        })
    }

    /// `sender-address length` (of the path as written) and `regex` (on the canonical
    /// address).
    fn check_sender(&mut self, len: u64, address: &Address, out: &mut Output) -> Outcome {
        let d = Direction::ClientToServer;
        let (policy, index) = (&*self.policy, &self.index);
        let mut outcome = check_cmp(
            policy,
            index,
            Kind::SenderAddressLength,
            &mut self.actor,
            out,
            d,
            len,
        );
        if outcome != Outcome::Stop {
            let ids = index.of(Kind::SenderAddressRegex);
            if !ids.is_empty() {
                let addr = address.as_bytes();
                outcome = outcome.and(check(
                    policy,
                    ids,
                    &mut self.actor,
                    out,
                    d,
                    len,
                    |c| matches!(c, Criterion::SenderAddressRegex(re) if re.is_match(addr)),
                ));
            }
        }
        outcome
    }

    /// `mail_relay`: a recipient domain other than the configured one.
    fn check_recipient(&mut self, len: u64, address: &Address, out: &mut Output) -> Outcome {
        let d = Direction::ClientToServer;
        let (policy, index) = (&*self.policy, &self.index);
        let Some(domain) = policy.mail_relay.as_deref() else {
            return Outcome::Pass;
        };
        // A mailbox without a domain (`<postmaster>`) is the server's own: not relaying.
        match address.domain() {
            Some(rcpt_domain) if rcpt_domain != domain.as_bytes() => {
                check_flag(policy, index, Kind::MailRelay, &mut self.actor, out, d, len)
            }
            _ => Outcome::Pass,
        }
    }

    /// After `334`: one AUTH response line passes untouched, then we wait again.
    fn client_auth_line(
        &mut self,
        input: &Bytes,
        pos: usize,
        fwd: &mut Fwd,
        out: &mut Output,
    ) -> usize {
        match scanner::line_end(&input[pos..]) {
            Some(n) => {
                self.progress += 1;
                fwd.pass(input, pos, pos + n, &mut out.to_server);
                self.mode = ClientMode::Command;
                self.holding = true;
                pos + n
            }
            None => {
                fwd.pass(input, pos, input.len(), &mut out.to_server);
                input.len()
            }
        }
    }

    /// A content line growing past the lowest length threshold of a rule that ends the
    /// session is cut there, not at its end: `raw` is its length so far (dot-stuffing
    /// included, `stuffed` says whether it starts with a doubled dot). Returns how many
    /// raw bytes of the line may go out, when the rules fired. Checked at positions
    /// that do not depend on how reads split the line (bare bytes, line ends) and at
    /// read ends, always cutting at the same byte, so the output does not either.
    fn content_crossing(&mut self, raw: u64, stuffed: bool, out: &mut Output) -> Option<u64> {
        let (kind, floor) = if self.msg.in_header() {
            (Kind::HeaderLineLength, self.index.header_line_drop)
        } else {
            (Kind::BodyLineLength, self.index.body_line_drop)
        };
        let n = floor?;
        let limit = n + stuffed as u64;
        if raw <= limit {
            return None;
        }
        for &id in self.index.of(kind) {
            let rule = &self.policy.rules[id as usize];
            let at_floor = matches!(
                rule.criterion,
                Criterion::BodyLineLength(Cmp::Gt(t)) | Criterion::HeaderLineLength(Cmp::Gt(t)) if t == n
            );
            if at_floor && !rule.negate && (rule.actions.drop_connection || rule.actions.reset) {
                let direction = Direction::ClientToServer;
                if self.actor.fire(id, rule, direction, n + 1, out) == Outcome::Stop {
                    break;
                }
            }
        }
        Some(limit)
    }

    /// The first byte of the current content line: from the carried head, or this read.
    fn line_starts_with_dot(&self, buf: &[u8], line_start: usize) -> bool {
        match self.carry.first() {
            Some(&b) => b == b'.',
            None => buf.get(line_start) == Some(&b'.'),
        }
    }

    /// The hot loop of a message body: whole CRLF lines from `pos` that no rule can
    /// match (no length rule reaches them, not a boundary, not starting with a dot, no
    /// bare CR or LF) only count towards the body length. Returns where the first line
    /// needing the full path starts. Equivalent to that path for these lines; it just
    /// skips the per-line calls.
    #[inline]
    fn plain_body_lines(&mut self, buf: &[u8], mut pos: usize) -> usize {
        let Some(floor) = self.index.body_line_floor else {
            return pos;
        };
        while let Some(i) = memchr::memchr2(b'\r', b'\n', &buf[pos..]) {
            let line = &buf[pos..];
            let plain = line[i] == b'\r'
                && line.get(i + 1) == Some(&b'\n')
                && i as u64 <= floor
                && line[0] != b'.'
                && self.msg.plain_body_line(&line[..i], i as u64 + 2);
            if !plain {
                break;
            }
            pos += i + 2;
        }
        pos
    }

    /// DATA content: strict CRLF lines, dot-stuffing, end of data, smuggling defence.
    fn client_data(
        &mut self,
        input: &Bytes,
        start: usize,
        fwd: &mut Fwd,
        out: &mut Output,
    ) -> usize {
        let buf: &[u8] = input;
        let mut pos = start;
        let mut line_start = start;
        // A CR held back at the end of the previous read: it goes out once we know it
        // is not the start of a smuggled line end (or that such lines are tolerated).
        let mut owes_cr = self.content.holds_cr();
        // Raw bytes of the current line that came in earlier reads.
        let mut prior = self.content.line_len();
        loop {
            // Only at the start of a line with nothing of it seen yet.
            if pos == line_start && prior == 0 && !owes_cr && self.carry.is_empty() {
                pos = self.plain_body_lines(buf, pos);
                fwd.pass(input, line_start, pos, &mut out.to_server);
                line_start = pos;
                if pos == buf.len() {
                    return pos;
                }
            }
            let step = self.content.next(buf, pos);
            if owes_cr && matches!(step, Scan::Bare { held: true, .. }) {
                owes_cr = false;
                if check_flag(
                    &self.policy,
                    &self.index,
                    Kind::BareNewline,
                    &mut self.actor,
                    out,
                    Direction::ClientToServer,
                    b'\r' as u64,
                ) == Outcome::Stop
                {
                    return pos;
                }
                let stuffed = self.carry.first() == Some(&b'.');
                if self.content_crossing(prior + 1, stuffed, out).is_some() {
                    return pos;
                }
                prior += 1;
                fwd.emit(input, Bytes::from_static(b"\r"), &mut out.to_server);
                // The CR is content of the line: its head must show it, as it would
                // had the read not split there.
                if self.carry.len() < LINE_HEAD_CAP {
                    self.carry.push(b'\r');
                }
                continue;
            }
            match step {
                Scan::Line { end, len } => {
                    // Content of this line inside this read (an end of 1 means the CR
                    // came at the end of the previous read).
                    let content_end = end.saturating_sub(2).max(line_start);
                    let raw = prior + (content_end - line_start) as u64;
                    let stuffed = self.line_starts_with_dot(buf, line_start);
                    if let Some(keep) = self.content_crossing(raw, stuffed, out) {
                        let cut = line_start + keep.saturating_sub(prior) as usize;
                        fwd.pass(input, line_start, cut, &mut out.to_server);
                        return cut;
                    }
                    let piece = &buf[line_start..content_end];
                    let head: &[u8] = if self.carry.is_empty() {
                        &piece[..piece.len().min(LINE_HEAD_CAP)]
                    } else {
                        let room = LINE_HEAD_CAP.saturating_sub(self.carry.len());
                        self.carry
                            .extend_from_slice(&piece[..piece.len().min(room)]);
                        &self.carry
                    };
                    if len == 1 && head == b"." {
                        // RFC 5321 §4.1.1.4: CRLF.CRLF ends the message.
                        let mut judge = Judge {
                            policy: &self.policy,
                            index: &self.index,
                            actor: &mut self.actor,
                            out: &mut *out,
                        };
                        if !self.msg.on_end(&mut judge) {
                            // Stop before the line end: the dot never ends the message.
                            fwd.pass(input, line_start, content_end, &mut out.to_server);
                            return content_end;
                        }
                        if std::mem::take(&mut owes_cr) {
                            fwd.emit(input, Bytes::from_static(b"\r"), &mut out.to_server);
                        }
                        fwd.pass(input, line_start, end, &mut out.to_server);
                        self.carry.clear();
                        self.queue(Pending::EndOfData);
                        self.end_message();
                        self.mode = ClientMode::Command;
                        return end;
                    }
                    // RFC 5321 §4.5.2: a leading dot was doubled by the client.
                    let (head, len) = match head {
                        [b'.', rest @ ..] => (rest, len - 1),
                        _ => (head, len),
                    };
                    let mut judge = Judge {
                        policy: &self.policy,
                        index: &self.index,
                        actor: &mut self.actor,
                        out,
                    };
                    if !self.msg.on_line(head, len, len + 2, &mut judge) {
                        // The cut is the line end, wherever the reads split the line.
                        fwd.pass(input, line_start, content_end, &mut out.to_server);
                        return content_end;
                    }
                    self.carry.clear();
                    if std::mem::take(&mut owes_cr) {
                        fwd.emit(input, Bytes::from_static(b"\r"), &mut out.to_server);
                    }
                    fwd.pass(input, line_start, end, &mut out.to_server);
                    line_start = end;
                    pos = end;
                    prior = 0;
                }
                Scan::Bare {
                    at,
                    resume,
                    cr,
                    held: false,
                } => {
                    let raw = prior + (at - line_start) as u64;
                    let stuffed = self.line_starts_with_dot(buf, line_start);
                    if let Some(keep) = self.content_crossing(raw, stuffed, out) {
                        let cut = line_start + keep.saturating_sub(prior) as usize;
                        fwd.pass(input, line_start, cut, &mut out.to_server);
                        return cut;
                    }
                    if check_flag(
                        &self.policy,
                        &self.index,
                        Kind::BareNewline,
                        &mut self.actor,
                        out,
                        Direction::ClientToServer,
                        if cr { b'\r' } else { b'\n' } as u64,
                    ) == Outcome::Stop
                    {
                        // Everything before the bare byte, nothing from it on.
                        fwd.pass(input, line_start, at, &mut out.to_server);
                        return at;
                    }
                    pos = resume;
                }
                // Only the first step of a read can report the held CR; judged above.
                Scan::Bare {
                    held: true, resume, ..
                } => pos = resume,
                Scan::Partial { holds_cr, .. } => {
                    let end = buf.len() - holds_cr as usize;
                    let raw = prior + (end - line_start) as u64;
                    let stuffed = self.line_starts_with_dot(buf, line_start);
                    if let Some(keep) = self.content_crossing(raw, stuffed, out) {
                        let cut = line_start + keep.saturating_sub(prior) as usize;
                        fwd.pass(input, line_start, cut, &mut out.to_server);
                        return cut;
                    }
                    let piece = &buf[line_start..end];
                    let room = LINE_HEAD_CAP.saturating_sub(self.carry.len());
                    self.carry
                        .extend_from_slice(&piece[..piece.len().min(room)]);
                    fwd.pass(input, line_start, end, &mut out.to_server);
                    return buf.len();
                }
            }
        }
    }

    /// BDAT chunk content (RFC 3030 §2): exactly `left` octets, no dot handling.
    fn client_bdat(
        &mut self,
        input: &Bytes,
        start: usize,
        fwd: &mut Fwd,
        out: &mut Output,
    ) -> usize {
        let ClientMode::Bdat { left, last } = self.mode else {
            return start;
        };
        let take = left.min((input.len() - start) as u64) as usize;
        let end = start + take;
        let buf: &[u8] = input;
        let mut pos = start;
        while pos < end {
            match memchr::memchr(b'\n', &buf[pos..end]) {
                Some(i) => {
                    let lf = pos + i;
                    let ends_crlf = if i > 0 {
                        buf[lf - 1] == b'\r'
                    } else {
                        self.bdat_last_cr
                    };
                    let wire_len = self.bdat_line_len + i as u64 + 1;
                    let len = wire_len - 1 - ends_crlf as u64;
                    // With `i == 0` a CR ending the previous read was the line's CR.
                    let content_end = if i > 0 { lf - ends_crlf as usize } else { pos };
                    let piece = &buf[pos..content_end];
                    let head: &[u8] = if self.carry.is_empty() {
                        &piece[..piece.len().min(LINE_HEAD_CAP)]
                    } else {
                        let room = LINE_HEAD_CAP.saturating_sub(self.carry.len());
                        self.carry
                            .extend_from_slice(&piece[..piece.len().min(room)]);
                        let keep = (len as usize).min(self.carry.len());
                        &self.carry[..keep]
                    };
                    let mut judge = Judge {
                        policy: &self.policy,
                        index: &self.index,
                        actor: &mut self.actor,
                        out,
                    };
                    if !self.msg.on_line(head, len, wire_len, &mut judge) {
                        // Cut before the LF, wherever the reads split the line.
                        fwd.pass(input, pos, lf, &mut out.to_server);
                        return lf;
                    }
                    self.carry.clear();
                    self.bdat_line_len = 0;
                    self.bdat_last_cr = false;
                    fwd.pass(input, pos, lf + 1, &mut out.to_server);
                    pos = lf + 1;
                }
                None => {
                    let piece = &buf[pos..end];
                    let room = LINE_HEAD_CAP.saturating_sub(self.carry.len());
                    self.carry
                        .extend_from_slice(&piece[..piece.len().min(room)]);
                    self.bdat_line_len += piece.len() as u64;
                    self.bdat_last_cr = piece.last() == Some(&b'\r');
                    fwd.pass(input, pos, end, &mut out.to_server);
                    pos = end;
                }
            }
        }
        let left = left - take as u64;
        if left > 0 {
            self.mode = ClientMode::Bdat { left, last };
            return end;
        }
        self.mode = ClientMode::Command;
        if last {
            let mut judge = Judge {
                policy: &self.policy,
                index: &self.index,
                actor: &mut self.actor,
                out: &mut *out,
            };
            // A last line without CRLF is still a line of the message.
            let ok = (self.bdat_line_len == 0
                || self.msg.on_line(
                    &self.carry,
                    self.bdat_line_len,
                    self.bdat_line_len,
                    &mut judge,
                ))
                && self.msg.on_end(&mut judge);
            if !ok {
                // The LAST chunk must never be complete at the server.
                fwd.retract_last(&mut out.to_server);
                return end;
            }
            self.carry.clear();
            self.end_message();
        }
        end
    }

    // ---------------------------------------------------------------------------
    // Server side.

    fn server_input(&mut self, input: Bytes, out: &mut Output) {
        let mut fwd = Fwd::default();
        let mut pos = 0;
        let mut framer = std::mem::take(&mut self.reply_framer);
        while pos < input.len() && !self.actor.dead {
            if self.opaque {
                fwd.pass(&input, pos, input.len(), &mut out.to_client);
                break;
            }
            pos = framer.step(
                REPLY_LINE_CAP,
                &input,
                pos,
                &mut fwd,
                false,
                out,
                &mut ReplySide(self),
            );
        }
        self.reply_framer = framer;
        fwd.flush(&input, &mut out.to_client);
    }

    /// Judges one reply line from its content (CRLF excluded; for an overlong line its
    /// first [`REPLY_LINE_CAP`] bytes).
    fn on_reply(&mut self, line: &[u8], out: &mut Output) -> LineDecision {
        let d = Direction::ServerToClient;
        let code = reply_code(line);
        let last = line.get(3) != Some(&b'-');
        let line_no = self.reply_line;
        self.reply_line = if last { 0 } else { line_no + 1 };

        if !self.greeted {
            // RFC 5321 §4.3.1: the first reply is the greeting (its text is the banner).
            if line_no == 0 {
                let (policy, index) = (&*self.policy, &self.index);
                let ids = index.of(Kind::Banner);
                self.banner_mask = false;
                if !ids.is_empty() {
                    let outcome =
                        check_flag(policy, index, Kind::Banner, &mut self.actor, out, d, 0);
                    if outcome == Outcome::Stop {
                        return LineDecision::Stop;
                    }
                    self.banner_mask = outcome == Outcome::Mask;
                }
            }
            let mask = self.banner_mask;
            if last {
                self.progress += 1;
                self.greeted = true;
                self.banner_mask = false;
            }
            if mask {
                return LineDecision::Rewrite(Bytes::from(mask_banner(line)), Some(b'*'));
            }
            return LineDecision::Pass;
        }

        let Some(&head) = self.pending.front() else {
            // Unsolicited (e.g. a 421 before closing): forwarded as is.
            return LineDecision::Pass;
        };
        let mut action = LineDecision::Pass;
        if head == Pending::Ehlo && line_no > 0 && (200..300).contains(&code) {
            match self.ehlo_keyword(line, out) {
                Outcome::Stop => return LineDecision::Stop,
                Outcome::Mask => {
                    action = LineDecision::Rewrite(Bytes::from(mask_keyword(line)), None)
                }
                Outcome::Pass => {}
            }
        }
        if !last {
            return action;
        }
        self.progress += 1;
        // The reply is complete: it answers `head` (RFC 2920 §3: replies come in order).
        let class = code / 100;
        match head {
            Pending::Helo | Pending::Ehlo => {
                self.pending.pop_front();
                if class == 2 {
                    self.embryonic = false;
                }
            }
            Pending::Mail => {
                self.pending.pop_front();
                if class != 2 {
                    self.transaction = self.mail_pending();
                }
            }
            Pending::EndOfData => {
                self.pending.pop_front();
                self.owed_end_of_data -= 1;
                self.transaction = self.mail_pending();
                self.release_after_reply(out);
            }
            Pending::Rcpt => {
                self.pending.pop_front();
                if class == 5 {
                    self.invalid_rcpts += 1;
                    let (policy, index) = (&*self.policy, &self.index);
                    let n = self.invalid_rcpts;
                    if check_cmp(
                        policy,
                        index,
                        Kind::InvalidRecipientsCount,
                        &mut self.actor,
                        out,
                        d,
                        n,
                    ) == Outcome::Stop
                    {
                        return LineDecision::Stop;
                    }
                }
            }
            Pending::Data => {
                self.pending.pop_front();
                self.barrier = false;
                if code == 354 {
                    self.start_message();
                    self.mode = ClientMode::Data;
                }
                self.release_after_reply(out);
            }
            Pending::Starttls => {
                self.pending.pop_front();
                self.barrier = false;
                if code == 220 {
                    // RFC 3207 §4: TLS starts after this reply; nothing after it can be read.
                    let (policy, index) = (&*self.policy, &self.index);
                    if check_flag(policy, index, Kind::TlsStarted, &mut self.actor, out, d, 0)
                        == Outcome::Stop
                    {
                        return LineDecision::Stop;
                    }
                    self.opaque = true;
                    self.embryonic = false;
                    self.mode = ClientMode::Opaque;
                }
                self.release_after_reply(out);
            }
            Pending::Auth => {
                if code == 334 {
                    self.mode = ClientMode::AuthLine;
                    self.holding = false;
                    self.release_hold(out);
                } else {
                    self.pending.pop_front();
                    self.barrier = false;
                    self.release_after_reply(out);
                }
            }
            Pending::Xexch50 { size } => {
                self.pending.pop_front();
                self.barrier = false;
                if code == 354 {
                    self.mode = ClientMode::Blob { left: size };
                }
                self.release_after_reply(out);
            }
            Pending::Other => {
                self.pending.pop_front();
                self.release_after_reply(out);
            }
        }
        // If held client bytes just stopped the session, the framer withholds this line
        // too: a stop forwards nothing of the line being judged.
        action
    }

    /// A later MAIL is still awaiting its reply (pipelined behind the reply just read).
    fn mail_pending(&self) -> bool {
        self.pending.contains(&Pending::Mail)
    }

    fn release_after_reply(&mut self, out: &mut Output) {
        if self.holding && !self.barrier && self.pending.len() < QUEUE_CAP {
            self.release_hold(out);
        }
    }

    /// An EHLO reply line after the first: mask its keyword per the rules.
    fn ehlo_keyword(&mut self, line: &[u8], out: &mut Output) -> Outcome {
        let ids = self.index.of(Kind::EhloReplyParameter);
        if ids.is_empty() || line.len() < 4 {
            return Outcome::Pass;
        }
        let text = &line[4..scanner::content_len(line).max(4)];
        let word = &text[..memchr::memchr(b' ', text).unwrap_or(text.len())];
        if word.is_empty() {
            return Outcome::Pass;
        }
        let policy = &*self.policy;
        check(
            policy,
            ids,
            &mut self.actor,
            out,
            Direction::ServerToClient,
            0,
            |c| matches!(c, Criterion::EhloReplyParameter(set) if policy.ehlo_matches(*set, word)),
        )
    }
}

/// The three-digit reply code, or 0 when the line does not start with one.
fn reply_code(line: &[u8]) -> u16 {
    match line {
        [a, b, c, ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            (a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16
        }
        _ => 0,
    }
}

/// `220 mail.example.com ESMTP` → `220 ********************`: code and separator
/// kept, every other character of the text `*`, length and line end kept.
fn mask_banner(line: &[u8]) -> Vec<u8> {
    let content = scanner::content_len(line);
    let keep = 4.min(content);
    let mut masked = line.to_vec();
    for b in &mut masked[keep..content] {
        *b = b'*';
    }
    masked
}

/// `250-X-EXPS GSSAPI` → `250-XXXXXX GSSAPI`: the keyword becomes same-length `X`s.
fn mask_keyword(line: &[u8]) -> Vec<u8> {
    let content = scanner::content_len(line);
    let mut masked = line.to_vec();
    if content > 4 {
        let text = &line[4..content];
        let word = memchr::memchr(b' ', text).unwrap_or(text.len());
        for b in &mut masked[4..4 + word] {
            *b = b'X';
        }
    }
    masked
}

/// `BDAT <size> [LAST]` (RFC 3030 §2).
fn bdat_arguments(args: &[u8]) -> Option<(u64, bool)> {
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next()?;
    if size.is_empty() || size.len() > 19 || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = size.iter().fold(0u64, |n, &d| n * 10 + (d - b'0') as u64);
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// `XEXCH50 <size> <auth level>`: the blob's size.
fn xexch50_size(args: &[u8]) -> Option<u64> {
    let size = args.split(|&b| b == b' ').find(|w| !w.is_empty())?;
    if size.is_empty() || size.len() > 19 || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(size.iter().fold(0u64, |n, &d| n * 10 + (d - b'0') as u64))
}

/// `special_character`: backquote or NUL in an address (the pipe has its own rule).
fn has_special_character(addr: &[u8]) -> bool {
    memchr::memchr2(b'`', 0, addr).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MessageId;
    use crate::rules::{parse_rule, Actions};

    const DROP_LOG: Actions = Actions {
        drop_connection: true,
        reset: false,
        log: true,
        mask: false,
        rate_limit: 0,
    };

    /// A session fed byte-literal transcripts; collects everything forwarded.
    struct Session {
        inspector: Inspector,
        out: Output,
        to_server: Vec<u8>,
        to_client: Vec<u8>,
        events: Vec<Event>,
        verdict: Verdict,
        now: Instant,
    }

    impl Session {
        fn new(policy: Policy) -> Session {
            Session {
                inspector: Inspector::new(Arc::new(policy)),
                out: Output::default(),
                to_server: Vec::new(),
                to_client: Vec::new(),
                events: Vec::new(),
                verdict: Verdict::Continue,
                now: Instant::now(),
            }
        }

        fn builtin(name: &str) -> Session {
            Session::new(Policy::builtin(name).unwrap())
        }

        /// `default` plus extra `match ...` rules.
        fn with_rules(rules: &[&str]) -> Session {
            let mut p = Policy::builtin("default").unwrap();
            for r in rules {
                p.rules.push(parse_rule(r).unwrap());
            }
            Session::new(p)
        }

        fn collect(&mut self) {
            for b in self.out.to_server.drain(..) {
                self.to_server.extend_from_slice(&b);
            }
            for b in self.out.to_client.drain(..) {
                self.to_client.extend_from_slice(&b);
            }
            self.events.append(&mut self.out.events);
            if self.out.verdict != Verdict::Continue {
                assert_eq!(self.verdict, Verdict::Continue, "one verdict only");
                self.verdict = self.out.verdict;
            }
            self.out.clear();
        }

        fn client(&mut self, bytes: &[u8]) -> &mut Self {
            self.inspector
                .on_client_bytes(Bytes::copy_from_slice(bytes), self.now, &mut self.out);
            self.collect();
            self
        }

        fn server(&mut self, bytes: &[u8]) -> &mut Self {
            self.inspector
                .on_server_bytes(Bytes::copy_from_slice(bytes), self.now, &mut self.out);
            self.collect();
            self
        }

        /// Greeting, EHLO and its reply, MAIL and RCPT accepted.
        fn in_transaction(&mut self) -> &mut Self {
            self.server(b"220 mx ESMTP\r\n")
                .client(b"EHLO c\r\n")
                .server(b"250-mx\r\n250 PIPELINING\r\n")
                .client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
                .server(b"250 ok\r\n250 ok\r\n");
            self.to_server.clear();
            self.to_client.clear();
            self.events.clear();
            self
        }

        /// ... then DATA accepted.
        fn in_data(&mut self) -> &mut Self {
            self.in_transaction()
                .client(b"DATA\r\n")
                .server(b"354 go\r\n");
            self.to_server.clear();
            self.to_client.clear();
            self.events.clear();
            self
        }

        fn server_text(&self) -> String {
            String::from_utf8_lossy(&self.to_server).into_owned()
        }

        fn client_text(&self) -> String {
            String::from_utf8_lossy(&self.to_client).into_owned()
        }

        fn rule_text(&self, event: &Event) -> &str {
            &self.inspector.policy().rules[event.rule as usize].text
        }

        fn drop_reply(&self) -> String {
            match self.verdict {
                Verdict::Drop { reply } => String::from_utf8_lossy(reply).into_owned(),
                other => panic!("expected a drop, got {other:?}"),
            }
        }
    }

    // ---- server replies: banner and EHLO masking ----

    #[test]
    fn banner_is_masked_keeping_code_length_and_crlf() {
        let mut s = Session::builtin("default");
        s.server(b"220-mx.example.com ESMTP Postfix\r\n220 \r\n");
        assert_eq!(
            s.client_text(),
            "220-****************************\r\n220 \r\n"
        );
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].message_id, MessageId::ReplacedString);
        // The next reply is not a banner.
        s.client(b"NOOP\r\n").server(b"250 2.0.0 Ok\r\n");
        assert!(s.client_text().ends_with("250 2.0.0 Ok\r\n"));
    }

    #[test]
    fn banner_passes_without_mask_banner() {
        let mut p = Policy::builtin("default").unwrap();
        p.rules
            .retain(|r| !matches!(r.criterion, Criterion::Banner));
        let mut s = Session::new(p);
        s.server(b"220 mx ESMTP\r\n");
        assert_eq!(s.client_text(), "220 mx ESMTP\r\n");
        assert!(s.events.is_empty());
    }

    #[test]
    fn banner_split_across_reads_is_masked_the_same() {
        let mut s = Session::builtin("default");
        s.server(b"220 mx.exa").server(b"mple.com\r");
        assert_eq!(s.client_text(), "");
        s.server(b"\n");
        assert_eq!(s.client_text(), "220 **************\r\n");
    }

    #[test]
    fn ehlo_keywords_outside_the_policy_are_masked_same_length() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n").client(b"EHLO c\r\n");
        s.to_client.clear();
        s.server(b"250-mx.example.com\r\n250-PIPELINING\r\n250-X-EXPS GSSAPI\r\n250-ETRN\r\n250-STARTTLS\r\n250 CHUNKING\r\n");
        assert_eq!(
            s.client_text(),
            "250-mx.example.com\r\n250-PIPELINING\r\n250-XXXXXX GSSAPI\r\n250-XXXX\r\n250-STARTTLS\r\n250 CHUNKING\r\n"
        );
        assert!(!s.inspector.is_embryonic());
    }

    #[test]
    fn asa_compat_masks_starttls_pipelining_and_chunking() {
        let mut s = Session::builtin("asa-compat");
        s.server(b"220 x\r\n").client(b"EHLO c\r\n");
        s.to_client.clear();
        s.server(b"250-mx\r\n250-STARTTLS\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 CHUNKING\r\n");
        assert_eq!(
            s.client_text(),
            "250-mx\r\n250-XXXXXXXX\r\n250-XXXXXXXXXX\r\n250-SIZE 1000\r\n250 XXXXXXXX\r\n"
        );
    }

    #[test]
    fn private_ehlo_keywords_pass_when_allowed() {
        let mut p = Policy::builtin("default").unwrap();
        p.allowed_private_ehlo.push(b"X-LINK2STATE".to_vec().into());
        let mut s = Session::new(p);
        s.server(b"220 x\r\n").client(b"EHLO c\r\n");
        s.to_client.clear();
        s.server(b"250-mx\r\n250-X-LINK2STATE\r\n250 XEXCH50\r\n");
        assert_eq!(
            s.client_text(),
            "250-mx\r\n250-X-LINK2STATE\r\n250 XXXXXXX\r\n"
        );
    }

    #[test]
    fn embryonic_until_helo_is_accepted() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n").client(b"HELO c\r\n");
        assert!(s.inspector.is_embryonic());
        s.server(b"501 no\r\n");
        assert!(s.inspector.is_embryonic());
        s.client(b"HELO c\r\n").server(b"250 ok\r\n");
        assert!(!s.inspector.is_embryonic());
    }

    // ---- commands ----

    #[test]
    fn unknown_verbs_become_same_length_x_lines_in_order() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n");
        s.client(b"NOOP\r\nXYZZY magic words\r\nTURN\r\nNOOP\r\n");
        assert_eq!(
            s.server_text(),
            "NOOP\r\nXXXXXXXXXXXXXXXXX\r\nXXXX\r\nNOOP\r\n"
        );
        assert_eq!(
            s.events
                .iter()
                .filter(|e| s.rule_text(e).contains("verb")
                    || e.message_id == MessageId::ReplacedString)
                .count(),
            3
        );
        s.to_client.clear();
        s.server(b"250 ok\r\n502 5.5.2 what\r\n502 5.5.2 what\r\n250 ok\r\n");
        assert_eq!(
            s.client_text(),
            "250 ok\r\n502 5.5.2 what\r\n502 5.5.2 what\r\n250 ok\r\n"
        );
        assert!(s.inspector.pending.is_empty());
    }

    #[test]
    fn pipelined_replies_pair_with_their_commands() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n");
        s.client(b"RSET\r\nEHLO c\r\nNOOP\r\nVRFY x\r\n");
        s.to_client.clear();
        // Only the EHLO reply's keyword lines are subject to masking.
        s.server(b"250 X-EXPS ok\r\n250-mx\r\n250-X-EXPS GSSAPI\r\n250 SIZE 10\r\n250 X-EXPS\r\n252 X-EXPS\r\n");
        assert_eq!(
            s.client_text(),
            "250 X-EXPS ok\r\n250-mx\r\n250-XXXXXX GSSAPI\r\n250 SIZE 10\r\n250 X-EXPS\r\n252 X-EXPS\r\n"
        );
        assert!(s.inspector.pending.is_empty());
    }

    #[test]
    fn private_verbs_pass_when_allowed() {
        let mut p = Policy::builtin("default").unwrap();
        p.allowed_commands.insert_name("X-LINK2STATE");
        let mut s = Session::new(p);
        s.server(b"220 x\r\n")
            .client(b"X-LINK2STATE LAST CHUNK=1\r\nXEXCH50 10 2\r\n");
        assert_eq!(
            s.server_text(),
            "X-LINK2STATE LAST CHUNK=1\r\nXXXXXXXXXXXX\r\n"
        );
    }

    #[test]
    fn xexch50_blob_after_354_is_relayed_untouched() {
        let mut p = Policy::builtin("default").unwrap();
        p.allowed_commands.insert_name("XEXCH50");
        let mut s = Session::new(p);
        s.in_transaction();
        s.client(b"XEXCH50 12 2\r\nBINARY\r\n");
        assert_eq!(
            s.server_text(),
            "XEXCH50 12 2\r\n",
            "the blob waits for the 354"
        );
        s.server(b"354 Send binary data\r\n");
        // 12 octets of blob ("BINARY\r\n\0\nXY"), then a command again.
        s.client(b"\0\nXYNOOP\r\nXYZZY\r\n");
        assert_eq!(
            s.to_server,
            b"XEXCH50 12 2\r\nBINARY\r\n\0\nXYNOOP\r\nXXXXX\r\n"
        );
        assert_eq!(s.inspector.mode, ClientMode::Command);

        // Refused: what followed is commands.
        let mut p = Policy::builtin("default").unwrap();
        p.allowed_commands.insert_name("XEXCH50");
        let mut s = Session::new(p);
        s.in_transaction();
        s.client(b"XEXCH50 12 2\r\nBINARY\r\n")
            .server(b"500 no\r\n");
        assert_eq!(s.server_text(), "XEXCH50 12 2\r\nXXXXXX\r\n");
    }

    #[test]
    fn empty_lines_pass_and_leading_spaces_do_not_hide_a_verb() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n").client(b"\r\n VRFY root\r\n");
        assert_eq!(s.server_text(), "\r\nXXXXXXXXXX\r\n");
        assert_eq!(s.events.len(), 2, "banner mask and one X-ed line");
    }

    #[test]
    fn mailguard_passes_only_rfc821_minimum() {
        let mut s = Session::builtin("mailguard");
        s.server(b"220 mx ESMTP\r\n");
        assert_eq!(s.client_text(), "220 ********\r\n");
        s.client(b"EHLO c\r\nHELO c\r\nVRFY root\r\n");
        assert_eq!(s.server_text(), "XXXXXX\r\nHELO c\r\nXXXXXXXXX\r\n");
    }

    #[test]
    fn cmd_verb_rule_with_mask_x_es_the_command() {
        let mut s = Session::with_rules(&["match cmd verb VRFY EXPN mask log"]);
        s.server(b"220 x\r\n")
            .client(b"VRFY root\r\nEXPN staff\r\nHELP\r\n");
        assert_eq!(s.server_text(), "XXXXXXXXX\r\nXXXXXXXXXX\r\nHELP\r\n");
    }

    #[test]
    fn match_not_cmd_verb() {
        let mut s = Session::with_rules(&[
            "match not cmd verb HELO EHLO MAIL RCPT DATA QUIT drop-connection log",
        ]);
        s.server(b"220 x\r\n").client(b"EHLO c\r\nNOOP\r\n");
        assert_eq!(s.server_text(), "EHLO c\r\n");
        assert!(s.drop_reply().starts_with("421 4.7.0 "));
    }

    #[test]
    fn command_line_length_limit_hit_and_near_miss() {
        let mut s = Session::builtin("default");
        let ok = format!("NOOP {}\r\n", "a".repeat(512 - 5));
        let long = format!("NOOP {}\r\n", "a".repeat(513 - 5));
        s.server(b"220 x\r\n").client(ok.as_bytes());
        assert_eq!(s.server_text(), ok);
        assert_eq!(s.verdict, Verdict::Continue);
        s.client(long.as_bytes()).client(b"QUIT\r\n");
        assert_eq!(s.server_text(), ok, "nothing of the long line or after it");
        assert_eq!(
            s.drop_reply(),
            "421 4.7.0 Command line too long, closing connection\r\n"
        );
        let e = s.events.last().unwrap();
        assert_eq!((e.value, e.message_id), (513, MessageId::PolicyAction));
    }

    #[test]
    fn command_split_across_reads_is_judged_whole() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n")
            .client(b"XY")
            .client(b"ZZY x")
            .client(b"\r")
            .client(b"\nNO");
        assert_eq!(s.server_text(), "XXXXXXX\r\n");
        s.client(b"OP\r\n");
        assert_eq!(s.server_text(), "XXXXXXX\r\nNOOP\r\n");
        assert!(s.inspector.buffered_bytes() == 0);
    }

    #[test]
    fn overlong_command_without_rule_streams_and_keeps_bytes() {
        let mut p = Policy::builtin("default").unwrap();
        p.rules
            .retain(|r| !matches!(r.criterion, Criterion::CmdLineLength(_)));
        let mut s = Session::new(p);
        s.server(b"220 x\r\n");
        let line = format!("NOOP {}\r\n", "b".repeat(3 * CMD_LINE_CAP));
        for chunk in line.as_bytes().chunks(1000) {
            s.client(chunk);
            assert!(s.inspector.buffered_bytes() <= CMD_LINE_CAP);
        }
        assert_eq!(s.server_text(), line);
        s.client(b"NOOP\r\n");
        assert!(s.server_text().ends_with("\r\nNOOP\r\n"));
    }

    #[test]
    fn overlong_command_across_cap_is_dropped_before_its_end() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n");
        s.client(b"NOOP ").client(&[b'c'; 2 * CMD_LINE_CAP]);
        assert_eq!(s.server_text(), "", "judged once it crossed the buffer cap");
        assert!(s.drop_reply().contains("Command line too long"));
    }

    #[test]
    fn rcpt_count_per_transaction() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n")
            .client(b"EHLO c\r\nMAIL FROM:<a@x>\r\n");
        for _ in 0..100 {
            s.client(b"RCPT TO:<b@y>\r\n");
        }
        s.client(b"RSET\r\nMAIL FROM:<a@x>\r\n");
        for _ in 0..100 {
            s.client(b"RCPT TO:<b@y>\r\n");
        }
        assert_eq!(s.verdict, Verdict::Continue, "100 per transaction is fine");
        s.client(b"RCPT TO:<c@y>\r\n");
        assert!(s.drop_reply().contains("Too many recipients"));
        assert!(!s.server_text().contains("c@y"));
        assert_eq!(s.events.last().unwrap().value, 101);
    }

    #[test]
    fn sender_address_length_and_regex() {
        let mut s = Session::with_rules(&[
            "match sender-address regex \"@spam\\.example$\" drop-connection log",
        ]);
        let ok = format!("MAIL FROM:<{}@x.example> SIZE=10\r\n", "a".repeat(320 - 10));
        s.server(b"220 x\r\n").client(ok.as_bytes());
        assert_eq!(s.verdict, Verdict::Continue);
        s.client(b"MAIL FROM: <boss@spam.example.org>\r\n");
        assert_eq!(s.verdict, Verdict::Continue, "regex near miss");
        s.client(b"MAIL FROM:<boss@spam.example>\r\n");
        assert!(s.drop_reply().contains("Sender address not allowed"));

        let mut s = Session::builtin("default");
        let long = format!("MAIL FROM:<{}@x.example>\r\n", "a".repeat(321 - 10));
        s.server(b"220 x\r\n").client(long.as_bytes());
        assert!(s.drop_reply().contains("Sender address too long"));
        assert_eq!(s.events.last().unwrap().value, 321);
    }

    fn with_parameter_rule(criterion: Criterion, actions: Actions) -> Policy {
        let mut p = Policy::builtin("default").unwrap();
        p.rules.push(Rule {
            text: "parameter".into(),
            negate: false,
            criterion,
            actions,
        });
        p
    }

    #[test]
    fn special_characters_in_addresses() {
        let p = with_parameter_rule(Criterion::SpecialCharacter, DROP_LOG);
        let mut s = Session::new(p.clone());
        s.server(b"220 x\r\n")
            .client(b"MAIL FROM:<a-b.c+d@x>\r\nRCPT TO:<ok@y>\r\n");
        assert_eq!(s.verdict, Verdict::Continue);
        for bad in [&b"MAIL FROM:<a`id`@x>\r\n"[..], b"MAIL FROM:<a\0@x>\r\n"] {
            let mut s = Session::new(p.clone());
            s.server(b"220 x\r\n").client(bad);
            assert!(s.drop_reply().contains("Special character"));
            assert_eq!(s.server_text(), "");
        }
    }

    #[test]
    fn a_pipe_in_any_address_closes_the_session_in_every_inspecting_builtin() {
        let lines: [&[u8]; 5] = [
            b"RCPT TO:<a|b@example.net>\r\n",
            b"MAIL FROM:<a|b@example.com>\r\n",
            b"RCPT TO:<\"|/bin/sh\"@y>\r\n",
            b"MAIL FROM:<\"a\\|b\"@x> SIZE=1\r\n",
            // Not a path at all: the pipe still counts, before the line is masked.
            b"MAIL FROM:<a|b@x\r\n",
        ];
        for name in ["default", "asa-compat", "mailguard"] {
            for line in lines {
                let mut s = Session::builtin(name);
                s.server(b"220 x\r\n").client(line);
                let what = format!("{name}: {}", line.escape_ascii());
                assert!(s.drop_reply().contains("Pipe in address"), "{what}");
                assert_eq!(s.server_text(), "", "{what}");
                let event = s.events.last().unwrap();
                assert_eq!(event.message_id, MessageId::MaliciousPattern, "{what}");
                assert_eq!(s.rule_text(event), "address-pipe drop-connection log");
            }
        }
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n")
            .client(b"MAIL FROM:<a@x> ORCPT=rfc822;a|b\r\n");
        assert_eq!(
            s.verdict,
            Verdict::Continue,
            "a parameter is not the address"
        );
    }

    #[test]
    fn quoted_local_parts_and_domain_case_do_not_evade_the_sender_regex() {
        let rule = "match sender-address regex \"@spam\\.example$\" drop-connection log";
        for line in [
            &b"MAIL FROM:<\"a>b\"@spam.example>\r\n"[..],
            b"MAIL FROM:<x@SPAM.Example>\r\n",
            b"MAIL FROM:<x@spam.example.> BODY=8BITMIME\r\n",
            b"MAIL FROM:<@relay.example:x@spam.example>\r\n",
        ] {
            let mut s = Session::with_rules(&[rule]);
            s.server(b"220 x\r\n").client(line);
            let what = line.escape_ascii().to_string();
            assert!(
                s.drop_reply().contains("Sender address not allowed"),
                "{what}"
            );
            assert_eq!(s.server_text(), "", "{what}");
        }
        // A quoted local part equal to a dot-string is that dot-string.
        let mut s = Session::with_rules(&["match sender-address regex \"^boss@\" drop-connection"]);
        s.server(b"220 x\r\n")
            .client(b"MAIL FROM:<\"b\\oss\"@x>\r\n");
        assert!(s.drop_reply().contains("Sender address not allowed"));
    }

    #[test]
    fn an_unparseable_path_is_masked_and_answered_by_the_server() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n").client(
            b"MAIL FROM:<a@b\r\nMAIL FROM:<ok@x>\r\nRCPT TO:<a b@c>\r\nRCPT TO:<>\r\nRCPT TO:<ok@y>\r\n",
        );
        assert_eq!(s.verdict, Verdict::Continue);
        assert_eq!(
            s.server_text(),
            "XXXXXXXXXXXXXX\r\nMAIL FROM:<ok@x>\r\nXXXXXXXXXXXXXXX\r\nXXXXXXXXXX\r\nRCPT TO:<ok@y>\r\n"
        );
        let masked = s
            .events
            .iter()
            .filter(|e| s.rule_text(e) == "malformed-path mask log");
        assert_eq!(masked.count(), 3);
        // Each masked line is answered by the server, in order, and pairs with it.
        s.server(b"500 no\r\n250 ok\r\n500 no\r\n500 no\r\n250 ok\r\n");
        assert_eq!(s.client_text().matches("500 no").count(), 3);
        assert_eq!(s.inspector.pending.len(), 0);
    }

    #[test]
    fn mail_relay_domain() {
        let mut p = with_parameter_rule(Criterion::MailRelay, DROP_LOG);
        p.mail_relay = Some("example.com".into());
        let mut s = Session::new(p);
        s.server(b"220 x\r\n")
            .client(b"RCPT TO:<a@Example.COM>\r\nRCPT TO:<postmaster>\r\n");
        assert_eq!(s.verdict, Verdict::Continue);
        s.client(b"RCPT TO:<@example.com:a@EXAMPLE.com.>\r\nRCPT TO:<\"a>b\"@example.com>\r\n");
        assert_eq!(
            s.verdict,
            Verdict::Continue,
            "source route ignored, trailing dot"
        );
        s.client(b"RCPT TO:<\"a>\"@example.com.evil>\r\n");
        assert!(s.drop_reply().contains("Relaying denied"));
    }

    #[test]
    fn invalid_recipients_counted_from_5xx_replies() {
        let mut s =
            Session::with_rules(&["match invalid-recipients count gt 2 drop-connection log"]);
        s.in_transaction();
        s.client(b"RCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\nRCPT TO:<3@y>\r\nRCPT TO:<4@y>\r\n");
        s.server(b"550 no\r\n250 ok\r\n550 no\r\n");
        assert_eq!(s.verdict, Verdict::Continue);
        s.server(b"550 no\r\n");
        assert!(s.drop_reply().contains("invalid recipients"));
        assert_eq!(s.client_text(), "550 no\r\n250 ok\r\n550 no\r\n");
    }

    #[test]
    fn reset_action() {
        let mut s = Session::with_rules(&["match cmd verb HELP reset log"]);
        s.server(b"220 x\r\n").client(b"NOOP\r\nHELP\r\nNOOP\r\n");
        assert_eq!(s.verdict, Verdict::Reset);
        assert_eq!(s.server_text(), "NOOP\r\n");
        s.client(b"NOOP\r\n").server(b"250 ok\r\n");
        assert_eq!(s.server_text(), "NOOP\r\n", "nothing after a verdict");
        assert_eq!(s.client_text(), "220 *\r\n");
    }

    #[test]
    fn log_action_emits_one_event_and_traffic_goes_on() {
        let mut s = Session::with_rules(&["match cmd verb NOOP log"]);
        s.server(b"220 x\r\n").client(b"NOOP\r\nNOOP\r\n");
        assert_eq!(s.server_text(), "NOOP\r\nNOOP\r\n");
        let logs: Vec<_> = s
            .events
            .iter()
            .filter(|e| e.message_id == MessageId::PolicyLog)
            .collect();
        assert_eq!(logs.len(), 2);
    }

    #[test]
    fn rate_limit_per_second_uses_now() {
        let mut s = Session::with_rules(&["match cmd verb MAIL rate-limit 2"]);
        s.server(b"220 x\r\n")
            .client(b"MAIL FROM:<a@x>\r\nRSET\r\nMAIL FROM:<a@x>\r\n");
        assert_eq!(s.verdict, Verdict::Continue);
        s.now += Duration::from_millis(1100);
        s.client(b"MAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\n");
        assert_eq!(s.verdict, Verdict::Continue, "a new second, a new window");
        s.client(b"MAIL FROM:<a@x>\r\n");
        assert!(s.drop_reply().contains("rate limit"));
    }

    #[test]
    fn auth_continuation_lines_are_not_commands() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n")
            .client(b"EHLO c\r\n")
            .server(b"250-mx\r\n250 AUTH LOGIN\r\n");
        s.to_server.clear();
        s.client(b"AUTH LOGIN\r\n").server(b"334 VXNlcm5hbWU6\r\n");
        s.client(b"dXNlcg==\r\n").server(b"334 UGFzc3dvcmQ6\r\n");
        s.client(b"cGFzcw==\r\n").server(b"235 ok\r\n");
        s.client(b"XYZZY\r\n");
        assert_eq!(
            s.server_text(),
            "AUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\nXXXXX\r\n"
        );
    }

    #[test]
    fn pipelined_commands_after_auth_wait_for_its_reply() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n");
        s.client(b"AUTH PLAIN AGEAYg==\r\nMAIL FROM:<a@x>\r\n");
        assert_eq!(s.server_text(), "AUTH PLAIN AGEAYg==\r\n");
        s.server(b"235 ok\r\n");
        assert_eq!(
            s.server_text(),
            "AUTH PLAIN AGEAYg==\r\nMAIL FROM:<a@x>\r\n"
        );
    }

    // ---- DATA ----

    #[test]
    fn message_passes_byte_for_byte_with_dot_stuffing() {
        let mut s = Session::builtin("default");
        s.in_data();
        let msg = b"Subject: t\r\n\r\n..leading dot\r\n.\r\n";
        s.client(msg);
        assert_eq!(s.to_server, msg);
        s.client(b"QUIT\r\n");
        assert!(s.server_text().ends_with(".\r\nQUIT\r\n"));
        s.server(b"250 queued\r\n221 bye\r\n");
        assert!(s.inspector.pending.is_empty());
    }

    #[test]
    fn content_before_354_is_held_then_judged_by_the_reply() {
        let mut s = Session::builtin("default");
        s.in_transaction();
        s.client(b"DATA\r\nXYZZY: header\r\n\r\nbody\r\n.\r\n");
        assert_eq!(s.server_text(), "DATA\r\n");
        s.server(b"354 go\r\n");
        assert_eq!(
            s.server_text(),
            "DATA\r\nXYZZY: header\r\n\r\nbody\r\n.\r\n"
        );

        // Refused DATA: what followed is commands after all.
        let mut s = Session::builtin("default");
        s.in_transaction();
        s.client(b"DATA\r\nXYZZY: header\r\n");
        s.server(b"554 no valid recipients\r\n");
        assert_eq!(s.server_text(), "DATA\r\nXXXXXXXXXXXXX\r\n");
    }

    #[test]
    fn held_bytes_are_bounded() {
        let mut s = Session::builtin("default");
        s.in_transaction();
        s.client(b"DATA\r\n");
        let chunk = vec![b'a'; 16 * 1024];
        for _ in 0..5 {
            s.client(&chunk);
            assert!(s.inspector.buffered_bytes() <= HOLD_CAP);
        }
        assert!(s.drop_reply().contains("Improper command pipelining"));
    }

    #[test]
    fn header_line_too_long_drops_mid_data_without_final_dot() {
        let mut s = Session::builtin("default");
        s.in_data();
        s.client(b"Subject: ok\r\n");
        let long = format!("X-Long: {}\r\n", "h".repeat(999 - 8));
        s.client(long.as_bytes()).client(b"\r\nbody\r\n.\r\n");
        // The line is cut where it crosses the limit: its 999th byte never goes out.
        assert_eq!(s.server_text(), format!("Subject: ok\r\n{}", &long[..998]));
        assert_eq!(
            s.drop_reply(),
            "421 4.7.0 Message header line too long, closing connection\r\n"
        );
        assert_eq!(s.events.last().unwrap().value, 999);
    }

    #[test]
    fn a_stuffed_dot_does_not_count_toward_the_line_length() {
        let mut s = Session::with_rules(&["match body line length gt 10 drop-connection log"]);
        s.in_data();
        s.client(b"Subject: x\r\n\r\n..234567890\r\n");
        assert_eq!(s.verdict, Verdict::Continue, "10 bytes once unstuffed");
        s.client(b"..2345678901\r\n");
        assert!(s.drop_reply().contains("body line too long"));
        assert!(s.server_text().ends_with("\r\n..234567890\r\n..234567890"));
    }

    #[test]
    fn header_line_at_limit_passes() {
        let mut s = Session::builtin("default");
        s.in_data();
        let line = format!("X-Long: {}\r\n\r\n.\r\n", "h".repeat(998 - 8));
        s.client(line.as_bytes());
        assert_eq!(s.server_text(), line);
        assert_eq!(s.verdict, Verdict::Continue);
    }

    #[test]
    fn drop_inside_a_long_line_split_across_reads() {
        let mut s = Session::builtin("default");
        s.in_data();
        s.client(b"X-Long: ");
        for _ in 0..10 {
            s.client(&[b'h'; 500]);
        }
        // Dropped as the line crossed 998 bytes, before it ended.
        assert!(s.drop_reply().contains("header line too long"));
        assert_eq!(s.server_text().len(), 998);
        assert_eq!(s.events.last().unwrap().value, 999);
        assert!(s.inspector.buffered_bytes() <= LINE_HEAD_CAP);
        s.client(b"\r\n\r\nbody\r\n.\r\n");
        assert_eq!(s.server_text().len(), 998, "nothing after a verdict");
    }

    #[test]
    fn body_line_length_is_logged_not_dropped() {
        let mut s = Session::builtin("default");
        s.in_data();
        let msg = format!(
            "Subject: x\r\n\r\n{}\r\n{}\r\n.\r\n",
            "b".repeat(999),
            "b".repeat(998)
        );
        s.client(msg.as_bytes());
        assert_eq!(s.server_text(), msg);
        let hits: Vec<_> = s
            .events
            .iter()
            .filter(|e| s.rule_text(e).contains("body line length"))
            .collect();
        assert_eq!(hits.len(), 1);
        assert_eq!(
            (hits[0].value, hits[0].message_id),
            (999, MessageId::PolicyLog)
        );
    }

    #[test]
    fn header_length_to_fields_and_body_length() {
        let rules = [
            "match header length gt 40 log",
            "match header to-fields count gt 2 log",
            "match body length gt 10 drop-connection log",
        ];
        let mut s = Session::with_rules(&rules);
        s.in_data();
        s.client(b"To: a@x, b@x\r\nSubject: hello\r\n\r\n123456\r\n.\r\n");
        assert_eq!(s.verdict, Verdict::Continue, "near misses");
        assert!(s.events.is_empty());

        let mut s = Session::with_rules(&rules);
        s.in_data();
        s.client(
            b"To: a@x, \"Doe, J\" <b@x>,\r\n c@x\r\nSubject: hello world\r\n\r\n123456789\r\n.\r\n",
        );
        assert_eq!(s.events.len(), 3, "{:?}", s.events);
        assert_eq!(
            s.events[0].value,
            26 + 6 + 22,
            "header bytes with their CRLFs"
        );
        assert_eq!(s.events[1].value, 3, "a quoted comma is not a separator");
        assert_eq!(s.events[2].value, 11, "body bytes with their CRLFs");
        assert!(s.drop_reply().contains("body too long"));
        assert!(!s.server_text().contains(".\r\n"), "final dot withheld");
    }

    #[test]
    fn body_and_header_length_drops_fire_as_the_total_crosses_not_at_the_end() {
        let body_rule = ["match body length gt 20 drop-connection log"];
        let msg = b"Subject: x\r\n\r\n0123456789\r\n0123456789\r\nthis line is never sent\r\n";
        for split in [msg.len(), 1] {
            let mut s = Session::with_rules(&body_rule);
            s.in_data();
            for piece in msg.chunks(split) {
                s.client(piece);
            }
            // No end of data yet, and still dropped: on the second line (24 > 20).
            assert!(s.drop_reply().contains("body too long"), "split {split}");
            assert_eq!(s.events.len(), 1);
            assert_eq!(s.events[0].value, 24);
            assert_eq!(
                s.server_text(),
                "Subject: x\r\n\r\n0123456789\r\n0123456789"
            );
        }

        let mut s = Session::with_rules(&["match header length gt 30 drop-connection log"]);
        s.in_data();
        s.client(b"Subject: first\r\nX-Long: 0123456789abcdef\r\nX-Never: sent\r\n");
        assert!(s.drop_reply().contains("header too long"));
        assert_eq!(s.events[0].value, 16 + 26);
        assert!(!s.server_text().contains("X-Never"));

        // A log-only rule still reports the final total once, at the end.
        let mut s = Session::with_rules(&["match body length gt 20 log"]);
        s.in_data();
        s.client(msg);
        s.client(b".\r\n");
        assert_eq!(s.verdict, Verdict::Continue);
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].value, msg.len() as u64 - 14);
    }

    const MIME: &str = "Subject: m\r\nContent-Type: multipart/mixed; boundary=\"=_b\"\r\n\r\n\
        --=_b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--=_b\r\n\
        Content-Type: application/x-msdownload; name=\"NAME\"\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--=_b--\r\n.\r\n";

    #[test]
    fn mime_filename_length() {
        let mut s = Session::builtin("default");
        s.in_data();
        let ok = MIME.replace("NAME", &"n".repeat(255));
        s.client(ok.as_bytes());
        assert_eq!(s.server_text(), ok);
        assert_eq!(s.verdict, Verdict::Continue);

        let mut s = Session::builtin("default");
        s.in_data();
        let long = MIME.replace("NAME", &"n".repeat(256));
        s.client(long.as_bytes());
        assert!(s.drop_reply().contains("MIME filename too long"));
        assert!(!s.server_text().contains("TVqQ"));
    }

    #[test]
    fn mime_filetype_and_encoding() {
        let mut s = Session::with_rules(&[
            "match MIME filetype regex \"x-msdownload\" drop-connection log",
        ]);
        s.in_data();
        s.client(MIME.as_bytes());
        assert!(s.drop_reply().contains("MIME file type"));

        let mut s =
            Session::with_rules(&["match MIME filetype regex \"^image/\" drop-connection log"]);
        s.in_data();
        s.client(MIME.as_bytes());
        assert_eq!(s.verdict, Verdict::Continue);

        let mut s = Session::with_rules(&["match MIME encoding base64 log"]);
        s.in_data();
        s.client(MIME.as_bytes());
        assert_eq!(
            s.events
                .iter()
                .filter(|e| e.value == crate::rules::ENC_BASE64 as u64)
                .count(),
            1
        );

        let mut s = Session::with_rules(&["match MIME encoding quoted-printable log"]);
        s.in_data();
        s.client(MIME.as_bytes());
        assert!(s.events.is_empty());

        // No Content-Transfer-Encoding at all is 7bit, for allow-lists and deny-lists alike.
        let plain = b"Subject: plain\r\n\r\nhello\r\n.\r\n";
        let mut s = Session::with_rules(&["match MIME encoding 7bit log"]);
        s.in_data();
        s.client(plain);
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].value, crate::rules::ENC_7BIT as u64);
        let allow_list = "match not MIME encoding 7bit 8bit drop-connection";
        let mut s = Session::with_rules(&[allow_list]);
        s.in_data();
        s.client(plain);
        assert_eq!(s.verdict, Verdict::Continue);
        let mut s = Session::with_rules(&[allow_list]);
        s.in_data();
        s.client(MIME.as_bytes());
        assert!(s.drop_reply().contains("MIME encoding"));
    }

    // ---- SMTP smuggling ----

    fn smuggle(reads: &[&[u8]]) -> Session {
        let mut s = Session::builtin("default");
        s.in_data();
        for r in reads {
            s.client(r);
        }
        s
    }

    #[test]
    fn smuggled_end_of_data_never_reaches_the_server() {
        let cases: [&[&[u8]]; 6] = [
            &[b"Subject: x\r\n\r\nbody\n.\r\nMAIL FROM:<evil@x>\r\n"],
            &[b"Subject: x\r\n\r\nbody\r\n.\nMAIL FROM:<evil@x>\r\n"],
            &[b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@x>\r\n"],
            &[b"Subject: x\r\n\r\nbody\r.\rMAIL FROM:<evil@x>\r\n"],
            &[b"Subject: x\r\n\r\nbody\r\n.\r", b"MAIL FROM:<evil@x>\r\n"],
            &[b"Subject: x\r\n\r\nbody\r", b"\n.\r", b"\nMAIL"],
        ];
        for (i, reads) in cases.iter().enumerate() {
            let s = smuggle(reads);
            let sent = s.server_text();
            if i == 5 {
                // CRLF split across reads is a real line end: nothing to defend.
                assert_eq!(sent, "Subject: x\r\n\r\nbody\r\n.\r\n", "case {i}");
                assert_eq!(s.verdict, Verdict::Continue);
                continue;
            }
            assert!(!sent.contains("MAIL"), "case {i}: {sent:?}");
            assert!(
                !sent.ends_with('\r') && !sent.ends_with(".\n"),
                "case {i}: {sent:?}"
            );
            assert!(s.drop_reply().contains("Bare CR or LF"), "case {i}");
            assert_eq!(
                s.events.last().unwrap().message_id,
                MessageId::MaliciousPattern
            );
        }
    }

    #[test]
    fn held_cr_is_not_forwarded_until_judged() {
        let mut s = smuggle(&[b"Subject: x\r\n\r\nbody\r\n.\r"]);
        assert_eq!(s.server_text(), "Subject: x\r\n\r\nbody\r\n.");
        s.client(b"\n");
        assert_eq!(s.server_text(), "Subject: x\r\n\r\nbody\r\n.\r\n");
    }

    #[test]
    fn bare_newlines_pass_when_the_policy_tolerates_them() {
        // Every built-in defends against smuggling; an operator can switch it off.
        let config = crate::config::Config::from_toml_str(
            "[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2526\"\n\
             policy = \"tolerant\"\n[policy.tolerant]\nextends = \"asa-compat\"\n\
             bare_newline = false\n",
        )
        .unwrap();
        let mut s = Session::new((*config.listeners[0].policy).clone());
        s.in_data();
        let msg = b"Subject: x\r\n\r\nbody\nmore\rtext\r\n.\r\n";
        s.client(msg);
        assert_eq!(s.to_server, msg);
        assert_eq!(s.verdict, Verdict::Continue);
        // The bare LF did not end the message: the next line is still content.
        s.client(b"QUIT\r\n");
        assert_eq!(s.inspector.mode, ClientMode::Command);
        assert!(s.server_text().ends_with("\r\n.\r\nQUIT\r\n"));
    }

    // ---- BDAT ----

    #[test]
    fn bdat_chunks_counted_across_reads() {
        let mut s = Session::builtin("default");
        s.in_transaction();
        let body = b"Subject: x\r\n\r\nNOOP is content here\r\n";
        let cmd = format!("BDAT {} LAST\r\n", body.len());
        s.client(cmd.as_bytes())
            .client(&body[..7])
            .client(&body[7..])
            .client(b"XYZZY\r\n");
        let mut expect = cmd.into_bytes();
        expect.extend_from_slice(body);
        expect.extend_from_slice(b"XXXXX\r\n");
        assert_eq!(s.to_server, expect);
        assert_eq!(s.verdict, Verdict::Continue);
    }

    #[test]
    fn bdat_content_gets_message_checks_across_chunks() {
        let mut s = Session::builtin("default");
        s.in_transaction();
        let line = format!("X-Long: {}\r\n", "h".repeat(1200));
        let (a, b) = line.split_at(600);
        s.client(format!("BDAT {}\r\n{a}", a.len()).as_bytes());
        assert_eq!(s.verdict, Verdict::Continue);
        s.client(format!("BDAT {} LAST\r\n{b}", b.len()).as_bytes());
        assert!(s.drop_reply().contains("header line too long"));
        assert!(
            s.to_server.len()
                < format!("BDAT {}\r\n{a}BDAT {} LAST\r\n{b}", a.len(), b.len()).len()
        );
    }

    #[test]
    fn bdat_last_chunk_never_completes_when_the_message_is_dropped() {
        let mut s = Session::with_rules(&["match body length gt 3 drop-connection log"]);
        s.in_transaction();
        let chunk = b"S: x\r\n\r\nabcd";
        let all = [
            format!("BDAT {} LAST\r\n", chunk.len()).as_bytes(),
            &chunk[..],
        ]
        .concat();
        s.client(&all);
        assert!(s.drop_reply().contains("body too long"));
        assert_eq!(s.to_server, all[..all.len() - 1]);
    }

    #[test]
    fn bdat_zero_last_ends_the_message() {
        let mut s = Session::with_rules(&["match header length lt 1 drop-connection log"]);
        s.in_transaction();
        s.client(b"BDAT 0 LAST\r\n");
        assert!(s.drop_reply().contains("header too long"));
        assert_eq!(s.server_text(), "BDAT 0 LAST\r");
    }

    // ---- STARTTLS ----

    #[test]
    fn starttls_goes_opaque_after_220() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n")
            .client(b"EHLO c\r\n")
            .server(b"250-mx\r\n250 STARTTLS\r\n");
        s.to_server.clear();
        s.to_client.clear();
        s.client(b"STARTTLS\r\n\x16\x03\x01\x00\x05hello");
        assert_eq!(
            s.server_text(),
            "STARTTLS\r\n",
            "TLS bytes wait for the 220"
        );
        assert!(!s.inspector.is_opaque());
        s.server(b"220 2.0.0 Ready\r\n");
        assert!(s.inspector.is_opaque());
        assert_eq!(s.to_server, b"STARTTLS\r\n\x16\x03\x01\x00\x05hello");
        let tls = s.events.last().unwrap();
        assert_eq!(tls.message_id, MessageId::TlsStarted);
        s.client(b"XYZZY\r\n\0\n")
            .server(b"\x16\x03\x03 anything\n");
        assert!(s.to_server.ends_with(b"XYZZY\r\n\0\n"));
        assert!(s.to_client.ends_with(b"\x16\x03\x03 anything\n"));
    }

    #[test]
    fn starttls_refused_stays_inspected() {
        let mut s = Session::builtin("default");
        s.server(b"220 x\r\n")
            .client(b"STARTTLS\r\nXYZZY\r\n")
            .server(b"454 no\r\n");
        assert!(!s.inspector.is_opaque());
        assert_eq!(s.server_text(), "STARTTLS\r\nXXXXX\r\n");
    }

    #[test]
    fn starttls_masked_by_asa_compat() {
        let mut s = Session::builtin("asa-compat");
        s.server(b"220 x\r\n").client(b"STARTTLS\r\n");
        assert_eq!(s.server_text(), "XXXXXXXX\r\n");
        s.server(b"502 what\r\n");
        assert!(!s.inspector.is_opaque());
    }

    #[test]
    fn none_policy_relays_verbatim() {
        let mut s = Session::builtin("none");
        s.server(b"220 mx\r\n").client(b"XYZZY\r\n");
        assert_eq!(s.server_text(), "XYZZY\r\n");
        assert_eq!(s.client_text(), "220 mx\r\n");
    }

    // ---- phase, progress and transaction: what the driver's deadlines follow ----

    #[test]
    fn phase_follows_greeting_commands_content_and_the_end_of_data_reply() {
        let mut s = Session::builtin("default");
        assert_eq!(s.inspector.phase(), Phase::Greeting);
        s.server(b"220-mx ESMTP\r\n");
        assert_eq!(
            s.inspector.phase(),
            Phase::Greeting,
            "greeting not complete"
        );
        s.server(b"220 ready\r\n");
        assert_eq!(s.inspector.phase(), Phase::Command);
        s.client(b"EHLO c\r\n")
            .server(b"250 mx\r\n")
            .client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
            .server(b"250 ok\r\n250 ok\r\n");
        assert_eq!(s.inspector.phase(), Phase::Command, "DATA not answered yet");
        s.server(b"354 go\r\n");
        assert_eq!(s.inspector.phase(), Phase::Content);
        s.client(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(s.inspector.phase(), Phase::Content);
        s.client(b".\r\n");
        assert_eq!(s.inspector.phase(), Phase::AwaitingEndOfData);
        s.client(b"QUIT\r\n");
        assert_eq!(
            s.inspector.phase(),
            Phase::AwaitingEndOfData,
            "a pipelined QUIT does not hide the owed reply"
        );
        s.server(b"250 queued\r\n");
        assert_eq!(s.inspector.phase(), Phase::Command);
    }

    #[test]
    fn phase_is_content_inside_a_bdat_chunk_then_awaits_the_last_reply() {
        let mut s = Session::builtin("default");
        s.in_transaction();
        s.client(b"BDAT 10\r\n01234");
        assert_eq!(s.inspector.phase(), Phase::Content);
        s.client(b"56789");
        assert_eq!(
            s.inspector.phase(),
            Phase::Command,
            "a non-LAST chunk ended"
        );
        s.client(b"BDAT 3 LAST\r\nab");
        assert_eq!(s.inspector.phase(), Phase::Content);
        s.client(b"c");
        assert_eq!(s.inspector.phase(), Phase::AwaitingEndOfData);
        s.server(b"250 chunk\r\n");
        assert_eq!(s.inspector.phase(), Phase::AwaitingEndOfData);
        s.server(b"250 queued\r\n");
        assert_eq!(s.inspector.phase(), Phase::Command);
    }

    #[test]
    fn phase_is_opaque_after_starttls_and_for_the_none_policy() {
        let mut s = Session::builtin("default");
        s.server(b"220 mx\r\n")
            .client(b"EHLO c\r\n")
            .server(b"250-mx\r\n250 STARTTLS\r\n")
            .client(b"STARTTLS\r\n")
            .server(b"220 go ahead\r\n");
        assert_eq!(s.inspector.phase(), Phase::Opaque);
        let s = Session::builtin("none");
        assert_eq!(s.inspector.phase(), Phase::Opaque);
    }

    #[test]
    fn progress_counts_complete_lines_and_replies_not_bytes_inside_them() {
        let mut policy = Policy::builtin("default").unwrap();
        policy
            .rules
            .retain(|r| !matches!(r.criterion, Criterion::CmdLineLength(_)));
        let mut s = Session::new(policy);
        assert_eq!(s.inspector.progress(), 0);
        s.server(b"220-mx\r\n");
        assert_eq!(s.inspector.progress(), 0, "a reply counts when complete");
        s.server(b"220 ready\r\n");
        assert_eq!(s.inspector.progress(), 1);
        s.client(b"EHL");
        assert_eq!(s.inspector.progress(), 1, "a partial command line");
        s.client(b"O c\r\nNOOP\r\n");
        assert_eq!(s.inspector.progress(), 3);
        s.server(b"250 mx\r\n250 ok\r\n");
        assert_eq!(s.inspector.progress(), 5);
        let long = vec![b'a'; CMD_LINE_CAP + 100];
        s.client(b"NOOP ").client(&long);
        assert_eq!(s.inspector.progress(), 5, "an overlong line still growing");
        s.client(b"\r\n");
        assert_eq!(s.inspector.progress(), 6);
    }

    #[test]
    fn progress_ignores_message_content() {
        let mut s = Session::builtin("default");
        s.in_data();
        let before = s.inspector.progress();
        s.client(b"Subject: x\r\n\r\nline\r\nline\r\n");
        assert_eq!(s.inspector.progress(), before);
    }

    #[test]
    fn transaction_opens_at_mail_and_ends_at_the_end_of_data_reply() {
        let mut s = Session::builtin("default");
        s.server(b"220 mx\r\n")
            .client(b"EHLO c\r\n")
            .server(b"250 mx\r\n");
        assert!(!s.inspector.in_transaction());
        s.client(b"MAIL FROM:<a@x>\r\n");
        assert!(s.inspector.in_transaction(), "pending MAIL");
        s.server(b"250 ok\r\n").client(b"RCPT TO:<b@y>\r\nDATA\r\n");
        s.server(b"250 ok\r\n354 go\r\n").client(b"body\r\n.\r\n");
        assert!(s.inspector.in_transaction(), "end of data not answered yet");
        s.server(b"250 queued\r\n");
        assert!(!s.inspector.in_transaction());
    }

    #[test]
    fn transaction_ends_at_a_refused_mail_and_at_rset() {
        let mut s = Session::builtin("default");
        s.server(b"220 mx\r\n")
            .client(b"EHLO c\r\n")
            .server(b"250 mx\r\n");
        s.client(b"MAIL FROM:<a@x>\r\n").server(b"550 no\r\n");
        assert!(!s.inspector.in_transaction());
        s.client(b"MAIL FROM:<a@x>\r\n").server(b"250 ok\r\n");
        assert!(s.inspector.in_transaction());
        s.client(b"RSET\r\n");
        assert!(!s.inspector.in_transaction());
    }

    #[test]
    fn a_mail_pipelined_behind_an_end_of_data_keeps_the_transaction_open() {
        let mut s = Session::builtin("default");
        s.in_data();
        s.client(b"body\r\n.\r\nMAIL FROM:<c@x>\r\n");
        s.server(b"250 queued\r\n");
        assert!(s.inspector.in_transaction());
        s.server(b"250 ok\r\n");
        assert!(s.inspector.in_transaction());
    }

    #[test]
    fn unchanged_bytes_of_a_read_are_one_slice() {
        let mut s = Session::builtin("default");
        s.in_data();
        let input = Bytes::from_static(
            b"Subject: x\r\n\r\nline one\r\nline two\r\n.\r\nMAIL FROM:<a@x>\r\n",
        );
        let mut out = Output::default();
        s.inspector.on_client_bytes(input.clone(), s.now, &mut out);
        assert_eq!(out.to_server.len(), 1);
        assert_eq!(
            out.to_server[0].as_ptr(),
            input.as_ptr(),
            "a slice, not a copy"
        );
        assert_eq!(out.to_server[0], input);
    }
}
