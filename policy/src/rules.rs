//! The rule language: the firewall's own `match [not] <criterion> <actions>` lines,
//! parsed once into precompiled [`Rule`]s. Parsing happens at config load; nothing
//! here runs per line except the small comparisons in [`Cmp`].
//!
//! CONTRACT (shared by the parser in this file and the inspector): the types below.
//! Parameters such as `mask_banner`, `bare_newline` or `special_character` compile into
//! rules too (see `Criterion`'s built-in variants), so every decision the inspector
//! takes is counted per rule, as `show service-policy inspect esmtp` shows it.

use crate::verb::{CommandSet, EhloSet};

/// Index of a rule in `Policy::rules`.
pub type RuleId = u16;

/// `gt N` / `lt N` / `eq N` comparisons (the firewall only has `gt`; the others are cheap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Gt(u64),
    Lt(u64),
    Eq(u64),
}

impl Cmp {
    #[inline]
    pub fn matches(self, value: u64) -> bool {
        match self {
            Cmp::Gt(n) => value > n,
            Cmp::Lt(n) => value < n,
            Cmp::Eq(n) => value == n,
        }
    }
}

/// MIME content-transfer-encodings, as bits so `match MIME encoding a b c` is one AND.
pub type EncodingSet = u8;
pub const ENC_7BIT: EncodingSet = 1 << 0;
pub const ENC_8BIT: EncodingSet = 1 << 1;
pub const ENC_BASE64: EncodingSet = 1 << 2;
pub const ENC_BINARY: EncodingSet = 1 << 3;
pub const ENC_QUOTED_PRINTABLE: EncodingSet = 1 << 4;
pub const ENC_OTHERS: EncodingSet = 1 << 5;

/// What a rule looks at.
#[derive(Clone, Debug)]
pub enum Criterion {
    // ---- from `match ...` lines ----
    /// `cmd line length gt N`: command line length, CRLF excluded.
    CmdLineLength(Cmp),
    /// `cmd RCPT count gt N`: RCPT commands in the current transaction.
    CmdRcptCount(Cmp),
    /// `cmd verb V1 V2 ...`: the command verb is one of these.
    CmdVerb(CommandSet),
    /// `ehlo-reply-parameter K1 K2 ... [others]`: an EHLO reply keyword is one of these.
    EhloReplyParameter(EhloSet),
    HeaderLineLength(Cmp),
    /// Total header section length.
    HeaderLength(Cmp),
    HeaderToFieldsCount(Cmp),
    BodyLineLength(Cmp),
    BodyLength(Cmp),
    SenderAddressLength(Cmp),
    SenderAddressRegex(regex::bytes::Regex),
    MimeFilenameLength(Cmp),
    MimeFiletype(regex::bytes::Regex),
    MimeEncoding(EncodingSet),
    /// RCPTs answered 5xx in the session.
    InvalidRecipientsCount(Cmp),
    // ---- built-in, compiled from policy parameters ----
    /// `mask_banner`: the 220 greeting text is masked.
    Banner,
    /// A command outside the allowed set: forwarded as `X`s.
    UnknownVerb,
    /// `bare_newline` / SMTP-smuggling defence: bare CR or LF, or a non CRLF.CRLF end of data.
    BareNewline,
    /// `special_character`: `|`, backquote or NUL in a MAIL/RCPT address.
    SpecialCharacter,
    /// `mail_relay DOMAIN`: RCPT to a domain other than this one.
    MailRelay,
    /// STARTTLS accepted by the server: the rest of the session is opaque.
    TlsStarted,
}

/// What to do on a match. Several may be set (`drop-connection log`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    pub drop_connection: bool,
    pub reset: bool,
    pub log: bool,
    pub mask: bool,
    /// `rate-limit N`: at most N messages per second per session; 0 = unset.
    pub rate_limit: u32,
}

/// One precompiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The rule as the operator wrote it (or the parameter's name), for logs and /status.
    pub text: String,
    /// `match not ...`
    pub negate: bool,
    pub criterion: Criterion,
    pub actions: Actions,
}
