//! The rule language: the firewall's own `match [not] <criterion> <actions>` lines,
//! parsed once into precompiled [`Rule`]s. Parsing happens at config load; nothing
//! here runs per line except the small comparisons in [`Cmp`].
//!
//! Grammar (keywords case-insensitive, tokens separated by blanks):
//!
//! ```text
//! rule      = "match" ["not"] criterion action+
//! criterion = "cmd" "line" "length" cmp | "cmd" "RCPT" "count" cmp | "cmd" "verb" VERB+
//!           | "ehlo-reply-parameter" KEYWORD+          ; KEYWORD includes `others`
//!           | "header" "line" "length" cmp | "header" "length" cmp
//!           | "header" "to-fields" "count" cmp
//!           | "body" "line" "length" cmp | "body" "length" cmp
//!           | "sender-address" "length" cmp | "sender-address" "regex" QUOTED
//!           | "MIME" "filename" "length" cmp | "MIME" "filetype" "regex" QUOTED
//!           | "MIME" "encoding" ENCODING+              ; 7bit 8bit base64 binary quoted-printable others
//!           | "MIME" "parse-limit"                     ; a bound stopped the MIME parse
//!           | "invalid-recipients" "count" cmp
//! cmp       = ("gt" | "lt" | "eq") NUMBER
//! action    = "drop-connection" | "reset" | "log" | "mask" | "rate-limit" NUMBER
//! ```
//!
//! `QUOTED` is a double-quoted regex; inside it only `\"` is an escape (for a quote),
//! every other backslash reaches the regex as written, so `"@spam\.example$"` means
//! what it says. The firewall names its regexes (`regex NAME "..."`); `import-asa`
//! resolves those names into the pattern.
//!
//! The types below are what the inspector reads. Parameters such as `mask_banner`, `bare_newline` or `special_character` compile into
//! rules too (see `Criterion`'s built-in variants), so every decision the inspector
//! takes is counted per rule, as `show service-policy inspect esmtp` shows it.

use std::fmt;

use crate::verb::{CommandSet, EhloKeyword, EhloSet};

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
    /// `MIME parse-limit`: a fixed bound of the MIME parser (nesting depth, boundary
    /// or content-type length, filename parameters per field, a second multipart
    /// boundary) stopped it, so part of the message was not judged as MIME.
    MimeParseLimit,
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
    /// A `|` in a MAIL FROM / RCPT TO address: the firewall closes the session, in every
    /// inspecting policy, not configurable.
    AddressPipe,
    /// A MAIL FROM / RCPT TO argument that is not an RFC 5321 path: the command is
    /// masked like an unknown verb, so the server answers it 5xx.
    MalformedPath,
    /// A lone dot beside a bare CR/LF or a NUL in DATA: an end of data to a lenient
    /// server, so SMTP smuggling whatever `bare_newline` says. Always drop-connection.
    SmuggledEndOfData,
    /// `nul_in_content`: a NUL octet elsewhere in DATA content (once per message).
    NulInContent,
    // ---- built-in protocol defences, always on in an inspecting policy ----
    /// Past the hold cap: the client sent more than the inspector holds while DATA,
    /// STARTTLS or AUTH awaited its reply (RFC 2920 §3.1).
    ImproperPipelining,
    /// A DATA, STARTTLS or AUTH line too long to be judged whole: a lenient server
    /// might act on it, so the session ends.
    OverlongCommand,
    /// A 5xx to a BDAT whose chunk was relayed as message content: client and server
    /// disagree on the framing, so the rest cannot be judged.
    BdatRefused,
    /// Bytes sent after STARTTLS before TLS started (client bytes before the server's
    /// 220, server bytes after it in the same read): plaintext injection
    /// (CVE-2011-0411 pattern).
    StarttlsInjection,
    /// `early_talker`: client bytes before the server's greeting reached it.
    EarlyTalker,
}

/// What a match does to the session: at most one of `drop-connection` and `reset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Disposition {
    /// The session goes on (`log`, `mask` and `rate-limit` alone).
    #[default]
    Continue,
    /// `drop-connection`: `421 4.7.0` to the client, both sides closed.
    Drop,
    /// `reset`: both sides reset at once.
    Reset,
    /// `reject`: the inspector answers the command itself with the criterion's
    /// 4xx/5xx reply ([`CriterionKind::reject_reply`]), forwards nothing of it, and the
    /// session goes on.
    Reject,
}

/// What to do on a match. Several may be set (`drop-connection log`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    pub disposition: Disposition,
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

// ---------------------------------------------------------------------------------
// Helpers on the contract types (no allocation: some run per line).
// ---------------------------------------------------------------------------------

impl fmt::Display for Cmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cmp::Gt(n) => write!(f, "gt {n}"),
            Cmp::Lt(n) => write!(f, "lt {n}"),
            Cmp::Eq(n) => write!(f, "eq {n}"),
        }
    }
}

/// The encoding bit of a `Content-Transfer-Encoding` value, any case; unknown values are
/// [`ENC_OTHERS`]. Allocation-free, for the inspector's MIME tracking.
pub fn encoding_bit(value: &[u8]) -> EncodingSet {
    ENCODING_NAMES
        .iter()
        .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(value))
        .map_or(ENC_OTHERS, |&(_, bit)| bit)
}

const ENCODING_NAMES: [(&str, EncodingSet); 6] = [
    ("7bit", ENC_7BIT),
    ("8bit", ENC_8BIT),
    ("base64", ENC_BASE64),
    ("binary", ENC_BINARY),
    ("quoted-printable", ENC_QUOTED_PRINTABLE),
    ("others", ENC_OTHERS),
];

/// A criterion without its operands: what the inspector indexes rules by, and what
/// names a rule and its drop reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CriterionKind {
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
    MimeParseLimit,
    InvalidRecipientsCount,
    Banner,
    UnknownVerb,
    BareNewline,
    SpecialCharacter,
    MailRelay,
    TlsStarted,
    AddressPipe,
    MalformedPath,
    SmuggledEndOfData,
    NulInContent,
    ImproperPipelining,
    OverlongCommand,
    BdatRefused,
    StarttlsInjection,
    EarlyTalker,
}

impl CriterionKind {
    /// How many kinds there are (the size of a per-kind table).
    pub const COUNT: usize = CriterionKind::EarlyTalker as usize + 1;

    /// The reply of a `reject` rule of this kind (RFC 5321 §4.2, RFC 3463 codes):
    /// `Some` exactly for the criteria judged on one whole command.
    pub fn reject_reply(self) -> Option<&'static [u8]> {
        use CriterionKind as K;
        Some(match self {
            // RFC 5321 §4.5.3.1.10: the client sends the rest in a new transaction.
            K::CmdRcptCount => b"452 4.5.3 Too many recipients\r\n",
            K::CmdVerb => b"502 5.5.1 Command not allowed\r\n",
            K::SenderAddressLength => b"550 5.1.7 Sender address too long\r\n",
            K::SenderAddressRegex => b"550 5.7.1 Sender address rejected\r\n",
            _ => return None,
        })
    }

    /// The criterion's name as the rule language (or the parameter) writes it.
    pub fn name(self) -> &'static str {
        self.describe().0
    }

    /// The `421 4.7.0` reply naming why a rule of this kind dropped the session.
    pub fn drop_reply(self) -> &'static [u8] {
        self.describe().1
    }

    fn describe(self) -> (&'static str, &'static [u8]) {
        use CriterionKind as K;
        match self {
            K::CmdLineLength => (
                "cmd line length",
                b"421 4.7.0 Command line too long, closing connection\r\n",
            ),
            K::CmdRcptCount => (
                "cmd RCPT count",
                b"421 4.7.0 Too many recipients, closing connection\r\n",
            ),
            K::CmdVerb => (
                "cmd verb",
                b"421 4.7.0 Command not allowed, closing connection\r\n",
            ),
            K::EhloReplyParameter => (
                "ehlo-reply-parameter",
                b"421 4.7.0 EHLO reply parameter not allowed, closing connection\r\n",
            ),
            K::HeaderLineLength => (
                "header line length",
                b"421 4.7.0 Message header line too long, closing connection\r\n",
            ),
            K::HeaderLength => (
                "header length",
                b"421 4.7.0 Message header too long, closing connection\r\n",
            ),
            K::HeaderToFieldsCount => (
                "header to-fields count",
                b"421 4.7.0 Too many To: recipients, closing connection\r\n",
            ),
            K::BodyLineLength => (
                "body line length",
                b"421 4.7.0 Message body line too long, closing connection\r\n",
            ),
            K::BodyLength => (
                "body length",
                b"421 4.7.0 Message body too long, closing connection\r\n",
            ),
            K::SenderAddressLength => (
                "sender-address length",
                b"421 4.7.0 Sender address too long, closing connection\r\n",
            ),
            K::SenderAddressRegex => (
                "sender-address regex",
                b"421 4.7.0 Sender address not allowed, closing connection\r\n",
            ),
            K::MimeFilenameLength => (
                "MIME filename length",
                b"421 4.7.0 MIME filename too long, closing connection\r\n",
            ),
            K::MimeFiletype => (
                "MIME filetype",
                b"421 4.7.0 MIME file type not allowed, closing connection\r\n",
            ),
            K::MimeParseLimit => (
                "MIME parse-limit",
                b"421 4.7.0 MIME structure too complex, closing connection\r\n",
            ),
            K::MimeEncoding => (
                "MIME encoding",
                b"421 4.7.0 MIME encoding not allowed, closing connection\r\n",
            ),
            K::InvalidRecipientsCount => (
                "invalid-recipients count",
                b"421 4.7.0 Too many invalid recipients, closing connection\r\n",
            ),
            K::Banner => (
                "mask-banner",
                b"421 4.7.0 Server banner not allowed, closing connection\r\n",
            ),
            K::UnknownVerb => (
                "unknown-command",
                b"421 4.7.0 Command not allowed, closing connection\r\n",
            ),
            K::BareNewline => (
                "bare-newline",
                b"421 4.7.0 Bare CR or LF in message (SMTP smuggling), closing connection\r\n",
            ),
            K::SpecialCharacter => (
                "special-character",
                b"421 4.7.0 Special character in address, closing connection\r\n",
            ),
            K::MailRelay => (
                "mail-relay",
                b"421 4.7.0 Relaying denied, closing connection\r\n",
            ),
            K::TlsStarted => (
                "allow-tls",
                b"421 4.7.0 TLS not allowed, closing connection\r\n",
            ),
            K::AddressPipe => (
                "address-pipe",
                b"421 4.7.0 Pipe in address, closing connection\r\n",
            ),
            K::MalformedPath => (
                "malformed-path",
                b"421 4.7.0 Malformed address, closing connection\r\n",
            ),
            K::SmuggledEndOfData => (
                "smuggled-end-of-data",
                b"421 4.7.0 Bare CR or LF in message (SMTP smuggling), closing connection\r\n",
            ),
            K::NulInContent => (
                "nul-in-content",
                b"421 4.7.0 NUL in message, closing connection\r\n",
            ),
            K::ImproperPipelining => (
                "improper-pipelining",
                b"421 4.7.0 Improper command pipelining, closing connection\r\n",
            ),
            K::OverlongCommand => (
                "overlong-command",
                b"421 4.7.0 Command line too long, closing connection\r\n",
            ),
            K::BdatRefused => (
                "bdat-refused",
                b"421 4.7.0 BDAT refused by the server, closing connection\r\n",
            ),
            K::StarttlsInjection => (
                "starttls-injection",
                b"421 4.7.0 Data sent before TLS started, closing connection\r\n",
            ),
            K::EarlyTalker => (
                "early-talker",
                b"421 4.7.0 Talking before the greeting, closing connection\r\n",
            ),
        }
    }
}

impl Criterion {
    /// The criterion without its operands.
    pub fn kind(&self) -> CriterionKind {
        use CriterionKind as K;
        match self {
            Criterion::CmdLineLength(_) => K::CmdLineLength,
            Criterion::CmdRcptCount(_) => K::CmdRcptCount,
            Criterion::CmdVerb(_) => K::CmdVerb,
            Criterion::EhloReplyParameter(_) => K::EhloReplyParameter,
            Criterion::HeaderLineLength(_) => K::HeaderLineLength,
            Criterion::HeaderLength(_) => K::HeaderLength,
            Criterion::HeaderToFieldsCount(_) => K::HeaderToFieldsCount,
            Criterion::BodyLineLength(_) => K::BodyLineLength,
            Criterion::BodyLength(_) => K::BodyLength,
            Criterion::SenderAddressLength(_) => K::SenderAddressLength,
            Criterion::SenderAddressRegex(_) => K::SenderAddressRegex,
            Criterion::MimeFilenameLength(_) => K::MimeFilenameLength,
            Criterion::MimeFiletype(_) => K::MimeFiletype,
            Criterion::MimeEncoding(_) => K::MimeEncoding,
            Criterion::MimeParseLimit => K::MimeParseLimit,
            Criterion::InvalidRecipientsCount(_) => K::InvalidRecipientsCount,
            Criterion::Banner => K::Banner,
            Criterion::UnknownVerb => K::UnknownVerb,
            Criterion::BareNewline => K::BareNewline,
            Criterion::SpecialCharacter => K::SpecialCharacter,
            Criterion::MailRelay => K::MailRelay,
            Criterion::TlsStarted => K::TlsStarted,
            Criterion::AddressPipe => K::AddressPipe,
            Criterion::MalformedPath => K::MalformedPath,
            Criterion::SmuggledEndOfData => K::SmuggledEndOfData,
            Criterion::NulInContent => K::NulInContent,
            Criterion::ImproperPipelining => K::ImproperPipelining,
            Criterion::OverlongCommand => K::OverlongCommand,
            Criterion::BdatRefused => K::BdatRefused,
            Criterion::StarttlsInjection => K::StarttlsInjection,
            Criterion::EarlyTalker => K::EarlyTalker,
        }
    }

    /// The criterion's name as the rule language (or the parameter) writes it.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The `gt/lt/eq N` of a length or count criterion.
    pub fn threshold(&self) -> Option<Cmp> {
        match self {
            Criterion::CmdLineLength(c)
            | Criterion::CmdRcptCount(c)
            | Criterion::HeaderLineLength(c)
            | Criterion::HeaderLength(c)
            | Criterion::HeaderToFieldsCount(c)
            | Criterion::BodyLineLength(c)
            | Criterion::BodyLength(c)
            | Criterion::SenderAddressLength(c)
            | Criterion::MimeFilenameLength(c)
            | Criterion::InvalidRecipientsCount(c) => Some(*c),
            _ => None,
        }
    }

    /// True for the variants compiled from policy parameters rather than `match` lines.
    pub fn is_parameter(&self) -> bool {
        matches!(
            self,
            Criterion::Banner
                | Criterion::UnknownVerb
                | Criterion::BareNewline
                | Criterion::SpecialCharacter
                | Criterion::MailRelay
                | Criterion::TlsStarted
                | Criterion::AddressPipe
                | Criterion::MalformedPath
                | Criterion::SmuggledEndOfData
                | Criterion::NulInContent
                | Criterion::ImproperPipelining
                | Criterion::OverlongCommand
                | Criterion::BdatRefused
                | Criterion::StarttlsInjection
                | Criterion::EarlyTalker
        )
    }

    /// Whether `mask` means anything for this criterion: only a command verb or an EHLO
    /// keyword can be replaced by `X`s in place (and the banner, via `mask_banner`).
    pub fn allows_mask(&self) -> bool {
        matches!(
            self,
            Criterion::CmdVerb(_)
                | Criterion::EhloReplyParameter(_)
                | Criterion::Banner
                | Criterion::UnknownVerb
                | Criterion::MalformedPath
        )
    }
}

impl Actions {
    /// True when the rule ends the session (drop-connection or reset).
    #[inline]
    pub fn ends_session(&self) -> bool {
        matches!(self.disposition, Disposition::Drop | Disposition::Reset)
    }
}

/// `drop-connection log`, in the rule language's order; empty for no actions.
impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for (on, word) in [
            (self.disposition == Disposition::Drop, "drop-connection"),
            (self.disposition == Disposition::Reset, "reset"),
            (self.disposition == Disposition::Reject, "reject"),
            (self.mask, "mask"),
            (self.log, "log"),
        ] {
            if on {
                write!(f, "{sep}{word}")?;
                sep = " ";
            }
        }
        if self.rate_limit > 0 {
            write!(f, "{sep}rate-limit {}", self.rate_limit)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

/// A malformed rule: the rule text, the 1-based column (byte offset + 1) where it went
/// wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{rule}`: {}", self.message())]
pub struct RuleError {
    pub rule: String,
    pub column: usize,
    pub kind: RuleErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleErrorKind {
    /// `expected` describes what may come here; `found` is the token (or end of rule).
    Expected {
        expected: String,
        found: Found,
    },
    /// A number that does not fit (`rate-limit 0`, or past `u64`).
    NumberOutOfRange {
        found: String,
        range: &'static str,
    },
    BadRegex {
        error: String,
    },
    /// `mask` on a criterion where nothing can be masked in place.
    MaskNotAllowed {
        criterion: &'static str,
    },
    /// `drop-connection` together with `reset`.
    DropAndReset,
    /// `reject` together with `drop-connection` or `reset`.
    RejectAndEnd,
    /// `reject` on a criterion not judged on one whole command.
    RejectNotAllowed {
        criterion: &'static str,
    },
    DuplicateAction {
        action: &'static str,
    },
    /// An action this context does not take (e.g. `mask` for a parameter).
    ActionNotAllowed {
        action: &'static str,
        context: &'static str,
    },
}

/// What the parser found where it expected something else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Token(String),
    EndOfRule,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Token(t) => write!(f, "`{t}`"),
            Found::EndOfRule => f.write_str("end of rule"),
        }
    }
}

impl RuleError {
    /// The error without the rule text, e.g. for config errors that name the rule by
    /// its place: "expected a number at column 22, found `abc`".
    pub fn message(&self) -> String {
        let col = self.column;
        match &self.kind {
            RuleErrorKind::Expected { expected, found } => {
                format!("expected {expected} at column {col}, found {found}")
            }
            RuleErrorKind::NumberOutOfRange { found, range } => {
                format!("number `{found}` at column {col} is out of range (expected {range})")
            }
            RuleErrorKind::BadRegex { error } => {
                format!("invalid regex at column {col}: {error}")
            }
            RuleErrorKind::MaskNotAllowed { criterion } => format!(
                "`mask` at column {col} is only valid for `cmd verb` and \
                 `ehlo-reply-parameter` (the only things that can be replaced in place), \
                 not for `{criterion}`"
            ),
            RuleErrorKind::DropAndReset => format!(
                "`drop-connection` and `reset` at column {col} cannot be combined: choose one"
            ),
            RuleErrorKind::RejectAndEnd => format!(
                "`reject` at column {col} answers the command and keeps the session: it \
                 cannot be combined with `drop-connection` or `reset`"
            ),
            RuleErrorKind::RejectNotAllowed { criterion } => format!(
                "`reject` at column {col} is only valid for `cmd RCPT count`, `cmd verb` and \
                 `sender-address` (a whole command the gate can answer), not for `{criterion}`"
            ),
            RuleErrorKind::DuplicateAction { action } => {
                format!("action `{action}` at column {col} is given twice")
            }
            RuleErrorKind::ActionNotAllowed { action, context } => {
                format!("action `{action}` at column {col} is not valid for {context}")
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Token<'a> {
    /// Byte offset in the rule text.
    start: usize,
    /// As written (for quoted tokens: the whole quoted text, quotes included).
    raw: &'a str,
    /// For quoted tokens: the content with `\"` unescaped.
    quoted: Option<String>,
}

impl Token<'_> {
    fn is(&self, keyword: &str) -> bool {
        self.quoted.is_none() && self.raw.eq_ignore_ascii_case(keyword)
    }
}

fn tokenize(text: &str) -> Result<Vec<Token<'_>>, (usize, RuleErrorKind)> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if bytes[i] == b'"' {
            let mut content = String::new();
            let mut j = i + 1;
            let mut closed = false;
            while j < bytes.len() {
                match bytes[j] {
                    b'\\' if bytes.get(j + 1) == Some(&b'"') => {
                        content.push('"');
                        j += 2;
                    }
                    b'"' => {
                        closed = true;
                        j += 1;
                        break;
                    }
                    _ => {
                        // Copy one whole UTF-8 character.
                        let ch = text[j..].chars().next().expect("in bounds");
                        content.push(ch);
                        j += ch.len_utf8();
                    }
                }
            }
            if !closed {
                return Err((
                    start,
                    RuleErrorKind::Expected {
                        expected: "a closing `\"` for this quoted regex".into(),
                        found: Found::EndOfRule,
                    },
                ));
            }
            tokens.push(Token {
                start,
                raw: &text[start..j],
                quoted: Some(content),
            });
            i = j;
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            tokens.push(Token {
                start,
                raw: &text[start..i],
                quoted: None,
            });
        }
    }
    Ok(tokens)
}

// ---------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------

const ACTION_WORDS: &str = "drop-connection, reset, reject, log, mask, rate-limit";

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token<'a>>,
    pos: usize,
}

type PResult<T> = Result<T, (usize, RuleErrorKind)>;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.pos)
    }

    fn end_offset(&self) -> usize {
        self.text.len()
    }

    /// An "expected X, found Y" error at the current token (or at the end).
    fn expected<T>(&self, expected: impl Into<String>) -> PResult<T> {
        let (at, found) = match self.peek() {
            Some(t) => (t.start, Found::Token(t.raw.to_string())),
            None => (self.end_offset(), Found::EndOfRule),
        };
        Err((
            at,
            RuleErrorKind::Expected {
                expected: expected.into(),
                found,
            },
        ))
    }

    /// Consumes the next token if it is one of `choices` (case-insensitive) and returns
    /// its index in `choices`.
    fn one_of(&mut self, choices: &[&str]) -> PResult<usize> {
        if let Some(t) = self.peek() {
            if let Some(i) = choices.iter().position(|c| t.is(c)) {
                self.pos += 1;
                return Ok(i);
            }
        }
        match choices {
            [one] => self.expected(format!("`{one}`")),
            _ => self.expected(format!("one of {}", choices.join(", "))),
        }
    }

    fn keyword(&mut self, word: &str) -> PResult<()> {
        self.one_of(&[word]).map(|_| ())
    }

    fn number(&mut self) -> PResult<u64> {
        match self.peek() {
            Some(t) if t.quoted.is_none() && t.raw.bytes().all(|b| b.is_ascii_digit()) => {
                let n = t.raw.parse::<u64>().map_err(|_| {
                    (
                        t.start,
                        RuleErrorKind::NumberOutOfRange {
                            found: t.raw.to_string(),
                            range: "0 to 18446744073709551615",
                        },
                    )
                })?;
                self.pos += 1;
                Ok(n)
            }
            _ => self.expected("a number"),
        }
    }

    fn cmp(&mut self) -> PResult<Cmp> {
        let which = self.one_of(&["gt", "lt", "eq"])?;
        let n = self.number()?;
        Ok([Cmp::Gt(n), Cmp::Lt(n), Cmp::Eq(n)][which])
    }

    fn regex(&mut self) -> PResult<regex::bytes::Regex> {
        let Some(t) = self.peek() else {
            return self.expected("a quoted regex like \"@spam\\.example$\"");
        };
        let Some(pattern) = &t.quoted else {
            return self.expected("a quoted regex like \"@spam\\.example$\"");
        };
        let re = regex::bytes::Regex::new(pattern).map_err(|e| {
            (
                t.start,
                RuleErrorKind::BadRegex {
                    error: regex_error_summary(&e),
                },
            )
        })?;
        self.pos += 1;
        Ok(re)
    }

    fn at_action_or_end(&self) -> bool {
        !matches!(self.peek(), Some(t) if action_index(t).is_none())
    }

    fn verbs(&mut self) -> PResult<CommandSet> {
        let mut set = CommandSet::default();
        while !self.at_action_or_end() {
            let t = self.peek().expect("not at end");
            if t.quoted.is_some() || !is_verb_word(t.raw) {
                return self.expected(format!("a command verb or one of {ACTION_WORDS}"));
            }
            set.insert_name(t.raw);
            self.pos += 1;
        }
        if set == CommandSet::default() {
            return self.expected("a command verb such as VRFY");
        }
        Ok(set)
    }

    fn ehlo_keywords(&mut self) -> PResult<EhloSet> {
        let mut set: EhloSet = 0;
        while !self.at_action_or_end() {
            let t = self.peek().expect("not at end");
            match ehlo_keyword_by_name(t) {
                Some(k) => set |= k.bit(),
                None => {
                    return self.expected(format!(
                        "an EHLO keyword ({}) or one of {ACTION_WORDS}",
                        ehlo_keyword_list()
                    ))
                }
            }
            self.pos += 1;
        }
        if set == 0 {
            return self.expected(format!("an EHLO keyword ({})", ehlo_keyword_list()));
        }
        Ok(set)
    }

    fn encodings(&mut self) -> PResult<EncodingSet> {
        let mut set: EncodingSet = 0;
        let names = ENCODING_NAMES.map(|(n, _)| n).join(", ");
        while !self.at_action_or_end() {
            let t = self.peek().expect("not at end");
            match ENCODING_NAMES.iter().find(|(n, _)| t.is(n)) {
                Some(&(_, bit)) => set |= bit,
                None => {
                    return self.expected(format!("an encoding ({names}) or one of {ACTION_WORDS}"))
                }
            }
            self.pos += 1;
        }
        if set == 0 {
            return self.expected(format!("an encoding ({names})"));
        }
        Ok(set)
    }

    fn criterion(&mut self) -> PResult<Criterion> {
        const TOP: [&str; 7] = [
            "cmd",
            "ehlo-reply-parameter",
            "header",
            "body",
            "sender-address",
            "MIME",
            "invalid-recipients",
        ];
        Ok(match self.one_of(&TOP)? {
            0 => match self.one_of(&["line", "RCPT", "verb"])? {
                0 => {
                    self.keyword("length")?;
                    Criterion::CmdLineLength(self.cmp()?)
                }
                1 => {
                    self.keyword("count")?;
                    Criterion::CmdRcptCount(self.cmp()?)
                }
                _ => Criterion::CmdVerb(self.verbs()?),
            },
            1 => Criterion::EhloReplyParameter(self.ehlo_keywords()?),
            2 => match self.one_of(&["line", "length", "to-fields"])? {
                0 => {
                    self.keyword("length")?;
                    Criterion::HeaderLineLength(self.cmp()?)
                }
                1 => Criterion::HeaderLength(self.cmp()?),
                _ => {
                    self.keyword("count")?;
                    Criterion::HeaderToFieldsCount(self.cmp()?)
                }
            },
            3 => match self.one_of(&["line", "length"])? {
                0 => {
                    self.keyword("length")?;
                    Criterion::BodyLineLength(self.cmp()?)
                }
                _ => Criterion::BodyLength(self.cmp()?),
            },
            4 => match self.one_of(&["length", "regex"])? {
                0 => Criterion::SenderAddressLength(self.cmp()?),
                _ => Criterion::SenderAddressRegex(self.regex()?),
            },
            5 => match self.one_of(&["filename", "filetype", "encoding", "parse-limit"])? {
                0 => {
                    self.keyword("length")?;
                    Criterion::MimeFilenameLength(self.cmp()?)
                }
                1 => {
                    self.keyword("regex")?;
                    Criterion::MimeFiletype(self.regex()?)
                }
                2 => Criterion::MimeEncoding(self.encodings()?),
                _ => Criterion::MimeParseLimit,
            },
            _ => {
                self.keyword("count")?;
                Criterion::InvalidRecipientsCount(self.cmp()?)
            }
        })
    }

    /// One or more actions up to the end of the text. `allow` filters actions that make
    /// no sense in the context (`context` names it for the error).
    fn actions(
        &mut self,
        allow: impl Fn(&'static str) -> bool,
        context: &'static str,
        words: &str,
    ) -> PResult<(Actions, Option<usize>, Option<usize>)> {
        let mut actions = Actions::default();
        let mut mask_at = None;
        let mut reject_at = None;
        if self.peek().is_none() {
            return self.expected(format!("an action ({words})"));
        }
        while let Some(t) = self.peek() {
            let start = t.start;
            let Some(index) = action_index(t) else {
                return self.expected(format!("one of {words}"));
            };
            let name = ACTIONS[index];
            if !allow(name) {
                return Err((
                    start,
                    RuleErrorKind::ActionNotAllowed {
                        action: name,
                        context,
                    },
                ));
            }
            self.pos += 1;
            let already = match index {
                0 | 1 | 5 => {
                    let wanted = match index {
                        0 => Disposition::Drop,
                        1 => Disposition::Reset,
                        _ => Disposition::Reject,
                    };
                    match actions.disposition {
                        Disposition::Continue => {
                            if wanted == Disposition::Reject {
                                reject_at = Some(start);
                            }
                            actions.disposition = wanted;
                            false
                        }
                        d if d == wanted => true,
                        Disposition::Reject => return Err((start, RuleErrorKind::RejectAndEnd)),
                        _ if wanted == Disposition::Reject => {
                            return Err((start, RuleErrorKind::RejectAndEnd))
                        }
                        _ => return Err((start, RuleErrorKind::DropAndReset)),
                    }
                }
                2 => std::mem::replace(&mut actions.log, true),
                3 => {
                    mask_at = Some(start);
                    std::mem::replace(&mut actions.mask, true)
                }
                // rate-limit
                _ => {
                    let already = actions.rate_limit != 0;
                    let at = self.peek().map_or(self.end_offset(), |t| t.start);
                    let n = self.number()?;
                    actions.rate_limit =
                        u32::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
                            (
                                at,
                                RuleErrorKind::NumberOutOfRange {
                                    found: n.to_string(),
                                    range: "1 to 4294967295 messages per second",
                                },
                            )
                        })?;
                    already
                }
            };
            if already {
                return Err((start, RuleErrorKind::DuplicateAction { action: name }));
            }
        }
        Ok((actions, mask_at, reject_at))
    }
}

const ACTIONS: [&str; 6] = [
    "drop-connection",
    "reset",
    "log",
    "mask",
    "rate-limit",
    "reject",
];

fn action_index(t: &Token<'_>) -> Option<usize> {
    ACTIONS.iter().position(|a| t.is(a))
}

fn is_verb_word(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 64
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn ehlo_keyword_by_name(t: &Token<'_>) -> Option<EhloKeyword> {
    if t.is("ecode") {
        return Some(EhloKeyword::EnhancedStatusCodes);
    }
    EhloKeyword::ALL.iter().copied().find(|k| t.is(k.name()))
}

fn ehlo_keyword_list() -> String {
    EhloKeyword::ALL
        .iter()
        .map(|k| k.name().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The regex crate's errors are multi-line diagrams; a config error wants one line.
fn regex_error_summary(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or(text.lines().last().unwrap_or("invalid regex"))
        .trim()
        .to_string()
}

impl Rule {
    /// Whether two rules say the same thing as written: same tokens, keywords in any
    /// case, blanks ignored, quoted regexes compared exactly. Config time only.
    pub fn same_text(&self, other: &Rule) -> bool {
        let (Ok(a), Ok(b)) = (tokenize(&self.text), tokenize(&other.text)) else {
            return false;
        };
        a.len() == b.len()
            && a.iter().zip(&b).all(|(x, y)| match (&x.quoted, &y.quoted) {
                (Some(p), Some(q)) => p == q,
                (None, None) => x.raw.eq_ignore_ascii_case(y.raw),
                _ => false,
            })
    }
}

fn error_at(text: &str, (offset, kind): (usize, RuleErrorKind)) -> RuleError {
    RuleError {
        rule: text.to_string(),
        column: offset + 1,
        kind,
    }
}

/// Parses one rule line: `match [not] <criterion> <action>...`.
///
/// Rejected: anything but a known criterion and actions, numbers that are not numbers,
/// bad regexes, no action, `mask` where nothing can be masked (only `cmd verb` and
/// `ehlo-reply-parameter`), `drop-connection` with `reset`, an action given twice.
pub fn parse_rule(text: &str) -> Result<Rule, RuleError> {
    let text = text.trim();
    let parse = || -> PResult<Rule> {
        let mut p = Parser {
            text,
            tokens: tokenize(text)?,
            pos: 0,
        };
        p.keyword("match")?;
        let negate = p.peek().is_some_and(|t| t.is("not"));
        if negate {
            p.pos += 1;
        }
        let criterion = p.criterion()?;
        let (actions, mask_at, reject_at) = p.actions(|_| true, "this rule", ACTION_WORDS)?;
        if let Some(at) = reject_at {
            if criterion.kind().reject_reply().is_none() {
                return Err((
                    at,
                    RuleErrorKind::RejectNotAllowed {
                        criterion: criterion.name(),
                    },
                ));
            }
        }
        if let Some(at) = mask_at {
            if !criterion.allows_mask() {
                return Err((
                    at,
                    RuleErrorKind::MaskNotAllowed {
                        criterion: criterion.name(),
                    },
                ));
            }
        }
        Ok(Rule {
            text: text.to_string(),
            negate,
            criterion,
            actions,
        })
    };
    parse().map_err(|e| error_at(text, e))
}

/// Parses the actions of a policy parameter (`bare_newline = "drop-connection log"`,
/// `special_character = "log"`): `drop-connection`, `reset` and `log` only, optionally
/// after the firewall's word `action` so its lines can be pasted as they are.
/// `parameter` names the parameter in errors.
pub fn parse_parameter_actions(text: &str, parameter: &'static str) -> Result<Actions, RuleError> {
    let trimmed = text.trim();
    let parse = || -> PResult<Actions> {
        let mut p = Parser {
            text: trimmed,
            tokens: tokenize(trimmed)?,
            pos: 0,
        };
        if p.peek().is_some_and(|t| t.is("action")) {
            p.pos += 1;
        }
        let allow = |a: &'static str| matches!(a, "drop-connection" | "reset" | "log");
        Ok(p.actions(allow, parameter, "drop-connection, reset, log")?
            .0)
    };
    parse().map_err(|e| error_at(trimmed, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verb::Verb;

    fn ok(text: &str) -> Rule {
        parse_rule(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> RuleError {
        match parse_rule(text) {
            Ok(rule) => panic!("{text} parsed: {rule:?}"),
            Err(e) => e,
        }
    }

    const DROP_LOG: Actions = Actions {
        disposition: Disposition::Drop,
        log: true,
        mask: false,
        rate_limit: 0,
    };

    #[test]
    fn every_length_and_count_criterion_parses() {
        let cases = [
            ("cmd line length", "cmd line length"),
            ("cmd RCPT count", "cmd RCPT count"),
            ("header line length", "header line length"),
            ("header length", "header length"),
            ("header to-fields count", "header to-fields count"),
            ("body line length", "body line length"),
            ("body length", "body length"),
            ("sender-address length", "sender-address length"),
            ("mime filename length", "MIME filename length"),
            ("invalid-recipients count", "invalid-recipients count"),
        ];
        for (words, name) in cases {
            for (cmp_word, cmp) in [
                ("gt", Cmp::Gt(512)),
                ("lt", Cmp::Lt(512)),
                ("eq", Cmp::Eq(512)),
            ] {
                let text = format!("match {words} {cmp_word} 512 drop-connection log");
                let rule = ok(&text);
                assert_eq!(rule.criterion.name(), name, "{text}");
                assert_eq!(rule.criterion.threshold(), Some(cmp), "{text}");
                assert_eq!(rule.actions, DROP_LOG, "{text}");
                assert!(!rule.negate);
                assert_eq!(rule.text, text);
            }
        }
    }

    #[test]
    fn firewall_examples_parse() {
        let r = ok("match cmd line length gt 512 drop-connection log");
        assert!(matches!(
            r.criterion,
            Criterion::CmdLineLength(Cmp::Gt(512))
        ));
        let r = ok("match cmd RCPT count gt 100 drop-connection log");
        assert!(matches!(r.criterion, Criterion::CmdRcptCount(Cmp::Gt(100))));
        let r = ok("match invalid-recipients count gt 5 reset log");
        assert!(r.actions.disposition == Disposition::Reset && r.actions.log);
        let r = ok("match body length gt 10000000 drop-connection");
        assert!(matches!(
            r.criterion,
            Criterion::BodyLength(Cmp::Gt(10_000_000))
        ));
        assert!(r.actions.disposition == Disposition::Drop && !r.actions.log);
        let r = ok("match header to-fields count gt 10 log");
        assert!(matches!(
            r.criterion,
            Criterion::HeaderToFieldsCount(Cmp::Gt(10))
        ));
        // Keywords in any case, as the firewall prints and accepts them.
        ok("MATCH MIME Filename LENGTH GT 255 Drop-Connection LOG");
        ok("match mime filename length gt 255 drop-connection log");
        ok("match cmd rcpt count gt 100 drop-connection log");
    }

    #[test]
    fn cmd_verb_takes_known_and_private_verbs() {
        let r = ok("match cmd verb VRFY EXPN mask log");
        let Criterion::CmdVerb(set) = &r.criterion else {
            panic!("{r:?}")
        };
        assert!(set.contains(Verb::Vrfy, b"VRFY"));
        assert!(set.contains(Verb::Expn, b"expn"));
        assert!(!set.contains(Verb::Mail, b"MAIL"));
        assert!(r.actions.mask && r.actions.log);
        let r = ok("match cmd verb x-link2state XEXCH50 log");
        let Criterion::CmdVerb(set) = &r.criterion else {
            panic!("{r:?}")
        };
        assert!(set.contains(Verb::Other, b"X-LINK2STATE"));
        assert!(set.contains(Verb::Other, b"xexch50"));
    }

    #[test]
    fn ehlo_reply_parameter_takes_keywords_and_others() {
        let r = ok("match ehlo-reply-parameter others mask");
        assert!(
            matches!(r.criterion, Criterion::EhloReplyParameter(s) if s == EhloKeyword::Others.bit())
        );
        let r = ok("match ehlo-reply-parameter 8bitmime ecode PIPELINING mask log");
        let expected = EhloKeyword::EightBitMime.bit()
            | EhloKeyword::EnhancedStatusCodes.bit()
            | EhloKeyword::Pipelining.bit();
        assert!(matches!(r.criterion, Criterion::EhloReplyParameter(s) if s == expected));
    }

    #[test]
    fn regexes_parse_with_escapes_kept() {
        let r = ok(r#"match sender-address regex "@spam\.example$" drop-connection log"#);
        let Criterion::SenderAddressRegex(re) = &r.criterion else {
            panic!("{r:?}")
        };
        assert!(re.is_match(b"joe@spam.example"));
        assert!(!re.is_match(b"joe@spamXexample"));
        let r = ok(r#"match MIME filetype regex "^application/x-msdownload" drop-connection"#);
        let Criterion::MimeFiletype(re) = &r.criterion else {
            panic!("{r:?}")
        };
        assert!(re.is_match(b"application/x-msdownload"));
        // A quote inside the pattern, and blanks.
        let r = ok(r#"match sender-address regex "^\"a b\"@" log"#);
        let Criterion::SenderAddressRegex(re) = &r.criterion else {
            panic!("{r:?}")
        };
        assert!(re.is_match(br#""a b"@example.com"#));
    }

    #[test]
    fn mime_parse_limit_takes_no_operand() {
        let r = parse_rule("match MIME parse-limit drop-connection log").unwrap();
        assert!(matches!(r.criterion, Criterion::MimeParseLimit));
        assert_eq!(r.criterion.name(), "MIME parse-limit");
        assert!(parse_rule("match MIME parse-limit gt 3 log").is_err());
    }

    #[test]
    fn mime_encoding_sets() {
        let r = ok("match MIME encoding base64 others log");
        assert!(matches!(r.criterion, Criterion::MimeEncoding(s) if s == ENC_BASE64 | ENC_OTHERS));
        let r = ok("match mime encoding 7bit 8bit binary quoted-printable log");
        assert!(matches!(r.criterion, Criterion::MimeEncoding(s)
            if s == ENC_7BIT | ENC_8BIT | ENC_BINARY | ENC_QUOTED_PRINTABLE));
        assert_eq!(encoding_bit(b"BASE64"), ENC_BASE64);
        assert_eq!(encoding_bit(b"x-uuencode"), ENC_OTHERS);
    }

    #[test]
    fn match_not_and_rate_limit() {
        let r = ok("match not cmd verb HELO EHLO MAIL RCPT DATA QUIT log");
        assert!(r.negate);
        let r = ok("match cmd verb MAIL rate-limit 20 log");
        assert_eq!(r.actions.rate_limit, 20);
        assert!(r.actions.log);
    }

    #[test]
    fn misspelled_action_says_what_was_expected_and_where() {
        let e = err("match cmd line length gt 512 dropp");
        assert_eq!(e.column, 30);
        assert_eq!(
            e.message(),
            "expected one of drop-connection, reset, reject, log, mask, rate-limit at column 30, found `dropp`"
        );
        assert_eq!(e.rule, "match cmd line length gt 512 dropp");
        assert!(e
            .to_string()
            .starts_with("`match cmd line length gt 512 dropp`: expected"));
    }

    #[test]
    fn missing_action_is_an_error() {
        let e = err("match cmd line length gt 512");
        assert_eq!(e.column, 29);
        assert!(
            matches!(&e.kind, RuleErrorKind::Expected { found: Found::EndOfRule, expected } if expected.starts_with("an action"))
        );
        let e = err("match cmd verb VRFY");
        assert!(matches!(
            &e.kind,
            RuleErrorKind::Expected {
                found: Found::EndOfRule,
                ..
            }
        ));
    }

    #[test]
    fn non_numeric_number() {
        let e = err("match cmd line length gt abc log");
        assert_eq!(e.message(), "expected a number at column 26, found `abc`");
        let e = err("match body length gt -1 log");
        assert_eq!(e.column, 22);
        let e = err("match body length gt 99999999999999999999999 log");
        assert!(
            matches!(e.kind, RuleErrorKind::NumberOutOfRange { .. }),
            "{e}"
        );
        let e = err("match cmd verb MAIL rate-limit 0");
        assert!(
            matches!(e.kind, RuleErrorKind::NumberOutOfRange { .. }),
            "{e}"
        );
        assert_eq!(e.column, 32);
        let e = err("match cmd verb MAIL rate-limit log");
        assert_eq!(e.message(), "expected a number at column 32, found `log`");
    }

    #[test]
    fn unknown_tokens() {
        let e = err("match cmd lines length gt 1 log");
        assert_eq!(
            e.message(),
            "expected one of line, RCPT, verb at column 11, found `lines`"
        );
        let e = err("match sender length gt 1 log");
        assert_eq!(e.column, 7);
        let e = err("mach cmd line length gt 1 log");
        assert_eq!(e.message(), "expected `match` at column 1, found `mach`");
        let e = err("match cmd line length ge 1 log");
        assert_eq!(
            e.message(),
            "expected one of gt, lt, eq at column 23, found `ge`"
        );
        let e = err("match ehlo-reply-parameter starttlss mask");
        assert_eq!(e.column, 28);
        let e = err("match MIME encoding uuencode log");
        assert_eq!(e.column, 21);
        let e = err("match cmd verb VRFY\" log");
        assert_eq!(e.column, 16);
        let e = err("");
        assert!(matches!(
            e.kind,
            RuleErrorKind::Expected {
                found: Found::EndOfRule,
                ..
            }
        ));
        let e = err("match cmd line length gt 1 log extra");
        assert_eq!(e.column, 32);
    }

    #[test]
    fn bad_regex() {
        let e = err(r#"match sender-address regex "(unclosed" log"#);
        assert_eq!(e.column, 28);
        assert!(
            matches!(&e.kind, RuleErrorKind::BadRegex { error } if error.contains("unclosed")),
            "{e}"
        );
        assert!(!e.message().contains('\n'));
        let e = err(r#"match sender-address regex "unterminated log"#);
        assert_eq!(e.column, 28);
        // The firewall's regex *names* must be resolved (import-asa does) or quoted.
        let e = err("match sender-address regex spammers log");
        assert!(e.message().starts_with("expected a quoted regex"), "{e}");
        let e = err("match MIME filetype \"x\" log");
        assert_eq!(e.message(), "expected `regex` at column 21, found `\"x\"`");
    }

    #[test]
    fn mask_only_where_it_means_something() {
        let e = err("match body length gt 10 mask log");
        assert_eq!(e.column, 25);
        assert_eq!(
            e.kind,
            RuleErrorKind::MaskNotAllowed {
                criterion: "body length"
            }
        );
        assert!(e
            .message()
            .contains("only valid for `cmd verb` and `ehlo-reply-parameter`"));
        ok("match ehlo-reply-parameter others mask");
        ok("match cmd verb TURN mask");
    }

    #[test]
    fn drop_with_reset_and_duplicates() {
        let e = err("match body length gt 10 drop-connection reset");
        assert_eq!(e.kind, RuleErrorKind::DropAndReset);
        assert_eq!(e.column, 41);
        let e = err("match body length gt 10 reset log drop-connection");
        assert_eq!(e.kind, RuleErrorKind::DropAndReset);
        let e = err("match body length gt 10 log log");
        assert_eq!(e.kind, RuleErrorKind::DuplicateAction { action: "log" });
        assert_eq!(e.column, 29);
    }

    #[test]
    fn parameter_actions() {
        assert_eq!(
            parse_parameter_actions("drop-connection log", "bare_newline").unwrap(),
            DROP_LOG
        );
        assert_eq!(
            parse_parameter_actions("action drop-connection log", "x").unwrap(),
            DROP_LOG
        );
        let e = parse_parameter_actions("mask", "bare_newline").unwrap_err();
        assert_eq!(
            e.message(),
            "action `mask` at column 1 is not valid for bare_newline"
        );
        assert!(parse_parameter_actions("", "bare_newline").is_err());
        assert_eq!(DROP_LOG.to_string(), "drop-connection log");
    }

    #[test]
    fn same_text_ignores_case_and_blanks_but_not_patterns() {
        let a = ok("match cmd RCPT count gt 100 drop-connection log");
        assert!(a.same_text(&ok("MATCH  cmd rcpt count GT 100   Drop-Connection log")));
        assert!(!a.same_text(&ok("match cmd RCPT count gt 101 drop-connection log")));
        let r = ok(r#"match sender-address regex "@A" log"#);
        assert!(!r.same_text(&ok(r#"match sender-address regex "@a" log"#)));
    }

    #[test]
    fn cmp_matches() {
        assert!(Cmp::Gt(512).matches(513));
        assert!(!Cmp::Gt(512).matches(512));
        assert!(Cmp::Lt(2).matches(1));
        assert!(Cmp::Eq(7).matches(7));
        assert_eq!(Cmp::Gt(5).to_string(), "gt 5");
    }
}
