//! The client side: command lines (RFC 5321 §4.1), pipelining (RFC 2920) and the hold
//! of bytes sent ahead of a reply that decides what they are, MAIL/RCPT arguments,
//! transactions, and the dispatch of client bytes to the content pipeline. Replies are
//! the server side's job (`replies`); this side only queues what it forwarded.

use bytes::Bytes;

use super::content::{Chunk, Step};
use super::forward::Fwd;
use super::framer::{LineDecision, LineFramer, LineSide};
use super::judge::{LenCheck, Outcome};
use super::replies::Pending;
use super::tls::StarttlsCommand;
use super::{Inspector, Output, Verdict, CMD_LINE_CAP, HOLD_CAP, QUEUE_CAP};
use crate::event::Direction;
use crate::path::{self, Address, PathKind};
use crate::rules::{Criterion, CriterionKind};
use crate::scanner::{self, CONTENT_FINDERS};
use crate::verb::Verb;

/// What the client's next bytes are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum ClientMode {
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
    /// After STARTTLS was accepted (or for a policy that does not inspect): relayed
    /// untouched, both ways.
    Opaque,
}

/// Whether client bytes are judged as they come or held until a reply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Hold {
    /// Judged as they come.
    Open,
    /// A DATA / STARTTLS / AUTH (or XEXCH50) awaits its reply, which says what the
    /// bytes behind it are (RFC 2920 §3.1).
    UntilReply,
    /// [`QUEUE_CAP`] commands await replies: bytes wait until half of them arrived.
    UntilQueueRoom,
}

/// The client side's state.
pub(super) struct ClientSide {
    pub(super) mode: ClientMode,
    framer: LineFramer,
    pub(super) hold: Hold,
    /// Client bytes waiting while `hold` is not `Open`.
    held: Vec<u8>,
    rcpt_count: u64,
    /// A MAIL was forwarded and its transaction has not ended (refused MAIL, RSET,
    /// HELO/EHLO, or the reply to its end of data).
    pub(super) transaction: bool,
    /// A BDAT message has started and has not had its LAST chunk.
    bdat_message: bool,
}

impl ClientSide {
    pub(super) fn new(inspect: bool) -> ClientSide {
        ClientSide {
            mode: if inspect {
                ClientMode::Command
            } else {
                ClientMode::Opaque
            },
            framer: LineFramer::default(),
            hold: Hold::Open,
            held: Vec::new(),
            rcpt_count: 0,
            transaction: false,
            bdat_message: false,
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.framer.buffered() + self.held.len()
    }

    /// Drops the held bytes (sent behind STARTTLS, RFC 3207 §4.2); returns how many.
    pub(super) fn discard_held(&mut self) -> usize {
        let n = self.held.len();
        self.held.clear();
        self.hold = Hold::Open;
        n
    }

    /// Client bytes are waiting for a reply.
    pub(super) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// RFC 5321 §4.1.4: RSET, HELO/EHLO and the end of a message clear the transaction.
    pub(super) fn reset_transaction(&mut self) {
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
}

impl Inspector {
    /// Every client byte the inspector judges enters here (first read, or released).
    pub(super) fn client_input(&mut self, input: Bytes, out: &mut Output) {
        let mut fwd = Fwd::default();
        let mut pos = 0;
        // `BDAT 0 LAST` ends a message with no further input.
        let empty_chunk = |mode: ClientMode| matches!(mode, ClientMode::Bdat { left: 0, .. });
        while (pos < input.len() || empty_chunk(self.client.mode)) && !self.judge.stopped() {
            if self.client.hold != Hold::Open {
                let rest = &input[pos..];
                if self.client.held.len() + rest.len() > HOLD_CAP {
                    self.improper_pipelining(out);
                } else {
                    self.client.held.extend_from_slice(rest);
                }
                break;
            }
            pos = match self.client.mode {
                ClientMode::Command => {
                    let pos = self.client_commands(&input, pos, &mut fwd, out);
                    match out.start_tls.as_mut() {
                        // STARTTLS answered here: the rest of this read came before
                        // the handshake, and RFC 3207 §4.2 voids it.
                        Some(start) => {
                            start.discarded += input.len() - pos;
                            input.len()
                        }
                        None => pos,
                    }
                }
                ClientMode::AuthLine => self.client_auth_line(&input, pos, &mut fwd, out),
                ClientMode::Data => {
                    match self
                        .content
                        .data(&mut self.judge, &input, pos, &mut fwd, out)
                    {
                        Step::Read(pos) => pos,
                        Step::MessageEnd(pos) => {
                            self.queue(Pending::EndOfData { bdat: false });
                            self.client.end_message();
                            self.client.mode = ClientMode::Command;
                            pos
                        }
                    }
                }
                ClientMode::Bdat { left, last } => {
                    let (end, chunk) =
                        self.content
                            .bdat(&mut self.judge, &input, pos, left, last, &mut fwd, out);
                    self.client.mode = match chunk {
                        Chunk::Continues { left } => ClientMode::Bdat { left, last },
                        // A chunk cut by a stop keeps its mode: its BDAT is owed no reply.
                        Chunk::Ended if self.judge.stopped() => ClientMode::Bdat { left, last },
                        Chunk::Ended => ClientMode::Command,
                        Chunk::MessageEnded => {
                            self.client.end_message();
                            ClientMode::Command
                        }
                    };
                    end
                }
                ClientMode::Blob { left } => {
                    let end = pos + left.min((input.len() - pos) as u64) as usize;
                    fwd.pass(&input, pos, end, &mut out.to_server);
                    let left = left - (end - pos) as u64;
                    self.client.mode = if left == 0 {
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
        if self.judge.stopped() {
            if let ClientMode::Bdat { .. } = self.client.mode {
                // The chunk never completes at the server: its BDAT is owed no reply.
                self.replies.forget_newest();
                self.client.mode = ClientMode::Command;
            }
        }
    }

    /// Past [`HOLD_CAP`]: the client did not wait for the reply (RFC 2920 §3.1).
    fn improper_pipelining(&mut self, out: &mut Output) {
        let (kind, d) = (CriterionKind::ImproperPipelining, Direction::ClientToServer);
        self.judge.check_flag(kind, d, HOLD_CAP as u64, out);
        // Whatever the rule says, nothing more can be held.
        let reply = kind.drop_reply();
        self.judge.stop(out, Verdict::Drop { reply });
    }

    /// Judges the held client bytes now that a reply said what they are.
    pub(super) fn release_held(&mut self, out: &mut Output) {
        self.client.hold = Hold::Open;
        if self.client.held.is_empty() || self.judge.stopped() {
            return;
        }
        if self.is_opaque() {
            // Plaintext sent ahead of TLS (RFC 3207 §4) was judged when the 220 came:
            // it never reaches the server.
            self.client.held.clear();
            return;
        }
        let held = Bytes::from(std::mem::take(&mut self.client.held));
        self.client_input(held, out);
    }

    /// Command mode: frames lines, judges each, returns where it stopped.
    fn client_commands(
        &mut self,
        input: &Bytes,
        mut pos: usize,
        fwd: &mut Fwd,
        out: &mut Output,
    ) -> usize {
        let mut framer = std::mem::take(&mut self.client.framer);
        while pos < input.len()
            && self.client.mode == ClientMode::Command
            && self.client.hold == Hold::Open
            && !self.judge.stopped()
            // A STARTTLS answered here ends the plaintext commands.
            && out.start_tls.is_none()
        {
            let side = &mut CommandSide(self);
            let d = Direction::ClientToServer;
            pos = framer.step(CMD_LINE_CAP, input, pos, fwd, d, out, side);
        }
        self.client.framer = framer;
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
        use CriterionKind as K;
        let d = Direction::ClientToServer;
        self.judge.judging(content);
        // An overlong line is judged when it crosses the cap, on `gt` rules (its final
        // length can only be larger); the others wait for its end.
        let when = if complete {
            LenCheck::Final { early: None }
        } else {
            LenCheck::Partial
        };
        if self.judge.check_line_length(len, when, out) == Outcome::Stop {
            return Outcome::Stop;
        }
        let word_end = CONTENT_FINDERS.space.find(content).unwrap_or(content.len());
        let word = &content[..word_end];
        let args = &content[word_end..];
        let verb = Verb::parse(word);

        let mut outcome = Outcome::Pass;
        // An empty line has nothing to mask; the server answers it 500 on its own.
        // (A line starting with a space is X-ed: a lenient server might trim it.)
        if !content.is_empty() && !self.judge.policy().allowed_commands.contains(verb, word) {
            outcome = self.judge.check_flag(K::UnknownVerb, d, len, out);
            // A command outside the allowed set is always X-ed, rule or not.
            if outcome != Outcome::Stop {
                outcome = Outcome::Mask;
            }
        }
        if outcome != Outcome::Stop && self.judge.has(K::CmdVerb) {
            outcome = outcome.and(self.judge.check(
                K::CmdVerb,
                d,
                0,
                out,
                |_, c| matches!(c, Criterion::CmdVerb(set) if set.contains(verb, word)),
            ));
        }
        if outcome != Outcome::Pass {
            return self.refuse(outcome, complete, out);
        }

        let pending = match verb {
            Verb::Helo | Verb::Ehlo => {
                // RFC 5321 §4.1.4: HELO/EHLO clears any transaction.
                self.client.reset_transaction();
                self.envelope.on_helo(args);
                if verb == Verb::Helo {
                    Pending::Helo
                } else {
                    Pending::Ehlo
                }
            }
            Verb::Rset => {
                self.client.reset_transaction();
                Pending::Other
            }
            Verb::Mail => match self.check_path(args, verb, out) {
                Outcome::Pass => {
                    self.client.transaction = true;
                    Pending::Mail
                }
                refused => return self.refuse(refused, complete, out),
            },
            Verb::Rcpt => {
                self.client.rcpt_count += 1;
                let count = self.client.rcpt_count;
                let outcome = self
                    .judge
                    .check_cmp(K::CmdRcptCount, d, count, out)
                    .and(self.check_path(args, verb, out));
                if outcome != Outcome::Pass {
                    return self.refuse(outcome, complete, out);
                }
                Pending::Rcpt
            }
            // A DATA/STARTTLS/AUTH line too long to judge whole: a lenient server might
            // act on it, so the session ends (when no `cmd line length` rule did).
            Verb::Data | Verb::Starttls | Verb::Auth if !complete => {
                self.judge.check_flag(K::OverlongCommand, d, len, out);
                return Outcome::Stop;
            }
            // STARTTLS terminated here (see the `tls` module).
            Verb::Starttls if complete && self.inspects_tls() => {
                return match self.starttls_command(out) {
                    StarttlsCommand::Queue { pending, mask } => {
                        self.queue(pending);
                        if mask {
                            Outcome::Mask
                        } else {
                            Outcome::Pass
                        }
                    }
                    StarttlsCommand::Answer(reply) => {
                        self.answer(reply, out);
                        Outcome::Reject(reply)
                    }
                    StarttlsCommand::AlreadyOn => {
                        self.queue(Pending::Other);
                        Outcome::Mask
                    }
                    StarttlsCommand::Stopped => Outcome::Stop,
                };
            }
            // An overlong DATA/STARTTLS/AUTH/BDAT line is a syntax error the server
            // rejects; it changes no state.
            // These end a pipelined group (RFC 2920 §3.1): hold what follows until
            // their reply says what it is.
            Verb::Data | Verb::Starttls | Verb::Auth => {
                self.client.hold = Hold::UntilReply;
                match verb {
                    Verb::Data => Pending::Data,
                    Verb::Starttls => Pending::Starttls,
                    _ => Pending::Auth,
                }
            }
            // RFC 3030 §2: a chunk of `size` octets follows — but only a server that
            // offered CHUNKING and takes that count reads it as one; any other would
            // run the chunk as commands, so the line is masked like a refused verb.
            Verb::Bdat => {
                let chunk = bdat_arguments(args)
                    .filter(|&(size, _)| complete && self.replies.takes_chunk(size));
                let Some((size, last)) = chunk else {
                    let outcome = self.judge.check_flag(K::UnknownVerb, d, len, out);
                    return self.refuse(outcome.and(Outcome::Mask), complete, out);
                };
                if !self.client.bdat_message {
                    self.content.start_message();
                    self.client.bdat_message = true;
                }
                self.client.mode = ClientMode::Bdat { left: size, last };
                if last {
                    // Its reply is the one to the end of the message.
                    Pending::EndOfData { bdat: true }
                } else {
                    Pending::Bdat
                }
            }
            // Passed only when the policy allows it (`allow_verbs`): its blob follows
            // the server's 354, like DATA content, so the client waits for the reply.
            Verb::Other if complete && word.eq_ignore_ascii_case(b"XEXCH50") => {
                match xexch50_size(args) {
                    Some(size) => {
                        self.client.hold = Hold::UntilReply;
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

    /// A command not forwarded as written: masked (queued, the server answers it),
    /// rejected (answered here, in order; a line too long to judge whole is masked
    /// instead), or the session stopped.
    fn refuse(&mut self, outcome: Outcome, complete: bool, out: &mut Output) -> Outcome {
        match outcome {
            Outcome::Reject(reply) if complete => {
                self.answer(reply, out);
                outcome
            }
            Outcome::Stop => Outcome::Stop,
            _ => {
                self.queue(Pending::Other);
                Outcome::Mask
            }
        }
    }

    /// The inspector's own reply to a command it did not forward: to the client now
    /// when nothing is owed before it, else after the replies owed before it.
    fn answer(&mut self, reply: &'static [u8], out: &mut Output) {
        if self.replies.queued() == 0 {
            out.to_client.push(Bytes::from_static(reply));
        } else {
            self.queue(Pending::Injected(reply));
        }
    }

    /// Queues a forwarded command for its reply; a full queue holds what follows.
    fn queue(&mut self, pending: Pending) {
        self.replies.push(pending);
        if self.replies.queued() >= QUEUE_CAP && self.client.hold == Hold::Open {
            self.client.hold = Hold::UntilQueueRoom;
        }
    }

    /// The argument of MAIL FROM / RCPT TO, read as an RFC 5321 path: a pipe anywhere
    /// in the address ends the session, `special_character` looks at the address as
    /// written (the whole argument when it is not a path), an argument that is not a
    /// path is masked, and the sender and relay rules compare the canonical address.
    fn check_path(&mut self, args: &[u8], verb: Verb, out: &mut Output) -> Outcome {
        use CriterionKind as K;
        let d = Direction::ClientToServer;
        let (keyword, kind): (&[u8], PathKind) = match verb {
            Verb::Mail => (b"FROM:", PathKind::Reverse),
            _ => (b"TO:", PathKind::Forward),
        };
        let parsed = path::parse(args, keyword, kind);
        let written = parsed.map_or(args, |p| p.raw);
        if verb == Verb::Mail {
            self.envelope.on_mail(written);
        }
        let len = written.len() as u64;
        if CONTENT_FINDERS.pipe.find(written).is_some()
            && self.judge.check_flag(K::AddressPipe, d, len, out) == Outcome::Stop
        {
            return Outcome::Stop;
        }
        let mut outcome = Outcome::Pass;
        if has_special_character(written) {
            outcome = self.judge.check_flag(K::SpecialCharacter, d, len, out);
            if outcome == Outcome::Stop {
                return outcome;
            }
        }
        let canonical = parsed.ok().and_then(|p| Address::of(&p));
        let Some(address) = canonical else {
            return match self.judge.check_flag(K::MalformedPath, d, len, out) {
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
        use CriterionKind as K;
        let d = Direction::ClientToServer;
        let mut outcome = self.judge.check_cmp(K::SenderAddressLength, d, len, out);
        if outcome != Outcome::Stop && self.judge.has(K::SenderAddressRegex) {
            let addr = address.as_bytes();
            outcome = outcome.and(self.judge.check(
                K::SenderAddressRegex,
                d,
                len,
                out,
                |_, c| matches!(c, Criterion::SenderAddressRegex(re) if re.is_match(addr)),
            ));
        }
        outcome
    }

    /// `mail_relay`: a recipient domain other than the configured one.
    fn check_recipient(&mut self, len: u64, address: &Address, out: &mut Output) -> Outcome {
        let relay = match (self.judge.policy().mail_relay.as_deref(), address.domain()) {
            // A mailbox without a domain (`<postmaster>`) is the server's own.
            (Some(domain), Some(rcpt_domain)) => rcpt_domain != domain.as_bytes(),
            _ => false,
        };
        if !relay {
            return Outcome::Pass;
        }
        let d = Direction::ClientToServer;
        self.judge.check_flag(CriterionKind::MailRelay, d, len, out)
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
                self.client.mode = ClientMode::Command;
                self.client.hold = Hold::UntilReply;
                pos + n
            }
            None => {
                fwd.pass(input, pos, input.len(), &mut out.to_server);
                input.len()
            }
        }
    }
}

/// The client's command lines, as the framer sees them.
struct CommandSide<'a>(&'a mut Inspector);

impl LineSide for CommandSide<'_> {
    fn head(&mut self, content: &[u8], len: u64, complete: bool, out: &mut Output) -> LineDecision {
        if complete {
            self.0.progress += 1;
        }
        match self.0.on_command(content, len, complete, out) {
            Outcome::Pass => LineDecision::Pass,
            Outcome::Mask => LineDecision::Fill(b'X'),
            Outcome::Reject(_) => LineDecision::Swallow,
            Outcome::Stop => LineDecision::Stop,
        }
    }

    fn overlong_end(&mut self, len: u64, out: &mut Output) -> bool {
        self.0.progress += 1;
        let early = Some(CMD_LINE_CAP as u64 + 1);
        let when = LenCheck::Final { early };
        self.0.judge.check_line_length(len, when, out) != Outcome::Stop
    }

    fn stopped(&self) -> bool {
        self.0.judge.stopped()
    }
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
    CONTENT_FINDERS.backquote_nul.find(addr).is_some()
}
