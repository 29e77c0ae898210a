//! The compiled, immutable policy a session is inspected with, and the built-in
//! policies `default`, `asa-compat`, `mailguard` and `none`.
//!
//! The inspector reads these fields; config and rules build them.
//!
//! Every decision the inspector takes is a rule, so `/status` counts it per rule as
//! `show service-policy inspect esmtp` does: `match ...` lines and the parameters alike
//! (`mask_banner` becomes a [`Criterion::Banner`] rule, command masking a
//! [`Criterion::UnknownVerb`] rule, and so on). Parameter rules come first in
//! [`Policy::rules`], then the `match` rules in the order written (a user policy's after
//! its parent's).
//!
//! Built-ins:
//!
//! | | commands | EHLO keywords passed | banner | smuggling defence | match rules |
//! |---|---|---|---|---|---|
//! | `default` | RFC 5321 set + STARTTLS + BDAT | STARTTLS PIPELINING CHUNKING 8BITMIME SIZE SMTPUTF8 ENHANCEDSTATUSCODES DSN AUTH | masked | drop-connection log | default rules |
//! | `asa-compat` | RFC 5321 set | the firewall's: 8BITMIME BINARYMIME CHECKPOINT DSN ENHANCEDSTATUSCODES ETRN SIZE VRFY AUTH (so STARTTLS, PIPELINING, CHUNKING are masked) | masked | drop-connection log (the firewall has none; smuggling is never passed on) | default rules |
//! | `mailguard` | HELO MAIL RCPT DATA RSET NOOP QUIT | none (EHLO itself is X-ed) | masked | drop-connection log | none |
//! | `none` | not inspected | | | | |
//!
//! "RFC 5321 set" = HELO EHLO MAIL RCPT DATA RSET NOOP QUIT AUTH ETRN HELP SAML SEND
//! SOML VRFY, the firewall's list.

use std::collections::HashSet;
use std::ops::Range;

use crate::rules::{
    parse_parameter_actions, parse_rule, Actions, Cmp, Criterion, CriterionKind, Disposition, Rule,
    RuleId,
};
use crate::section::{ParamValue, PolicySection};
use crate::verb::{CommandSet, EhloKeyword, EhloSet, Verb};

/// One precompiled policy. Shared read-only by every session (`Arc<Policy>`).
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    /// `false` only for `none`: no inspector in the path at all.
    pub inspect: bool,
    /// Commands forwarded as written; every other verb becomes same-length `X`s (and
    /// counts on [`Policy::unknown_verb_rule`]). HELO EHLO MAIL RCPT DATA RSET NOOP QUIT
    /// AUTH ETRN HELP SAML SEND SOML VRFY (`mailguard`: the first seven only), plus
    /// STARTTLS when `allow_tls`, plus BDAT when CHUNKING is in `allowed_ehlo`, plus the
    /// `allow_verbs` (private verbs in `private`).
    pub allowed_commands: CommandSet,
    /// EHLO reply keywords the policy passes through. This set defines what the
    /// `others` of `ehlo-reply-parameter` means: any keyword neither here nor in
    /// `allowed_private_ehlo` (see [`Policy::ehlo_matches`]). Masking itself is a rule
    /// decision: every built-in inspecting policy has `match ehlo-reply-parameter
    /// others mask`. STARTTLS is here exactly when `allow_tls`.
    pub allowed_ehlo: EhloSet,
    /// Private EHLO keywords passed through (`allow_verbs`), upper-cased.
    pub allowed_private_ehlo: Vec<Box<[u8]>>,
    /// Domain for the `mail_relay` check, lower-cased (no leading `@`).
    pub mail_relay: Option<String>,
    /// Every rule, `match ...` lines and compiled parameters alike; `RuleId` indexes this.
    pub rules: Vec<Rule>,

    // ---- precomputed so the inspector does no per-session work ----
    /// The parameters this policy was compiled from; a user policy extending this one
    /// starts from them.
    pub params: Parameters,
    /// The [`Criterion::Banner`] rule (mask the 220 greeting text), if `mask_banner`.
    pub banner_rule: Option<RuleId>,
    /// The [`Criterion::UnknownVerb`] rule: counts (and carries the actions of) every
    /// command outside `allowed_commands`. `None` only when `inspect` is false.
    pub unknown_verb_rule: Option<RuleId>,
    /// The [`Criterion::BareNewline`] rule (SMTP-smuggling defence), if enabled.
    pub bare_newline_rule: Option<RuleId>,
    /// The [`Criterion::SpecialCharacter`] rule, if enabled.
    pub special_character_rule: Option<RuleId>,
    /// The [`Criterion::MailRelay`] rule, present exactly when `mail_relay` is set.
    pub mail_relay_rule: Option<RuleId>,
    /// The [`Criterion::TlsStarted`] rule (log), present exactly when `allow_tls`.
    pub tls_started_rule: Option<RuleId>,
    /// Every rule grouped by criterion kind (rebuilt by [`Policy::push_rule`] and
    /// [`Policy::reindex`] when rules are edited in place).
    pub index: RuleIndex,
}

/// Rule ids grouped by [`CriterionKind`], in [`Policy::rules`] order, and the per-line
/// fast-path thresholds derived from them: built once per policy so the inspector never
/// scans rules that cannot apply, and does no per-session work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleIndex {
    /// `ids[start[k]..start[k + 1]]` are the rules of kind `k`.
    ids: Box<[RuleId]>,
    start: [u16; CriterionKind::COUNT + 1],
    /// A body / header line this long or shorter matches no length rule (`None` when a
    /// rule is not a plain `gt`, so every line is checked).
    pub body_line_floor: Option<u64>,
    pub header_line_floor: Option<u64>,
    /// The lowest `gt` threshold of a body / header line length rule that ends the
    /// session (drop-connection or reset): such a line is cut as it crosses it.
    pub body_line_drop: Option<u64>,
    pub header_line_drop: Option<u64>,
    /// The same for `body length` / `header length`: checked as the totals grow.
    pub body_len_drop: Option<u64>,
    pub header_len_drop: Option<u64>,
}

impl RuleIndex {
    pub fn new(rules: &[Rule]) -> RuleIndex {
        let kind_of = |id: &RuleId| rules[usize::from(*id)].criterion.kind() as usize;
        let mut ids: Vec<RuleId> = (0..rules.len() as RuleId).collect();
        ids.sort_by_key(kind_of);
        let mut start = [0u16; CriterionKind::COUNT + 1];
        for k in 0..CriterionKind::COUNT {
            start[k + 1] = start[k] + ids.iter().filter(|id| kind_of(id) == k).count() as u16;
        }
        let of_kind =
            |kind: CriterionKind| rules.iter().filter(move |r| r.criterion.kind() == kind);
        let floor = |kind: CriterionKind| {
            of_kind(kind).try_fold(u64::MAX, |floor, r| {
                match (r.criterion.threshold(), r.negate) {
                    (Some(Cmp::Gt(n)), false) => Some(floor.min(n)),
                    _ => None,
                }
            })
        };
        let drop_floor = |kind: CriterionKind| {
            of_kind(kind)
                .filter(|r| !r.negate && r.actions.ends_session())
                .filter_map(|r| match r.criterion.threshold() {
                    Some(Cmp::Gt(n)) => Some(n),
                    _ => None,
                })
                .min()
        };
        RuleIndex {
            ids: ids.into_boxed_slice(),
            start,
            body_line_floor: floor(CriterionKind::BodyLineLength),
            header_line_floor: floor(CriterionKind::HeaderLineLength),
            body_line_drop: drop_floor(CriterionKind::BodyLineLength),
            header_line_drop: drop_floor(CriterionKind::HeaderLineLength),
            body_len_drop: drop_floor(CriterionKind::BodyLength),
            header_len_drop: drop_floor(CriterionKind::HeaderLength),
        }
    }

    /// The rules of one kind, in policy order.
    #[inline]
    pub fn of(&self, kind: CriterionKind) -> &[RuleId] {
        let k = kind as usize;
        &self.ids[usize::from(self.start[k])..usize::from(self.start[k + 1])]
    }
}

/// A policy's parameters, resolved (a user policy's merged over its parent's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parameters {
    /// Commands allowed before STARTTLS/BDAT/`allow_verbs` are added.
    pub base_commands: CommandSet,
    /// EHLO keywords passed before STARTTLS/`allow_verbs` are added (never STARTTLS:
    /// that follows `allow_tls`).
    pub base_ehlo: EhloSet,
    pub mask_banner: bool,
    /// What a masked greeting looks like.
    pub banner: BannerStyle,
    pub allow_tls: bool,
    /// Actions on a bare CR/LF or a non-CRLF.CRLF end of data; `None` = off. A lone
    /// dot beside one always ends the session (`smuggled-end-of-data`), whatever this
    /// says: with this off, a bare line end elsewhere reaches the server unaltered.
    pub bare_newline: Option<Actions>,
    /// Actions on a NUL octet in DATA content (the first of each message); `None` =
    /// off. A NUL beside a lone dot is smuggling, judged like a bare line end there.
    pub nul_in_content: Option<Actions>,
    /// Actions when the client talks before the server's greeting reached it; `None` =
    /// off.
    pub early_talker: Option<Actions>,
    /// Actions on `|`, backquote or NUL in a MAIL/RCPT address; `None` = off.
    pub special_character: Option<Actions>,
    /// Actions when `mail_relay` is set and a RCPT goes elsewhere.
    pub mail_relay_actions: Actions,
    /// Private verbs and EHLO keywords to pass, as written (upper-cased).
    pub allow_verbs: Vec<String>,
}

/// How `mask_banner` hides the upstream's greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BannerStyle {
    /// `220 <name> ESMTP ready`: the upstream's name and software hidden, the edge's
    /// own name shown, ESMTP kept — clients keep EHLO, STARTTLS, 8BITMIME, SMTPUTF8.
    Neutral,
    /// The firewall's: code kept, every other character `*`, length kept. Postfix and
    /// other clients take such a greeting for a Cisco PIX and fall back to HELO
    /// (no STARTTLS, 8BITMIME or SMTPUTF8).
    Asterisks,
}

/// The default action of `bare_newline`, `special_character` and `mail_relay`.
pub const DROP_LOG: Actions = Actions {
    disposition: Disposition::Drop,
    log: true,
    mask: false,
    rate_limit: 0,
};

const MASK: Actions = Actions {
    disposition: Disposition::Continue,
    log: false,
    mask: true,
    rate_limit: 0,
};

const MASK_LOG: Actions = Actions { log: true, ..MASK };

const LOG: Actions = Actions {
    disposition: Disposition::Continue,
    log: true,
    mask: false,
    rate_limit: 0,
};

/// The built-in policies, which every config has without declaring them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// Inspects with the firewall's default map, a neutral greeting and STARTTLS.
    Default,
    /// The firewall's `inspect esmtp` as shipped, asterisk banner and all.
    AsaCompat,
    /// PIX Mailguard: RFC 821's minimum command set.
    Mailguard,
    /// Relays verbatim: what an exempt client gets.
    None,
}

impl Builtin {
    /// In the order errors list them.
    pub const ALL: [Builtin; 4] = [
        Builtin::Default,
        Builtin::AsaCompat,
        Builtin::Mailguard,
        Builtin::None,
    ];

    /// The name a config uses for it.
    pub const fn name(self) -> &'static str {
        match self {
            Builtin::Default => "default",
            Builtin::AsaCompat => "asa-compat",
            Builtin::Mailguard => "mailguard",
            Builtin::None => "none",
        }
    }

    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// The names `Policy::builtin` knows, in the order errors list them.
pub const BUILTIN_NAMES: [&str; 4] = [
    Builtin::Default.name(),
    Builtin::AsaCompat.name(),
    Builtin::Mailguard.name(),
    Builtin::None.name(),
];

/// The firewall's default policy map, mask-banner aside.
pub const DEFAULT_RULES: [&str; 7] = [
    "match cmd line length gt 512 drop-connection log",
    "match cmd RCPT count gt 100 reject",
    "match body line length gt 998 log",
    "match header line length gt 998 drop-connection log",
    "match sender-address length gt 320 drop-connection log",
    "match MIME filename length gt 255 drop-connection log",
    "match ehlo-reply-parameter others mask",
];

/// `default`'s rules beyond the firewall's map: where a bound of the MIME parser stops
/// it, the operator hears of it (a stricter policy drops instead).
pub const DEFAULT_EXTRA_RULES: [&str; 1] = ["match MIME parse-limit log"];
/// `default`'s recipient limit, and the firewall's in its place for `asa-compat`.
const ASA_RCPT_RULE_REPLACED: &str = "match cmd RCPT count gt 100 reject";
const ASA_RCPT_RULE: &str = "match cmd RCPT count gt 100 drop-connection log";

/// HELO EHLO MAIL RCPT DATA RSET NOOP QUIT AUTH ETRN HELP SAML SEND SOML VRFY.
const FIREWALL_COMMANDS: [Verb; 15] = [
    Verb::Helo,
    Verb::Ehlo,
    Verb::Mail,
    Verb::Rcpt,
    Verb::Data,
    Verb::Rset,
    Verb::Noop,
    Verb::Quit,
    Verb::Auth,
    Verb::Etrn,
    Verb::Help,
    Verb::Saml,
    Verb::Send,
    Verb::Soml,
    Verb::Vrfy,
];

/// RFC 821's minimum implementation, all PIX Mailguard lets through.
const MAILGUARD_COMMANDS: [Verb; 7] = [
    Verb::Helo,
    Verb::Mail,
    Verb::Rcpt,
    Verb::Data,
    Verb::Rset,
    Verb::Noop,
    Verb::Quit,
];

const fn ehlo_set(keywords: &[EhloKeyword]) -> EhloSet {
    let mut set = 0;
    let mut i = 0;
    while i < keywords.len() {
        set |= keywords[i].bit();
        i += 1;
    }
    set
}

/// `default`'s EHLO keywords (STARTTLS is added by `allow_tls`).
const DEFAULT_EHLO: EhloSet = ehlo_set(&[
    EhloKeyword::Pipelining,
    EhloKeyword::Chunking,
    EhloKeyword::EightBitMime,
    EhloKeyword::Size,
    EhloKeyword::Smtputf8,
    EhloKeyword::EnhancedStatusCodes,
    EhloKeyword::Dsn,
    EhloKeyword::Auth,
]);

/// The keywords the firewall's inspection knows and passes (its `ehlo-reply-parameter`
/// list, `ecode` = ENHANCEDSTATUSCODES). Everything else, STARTTLS, PIPELINING and
/// CHUNKING included, is "others" and masked by the default map.
const FIREWALL_EHLO: EhloSet = ehlo_set(&[
    EhloKeyword::EightBitMime,
    EhloKeyword::BinaryMime,
    EhloKeyword::Checkpoint,
    EhloKeyword::Dsn,
    EhloKeyword::EnhancedStatusCodes,
    EhloKeyword::Etrn,
    EhloKeyword::Size,
    EhloKeyword::Vrfy,
    EhloKeyword::Auth,
]);

/// Why a user policy did not compile. [`PolicyError::field`] names the setting
/// (`rules[1]`, `extends`, ...), [`PolicyError::span`] where it is in the config text
/// when known; the message says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The parent does no inspection (`none`), yet the section sets something.
    #[error(
        "`{parent}` does no inspection, so parameters and rules would never apply; \
         extend default, asa-compat or mailguard"
    )]
    ExtendsNone {
        parent: String,
        span: Option<Range<usize>>,
    },
    /// A parameter's value (`bare_newline`, `mail_relay`, ...).
    #[error("{message}")]
    Parameter {
        name: &'static str,
        span: Range<usize>,
        message: String,
    },
    /// One of `allow_verbs`.
    #[error("{message}")]
    AllowVerb {
        index: usize,
        span: Range<usize>,
        message: String,
    },
    /// One of `rules`.
    #[error("{message}")]
    Rule {
        index: usize,
        span: Range<usize>,
        message: String,
    },
    #[error("{count} rules is too many")]
    TooManyRules { count: usize },
}

impl PolicyError {
    /// The setting at fault, as the config names it.
    pub fn field(&self) -> String {
        match self {
            PolicyError::ExtendsNone { .. } => "extends".into(),
            PolicyError::Parameter { name, .. } => (*name).into(),
            PolicyError::AllowVerb { index, .. } => format!("allow_verbs[{index}]"),
            PolicyError::Rule { index, .. } => format!("rules[{index}]"),
            PolicyError::TooManyRules { .. } => "rules".into(),
        }
    }

    /// Byte range in the config text, when known.
    pub fn span(&self) -> Option<Range<usize>> {
        match self {
            PolicyError::ExtendsNone { span, .. } => span.clone(),
            PolicyError::Parameter { span, .. }
            | PolicyError::AllowVerb { span, .. }
            | PolicyError::Rule { span, .. } => Some(span.clone()),
            PolicyError::TooManyRules { .. } => None,
        }
    }
}

impl Policy {
    /// A built-in policy by name, or `None`.
    pub fn builtin(name: &str) -> Option<Policy> {
        // `asa-compat` ends the session at the 101st recipient, as the firewall does;
        // `default` answers that RCPT 452 and the session goes on.
        let parse_defaults = |firewall: bool| {
            DEFAULT_RULES
                .iter()
                .map(|&text| match text {
                    ASA_RCPT_RULE_REPLACED if firewall => ASA_RCPT_RULE,
                    _ => text,
                })
                .map(|text| parse_rule(text).expect("built-in rules parse"))
                .collect::<Vec<_>>()
        };
        // Every inspecting built-in masks the banner and stops SMTP smuggling; they
        // differ in the commands, EHLO keywords and STARTTLS they pass, how the banner
        // is masked, and early talkers.
        let inspecting = |base_commands, base_ehlo, allow_tls, firewall: bool| Parameters {
            base_commands,
            base_ehlo,
            mask_banner: true,
            banner: if firewall {
                BannerStyle::Asterisks
            } else {
                BannerStyle::Neutral
            },
            allow_tls,
            bare_newline: Some(DROP_LOG),
            nul_in_content: Some(LOG),
            early_talker: (!firewall).then_some(DROP_LOG),
            special_character: None,
            mail_relay_actions: DROP_LOG,
            allow_verbs: Vec::new(),
        };
        let firewall_commands = || CommandSet::of(&FIREWALL_COMMANDS);
        let builtin = Builtin::from_name(name)?;
        let (inspect, params, rules) = match builtin {
            Builtin::Default => (
                true,
                inspecting(firewall_commands(), DEFAULT_EHLO, true, false),
                parse_defaults(false)
                    .into_iter()
                    .chain(
                        DEFAULT_EXTRA_RULES
                            .iter()
                            .map(|text| parse_rule(text).expect("built-in rules parse")),
                    )
                    .collect(),
            ),
            // Smuggling defence on is not the firewall's behaviour, on purpose: SMTP
            // smuggling is never passed on (a message is never ended early by a bare CR or LF). `bare_newline = false`
            // in a policy extending it reproduces the firewall exactly.
            Builtin::AsaCompat => (
                true,
                inspecting(firewall_commands(), FIREWALL_EHLO, false, true),
                parse_defaults(true),
            ),
            Builtin::Mailguard => (
                true,
                inspecting(CommandSet::of(&MAILGUARD_COMMANDS), 0, false, true),
                Vec::new(),
            ),
            Builtin::None => (
                false,
                Parameters {
                    base_commands: CommandSet::default(),
                    base_ehlo: 0,
                    mask_banner: false,
                    banner: BannerStyle::Neutral,
                    allow_tls: false,
                    bare_newline: None,
                    nul_in_content: None,
                    early_talker: None,
                    special_character: None,
                    mail_relay_actions: DROP_LOG,
                    allow_verbs: Vec::new(),
                },
                Vec::new(),
            ),
        };
        Some(Policy::assemble(
            builtin.name(),
            inspect,
            params,
            None,
            rules,
        ))
    }

    /// A user policy (`[policy.NAME]`) over its resolved parent (`extends`; the config
    /// resolves names and cycles). Parameters given override the parent's;
    /// `allow_verbs` adds to them; `rules` are appended after the parent's `match`
    /// rules (unless `inherit_rules = false`), a rule written exactly like one already
    /// there only once. Every error is returned, each with its
    /// field and config span.
    pub fn compile(
        name: &str,
        section: &PolicySection,
        parent: &Policy,
    ) -> Result<Policy, Vec<PolicyError>> {
        let mut errors = Vec::new();
        if !parent.inspect {
            if section.has_settings() {
                errors.push(PolicyError::ExtendsNone {
                    parent: parent.name.clone(),
                    span: section.extends.as_ref().map(|e| e.span()),
                });
                return Err(errors);
            }
            let mut policy = parent.clone();
            policy.name = name.to_string();
            return Ok(policy);
        }

        let mut params = parent.params.clone();
        if let Some(v) = section.mask_banner {
            params.mask_banner = v;
        }
        if let Some(v) = section.allow_tls {
            params.allow_tls = v;
        }
        for (field, value, slot) in [
            (
                "bare_newline",
                &section.bare_newline,
                &mut params.bare_newline,
            ),
            (
                "special_character",
                &section.special_character,
                &mut params.special_character,
            ),
            (
                "nul_in_content",
                &section.nul_in_content,
                &mut params.nul_in_content,
            ),
            (
                "early_talker",
                &section.early_talker,
                &mut params.early_talker,
            ),
        ] {
            let Some(value) = value else { continue };
            match value.get_ref() {
                ParamValue::Bool(false) => *slot = None,
                ParamValue::Bool(true) => *slot = Some(DROP_LOG),
                ParamValue::Text(text) => match parse_parameter_actions(text, field) {
                    Ok(actions) => *slot = Some(actions),
                    Err(e) => errors.push(PolicyError::Parameter {
                        name: field,
                        span: value.span(),
                        message: e.message(),
                    }),
                },
            }
        }

        let mut mail_relay = parent.mail_relay.clone();
        if let Some(value) = &section.mail_relay {
            match parse_mail_relay(value.get_ref()) {
                Ok(None) => mail_relay = None,
                Ok(Some((domain, actions))) => {
                    mail_relay = Some(domain);
                    params.mail_relay_actions = actions;
                }
                Err(message) => errors.push(PolicyError::Parameter {
                    name: "mail_relay",
                    span: value.span(),
                    message,
                }),
            }
        }

        for (i, verb) in section.allow_verbs.iter().flatten().enumerate() {
            let word = verb.get_ref();
            let upper = word.to_ascii_uppercase();
            let problem = if !is_token(word) {
                Some(format!(
                    "`{word}` is not a verb or EHLO keyword (letters, digits and `-` only)"
                ))
            } else if upper == "STARTTLS" {
                Some("STARTTLS is governed by `allow_tls`, not `allow_verbs`".to_string())
            } else {
                None
            };
            match problem {
                Some(message) => errors.push(PolicyError::AllowVerb {
                    index: i,
                    span: verb.span(),
                    message,
                }),
                None if !params.allow_verbs.contains(&upper) => params.allow_verbs.push(upper),
                None => {}
            }
        }

        let mut match_rules: Vec<Rule> = if section.inherit_rules.unwrap_or(true) {
            parent
                .rules
                .iter()
                .filter(|r| !r.criterion.is_parameter())
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        for (i, text) in section.rules.iter().enumerate() {
            match parse_rule(text.get_ref()) {
                // The same rule as an inherited one (an operator's policy often repeats
                // default's) would match twice and log twice: keep one.
                Ok(rule) if match_rules.iter().any(|r| r.same_text(&rule)) => {}
                Ok(rule) => match_rules.push(rule),
                Err(e) => errors.push(PolicyError::Rule {
                    index: i,
                    span: text.span(),
                    message: e.message(),
                }),
            }
        }
        // RuleId is u16: keep room for the parameter rules.
        if match_rules.len() > usize::from(RuleId::MAX) - 16 {
            errors.push(PolicyError::TooManyRules {
                count: match_rules.len(),
            });
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Policy::assemble(
            name,
            true,
            params,
            mail_relay,
            match_rules,
        ))
    }

    /// Builds the derived sets, the parameter rules and the index.
    fn assemble(
        name: &str,
        inspect: bool,
        params: Parameters,
        mail_relay: Option<String>,
        match_rules: Vec<Rule>,
    ) -> Policy {
        let mut allowed_ehlo = params.base_ehlo & !EhloKeyword::Starttls.bit();
        let mut allowed_private_ehlo: Vec<Box<[u8]>> = Vec::new();
        let mut allowed_commands = params.base_commands.clone();
        for word in &params.allow_verbs {
            // One list for both, as operators think of them ("let X-LINK2STATE through").
            allowed_commands.insert_name(word);
            match EhloKeyword::parse(word.as_bytes()) {
                EhloKeyword::Others => {
                    let upper: Box<[u8]> = word.as_bytes().into();
                    if !allowed_private_ehlo.contains(&upper) {
                        allowed_private_ehlo.push(upper);
                    }
                }
                k => allowed_ehlo |= k.bit(),
            }
        }
        if params.allow_tls && inspect {
            allowed_ehlo |= EhloKeyword::Starttls.bit();
            allowed_commands.known |= Verb::Starttls.bit();
        } else {
            allowed_commands.known &= !Verb::Starttls.bit();
        }
        // BDAT is CHUNKING's command (RFC 3030): one without the other makes no sense.
        if allowed_ehlo & EhloKeyword::Chunking.bit() != 0 {
            allowed_commands.known |= Verb::Bdat.bit();
        } else {
            allowed_commands.known &= !Verb::Bdat.bit();
        }

        let mut rules = Vec::with_capacity(match_rules.len() + 6);
        let mut add = |criterion: Criterion, text: String, actions: Actions| -> Option<RuleId> {
            rules.push(Rule {
                text,
                negate: false,
                criterion,
                actions,
            });
            Some((rules.len() - 1) as RuleId)
        };
        let mut banner_rule = None;
        let mut unknown_verb_rule = None;
        let mut bare_newline_rule = None;
        let mut special_character_rule = None;
        let mut mail_relay_rule = None;
        let mut tls_started_rule = None;
        if inspect {
            if params.mask_banner {
                banner_rule = add(Criterion::Banner, "mask-banner".into(), MASK);
            }
            unknown_verb_rule = add(
                Criterion::UnknownVerb,
                "unknown-command mask log".into(),
                MASK_LOG,
            );
            // Not parameters an operator sets: a MAIL/RCPT argument the inspector cannot
            // read as a path is masked (the server answers 5xx), and a pipe in an address
            // ends the session, as the firewall does.
            add(
                Criterion::MalformedPath,
                "malformed-path mask log".into(),
                MASK_LOG,
            );
            add(
                Criterion::AddressPipe,
                "address-pipe drop-connection log".into(),
                DROP_LOG,
            );
            if let Some(actions) = params.bare_newline {
                bare_newline_rule = add(
                    Criterion::BareNewline,
                    format!("bare-newline {actions}"),
                    actions,
                );
            }
            add(
                Criterion::SmuggledEndOfData,
                "smuggled-end-of-data drop-connection log".into(),
                DROP_LOG,
            );
            if let Some(actions) = params.nul_in_content {
                add(
                    Criterion::NulInContent,
                    format!("nul-in-content {actions}"),
                    actions,
                );
            }
            if let Some(actions) = params.special_character {
                special_character_rule = add(
                    Criterion::SpecialCharacter,
                    format!("special-character {actions}"),
                    actions,
                );
            }
            if let Some(domain) = &mail_relay {
                let actions = params.mail_relay_actions;
                mail_relay_rule = add(
                    Criterion::MailRelay,
                    format!("mail-relay {domain} {actions}"),
                    actions,
                );
            }
            if params.allow_tls {
                tls_started_rule = add(Criterion::TlsStarted, "allow-tls log".into(), LOG);
            }
            if let Some(actions) = params.early_talker {
                add(
                    Criterion::EarlyTalker,
                    format!("early-talker {actions}"),
                    actions,
                );
            }
            // Protocol defences, not parameters: each ends the session with its own
            // rule, so /status and the logs say which one fired.
            for (criterion, text) in [
                (Criterion::ImproperPipelining, "improper-pipelining"),
                (Criterion::OverlongCommand, "overlong-command"),
                (Criterion::BdatRefused, "bdat-refused"),
                (Criterion::StarttlsInjection, "starttls-injection"),
            ] {
                add(criterion, format!("{text} drop-connection log"), DROP_LOG);
            }
        }
        debug_assert!(match_rules.iter().all(|r| !r.criterion.is_parameter()));
        rules.extend(match_rules);
        let index = RuleIndex::new(&rules);

        Policy {
            name: name.to_string(),
            inspect,
            allowed_commands,
            allowed_ehlo,
            allowed_private_ehlo,
            mail_relay,
            rules,
            params,
            banner_rule,
            unknown_verb_rule,
            bare_newline_rule,
            special_character_rule,
            mail_relay_rule,
            tls_started_rule,
            index,
        }
    }

    /// Appends a rule (tests and tools that build a policy by hand) and re-indexes.
    pub fn push_rule(&mut self, rule: Rule) -> RuleId {
        self.rules.push(rule);
        self.reindex();
        (self.rules.len() - 1) as RuleId
    }

    /// Rebuilds [`Policy::index`] after `rules` was edited in place.
    pub fn reindex(&mut self) {
        self.index = RuleIndex::new(&self.rules);
    }

    /// The rule with this id.
    #[inline]
    pub fn rule(&self, id: RuleId) -> &Rule {
        &self.rules[usize::from(id)]
    }

    /// Whether an EHLO reply keyword (the bytes before the first space of the reply
    /// text, any case) is passed by this policy: a named keyword in `allowed_ehlo`, or
    /// a private one in `allowed_private_ehlo`. No allocation.
    #[inline]
    pub fn ehlo_allowed(&self, keyword: &[u8]) -> bool {
        match EhloKeyword::parse(keyword) {
            EhloKeyword::Others => self
                .allowed_private_ehlo
                .iter()
                .any(|p| p.eq_ignore_ascii_case(keyword)),
            k => self.allowed_ehlo & k.bit() != 0,
        }
    }

    /// Whether an `ehlo-reply-parameter` set matches an EHLO reply keyword: the
    /// keyword's own bit is in the set, or the set has `others` and the keyword is not
    /// one this policy passes ([`Policy::ehlo_allowed`]). No allocation.
    #[inline]
    pub fn ehlo_matches(&self, set: EhloSet, keyword: &[u8]) -> bool {
        let k = EhloKeyword::parse(keyword);
        (k != EhloKeyword::Others && set & k.bit() != 0)
            || (set & EhloKeyword::Others.bit() != 0 && !self.ehlo_allowed(keyword))
    }

    /// The ids of this policy's rules whose criterion satisfies `pred`.
    pub fn find<'a>(
        &'a self,
        pred: impl Fn(&Criterion) -> bool + 'a,
    ) -> impl Iterator<Item = RuleId> + 'a {
        self.rules
            .iter()
            .enumerate()
            .filter(move |(_, r)| pred(&r.criterion))
            .map(|(i, _)| i as RuleId)
    }
}

/// `mail_relay = "example.com"` or `"example.com drop-connection log"` (the firewall's
/// `mail-relay example.com action drop-connection log`); `""` switches it off.
fn parse_mail_relay(value: &str) -> Result<Option<(String, Actions)>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let (domain, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let domain = domain.trim_start_matches('@').to_ascii_lowercase();
    let valid_domain = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .split('.')
            .all(|label| !label.is_empty() && is_token(label));
    if !valid_domain {
        return Err(format!(
            "expected a domain like example.com, then optional actions, found `{value}`"
        ));
    }
    let actions = if rest.trim().is_empty() {
        DROP_LOG
    } else {
        parse_parameter_actions(rest, "mail_relay").map_err(|mut e| {
            // Columns relative to the whole value, not just the actions part.
            e.column += value.len() - rest.trim_start().len();
            e.message()
        })?
    };
    Ok(Some((domain, actions)))
}

/// Letters, digits, `-` (and `_`, seen in private verbs): what a verb, an EHLO keyword
/// or a domain label is made of.
fn is_token(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 64
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Resolves `extends` chains among user policies in dependency order, so each is
/// compiled after its parent. Returns the order, or the names in a cycle.
pub(crate) fn resolution_order<'a>(
    parents: &[(&'a str, Option<&'a str>)],
) -> Result<Vec<&'a str>, Vec<&'a str>> {
    let user: HashSet<&str> = parents.iter().map(|(n, _)| *n).collect();
    let mut done: Vec<&str> = Vec::new();
    let mut remaining: Vec<(&str, Option<&str>)> = parents.to_vec();
    while !remaining.is_empty() {
        let before = remaining.len();
        remaining.retain(|&(name, parent)| {
            // A parent that is not a user policy is a built-in (or unknown, which the
            // caller reports): ready at once.
            let ready = match parent {
                Some(p) if user.contains(p) => done.contains(&p),
                _ => true,
            };
            if ready {
                done.push(name);
            }
            !ready
        });
        if remaining.len() == before {
            return Err(remaining.iter().map(|(n, _)| *n).collect());
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Spanned;

    fn builtin(name: &str) -> Policy {
        Policy::builtin(name).expect("built-in")
    }

    #[test]
    fn each_builtin_is_found_by_its_name_and_nothing_else_is() {
        for b in Builtin::ALL {
            assert_eq!(Builtin::from_name(b.name()), Some(b));
            assert_eq!(builtin(b.name()).name, b.name());
        }
        assert_eq!(BUILTIN_NAMES, Builtin::ALL.map(Builtin::name));
        assert!(Policy::builtin("Default").is_none());
        assert!(Policy::builtin("edge").is_none());
    }

    fn texts(p: &Policy) -> Vec<&str> {
        p.rules.iter().map(|r| r.text.as_str()).collect()
    }

    fn spanned<T>(v: T) -> Spanned<T> {
        Spanned::new(0..0, v)
    }

    fn section(extends: &str) -> PolicySection {
        PolicySection {
            extends: Some(spanned(extends.to_string())),
            ..PolicySection::default()
        }
    }

    #[test]
    fn builtin_names_resolve() {
        for name in BUILTIN_NAMES {
            assert_eq!(builtin(name).name, name);
        }
        assert!(Policy::builtin("strict").is_none());
    }

    #[test]
    fn default_is_the_firewall_map_plus_tls_pipelining_chunking_and_smuggling_defence() {
        let p = builtin("default");
        assert!(p.inspect);
        assert_eq!(
            texts(&p),
            [
                "mask-banner",
                "unknown-command mask log",
                "malformed-path mask log",
                "address-pipe drop-connection log",
                "bare-newline drop-connection log",
                "smuggled-end-of-data drop-connection log",
                "nul-in-content log",
                "allow-tls log",
                "early-talker drop-connection log",
                "improper-pipelining drop-connection log",
                "overlong-command drop-connection log",
                "bdat-refused drop-connection log",
                "starttls-injection drop-connection log",
                "match cmd line length gt 512 drop-connection log",
                "match cmd RCPT count gt 100 reject",
                "match body line length gt 998 log",
                "match header line length gt 998 drop-connection log",
                "match sender-address length gt 320 drop-connection log",
                "match MIME filename length gt 255 drop-connection log",
                "match ehlo-reply-parameter others mask",
                "match MIME parse-limit log",
            ]
        );
        for v in FIREWALL_COMMANDS
            .iter()
            .chain(&[Verb::Starttls, Verb::Bdat])
        {
            assert!(
                p.allowed_commands.contains(*v, v.name().as_bytes()),
                "{v:?}"
            );
        }
        for v in [Verb::Expn, Verb::Turn, Verb::Other] {
            assert!(!p.allowed_commands.contains(v, b"XYZZY"), "{v:?}");
        }
        for k in [
            "STARTTLS",
            "PIPELINING",
            "CHUNKING",
            "8BITMIME",
            "SIZE",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
            "AUTH",
        ] {
            assert!(p.ehlo_allowed(k.as_bytes()), "{k}");
        }
        for k in ["BINARYMIME", "ETRN", "VRFY", "HELP", "X-EXPS", "XEXCH50"] {
            assert!(!p.ehlo_allowed(k.as_bytes()), "{k}");
        }
        assert_eq!(p.banner_rule, Some(0));
        assert_eq!(p.unknown_verb_rule, Some(1));
        assert_eq!(p.bare_newline_rule, Some(4));
        assert_eq!(p.tls_started_rule, Some(7));
        assert_eq!(p.special_character_rule, None);
        assert_eq!(p.mail_relay_rule, None);
        assert_eq!(p.rule(3).actions, DROP_LOG);
        assert_eq!(p.rule(4).actions, DROP_LOG);
        use CriterionKind as K;
        assert_eq!(p.index.of(K::CmdLineLength), [13]);
        assert_eq!(p.index.of(K::CmdRcptCount), [14]);
        assert_eq!(p.index.of(K::BodyLineLength), [15]);
        assert_eq!(p.index.of(K::HeaderLineLength), [16]);
        assert_eq!(p.index.of(K::SenderAddressLength), [17]);
        assert_eq!(p.index.of(K::MimeFilenameLength), [18]);
        assert_eq!(p.index.of(K::EhloReplyParameter), [19]);
        assert_eq!(p.index.of(K::CmdLineLength), [13]);
        assert_eq!(p.index.of(K::CmdRcptCount), [14]);
        assert_eq!(p.index.of(K::BodyLineLength), [15]);
        assert_eq!(p.index.of(K::HeaderLineLength), [16]);
        assert_eq!(p.index.of(K::SenderAddressLength), [17]);
        assert_eq!(p.index.of(K::MimeFilenameLength), [18]);
        assert_eq!(p.index.of(K::EhloReplyParameter), [19]);
        assert_eq!(p.index.of(K::Banner), [0]);
        assert!(p.index.of(K::InvalidRecipientsCount).is_empty());
        assert_eq!(p.index.body_line_floor, Some(998));
        assert_eq!(p.index.body_line_drop, None, "the body line rule only logs");
        assert_eq!(p.index.header_line_drop, Some(998));
    }

    #[test]
    fn others_means_not_passed_by_this_policy() {
        let p = builtin("default");
        let others = EhloKeyword::Others.bit();
        assert!(p.ehlo_matches(others, b"X-EXPS"));
        assert!(p.ehlo_matches(others, b"etrn"));
        assert!(!p.ehlo_matches(others, b"pipelining"));
        assert!(!p.ehlo_matches(others, b"STARTTLS"));
        // A named keyword matches by its bit, allowed or not.
        let pipelining = EhloKeyword::Pipelining.bit();
        assert!(p.ehlo_matches(pipelining, b"PIPELINING"));
        assert!(!p.ehlo_matches(pipelining, b"SIZE"));
    }

    #[test]
    fn asa_compat_masks_starttls_pipelining_chunking() {
        let p = builtin("asa-compat");
        let others = EhloKeyword::Others.bit();
        for k in ["STARTTLS", "PIPELINING", "CHUNKING", "SMTPUTF8", "X-EXPS"] {
            assert!(!p.ehlo_allowed(k.as_bytes()), "{k}");
            assert!(p.ehlo_matches(others, k.as_bytes()), "{k}");
        }
        for k in [
            "8BITMIME",
            "SIZE",
            "DSN",
            "ENHANCEDSTATUSCODES",
            "ETRN",
            "VRFY",
            "AUTH",
        ] {
            assert!(p.ehlo_allowed(k.as_bytes()), "{k}");
        }
        assert!(!p.allowed_commands.contains(Verb::Starttls, b"STARTTLS"));
        assert!(!p.allowed_commands.contains(Verb::Bdat, b"BDAT"));
        assert!(p.allowed_commands.contains(Verb::Vrfy, b"VRFY"));
        assert_eq!(p.banner_rule, Some(0));
        assert_eq!(p.bare_newline_rule, Some(4));
        assert_eq!(p.tls_started_rule, None);
        let match_rules: Vec<&str> = texts(&p)
            .into_iter()
            .filter(|t| t.starts_with("match"))
            .collect();
        let firewall_rules = DEFAULT_RULES.map(|r| match r {
            ASA_RCPT_RULE_REPLACED => ASA_RCPT_RULE,
            r => r,
        });
        assert_eq!(match_rules, firewall_rules);
    }

    #[test]
    fn mailguard_passes_only_rfc821_minimum() {
        let p = builtin("mailguard");
        for v in Verb::ALL {
            let allowed = p.allowed_commands.contains(v, v.name().as_bytes());
            assert_eq!(allowed, MAILGUARD_COMMANDS.contains(&v), "{v:?}");
        }
        assert!(!p.allowed_commands.contains(Verb::Ehlo, b"EHLO"));
        assert_eq!(p.allowed_ehlo, 0);
        assert_eq!(
            texts(&p),
            [
                "mask-banner",
                "unknown-command mask log",
                "malformed-path mask log",
                "address-pipe drop-connection log",
                "bare-newline drop-connection log",
                "smuggled-end-of-data drop-connection log",
                "nul-in-content log",
                "improper-pipelining drop-connection log",
                "overlong-command drop-connection log",
                "bdat-refused drop-connection log",
                "starttls-injection drop-connection log",
            ]
        );
    }

    #[test]
    fn none_inspects_nothing() {
        let p = builtin("none");
        assert!(!p.inspect);
        assert!(p.rules.is_empty());
        assert_eq!(p.unknown_verb_rule, None);
    }

    #[test]
    fn user_policy_appends_rules_and_overrides_parameters() {
        let mut s = section("default");
        s.mask_banner = Some(false);
        s.allow_tls = Some(false);
        s.special_character = Some(spanned(ParamValue::Text("log".into())));
        s.bare_newline = Some(spanned(ParamValue::Text("reset log".into())));
        s.mail_relay = Some(spanned("@Example.COM".into()));
        s.allow_verbs = Some(vec![
            spanned("X-LINK2STATE".into()),
            spanned("xexch50".into()),
        ]);
        s.rules = vec![spanned("match cmd verb VRFY EXPN mask log".into())];
        let p = Policy::compile("strict", &s, &builtin("default")).unwrap();
        assert_eq!(p.name, "strict");
        assert_eq!(p.banner_rule, None);
        assert_eq!(p.tls_started_rule, None);
        assert!(!p.ehlo_allowed(b"STARTTLS"));
        assert!(!p.allowed_commands.contains(Verb::Starttls, b"STARTTLS"));
        assert_eq!(p.mail_relay.as_deref(), Some("example.com"));
        assert!(p.allowed_commands.contains(Verb::Other, b"x-link2state"));
        assert!(p.allowed_commands.contains(Verb::Other, b"XEXCH50"));
        assert!(p.ehlo_allowed(b"X-LINK2STATE"));
        assert!(!p.ehlo_matches(EhloKeyword::Others.bit(), b"XEXCH50"));
        assert_eq!(
            texts(&p)[..8],
            [
                "unknown-command mask log",
                "malformed-path mask log",
                "address-pipe drop-connection log",
                "bare-newline reset log",
                "smuggled-end-of-data drop-connection log",
                "nul-in-content log",
                "special-character log",
                "mail-relay example.com drop-connection log",
            ]
        );
        assert_eq!(texts(&p).last(), Some(&"match cmd verb VRFY EXPN mask log"));
        assert_eq!(
            p.rules.len(),
            13 + DEFAULT_RULES.len() + DEFAULT_EXTRA_RULES.len() + 1
        );
        // The index points at the appended rule too.
        let verb_rule = (p.rules.len() - 1) as RuleId;
        assert_eq!(p.index.of(CriterionKind::CmdVerb), [verb_rule]);
        assert_eq!(
            p.find(|c| matches!(c, Criterion::CmdVerb(_)))
                .collect::<Vec<_>>(),
            [verb_rule]
        );

        // A grandchild inherits all of it, and can switch a parameter back on.
        let mut child = section("strict");
        child.allow_tls = Some(true);
        child.bare_newline = Some(spanned(ParamValue::Bool(false)));
        let c = Policy::compile("child", &child, &p).unwrap();
        assert_eq!(
            c.tls_started_rule.map(|id| c.rule(id).text.as_str()),
            Some("allow-tls log")
        );
        assert_eq!(c.bare_newline_rule, None);
        assert_eq!(c.mail_relay.as_deref(), Some("example.com"));
        assert_eq!(c.rules.len(), p.rules.len());
        assert!(c.allowed_commands.contains(Verb::Other, b"XEXCH50"));
    }

    #[test]
    fn asa_compat_with_allow_tls_and_chunking() {
        let mut s = section("asa-compat");
        s.allow_tls = Some(true);
        s.allow_verbs = Some(vec![spanned("CHUNKING".into())]);
        let p = Policy::compile("edge", &s, &builtin("asa-compat")).unwrap();
        assert!(p.ehlo_allowed(b"STARTTLS"));
        assert!(p.ehlo_allowed(b"CHUNKING"));
        assert!(!p.ehlo_allowed(b"PIPELINING"));
        assert!(p.allowed_commands.contains(Verb::Starttls, b"STARTTLS"));
        assert!(p.allowed_commands.contains(Verb::Bdat, b"BDAT"));
    }

    #[test]
    fn user_policy_errors_name_field_and_span() {
        let mut s = section("default");
        s.bare_newline = Some(Spanned::new(10..20, ParamValue::Text("mask".into())));
        s.mail_relay = Some(Spanned::new(30..40, "not a domain!".into()));
        s.allow_verbs = Some(vec![Spanned::new(50..55, "STARTTLS".into())]);
        s.rules = vec![
            spanned("match body length gt 1 log".into()),
            Spanned::new(60..70, "match body length gt x log".into()),
        ];
        let errors = Policy::compile("x", &s, &builtin("default")).unwrap_err();
        let fields: Vec<String> = errors.iter().map(PolicyError::field).collect();
        assert_eq!(
            fields,
            ["bare_newline", "mail_relay", "allow_verbs[0]", "rules[1]"]
        );
        assert_eq!(errors[3].span(), Some(60..70));
        assert_eq!(
            errors[3].to_string(),
            "expected a number at column 22, found `x`"
        );
        assert!(errors[2].to_string().contains("allow_tls"));
    }

    #[test]
    fn inherit_rules_false_keeps_protocol_handling_but_not_match_rules() {
        let mut s = section("asa-compat");
        s.inherit_rules = Some(false);
        s.rules = vec![spanned("match body length gt 100 log".into())];
        let p = Policy::compile("imported", &s, &builtin("asa-compat")).unwrap();
        assert_eq!(
            texts(&p),
            [
                "mask-banner",
                "unknown-command mask log",
                "malformed-path mask log",
                "address-pipe drop-connection log",
                "bare-newline drop-connection log",
                "smuggled-end-of-data drop-connection log",
                "nul-in-content log",
                "improper-pipelining drop-connection log",
                "overlong-command drop-connection log",
                "bdat-refused drop-connection log",
                "starttls-injection drop-connection log",
                "match body length gt 100 log"
            ]
        );
        assert!(!p.ehlo_allowed(b"PIPELINING"));
        assert_eq!(p.index.of(CriterionKind::BodyLength), [11]);
        assert_eq!(p.index.of(CriterionKind::BodyLength), [11]);
        assert!(p.index.of(CriterionKind::CmdLineLength).is_empty());
    }

    #[test]
    fn extending_none_takes_no_settings() {
        let p = Policy::compile("pass", &section("none"), &builtin("none")).unwrap();
        assert!(!p.inspect);
        let mut s = section("none");
        s.rules = vec![spanned("match body length gt 1 log".into())];
        let errors = Policy::compile("pass", &s, &builtin("none")).unwrap_err();
        assert_eq!(errors[0].field(), "extends");
    }

    #[test]
    fn resolution_order_detects_cycles() {
        let order = resolution_order(&[("b", Some("a")), ("a", Some("default")), ("c", Some("b"))])
            .unwrap();
        assert_eq!(order, ["a", "b", "c"]);
        let cycle =
            resolution_order(&[("a", Some("b")), ("b", Some("a")), ("c", None)]).unwrap_err();
        assert_eq!(cycle, ["a", "b"]);
        assert_eq!(resolution_order(&[("a", Some("a"))]).unwrap_err(), ["a"]);
    }
}
