//! One `[policy.NAME]` section as written in the config, before validation: what the
//! TOML reader produces and the policy compiler ([`crate::policy::Policy::compile`])
//! takes.

use std::fmt;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// One `[policy.NAME]` section as written. Spans locate errors in the file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// A built-in or another `[policy.NAME]`; default `"default"`.
    pub extends: Option<Spanned<String>>,
    pub mask_banner: Option<bool>,
    pub allow_tls: Option<bool>,
    /// `true` (drop-connection log), `false`, or actions like `"log"`.
    pub special_character: Option<Spanned<ParamValue>>,
    /// `true` (drop-connection log), `false`, or actions like `"log"`.
    pub bare_newline: Option<Spanned<ParamValue>>,
    /// NUL in DATA content: `true` (drop-connection log), `false`, or actions; the
    /// built-ins log.
    pub nul_in_content: Option<Spanned<ParamValue>>,
    /// Client bytes before the server's greeting reached it: `true` (drop-connection
    /// log), `false`, or actions like `"log"`.
    pub early_talker: Option<Spanned<ParamValue>>,
    /// `"example.com"` or `"example.com log"`; `""` switches it off.
    pub mail_relay: Option<Spanned<String>>,
    /// Private verbs and EHLO keywords to pass (`X-LINK2STATE`, `XEXCH50`).
    pub allow_verbs: Option<Vec<Spanned<String>>>,
    /// `match ...` lines, appended after the parent's.
    #[serde(default)]
    pub rules: Vec<Spanned<String>>,
    /// `false`: take the parent's command and EHLO handling and its parameters, but
    /// none of its `match` rules (only this section's). Default `true`. This is how an
    /// imported firewall policy map, which replaces the firewall's default map rather
    /// than adding to it, is reproduced (`import-asa` writes it).
    pub inherit_rules: Option<bool>,
}

impl PolicySection {
    /// Whether the section sets anything besides `extends`.
    pub fn has_settings(&self) -> bool {
        self.mask_banner.is_some()
            || self.allow_tls.is_some()
            || self.special_character.is_some()
            || self.bare_newline.is_some()
            || self.nul_in_content.is_some()
            || self.early_talker.is_some()
            || self.mail_relay.is_some()
            || self.allow_verbs.is_some()
            || !self.rules.is_empty()
            || self.inherit_rules.is_some()
    }
}

/// A parameter that is either switched (`true`/`false`) or given actions (`"log"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamValue {
    Bool(bool),
    Text(String),
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ParamValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or actions like \"drop-connection log\"")
            }
            fn visit_bool<E>(self, v: bool) -> Result<ParamValue, E> {
                Ok(ParamValue::Bool(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<ParamValue, E> {
                Ok(ParamValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
