//! The compiled, immutable policy a session is inspected with, and the built-in
//! policies `default`, `asa-compat`, `mailguard` and `none`.
//!
//! CONTRACT (the inspector reads these fields; config/rules build them).

use crate::rules::Rule;
use crate::verb::{CommandSet, EhloSet};

/// One precompiled policy. Shared read-only by every session (`Arc<Policy>`).
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    /// `false` only for `none`: no inspector in the path at all.
    pub inspect: bool,
    /// Commands forwarded as written; every other verb becomes same-length `X`s.
    pub allowed_commands: CommandSet,
    /// EHLO reply keywords passed through; the others are masked with `X`s.
    pub allowed_ehlo: EhloSet,
    /// Private EHLO keywords passed through (`allow_verbs`), upper-cased.
    pub allowed_private_ehlo: Vec<Box<[u8]>>,
    /// Domain for the `mail_relay` check, lower-cased.
    pub mail_relay: Option<String>,
    /// Every rule, `match ...` lines and compiled parameters alike; `RuleId` indexes this.
    pub rules: Vec<Rule>,
}
