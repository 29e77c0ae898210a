//! Rule firing, behind one context: which rules of a kind apply to a value, the event
//! each match emits, the verdict a session-ending action gives, `rate-limit` windows.
//! It decides nothing about framing: callers say what was seen and act on the
//! [`Outcome`] (pass, mask the thing judged, or stop before it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Output, Verdict};
use crate::event::{Direction, Event, Excerpt, MessageId};
use crate::mime::{Observation, Observer};
use crate::policy::Policy;
use crate::rules::{Cmp, Criterion, CriterionKind, Disposition, Rule, RuleId};

const REPLY_RATE_LIMIT: &[u8] = b"421 4.7.0 Message rate limit exceeded, closing connection\r\n";

/// What a rule check asks of the thing being judged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Outcome {
    Pass,
    Mask,
    /// Answer the command with this reply; forward nothing of it.
    Reject(&'static [u8]),
    Stop,
}

impl Outcome {
    /// Both outcomes together: the stronger wins (stop, reject, mask, pass).
    #[inline]
    pub(super) fn and(self, other: Outcome) -> Outcome {
        match (self, other) {
            (Outcome::Stop, _) | (_, Outcome::Stop) => Outcome::Stop,
            (r @ Outcome::Reject(_), _) | (_, r @ Outcome::Reject(_)) => r,
            (Outcome::Mask, _) | (_, Outcome::Mask) => Outcome::Mask,
            _ => Outcome::Pass,
        }
    }
}

/// When a `cmd line length` check runs.
#[derive(Clone, Copy)]
pub(super) enum LenCheck {
    /// The line crossed the buffer cap and is still growing: only non-negated `gt`
    /// rules can already be sure (its final length can only be larger).
    Partial,
    /// The line ended; `early` is the length at which a partial check ran, so a `gt`
    /// rule that fired then does not fire twice.
    Final { early: Option<u64> },
}

/// The session's rule state: the policy, whether a verdict was given, rate windows.
pub(super) struct Judge {
    policy: Arc<Policy>,
    actor: Actor,
}

struct Actor {
    /// The verdict, once given.
    verdict: Option<Verdict>,
    now: Option<Instant>,
    /// Per rule (only when the policy has `rate-limit` rules): window start and count.
    rate: Vec<(Option<Instant>, u32)>,
    /// The line being judged, copied into the events it fires.
    excerpt: Excerpt,
}

impl Judge {
    /// The line the next checks judge (its start goes into their events); empty for
    /// message content.
    #[inline]
    pub(super) fn judging(&mut self, line: &[u8]) {
        self.actor.excerpt.set(line);
    }

    pub(super) fn new(policy: Arc<Policy>) -> Judge {
        let rate = if policy.rules.iter().any(|r| r.actions.rate_limit > 0) {
            vec![(None, 0); policy.rules.len()]
        } else {
            Vec::new()
        };
        Judge {
            policy,
            actor: Actor {
                verdict: None,
                now: None,
                rate,
                excerpt: Excerpt::EMPTY,
            },
        }
    }

    #[inline]
    pub(super) fn policy(&self) -> &Policy {
        &self.policy
    }

    pub(super) fn policy_arc(&self) -> &Arc<Policy> {
        &self.policy
    }

    pub(super) fn set_now(&mut self, now: Instant) {
        self.actor.now = Some(now);
    }

    /// A drop or reset verdict was given: nothing more is forwarded.
    #[inline]
    pub(super) fn stopped(&self) -> bool {
        self.actor.verdict.is_some()
    }

    /// The session was dropped (not reset): replies still owed are forwarded first.
    pub(super) fn dropped(&self) -> bool {
        matches!(self.actor.verdict, Some(Verdict::Drop { .. }))
    }

    /// Ends the session with `verdict` (the first verdict wins).
    pub(super) fn stop(&mut self, out: &mut Output, verdict: Verdict) -> Outcome {
        self.actor.stop(out, verdict)
    }

    /// Fires every rule of `kind` that `applies`, in order, until one stops the
    /// session. The one loop every check below shares.
    #[inline]
    fn fire_where(
        &mut self,
        kind: CriterionKind,
        direction: Direction,
        value: u64,
        out: &mut Output,
        applies: impl Fn(&Policy, &Rule) -> bool,
    ) -> Outcome {
        let (policy, actor) = (&*self.policy, &mut self.actor);
        let mut outcome = Outcome::Pass;
        for &id in policy.index.of(kind) {
            let rule = policy.rule(id);
            if applies(policy, rule) {
                outcome = outcome.and(actor.fire(id, rule, direction, value, out));
                if outcome == Outcome::Stop {
                    break;
                }
            }
        }
        outcome
    }

    /// Whether the policy has any rule of `kind`.
    #[inline]
    pub(super) fn has(&self, kind: CriterionKind) -> bool {
        !self.policy.index.of(kind).is_empty()
    }

    /// Runs every rule of `kind` whose criterion `matches` (after `match not`).
    #[inline]
    pub(super) fn check(
        &mut self,
        kind: CriterionKind,
        direction: Direction,
        value: u64,
        out: &mut Output,
        matches: impl Fn(&Policy, &Criterion) -> bool,
    ) -> Outcome {
        self.fire_where(kind, direction, value, out, |policy, rule| {
            matches(policy, &rule.criterion) != rule.negate
        })
    }

    /// A comparison rule of `kind` against `value`.
    #[inline]
    pub(super) fn check_cmp(
        &mut self,
        kind: CriterionKind,
        direction: Direction,
        value: u64,
        out: &mut Output,
    ) -> Outcome {
        if !self.has(kind) {
            return Outcome::Pass;
        }
        self.check(kind, direction, value, out, |_, c| {
            c.threshold().is_some_and(|cmp| cmp.matches(value))
        })
    }

    /// A built-in rule (parameter) that matched: no comparison, `match not` not
    /// applicable.
    pub(super) fn check_flag(
        &mut self,
        kind: CriterionKind,
        direction: Direction,
        value: u64,
        out: &mut Output,
    ) -> Outcome {
        self.fire_where(kind, direction, value, out, |_, _| true)
    }

    /// The session-ending `gt` rules of a running total (`header length`, `body
    /// length`) that `value` has just passed: they fire now rather than at the end of
    /// the section, so a message over the limit is not streamed whole to the server
    /// first. Rules that only log, or are negated, wait for the final total.
    pub(super) fn check_crossed(
        &mut self,
        kind: CriterionKind,
        direction: Direction,
        value: u64,
        out: &mut Output,
    ) -> Outcome {
        self.fire_where(kind, direction, value, out, |_, rule| {
            let crossed = matches!(rule.criterion.threshold(), Some(Cmp::Gt(n)) if value > n);
            rule.actions.ends_session() && !rule.negate && crossed
        })
    }

    /// `cmd line length` rules against a command line of `len` bytes.
    pub(super) fn check_line_length(
        &mut self,
        len: u64,
        when: LenCheck,
        out: &mut Output,
    ) -> Outcome {
        let d = Direction::ClientToServer;
        self.fire_where(CriterionKind::CmdLineLength, d, len, out, |_, rule| {
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
        })
    }

    /// A content line growing past the lowest `gt` threshold `n` of a line-length rule
    /// of `kind` that ends the session: those rules at exactly `n` fire, with `n + 1`.
    pub(super) fn fire_line_crossing(&mut self, kind: CriterionKind, n: u64, out: &mut Output) {
        self.fire_where(kind, Direction::ClientToServer, n + 1, out, |_, rule| {
            let at_floor = matches!(rule.criterion.threshold(), Some(Cmp::Gt(t)) if t == n);
            at_floor && !rule.negate && rule.actions.ends_session()
        });
    }

    /// Message rules for [`crate::mime::MessageScanner`], writing to `out`.
    pub(super) fn message<'a>(&'a mut self, out: &'a mut Output) -> MessageJudge<'a> {
        MessageJudge { judge: self, out }
    }
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
            Criterion::SpecialCharacter
            | Criterion::BareNewline
            | Criterion::AddressPipe
            | Criterion::SmuggledEndOfData => MessageId::MaliciousPattern,
            Criterion::TlsStarted => MessageId::TlsStarted,
            _ if a.ends_session() => MessageId::PolicyAction,
            _ if a.mask => MessageId::ReplacedString,
            _ => MessageId::PolicyLog,
        };
        out.events.push(Event {
            rule: id,
            actions: a,
            message_id,
            direction,
            value,
            excerpt: self.excerpt,
        });
        match a.disposition {
            Disposition::Reset => return self.stop(out, Verdict::Reset),
            Disposition::Drop => {
                let reply = rule.criterion.kind().drop_reply();
                return self.stop(out, Verdict::Drop { reply });
            }
            Disposition::Reject => {
                if let Some(reply) = rule.criterion.kind().reject_reply() {
                    return Outcome::Reject(reply);
                }
            }
            Disposition::Continue => {}
        }
        if a.rate_limit > 0 {
            if let (Some(now), Some(slot)) = (self.now, self.rate.get_mut(usize::from(id))) {
                match slot.0 {
                    Some(start)
                        if now.saturating_duration_since(start) < Duration::from_secs(1) =>
                    {
                        slot.1 += 1
                    }
                    _ => *slot = (Some(now), 1),
                }
                if slot.1 > a.rate_limit {
                    let reply = REPLY_RATE_LIMIT;
                    return self.stop(out, Verdict::Drop { reply });
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
        if self.verdict.is_none() {
            out.verdict = verdict;
            self.verdict = Some(verdict);
        }
        Outcome::Stop
    }
}

/// Message rules, fed by [`crate::mime::MessageScanner`].
pub(super) struct MessageJudge<'a> {
    judge: &'a mut Judge,
    out: &'a mut Output,
}

impl Observer for MessageJudge<'_> {
    #[inline]
    fn observe(&mut self, o: Observation<'_>) -> bool {
        use CriterionKind as K;
        let d = Direction::ClientToServer;
        let (j, out) = (&mut *self.judge, &mut *self.out);
        let outcome = match o {
            Observation::BodyLine { len } => {
                if j.policy
                    .index
                    .body_line_floor
                    .is_some_and(|floor| len <= floor)
                {
                    return true;
                }
                j.check_cmp(K::BodyLineLength, d, len, out)
            }
            Observation::HeaderLine { len } => {
                if j.policy
                    .index
                    .header_line_floor
                    .is_some_and(|floor| len <= floor)
                {
                    return true;
                }
                j.check_cmp(K::HeaderLineLength, d, len, out)
            }
            Observation::HeaderEnd { len, to_recipients } => {
                match j.check_cmp(K::HeaderLength, d, len, out) {
                    Outcome::Stop => Outcome::Stop,
                    first => first.and(j.check_cmp(K::HeaderToFieldsCount, d, to_recipients, out)),
                }
            }
            Observation::HeaderLengthCrossed { len } => {
                j.check_crossed(K::HeaderLength, d, len, out)
            }
            Observation::BodyLengthCrossed { len } => j.check_crossed(K::BodyLength, d, len, out),
            Observation::MessageEnd { body_len } => j.check_cmp(K::BodyLength, d, body_len, out),
            Observation::MimeFilenameLength { len } => {
                j.check_cmp(K::MimeFilenameLength, d, len, out)
            }
            Observation::MimeType { value } => j.check(
                K::MimeFiletype,
                d,
                value.len() as u64,
                out,
                |_, c| matches!(c, Criterion::MimeFiletype(re) if re.is_match(value)),
            ),
            Observation::MimeParseLimit { limit } => {
                j.check(K::MimeParseLimit, d, limit as u64, out, |_, c| {
                    matches!(c, Criterion::MimeParseLimit)
                })
            }
            Observation::MimeEncoding { encoding } => j.check(
                K::MimeEncoding,
                d,
                encoding as u64,
                out,
                |_, c| matches!(c, Criterion::MimeEncoding(set) if set & encoding != 0),
            ),
        };
        outcome != Outcome::Stop
    }
}
