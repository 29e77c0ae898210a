//! The server side: reply lines framed like commands (RFC 5321 §4.2), each complete
//! reply paired with the command it answers (RFC 2920 §3: replies come in order), the
//! greeting and its banner masking (§4.3.1), EHLO keyword masking, and what a reply
//! means for the client side — returned as a [`ReplyEffect`], never acted on from here.

use std::collections::VecDeque;

use bytes::Bytes;

use super::commands::{ClientMode, Hold};
use super::forward::Fwd;
use super::framer::{LineDecision, LineFramer, LineSide};
use super::judge::Outcome;
use super::{Inspector, Output, ReplyEffect, QUEUE_CAP, REPLY_LINE_CAP};
use crate::event::Direction;
use crate::policy::BannerStyle;
use crate::rules::{Criterion, CriterionKind};
use crate::scanner;

/// What a queued command's reply means to us.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Pending {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Starttls,
    /// STARTTLS terminated here: `to_upstream` when it went to the upstream as is
    /// (else X-ed); its reply is swallowed (see the `tls` module).
    StarttlsInspected {
        to_upstream: bool,
    },
    Auth,
    /// Exchange's `XEXCH50 <size> <auth>` (when `allow_verbs` passes it): after `354`
    /// the client sends `size` octets of binary routing data.
    Xexch50 {
        size: u64,
    },
    /// A `BDAT <size>` chunk relayed as content (RFC 3030 §2).
    Bdat,
    /// A message's end: the final dot of DATA content, or a `BDAT ... LAST` line (its
    /// reply follows the chunk). RFC 5321 §4.1.1.4: the reply says whether the server
    /// took responsibility for the message.
    EndOfData {
        bdat: bool,
    },
    /// A command the inspector answered itself (`reject`): this reply goes to the
    /// client once the replies owed before it have.
    Injected(&'static [u8]),
    /// Every other command.
    Other,
}

/// Which reply the server owes next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ServerSide {
    /// The greeting (RFC 5321 §4.3.1); `masked` once its first line was judged.
    Greeting { masked: bool },
    /// Replies to commands, in order.
    Replies,
}

/// The server side's state.
pub(super) struct ReplyTracker {
    framer: LineFramer,
    side: ServerSide,
    /// Line number within the reply being read.
    line_no: u32,
    /// Forwarded commands awaiting their reply, oldest first.
    pending: VecDeque<Pending>,
    /// `EndOfData` entries in `pending`.
    owed_end_of_data: u32,
    /// `Injected` entries in `pending` (owed by the inspector, not the server).
    injected: u32,
    /// The server's last EHLO reply offered CHUNKING, and the SIZE it advertised (0:
    /// none, or no limit).
    chunking: bool,
    size_limit: u64,
    /// After the 220 to STARTTLS: the client has sent its first (TLS) bytes. Before
    /// that, the server has nothing to say (RFC 3207 §4).
    pub(super) tls_hello_sent: bool,
    /// Server bytes before the client's first TLS bytes were judged (once).
    pub(super) tls_injection_judged: bool,
    invalid_rcpts: u64,
    /// After a stop inside a reply line: the rest of that line is not forwarded.
    skip_line: bool,
    /// What the last complete reply does to the client side, applied once its line
    /// went out (see [`Inspector::server_input`]).
    effect: Option<ReplyEffect>,
    /// No HELO/EHLO answered 2xx yet.
    pub(super) embryonic: bool,
}

impl ReplyTracker {
    pub(super) fn new() -> ReplyTracker {
        ReplyTracker {
            framer: LineFramer::default(),
            side: ServerSide::Greeting { masked: false },
            line_no: 0,
            // Grows to the session's deepest pipeline and keeps that room; an idle
            // session that only said EHLO holds four entries, not sixteen.
            pending: VecDeque::new(),
            owed_end_of_data: 0,
            injected: 0,
            chunking: false,
            size_limit: 0,
            tls_hello_sent: false,
            tls_injection_judged: false,
            invalid_rcpts: 0,
            skip_line: false,
            effect: None,
            embryonic: true,
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.framer.buffered()
    }

    pub(super) fn greeted(&self) -> bool {
        self.side == ServerSide::Replies
    }

    pub(super) fn owes_end_of_data(&self) -> bool {
        self.owed_end_of_data > 0
    }

    pub(super) fn push(&mut self, pending: Pending) {
        match pending {
            Pending::EndOfData { .. } => self.owed_end_of_data += 1,
            Pending::Injected(_) => self.injected += 1,
            _ => {}
        }
        self.pending.push_back(pending);
    }

    pub(super) fn queued(&self) -> usize {
        self.pending.len()
    }

    /// Replies the server owes for commands forwarded to it.
    pub(super) fn owed(&self) -> usize {
        self.pending.len() - self.injected as usize
    }

    fn pop(&mut self) -> Option<Pending> {
        let popped = self.pending.pop_front();
        match popped {
            Some(Pending::EndOfData { .. }) => self.owed_end_of_data -= 1,
            Some(Pending::Injected(_)) => self.injected -= 1,
            _ => {}
        }
        popped
    }

    /// Takes back the newest entry: a BDAT whose chunk a stop cut short is owed no
    /// reply (the server still waits for the rest of it).
    pub(super) fn forget_newest(&mut self) {
        match self.pending.pop_back() {
            Some(Pending::EndOfData { .. }) => self.owed_end_of_data -= 1,
            Some(Pending::Injected(_)) => self.injected -= 1,
            _ => {}
        }
    }

    /// Whether a `BDAT <size>` chunk is one this server reads as a chunk: it offered
    /// CHUNKING in its last EHLO reply (RFC 3030 §2) and `size` is within its SIZE
    /// (RFC 1870), or at most 2^53 where it advertised none.
    pub(super) fn takes_chunk(&self, size: u64) -> bool {
        let limit = match self.size_limit {
            0 => 1 << 53,
            n => n,
        };
        self.chunking && size <= limit
    }

    /// The inspector's own reply is next in line (see [`ReplyTracker::answer_injected`]).
    fn injected_next(&self) -> bool {
        matches!(self.pending.front(), Some(Pending::Injected(_)))
    }

    /// The inspector's own replies now at the front of the queue go to the client.
    fn answer_injected(&mut self, out: &mut Output) {
        while let Some(&Pending::Injected(reply)) = self.pending.front() {
            self.pop();
            out.to_client.push(Bytes::from_static(reply));
        }
    }

    /// A later MAIL is still awaiting its reply (pipelined behind the reply just read).
    fn mail_pending(&self) -> bool {
        self.pending.contains(&Pending::Mail)
    }

    /// An EHLO reply line after the first (RFC 5321 §4.1.1.1): the extensions offered.
    fn note_extension(&mut self, line: &[u8]) {
        let text = &line[4.min(line.len())..scanner::content_len(line).max(4.min(line.len()))];
        let mut words = text.split(|&b| b == b' ').filter(|w| !w.is_empty());
        match words.next() {
            Some(k) if k.eq_ignore_ascii_case(b"CHUNKING") => self.chunking = true,
            Some(k) if k.eq_ignore_ascii_case(b"SIZE") => {
                self.size_limit = words.next().and_then(parse_u64).unwrap_or(0);
            }
            _ => {}
        }
    }
}

/// A decimal number of at most 19 digits (so it fits a `u64`).
pub(super) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

impl Inspector {
    /// Every server byte the inspector judges enters here. The effects replies have on
    /// the client side are applied here, after the reply line went out, and only here.
    pub(super) fn server_input(&mut self, input: Bytes, out: &mut Output) {
        let mut fwd = Fwd::default();
        let mut pos = 0;
        let mut framer = std::mem::take(&mut self.replies.framer);
        while pos < input.len() && !self.judge.stopped() {
            if self.is_opaque() {
                // RFC 3207 §4: after its 220 the server waits for the client's TLS
                // handshake; bytes before the client's first are injected plaintext.
                if !self.replies.tls_injection_judged {
                    self.replies.tls_injection_judged = true;
                    let (kind, d) = (CriterionKind::StarttlsInjection, Direction::ServerToClient);
                    self.judge.check_flag(kind, d, 0, out);
                }
                if !self.judge.stopped() {
                    fwd.pass(&input, pos, input.len(), &mut out.to_client);
                }
                break;
            }
            let d = Direction::ServerToClient;
            pos = framer.step(
                REPLY_LINE_CAP,
                &input,
                pos,
                &mut fwd,
                d,
                out,
                &mut ReplySide(self),
            );
            if self.judge.stopped() {
                // The line that stopped the session is withheld whole.
                framer = LineFramer::default();
                self.replies.skip_line = true;
                break;
            }
            // Applied once the reply's last line went out whole (an overlong one is
            // judged on its head, which may end a read): the same point however reads
            // split it.
            if framer.mid_line() {
                continue;
            }
            // What follows may push replies of its own: the reply line goes first. With
            // nothing to push, the next lines' bytes join this slice of the read.
            let effect = self.replies.effect.take();
            if effect.is_some() || self.replies.injected_next() {
                fwd.flush(&input, &mut out.to_client);
            }
            match effect {
                Some(ReplyEffect::ReleaseHeld) => self.release_held(out),
                Some(ReplyEffect::BdatRefused) => {
                    // A 5xx to a chunk relayed as content: client and server disagree
                    // on where the message ends, so nothing after it can be judged.
                    let (kind, d) = (CriterionKind::BdatRefused, Direction::ServerToClient);
                    self.judge.check_flag(kind, d, 0, out);
                }
                None => {}
            }
            self.replies.answer_injected(out);
        }
        fwd.flush(&input, &mut out.to_client);
        self.replies.framer = framer;
        if self.judge.stopped() {
            self.drain_owed(&input, pos, out);
        }
    }

    /// After a drop: forwards, unjudged and in order, the replies the server still
    /// owes for what was already forwarded (above all the reply to an end of data, so
    /// a message the server took is never reported to the client as failed), with the
    /// inspector's own replies queued between them; nothing after the last of them.
    pub(super) fn drain_owed(&mut self, input: &Bytes, mut pos: usize, out: &mut Output) {
        if !self.judge.dropped() {
            return;
        }
        if self.replies.skip_line {
            match memchr::memchr(b'\n', &input[pos..]) {
                Some(i) => {
                    pos += i + 1;
                    self.replies.skip_line = false;
                }
                None => return,
            }
        }
        let mut fwd = Fwd::default();
        let mut framer = std::mem::take(&mut self.replies.framer);
        // The last owed reply goes out whole, even when it ends in a later read.
        while pos < input.len() && (self.replies.owed() > 0 || framer.mid_line()) {
            let d = Direction::ServerToClient;
            let side = &mut OwedSide(&mut self.replies);
            pos = framer.step(REPLY_LINE_CAP, input, pos, &mut fwd, d, out, side);
            if !framer.mid_line() {
                fwd.flush(input, &mut out.to_client);
                self.replies.answer_injected(out);
            }
        }
        self.replies.framer = framer;
        fwd.flush(input, &mut out.to_client);
    }

    /// Judges one reply line from its content (CRLF excluded; for an overlong line its
    /// first [`REPLY_LINE_CAP`] bytes). The effect of a complete reply on the client
    /// side is kept in `replies.effect` for [`Inspector::server_input`] to apply.
    fn on_reply(&mut self, line: &[u8], out: &mut Output) -> LineDecision {
        let d = Direction::ServerToClient;
        self.judge.judging(line);
        let code = reply_code(line);
        let last = line.get(3) != Some(&b'-');
        let line_no = self.replies.line_no;
        self.replies.line_no = if last { 0 } else { line_no + 1 };

        if let ServerSide::Greeting { masked } = self.replies.side {
            // RFC 5321 §4.3.1: the first reply is the greeting (its text is the banner).
            let mut mask = masked;
            if line_no == 0 {
                mask = false;
                if self.judge.has(CriterionKind::Banner) {
                    match self.judge.check_flag(CriterionKind::Banner, d, 0, out) {
                        Outcome::Stop => return LineDecision::Stop,
                        outcome => mask = outcome == Outcome::Mask,
                    }
                }
            }
            self.replies.side = if last {
                self.progress += 1;
                ServerSide::Replies
            } else {
                ServerSide::Greeting { masked: mask }
            };
            if mask {
                return self.masked_greeting(line, line_no);
            }
            return LineDecision::Pass;
        }

        let Some(&head) = self.replies.pending.front() else {
            // Unsolicited (e.g. a 421 before closing): forwarded as is.
            return LineDecision::Pass;
        };
        if let Pending::StarttlsInspected { to_upstream } = head {
            if last {
                self.progress += 1;
                self.replies.pop();
            }
            return self.starttls_reply(code, last, to_upstream, out);
        }
        let mut action = LineDecision::Pass;
        if head == Pending::Ehlo && line_no == 0 {
            // A new EHLO reply replaces what the last one offered.
            self.replies.chunking = false;
            self.replies.size_limit = 0;
        }
        let ehlo_ok = head == Pending::Ehlo && (200..300).contains(&code);
        if ehlo_ok && line_no == 0 {
            self.tls_ehlo_start();
        }
        if ehlo_ok && line_no > 0 {
            let masked_for_tls = self.tls_ehlo_keyword(ehlo_word(line));
            self.replies.note_extension(line);
            match self.ehlo_keyword(line, out) {
                Outcome::Stop => return LineDecision::Stop,
                Outcome::Mask => {
                    action = LineDecision::Rewrite(Bytes::from(mask_keyword(line)), None)
                }
                Outcome::Pass if masked_for_tls => {
                    action = LineDecision::Rewrite(Bytes::from(mask_keyword(line)), None)
                }
                Outcome::Pass | Outcome::Reject(_) => {}
            }
        }
        if !last {
            return action;
        }
        if ehlo_ok {
            let effective = match &action {
                LineDecision::Rewrite(bytes, _) => bytes.clone(),
                _ => Bytes::copy_from_slice(line),
            };
            if let Some(with_starttls) = self.tls_ehlo_last(&effective, line_no) {
                action = with_starttls;
            }
        }
        self.progress += 1;
        // The reply is complete: it answers `head`.
        let class = code / 100;
        if !(head == Pending::Auth && code == 334) {
            self.replies.pop();
        }
        let effect = match head {
            Pending::Helo | Pending::Ehlo => {
                if class == 2 {
                    self.replies.embryonic = false;
                }
                if class != 2 || head == Pending::Helo {
                    // No EHLO extensions in force (RFC 5321 §4.1.1.1).
                    self.replies.chunking = false;
                    self.replies.size_limit = 0;
                }
                None
            }
            Pending::Bdat if class == 5 => Some(ReplyEffect::BdatRefused),
            Pending::Bdat => self.queue_room(),
            Pending::EndOfData { bdat: true } if class == 5 => {
                self.client.transaction = self.replies.mail_pending();
                Some(ReplyEffect::BdatRefused)
            }
            Pending::Mail => {
                if class == 2 {
                    self.envelope.on_mail_accepted();
                } else {
                    self.client.transaction = self.replies.mail_pending();
                }
                None
            }
            Pending::EndOfData { .. } => {
                if class == 2 {
                    self.envelope.on_message_accepted();
                }
                self.client.transaction = self.replies.mail_pending();
                self.queue_room()
            }
            Pending::Rcpt => {
                if class == 2 {
                    self.envelope.on_rcpt_accepted();
                }
                if class == 5 {
                    self.replies.invalid_rcpts += 1;
                    let n = self.replies.invalid_rcpts;
                    let kind = CriterionKind::InvalidRecipientsCount;
                    if self.judge.check_cmp(kind, d, n, out) == Outcome::Stop {
                        return LineDecision::Stop;
                    }
                }
                None
            }
            Pending::Data => {
                if code == 354 {
                    // Content lines are not excerpted: events in them carry none.
                    self.judge.judging(b"");
                    self.content.start_message();
                    self.client.mode = ClientMode::Data;
                }
                self.barrier_answered()
            }
            Pending::Starttls => {
                if code == 220 && self.client.has_held() {
                    // RFC 3207 §4: the client must wait for this reply; bytes it sent
                    // before it are plaintext injected ahead of TLS (CVE-2011-0411).
                    let kind = CriterionKind::StarttlsInjection;
                    let d = Direction::ClientToServer;
                    self.judge.check_flag(kind, d, 0, out);
                    if self.judge.stopped() {
                        return LineDecision::Stop;
                    }
                }
                if code == 220 {
                    // RFC 3207 §4: TLS starts after this reply; nothing after it can be read.
                    let kind = CriterionKind::TlsStarted;
                    if self.judge.check_flag(kind, d, 0, out) == Outcome::Stop {
                        return LineDecision::Stop;
                    }
                    self.replies.embryonic = false;
                    self.client.mode = ClientMode::Opaque;
                }
                self.barrier_answered()
            }
            Pending::Auth if code == 334 => {
                // RFC 4954 §4: the client's next line answers the challenge.
                self.client.mode = ClientMode::AuthLine;
                Some(ReplyEffect::ReleaseHeld)
            }
            Pending::Auth => {
                if self.client.mode == ClientMode::AuthLine {
                    // The server ended the exchange before the client answered.
                    self.client.mode = ClientMode::Command;
                }
                self.barrier_answered()
            }
            Pending::Xexch50 { size } => {
                if code == 354 {
                    self.client.mode = ClientMode::Blob { left: size };
                }
                self.barrier_answered()
            }
            Pending::Other => self.queue_room(),
            Pending::StarttlsInspected { .. } => unreachable!("answered by starttls_reply"),
            // Never at the front when a server reply arrives: answered as soon as the
            // replies before it were forwarded.
            Pending::Injected(_) => None,
        };
        if effect.is_some() {
            self.replies.effect = effect;
        }
        action
    }

    /// The reply to a DATA / STARTTLS / AUTH / XEXCH50 arrived: the bytes held behind it
    /// can be judged, once the queue has room.
    fn barrier_answered(&mut self) -> Option<ReplyEffect> {
        if self.client.hold == Hold::UntilReply {
            self.client.hold = Hold::UntilQueueRoom;
        }
        self.queue_room()
    }

    /// A reply made room in the queue: bytes held for room can be judged once half the
    /// queue is free. Releasing on every reply would copy the held bytes once per
    /// reply, each copy kept alive by the command forwarded from it: one server read
    /// of a thousand replies cost 64 MiB.
    fn queue_room(&mut self) -> Option<ReplyEffect> {
        let room = self.replies.queued() <= QUEUE_CAP / 2;
        (self.client.hold == Hold::UntilQueueRoom && room).then_some(ReplyEffect::ReleaseHeld)
    }

    /// An EHLO reply line after the first: mask its keyword per the rules.
    fn ehlo_keyword(&mut self, line: &[u8], out: &mut Output) -> Outcome {
        let kind = CriterionKind::EhloReplyParameter;
        if !self.judge.has(kind) || line.len() < 4 {
            return Outcome::Pass;
        }
        let text = &line[4..scanner::content_len(line).max(4)];
        let word = &text[..memchr::memchr(b' ', text).unwrap_or(text.len())];
        if word.is_empty() {
            return Outcome::Pass;
        }
        let d = Direction::ServerToClient;
        self.judge.check(kind, d, 0, out, |policy, c| {
            matches!(c, Criterion::EhloReplyParameter(set) if policy.ehlo_matches(*set, word))
        })
    }
}

impl Inspector {
    /// The greeting line `line_no` as `mask_banner` shows it: the firewall's asterisks,
    /// or `220 <banner name> ESMTP ready` on the first line (the code kept) and the
    /// code alone on any further line (a line longer than the reply cap passes: its
    /// end is not known when it is judged).
    fn masked_greeting(&self, line: &[u8], line_no: u32) -> LineDecision {
        if self.judge.policy().params.banner == BannerStyle::Asterisks {
            return LineDecision::Rewrite(Bytes::from(mask_banner(line)), Some(b'*'));
        }
        let code = match line {
            [a, b, c, ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => [*a, *b, *c],
            _ => *b"220",
        };
        let separator = if line.get(3) == Some(&b'-') {
            b'-'
        } else {
            b' '
        };
        let mut text = Vec::with_capacity(self.banner_name.len() + 16);
        text.extend_from_slice(&code);
        text.push(separator);
        if line_no == 0 {
            text.extend_from_slice(&self.banner_name);
            text.extend_from_slice(if code[0] == b'2' {
                &b" ESMTP ready"[..]
            } else {
                b" ESMTP service not available"
            });
        }
        text.extend_from_slice(b"\r\n");
        LineDecision::Replace(Bytes::from(text))
    }
}

/// After a drop: only pairs replies with what is still owed, so the drain knows when
/// the last of them went out.
struct OwedSide<'a>(&'a mut ReplyTracker);

impl LineSide for OwedSide<'_> {
    fn head(&mut self, line: &[u8], _len: u64, _complete: bool, _out: &mut Output) -> LineDecision {
        if line.get(3) != Some(&b'-') {
            self.0.pop();
        }
        LineDecision::Pass
    }

    fn overlong_end(&mut self, _len: u64, _out: &mut Output) -> bool {
        true
    }

    fn stopped(&self) -> bool {
        false
    }
}

/// The server's reply lines, as the framer sees them; keeps the effect of the reply
/// for [`Inspector::server_input`] to apply.
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
        self.0.judge.stopped()
    }
}

/// The keyword of an EHLO reply line after the first (`250-SIZE 1000` → `SIZE`).
fn ehlo_word(line: &[u8]) -> &[u8] {
    let text = line
        .get(4..scanner::content_len(line).max(4))
        .unwrap_or(b"");
    &text[..memchr::memchr(b' ', text).unwrap_or(text.len())]
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
