//! The message-content pipeline, one for DATA and BDAT: line framing of the content
//! (strict CRLF and dot-stuffing for DATA, RFC 5321 §4.1.1.4 and §4.5.2; counted
//! chunks for BDAT, RFC 3030 §2), the SMTP-smuggling defence (bare CR / LF, a lone
//! dot beside one or beside a NUL, NUL octets in DATA), line-length cuts, and
//! [`MessageScanner`] for header, body and MIME rules. It says where content ends and
//! what was forwarded; the client side decides what comes next.

use bytes::Bytes;

use super::forward::Fwd;
use super::judge::{Judge, Outcome};
use super::Output;
use crate::event::Direction;
use crate::mime::{MessageScanner, LINE_HEAD_CAP};
use crate::policy::Policy;
use crate::rules::CriterionKind;
use crate::scanner::{ContentScanner, Scan, CONTENT_FINDERS};

/// Where DATA content reading stopped.
pub(super) enum Step {
    /// At the end of the input, or where a stop left it.
    Read(usize),
    /// The final dot went out (its line end included); commands resume here.
    MessageEnd(usize),
}

/// Where a BDAT chunk stands after a read.
pub(super) enum Chunk {
    /// `left` octets of the chunk still to come.
    Continues { left: u64 },
    /// The chunk is complete (or the session was stopped inside it).
    Ended,
    /// The LAST chunk is complete and the message passed its final checks.
    MessageEnded,
}

/// Message-content state, reset at each new message.
pub(super) struct Content {
    scanner: ContentScanner,
    /// First bytes of a content line that spans reads.
    carry: Vec<u8>,
    /// BDAT content framing: length of the current line so far, last byte CR.
    bdat_line_len: u64,
    bdat_last_cr: bool,
    /// Made at the session's first message: an idle session does not pay for it
    /// (it is most of an inspector's size).
    msg: Option<Box<MessageScanner>>,
    /// The header and body lengths past which a rule ends the session, for the scanner.
    drop_lengths: (u64, u64),
    /// The policy has a `nul_in_content` rule: each DATA message watches for a NUL.
    nul_rule: bool,
}

impl Content {
    pub(super) fn new(policy: &Policy) -> Content {
        Content {
            scanner: ContentScanner::new(),
            carry: Vec::new(),
            bdat_line_len: 0,
            bdat_last_cr: false,
            msg: None,
            drop_lengths: (
                policy.index.header_len_drop.unwrap_or(u64::MAX),
                policy.index.body_len_drop.unwrap_or(u64::MAX),
            ),
            nul_rule: !policy.index.of(CriterionKind::NulInContent).is_empty(),
        }
    }

    /// A new message starts (after `354`, or at its first BDAT chunk).
    pub(super) fn start_message(&mut self) {
        scanner(&mut self.msg, self.drop_lengths).reset();
        self.scanner.reset();
        self.scanner.watch_nul(self.nul_rule);
        self.carry.clear();
        self.bdat_line_len = 0;
        self.bdat_last_cr = false;
    }

    pub(super) fn buffered_bytes(&self) -> usize {
        self.carry.len() + self.msg.as_ref().map_or(0, |m| m.buffered_bytes())
    }

    /// A content line growing past the lowest length threshold of a rule that ends the
    /// session is cut there, not at its end: `raw` is its length so far (dot-stuffing
    /// included, `stuffed` says whether it starts with a doubled dot). Returns how many
    /// raw bytes of the line may go out, when the rules fired. Checked at positions
    /// that do not depend on how reads split the line (bare bytes, line ends) and at
    /// read ends, always cutting at the same byte, so the output does not either.
    fn crossing(
        &mut self,
        judge: &mut Judge,
        raw: u64,
        stuffed: bool,
        out: &mut Output,
    ) -> Option<u64> {
        let index = &judge.policy().index;
        let (kind, floor) = if scanner(&mut self.msg, self.drop_lengths).in_header() {
            (CriterionKind::HeaderLineLength, index.header_line_drop)
        } else {
            (CriterionKind::BodyLineLength, index.body_line_drop)
        };
        let n = floor?;
        let limit = n + stuffed as u64;
        if raw <= limit {
            return None;
        }
        judge.fire_line_crossing(kind, n, out);
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
    /// skips the per-line calls: what the message scanner says about them is asked
    /// once per run, and their lengths are added once. `nul_at` is where the next NUL
    /// is (the buffer's length when none is): lines are only taken before it, so a line
    /// holding a NUL (for `nul_in_content`, or beside a dot) is not plain either. One
    /// memchr per read finds it, cheaper than a third needle here.
    #[inline]
    fn plain_body_lines(&mut self, judge: &Judge, buf: &[u8], pos: usize, nul_at: usize) -> usize {
        let Some(floor) = judge.policy().index.body_line_floor else {
            return pos;
        };
        let msg = scanner(&mut self.msg, self.drop_lengths);
        let Some(mut run) = msg.plain_body_run() else {
            return pos;
        };
        // Lines found in here end before the NUL, so `at` never passes its end.
        let haystack = &buf[..nul_at.max(pos)];
        let line_ends = &CONTENT_FINDERS.cr_lf;
        let mut at = pos;
        while let Some(i) = line_ends.find(&haystack[at..]) {
            let line = &buf[at..];
            let wire_len = i as u64 + 2;
            // A line led by a dot may be the end of data, or a smuggled one.
            let plain = line[i] == b'\r'
                && line.get(i + 1) == Some(&b'\n')
                && i as u64 <= floor
                && line[0] != b'.'
                && run.takes(&line[..i], wire_len);
            if !plain {
                break;
            }
            run.room -= wire_len;
            at += i + 2;
        }
        msg.add_plain_body((at - pos) as u64);
        at
    }

    /// More bytes of the current content line for the MIME parser, which sees every
    /// byte (the carried head is for the dot checks here only).
    fn feed_message(&mut self, bytes: &[u8]) {
        scanner(&mut self.msg, self.drop_lengths).line_bytes(bytes);
    }

    /// The first bytes of a DATA line: a leading dot was doubled by the client (RFC
    /// 5321 §4.5.2) and is not content.
    fn feed_line_start(&mut self, bytes: &[u8]) {
        let content = bytes.strip_prefix(b".").unwrap_or(bytes);
        scanner(&mut self.msg, self.drop_lengths).line_bytes(content);
    }

    /// DATA content: strict CRLF lines, dot-stuffing, end of data, smuggling defence.
    pub(super) fn data(
        &mut self,
        judge: &mut Judge,
        input: &Bytes,
        start: usize,
        fwd: &mut Fwd,
        out: &mut Output,
    ) -> Step {
        let buf: &[u8] = input;
        let mut pos = start;
        let mut line_start = start;
        // A CR held back at the end of the previous read: it goes out once we know it
        // is not the start of a smuggled line end (or that such lines are tolerated).
        let mut owes_cr = self.scanner.holds_cr();
        // Raw bytes of the current line that came in earlier reads.
        let mut prior = self.scanner.line_len();
        // The next NUL, found once per read and again past each (see plain_body_lines).
        let nul = &CONTENT_FINDERS.nul;
        let next_nul = |from: usize| nul.find(&buf[from..]).map_or(buf.len(), |i| from + i);
        let mut nul_at = next_nul(start);
        loop {
            // Only at the start of a line with nothing of it seen yet.
            if pos == line_start && prior == 0 && !owes_cr && self.carry.is_empty() {
                if nul_at < pos {
                    nul_at = next_nul(pos);
                }
                pos = self.plain_body_lines(judge, buf, pos, nul_at);
                fwd.pass(input, line_start, pos, &mut out.to_server);
                line_start = pos;
                if pos == buf.len() {
                    return Step::Read(pos);
                }
            }
            let step = self.scanner.next(buf, pos);
            if owes_cr && matches!(step, Scan::Bare { held: true, .. }) {
                owes_cr = false;
                if self.scanner.smuggled_dot() && smuggled_end_of_data(judge, out) {
                    return Step::Read(pos);
                }
                if judge.check_flag(
                    CriterionKind::BareNewline,
                    Direction::ClientToServer,
                    b'\r' as u64,
                    out,
                ) == Outcome::Stop
                {
                    return Step::Read(pos);
                }
                let stuffed = self.carry.first() == Some(&b'.');
                if self.crossing(judge, prior + 1, stuffed, out).is_some() {
                    return Step::Read(pos);
                }
                prior += 1;
                fwd.emit(input, Bytes::from_static(b"\r"), &mut out.to_server);
                // The CR is content of the line: its head must show it, as it would
                // had the read not split there.
                self.feed_message(b"\r");
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
                    if let Some(keep) = self.crossing(judge, raw, stuffed, out) {
                        let cut = line_start + keep.saturating_sub(prior) as usize;
                        fwd.pass(input, line_start, cut, &mut out.to_server);
                        return Step::Read(cut);
                    }
                    if self.scanner.smuggled_dot() && smuggled_end_of_data(judge, out) {
                        // The dot goes out, its line end never: no server ends the
                        // message on it.
                        fwd.pass(input, line_start, content_end, &mut out.to_server);
                        return Step::Read(content_end);
                    }
                    let piece = &buf[line_start..content_end];
                    let line_head = self.carry.is_empty();
                    let head: &[u8] = if line_head {
                        &piece[..piece.len().min(LINE_HEAD_CAP)]
                    } else {
                        let room = LINE_HEAD_CAP.saturating_sub(self.carry.len());
                        self.carry
                            .extend_from_slice(&piece[..piece.len().min(room)]);
                        &self.carry
                    };
                    if len == 1 && head == b"." {
                        // RFC 5321 §4.1.1.4: CRLF.CRLF ends the message.
                        let mut judge = judge.message(&mut *out);
                        if !scanner(&mut self.msg, self.drop_lengths).on_end(&mut judge) {
                            // Stop before the line end: the dot never ends the message.
                            fwd.pass(input, line_start, content_end, &mut out.to_server);
                            return Step::Read(content_end);
                        }
                        if std::mem::take(&mut owes_cr) {
                            fwd.emit(input, Bytes::from_static(b"\r"), &mut out.to_server);
                        }
                        fwd.pass(input, line_start, end, &mut out.to_server);
                        self.carry.clear();
                        return Step::MessageEnd(end);
                    }
                    // RFC 5321 §4.5.2: a leading dot was doubled by the client.
                    let len = len - (head.first() == Some(&b'.')) as u64;
                    if line_head {
                        self.feed_line_start(piece);
                    } else {
                        self.feed_message(piece);
                    }
                    let mut judge = judge.message(out);
                    if !scanner(&mut self.msg, self.drop_lengths).line_end(len, len + 2, &mut judge)
                    {
                        // The cut is the line end, wherever the reads split the line.
                        fwd.pass(input, line_start, content_end, &mut out.to_server);
                        return Step::Read(content_end);
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
                    if let Some(keep) = self.crossing(judge, raw, stuffed, out) {
                        let cut = line_start + keep.saturating_sub(prior) as usize;
                        fwd.pass(input, line_start, cut, &mut out.to_server);
                        return Step::Read(cut);
                    }
                    let smuggled = self.scanner.smuggled_dot();
                    if (smuggled && smuggled_end_of_data(judge, out))
                        || judge.check_flag(
                            CriterionKind::BareNewline,
                            Direction::ClientToServer,
                            if cr { b'\r' } else { b'\n' } as u64,
                            out,
                        ) == Outcome::Stop
                    {
                        // Everything before the bare byte, nothing from it on.
                        fwd.pass(input, line_start, at, &mut out.to_server);
                        return Step::Read(at);
                    }
                    pos = resume;
                }
                // Only the first step of a read can report the held CR; judged above.
                Scan::Bare {
                    held: true, resume, ..
                } => pos = resume,
                Scan::Nul { at, resume } => {
                    let raw = prior + (at - line_start) as u64;
                    let stuffed = self.line_starts_with_dot(buf, line_start);
                    if let Some(keep) = self.crossing(judge, raw, stuffed, out) {
                        let cut = line_start + keep.saturating_sub(prior) as usize;
                        fwd.pass(input, line_start, cut, &mut out.to_server);
                        return Step::Read(cut);
                    }
                    // Judged once per message: one event, not one per NUL.
                    self.scanner.watch_nul(false);
                    let d = Direction::ClientToServer;
                    if judge.check_flag(CriterionKind::NulInContent, d, 0, out) == Outcome::Stop {
                        // Everything before the NUL, nothing from it on.
                        fwd.pass(input, line_start, at, &mut out.to_server);
                        return Step::Read(at);
                    }
                    pos = resume;
                }
                Scan::Partial { holds_cr, .. } => {
                    let end = buf.len() - holds_cr as usize;
                    let raw = prior + (end - line_start) as u64;
                    let stuffed = self.line_starts_with_dot(buf, line_start);
                    if let Some(keep) = self.crossing(judge, raw, stuffed, out) {
                        let cut = line_start + keep.saturating_sub(prior) as usize;
                        fwd.pass(input, line_start, cut, &mut out.to_server);
                        return Step::Read(cut);
                    }
                    let piece = &buf[line_start..end];
                    if self.carry.is_empty() {
                        self.feed_line_start(piece);
                    } else {
                        self.feed_message(piece);
                    }
                    let room = LINE_HEAD_CAP.saturating_sub(self.carry.len());
                    self.carry
                        .extend_from_slice(&piece[..piece.len().min(room)]);
                    fwd.pass(input, line_start, end, &mut out.to_server);
                    return Step::Read(buf.len());
                }
            }
        }
    }

    /// BDAT chunk content (RFC 3030 §2): exactly `left` octets, no dot handling. Not
    /// judged for NULs: BDAT content may be binary (RFC 3030 BINARYMIME).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bdat(
        &mut self,
        judge: &mut Judge,
        input: &Bytes,
        start: usize,
        left: u64,
        last: bool,
        fwd: &mut Fwd,
        out: &mut Output,
    ) -> (usize, Chunk) {
        let take = left.min((input.len() - start) as u64) as usize;
        let end = start + take;
        let buf: &[u8] = input;
        let mut pos = start;
        while pos < end {
            match CONTENT_FINDERS.lf.find(&buf[pos..end]) {
                Some(i) => {
                    let lf = pos + i;
                    let ends_crlf = if i > 0 {
                        buf[lf - 1] == b'\r'
                    } else {
                        self.bdat_last_cr
                    };
                    let wire_len = self.bdat_line_len + i as u64 + 1;
                    let len = wire_len - 1 - ends_crlf as u64;
                    // With `i == 0` a CR ending the previous read was the line's CR;
                    // otherwise it was content.
                    let content_end = if i > 0 { lf - ends_crlf as usize } else { pos };
                    if i > 0 && self.bdat_last_cr {
                        self.feed_message(b"\r");
                    }
                    self.feed_message(&buf[pos..content_end]);
                    let mut judge = judge.message(out);
                    if !scanner(&mut self.msg, self.drop_lengths)
                        .line_end(len, wire_len, &mut judge)
                    {
                        // Cut before the LF, wherever the reads split the line.
                        fwd.pass(input, pos, lf, &mut out.to_server);
                        return (lf, Chunk::Ended);
                    }
                    self.bdat_line_len = 0;
                    self.bdat_last_cr = false;
                    fwd.pass(input, pos, lf + 1, &mut out.to_server);
                    pos = lf + 1;
                }
                None => {
                    let piece = &buf[pos..end];
                    if self.bdat_last_cr {
                        self.feed_message(b"\r");
                    }
                    // A CR ending the read waits: the next byte says whether it ends
                    // the line.
                    self.bdat_last_cr = piece.last() == Some(&b'\r');
                    self.feed_message(&piece[..piece.len() - self.bdat_last_cr as usize]);
                    self.bdat_line_len += piece.len() as u64;
                    fwd.pass(input, pos, end, &mut out.to_server);
                    pos = end;
                }
            }
        }
        let left = left - take as u64;
        if left > 0 {
            return (end, Chunk::Continues { left });
        }
        if last {
            let mut judge = judge.message(&mut *out);
            // A last line without CRLF is still a line of the message.
            if self.bdat_last_cr {
                scanner(&mut self.msg, self.drop_lengths).line_bytes(b"\r");
            }
            let ok = (self.bdat_line_len == 0
                || scanner(&mut self.msg, self.drop_lengths).line_end(
                    self.bdat_line_len,
                    self.bdat_line_len,
                    &mut judge,
                ))
                && scanner(&mut self.msg, self.drop_lengths).on_end(&mut judge);
            if !ok {
                // The LAST chunk must never be complete at the server.
                fwd.retract_last(&mut out.to_server);
                return (end, Chunk::Ended);
            }
            self.carry.clear();
            return (end, Chunk::MessageEnded);
        }
        (end, Chunk::Ended)
    }
}

/// A lone dot beside a bare line end or a NUL ([`ContentScanner::smuggled_dot`]): an end
/// of data to some server, so smuggling whatever `bare_newline` says. True when the
/// session ends.
fn smuggled_end_of_data(judge: &mut Judge, out: &mut Output) -> bool {
    let d = Direction::ClientToServer;
    judge.check_flag(CriterionKind::SmuggledEndOfData, d, b'.' as u64, out) == Outcome::Stop
}

/// The message scanner, made on first use with the policy's length limits.
fn scanner(slot: &mut Option<Box<MessageScanner>>, lengths: (u64, u64)) -> &mut MessageScanner {
    slot.get_or_insert_with(|| {
        let mut msg = Box::new(MessageScanner::new());
        msg.watch_lengths(lengths.0, lengths.1);
        msg
    })
}
