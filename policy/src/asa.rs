//! `smtpgate import-asa`: a firewall's `policy-map type inspect esmtp` block and its
//! `set connection` limits, turned into smtpgate config TOML.
//!
//! What it reads (the firewall prints one space of indent per level):
//!
//! ```text
//! regex spam_sender "@spam\.example$"
//! class-map type regex match-any bad_senders
//!  match regex spam_sender
//! policy-map type inspect esmtp edge_esmtp
//!  parameters
//!   mask-banner
//!   mail-relay example.com action drop-connection log
//!   special-character action drop-connection log
//!   allow-tls action log
//!  match sender-address regex class bad_senders
//!   drop-connection log
//! policy-map global_policy
//!  class smtp
//!   inspect esmtp edge_esmtp
//!   set connection conn-max 5000 embryonic-conn-max 500 per-client-max 50 per-client-embryonic-max 10
//!   set connection timeout embryonic 0:00:30 idle 0:05:00
//! ```
//!
//! What it writes, and why: each esmtp policy map becomes a `[policy.NAME]` with
//! `extends = "asa-compat"` and `inherit_rules = false`. On the firewall a policy map
//! *replaces* the default map, so the imported policy takes asa-compat's protocol
//! handling (the firewall's command list and EHLO keywords; STARTTLS, PIPELINING and
//! CHUNKING not passed) but only the map's own `match` rules, each with its action
//! line joined on, and its parameters written out explicitly (`mask_banner = false`
//! when the map has no `mask-banner`). The firewall masks STARTTLS unless `allow-tls`;
//! without an `ehlo-reply-parameter others mask` rule to do that, the import adds
//! `match ehlo-reply-parameter starttls mask`. Regex names (`regex NAME "..."`, and
//! `class-map type regex match-any` lists, joined as alternatives) are resolved into
//! the quoted pattern. `set connection` gives `[limits]` (every key written, 0 =
//! unlimited as on the firewall) and `set connection timeout` gives `[timeouts]`.
//!
//! Nothing is dropped silently: a line inside an esmtp map or a `set connection`
//! option that cannot be carried over becomes a `# not imported (line N): ...` comment
//! saying why; unrelated firewall config is summarised in one comment.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::policy::BUILTIN_NAMES;
use crate::rules::parse_rule;

/// Why nothing could be imported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AsaImportError {
    #[error(
        "no `policy-map type inspect esmtp` block, `inspect esmtp` or `set connection` line found"
    )]
    NothingToImport,
}

/// One config line with its children (the lines indented under it).
#[derive(Debug)]
struct Node<'a> {
    line_no: usize,
    indent: usize,
    text: &'a str,
    children: Vec<Node<'a>>,
}

fn parse_tree(text: &str) -> Vec<Node<'_>> {
    let mut roots: Vec<Node<'_>> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        // `!` separates blocks; `:` lines are the firewall's own comments.
        if trimmed.is_empty() || trimmed.starts_with('!') || trimmed.starts_with(':') {
            continue;
        }
        let node = Node {
            line_no: i + 1,
            indent: raw.len() - raw.trim_start().len(),
            text: trimmed,
            children: Vec::new(),
        };
        // Descend along the last child while it is indented less than this line.
        let mut siblings = &mut roots;
        while let Some(last) = siblings.last() {
            if last.indent < node.indent {
                siblings = &mut siblings.last_mut().expect("non-empty").children;
            } else {
                break;
            }
        }
        siblings.push(node);
    }
    roots
}

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

fn is(word: Option<&&str>, keyword: &str) -> bool {
    word.is_some_and(|w| w.eq_ignore_ascii_case(keyword))
}

/// A TOML basic string, escaped.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A rule-language quoted regex: only `"` needs escaping (see `rules`).
fn rule_quote(pattern: &str) -> String {
    format!("\"{}\"", pattern.replace('"', "\\\""))
}

/// `H:MM:SS` (the firewall's timeouts) as smtpgate's `"30s"`, `"5m"`, `"1h"`.
fn asa_duration(text: &str) -> Option<u64> {
    let parts: Vec<u64> = text
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match parts[..] {
        [h, m, s] if m < 60 && s < 60 => Some(h * 3600 + m * 60 + s),
        [m, s] if s < 60 => Some(m * 60 + s),
        _ => None,
    }
}

fn duration_text(seconds: u64) -> String {
    if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// A policy name smtpgate accepts: letters, digits, `-`, `_`; not a built-in's.
fn policy_name(asa_name: &str) -> String {
    let name: String = asa_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if BUILTIN_NAMES.contains(&name.as_str()) {
        format!("{name}-asa")
    } else {
        name
    }
}

/// A regex class: `match-any` lists become one alternation; `match-all` cannot be one
/// regex (no lookahead in smtpgate's regex engine).
enum RegexClass {
    Any(Vec<String>),
    All,
}

#[derive(Default)]
struct EsmtpMap {
    asa_name: String,
    /// The `[policy.NAME]` it becomes: unique, smtpgate's characters.
    policy_name: String,
    line_no: usize,
    mask_banner: bool,
    allow_tls: bool,
    mail_relay: Option<String>,
    special_character: Option<String>,
    rules: Vec<String>,
    notes: Vec<String>,
}

#[derive(Default)]
struct Limits {
    /// `[limits]` key → value.
    values: BTreeMap<&'static str, u64>,
    /// `[timeouts]` key → duration text.
    timeouts: BTreeMap<&'static str, String>,
    /// `# not imported` comments.
    notes: Vec<String>,
    /// Where it came from, for the comment.
    source: String,
}

const LIMIT_KEYS: [(&str, &str); 4] = [
    ("conn-max", "max_connections"),
    ("embryonic-conn-max", "max_embryonic"),
    ("per-client-max", "per_client_max"),
    ("per-client-embryonic-max", "per_client_embryonic_max"),
];

/// Converts a firewall configuration excerpt into smtpgate config TOML (without a
/// `[[listener]]`: the result ends with a commented one to fill in).
pub fn import_asa(text: &str) -> Result<String, AsaImportError> {
    let tree = parse_tree(text);

    // Pass 1: regex definitions and regex classes, wherever they are.
    let mut regexes: BTreeMap<&str, String> = BTreeMap::new();
    let mut classes: BTreeMap<&str, RegexClass> = BTreeMap::new();
    for node in &tree {
        let w = words(node.text);
        if is(w.first(), "regex") && w.len() >= 3 {
            // The pattern is everything after the name, without its quotes.
            let after_name = node.text[node.text.find(w[1]).expect("word") + w[1].len()..].trim();
            let pattern = after_name
                .strip_prefix('"')
                .and_then(|p| p.strip_suffix('"'))
                .unwrap_or(after_name);
            regexes.insert(w[1], pattern.to_string());
        }
    }
    for node in &tree {
        let w = words(node.text);
        if is(w.first(), "class-map")
            && is(w.get(1), "type")
            && is(w.get(2), "regex")
            && w.len() >= 5
        {
            let class = if w[3].eq_ignore_ascii_case("match-all") {
                RegexClass::All
            } else {
                RegexClass::Any(
                    node.children
                        .iter()
                        .filter_map(|c| {
                            let cw = words(c.text);
                            (is(cw.first(), "match") && is(cw.get(1), "regex"))
                                .then(|| cw.get(2).map(|n| n.to_string()))
                                .flatten()
                        })
                        .collect(),
                )
            };
            classes.insert(w[4], class);
        }
    }

    // Pass 2: esmtp maps and the classes that use them.
    let mut maps: Vec<EsmtpMap> = Vec::new();
    let mut limits: Vec<(bool, Limits)> = Vec::new();
    let mut used_maps: Vec<String> = Vec::new();
    let mut default_map_used = false;
    let mut other_lines: BTreeMap<String, usize> = BTreeMap::new();
    let mut count_other = |node: &Node<'_>| {
        let first = words(node.text)[0].to_ascii_lowercase();
        *other_lines.entry(first).or_default() += 1 + count_descendants(node);
    };
    for node in &tree {
        let w = words(node.text);
        if is(w.first(), "regex") {
            continue;
        }
        if is(w.first(), "class-map") && is(w.get(1), "type") && is(w.get(2), "regex") {
            continue;
        }
        if is(w.first(), "policy-map")
            && is(w.get(1), "type")
            && is(w.get(2), "inspect")
            && is(w.get(3), "esmtp")
        {
            // Entering the same map again adds to it, as on the firewall.
            let asa_name = w.get(4).copied().unwrap_or("esmtp");
            let index = match maps.iter().position(|m| m.asa_name == asa_name) {
                Some(i) => i,
                None => {
                    let mut name = policy_name(asa_name);
                    // Two firewall names may map to one smtpgate name (`a.b`, `a-b`).
                    while maps.iter().any(|m| m.policy_name == name) {
                        name.push_str("-2");
                    }
                    maps.push(EsmtpMap {
                        asa_name: asa_name.to_string(),
                        policy_name: name,
                        line_no: node.line_no,
                        ..EsmtpMap::default()
                    });
                    maps.len() - 1
                }
            };
            import_map(node, &mut maps[index], &regexes, &classes);
            continue;
        }
        if is(w.first(), "policy-map") && !is(w.get(1), "type") {
            for class in &node.children {
                let cw = words(class.text);
                if !is(cw.first(), "class") {
                    count_other(class);
                    continue;
                }
                let class_name = cw.get(1).copied().unwrap_or("?");
                let mut inspects_esmtp = false;
                let mut class_limits = Limits {
                    source: format!("policy-map {} class {class_name}", w.get(1).unwrap_or(&"?")),
                    ..Limits::default()
                };
                let mut has_limits = false;
                for item in &class.children {
                    let iw = words(item.text);
                    if is(iw.first(), "inspect") && is(iw.get(1), "esmtp") {
                        inspects_esmtp = true;
                        match iw.get(2) {
                            Some(map) => used_maps.push(map.to_string()),
                            None => default_map_used = true,
                        }
                    } else if is(iw.first(), "set") && is(iw.get(1), "connection") {
                        has_limits = true;
                        import_set_connection(item, &iw[2..], &mut class_limits);
                    } else {
                        count_other(item);
                    }
                }
                if has_limits {
                    limits.push((inspects_esmtp, class_limits));
                }
            }
            continue;
        }
        count_other(node);
    }

    if maps.is_empty() && limits.is_empty() && used_maps.is_empty() && !default_map_used {
        return Err(AsaImportError::NothingToImport);
    }

    let mut out = String::new();
    out.push_str(
        "# Generated by `smtpgate import-asa` from a firewall configuration.\n\
         # Review the `not imported` notes, then fill in the [[listener]] at the end.\n",
    );
    if !other_lines.is_empty() {
        let summary: Vec<String> = other_lines
            .iter()
            .map(|(k, n)| format!("{k} ({n})"))
            .collect();
        let _ = writeln!(
            out,
            "# not imported: other firewall configuration, unrelated to SMTP inspection: {}",
            summary.join(", ")
        );
    }

    // The limits of a class that inspects esmtp win; then the first one found.
    limits.sort_by_key(|(esmtp, _)| !*esmtp);
    let mut limits = limits.into_iter().map(|(_, l)| l);
    if let Some(chosen) = limits.next() {
        let _ = writeln!(out, "\n# From `set connection` in {}.", chosen.source);
        for note in &chosen.notes {
            let _ = writeln!(out, "{note}");
        }
        if !chosen.values.is_empty() {
            out.push_str("[limits]\n");
            for (asa, key) in LIMIT_KEYS {
                let value = chosen.values.get(key).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "{key} = {value}  # {asa}{}",
                    if chosen.values.contains_key(key) {
                        ""
                    } else {
                        " not set: unlimited"
                    }
                );
            }
        }
        if !chosen.timeouts.is_empty() {
            out.push_str("\n[timeouts]\n");
            for (key, value) in &chosen.timeouts {
                let _ = writeln!(out, "{key} = {}", toml_str(value));
            }
        }
        for other in limits {
            let _ = writeln!(
                out,
                "# not imported: `set connection` in {} (smtpgate has one [limits]; the one above was chosen)",
                other.source
            );
        }
    }

    for map in &maps {
        write_map(&mut out, map, &used_maps);
    }

    // A listener to fill in, naming the policy the firewall applies.
    for used in &used_maps {
        if !maps.iter().any(|m| m.asa_name == *used) {
            let _ = writeln!(
                out,
                "# not imported: `inspect esmtp {used}` names a map that is not in the input"
            );
        }
    }
    let policy_of = |asa_name: &str| {
        maps.iter()
            .find(|m| m.asa_name == asa_name)
            .map(|m| m.policy_name.clone())
    };
    let listener_policy = used_maps
        .iter()
        .find_map(|m| policy_of(m))
        .or_else(|| default_map_used.then(|| "asa-compat".to_string()))
        .or_else(|| maps.first().map(|m| m.policy_name.clone()))
        .unwrap_or_else(|| "asa-compat".to_string());
    if default_map_used {
        out.push_str(
            "\n# `inspect esmtp` without a map applies the firewall's default map: policy \"asa-compat\".\n",
        );
    }
    let _ = write!(
        out,
        "\n# [[listener]]\n# listen = \"0.0.0.0:25\"\n# upstream = \"192.0.2.25:25\"  # the mail server\n# policy = {}\n",
        toml_str(&listener_policy)
    );
    Ok(out)
}

fn count_descendants(node: &Node<'_>) -> usize {
    node.children.iter().map(|c| 1 + count_descendants(c)).sum()
}

fn note(line_no: usize, text: &str, why: &str) -> String {
    format!("# not imported (line {line_no}): `{text}`: {why}")
}

fn import_set_connection(item: &Node<'_>, args: &[&str], limits: &mut Limits) {
    let mut i = 0;
    if is(args.first(), "timeout") {
        i = 1;
        while i < args.len() {
            let key = match args[i].to_ascii_lowercase().as_str() {
                "embryonic" => Some("embryonic"),
                "idle" => Some("idle"),
                _ => None,
            };
            let value = args.get(i + 1).copied();
            match (key, value.and_then(asa_duration)) {
                (Some(_), Some(0)) => limits.notes.push(note(
                    item.line_no,
                    &format!("timeout {} {}", args[i], value.unwrap_or("")),
                    "0 (no timeout) has no smtpgate equivalent; the default is kept",
                )),
                (Some(key), Some(seconds)) => {
                    limits.timeouts.insert(key, duration_text(seconds));
                }
                _ => {
                    // `half-closed 0:10:00`, `idle ... reset`, `dcd`: options without
                    // an smtpgate counterpart.
                    let mut end = i + 1;
                    while end < args.len() && asa_duration(args[end]).is_some() {
                        end += 1;
                    }
                    let end = end.max(i + 1);
                    limits.notes.push(note(
                        item.line_no,
                        &format!("timeout {}", args[i..end].join(" ")),
                        "no smtpgate equivalent",
                    ));
                    i = end;
                    continue;
                }
            }
            i += 2;
        }
        return;
    }
    while i < args.len() {
        let option = args[i].to_ascii_lowercase();
        let key = LIMIT_KEYS
            .iter()
            .find(|(asa, _)| *asa == option)
            .map(|(_, k)| *k);
        match (key, args.get(i + 1).and_then(|v| v.parse::<u64>().ok())) {
            (Some(key), Some(n)) => {
                limits.values.insert(key, n);
                i += 2;
            }
            _ => {
                // An option without a counterpart, with its arguments: up to the next
                // option smtpgate knows.
                let mut end = i + 1;
                while end < args.len()
                    && !LIMIT_KEYS
                        .iter()
                        .any(|(asa, _)| args[end].eq_ignore_ascii_case(asa))
                {
                    end += 1;
                }
                limits.notes.push(note(
                    item.line_no,
                    &args[i..end].join(" "),
                    "no smtpgate equivalent",
                ));
                i = end;
            }
        }
    }
}

/// Resolves `regex NAME` / `regex class NAME` at the end of a match line into a quoted
/// pattern; other match lines are returned as they are.
fn resolve_regex(
    match_words: &[&str],
    regexes: &BTreeMap<&str, String>,
    classes: &BTreeMap<&str, RegexClass>,
) -> Result<String, String> {
    let Some(at) = match_words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("regex"))
    else {
        return Ok(match_words.join(" "));
    };
    let head = match_words[..=at].join(" ");
    let reference = &match_words[at + 1..];
    let pattern = match reference {
        [class_kw, name] if class_kw.eq_ignore_ascii_case("class") => match classes.get(name) {
            Some(RegexClass::Any(names)) => {
                let mut parts = Vec::new();
                for n in names {
                    match regexes.get(n.as_str()) {
                        Some(p) => parts.push(format!("(?:{p})")),
                        None => return Err(format!("regex `{n}` (in class `{name}`) is not defined in the input")),
                    }
                }
                if parts.is_empty() {
                    return Err(format!("regex class `{name}` has no `match regex` lines"));
                }
                parts.join("|")
            }
            Some(RegexClass::All) => {
                return Err(format!(
                    "regex class `{name}` is match-all, which one regex cannot express; write one rule per pattern"
                ))
            }
            None => return Err(format!("regex class `{name}` is not defined in the input")),
        },
        [name] => match regexes.get(name) {
            Some(p) => p.clone(),
            None => return Err(format!("regex `{name}` is not defined in the input")),
        },
        _ => return Err("expected `regex NAME` or `regex class NAME`".into()),
    };
    Ok(format!("{head} {}", rule_quote(&pattern)))
}

fn import_map(
    node: &Node<'_>,
    map: &mut EsmtpMap,
    regexes: &BTreeMap<&str, String>,
    classes: &BTreeMap<&str, RegexClass>,
) {
    for child in &node.children {
        let w = words(child.text);
        if is(w.first(), "description") {
            continue;
        }
        if is(w.first(), "parameters") {
            for p in &child.children {
                import_parameter(p, map);
            }
            continue;
        }
        if !is(w.first(), "match") {
            map.notes.push(note(
                child.line_no,
                child.text,
                "not a `match` line or `parameters`",
            ));
            continue;
        }
        let actions: Vec<&str> = child.children.iter().map(|a| a.text).collect();
        let shown = if actions.is_empty() {
            child.text.to_string()
        } else {
            format!("{} / {}", child.text, actions.join(" / "))
        };
        if actions.is_empty() {
            map.notes
                .push(note(child.line_no, &shown, "no action line under it"));
            continue;
        }
        let criterion = match resolve_regex(&w, regexes, classes) {
            Ok(c) => c,
            Err(why) => {
                map.notes.push(note(child.line_no, &shown, &why));
                continue;
            }
        };
        let rule = format!("{criterion} {}", actions.join(" "));
        match parse_rule(&rule) {
            Ok(_) => map.rules.push(rule),
            Err(e) => map.notes.push(note(child.line_no, &shown, &e.message())),
        }
    }
}

fn import_parameter(p: &Node<'_>, map: &mut EsmtpMap) {
    let w = words(p.text);
    // `action` is the firewall's filler word; smtpgate's parameters take the actions.
    let actions_after = |from: usize| -> String {
        w[from..]
            .iter()
            .filter(|x| !x.eq_ignore_ascii_case("action"))
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    };
    match w[0].to_ascii_lowercase().as_str() {
        "mask-banner" => map.mask_banner = true,
        "allow-tls" => map.allow_tls = true,
        "mail-relay" if w.len() >= 2 => {
            let actions = actions_after(2);
            map.mail_relay = Some(if actions.is_empty() {
                w[1].to_string()
            } else {
                format!("{} {actions}", w[1])
            });
        }
        "special-character" => {
            let actions = actions_after(1);
            map.special_character = Some(if actions.is_empty() {
                "drop-connection log".to_string()
            } else {
                actions
            });
        }
        _ => map.notes.push(note(p.line_no, p.text, "unknown parameter")),
    }
}

fn write_map(out: &mut String, map: &EsmtpMap, used_maps: &[String]) {
    let name = &map.policy_name;
    let _ = write!(
        out,
        "\n# From `policy-map type inspect esmtp {}` (line {}){}.\n\
         # asa-compat's command and EHLO handling, then only this map's rules, as on the\n\
         # firewall, where a policy map replaces the default one.\n",
        map.asa_name,
        map.line_no,
        if used_maps.contains(&map.asa_name) {
            ""
        } else {
            "; no class applies it"
        }
    );
    let _ = writeln!(out, "[policy.{name}]");
    out.push_str("extends = \"asa-compat\"\ninherit_rules = false\n");
    let _ = writeln!(out, "mask_banner = {}", map.mask_banner);
    let _ = writeln!(out, "allow_tls = {}", map.allow_tls);
    if let Some(relay) = &map.mail_relay {
        let _ = writeln!(out, "mail_relay = {}", toml_str(relay));
    }
    if let Some(actions) = &map.special_character {
        let _ = writeln!(out, "special_character = {}", toml_str(actions));
    }
    out.push_str(
        "# The firewall has no SMTP-smuggling defence; smtpgate keeps its own on\n\
         # (inherited from asa-compat). To reproduce the firewall exactly:\n\
         # bare_newline = false\n",
    );
    for note in &map.notes {
        let _ = writeln!(out, "{note}");
    }
    let masks_others = map.rules.iter().any(|r| {
        parse_rule(r).is_ok_and(|rule| {
            rule.actions.mask
                && !rule.negate
                && matches!(rule.criterion, crate::rules::Criterion::EhloReplyParameter(set)
                    if set & crate::verb::EhloKeyword::Others.bit() != 0)
        })
    });
    out.push_str("rules = [\n");
    for rule in &map.rules {
        let _ = writeln!(out, "  {},", toml_str(rule));
    }
    if !map.allow_tls && !masks_others {
        out.push_str("  # The firewall masks STARTTLS unless `allow-tls`:\n");
        let _ = writeln!(
            out,
            "  {},",
            toml_str("match ehlo-reply-parameter starttls mask")
        );
    }
    out.push_str("]\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::rules::{Cmp, Criterion};
    use crate::verb::Verb;
    use std::time::Duration;

    /// A firewall edge as deployed: regexes, a regex class, a custom esmtp map with
    /// parameters, and the class that applies it with connection limits.
    const EDGE: &str = r#": Saved
ASA Version 9.8(4)
!
hostname edge-fw1
interface GigabitEthernet0/0
 nameif outside
 security-level 0
 ip address 203.0.113.2 255.255.255.0
!
regex spam_sender "@spam\.example$"
regex bulk_sender "@bulk[0-9]+\.example\.net$"
regex exe_type "^application/x-msdownload"
!
class-map type regex match-any bad_senders
 match regex spam_sender
 match regex bulk_sender
class-map inspection_default
 match default-inspection-traffic
class-map smtp-in
 match port tcp eq smtp
!
policy-map type inspect esmtp edge_esmtp
 description inbound mail edge
 parameters
  mask-banner
  mail-relay example.com action drop-connection log
  special-character action drop-connection log
 match cmd line length gt 512
  drop-connection log
 match cmd RCPT count gt 100
  drop-connection log
 match body line length gt 998
  log
 match header line length gt 998
  drop-connection log
 match sender-address length gt 320
  drop-connection log
 match MIME filename length gt 255
  drop-connection log
 match ehlo-reply-parameter others
  mask
 match sender-address regex class bad_senders
  drop-connection log
 match MIME filetype regex exe_type
  drop-connection log
 match cmd verb VRFY EXPN
  mask log
 match invalid-recipients count gt 5
  reset log
 match header to-fields count gt 50
  log
 match sender-address regex undefined_re
  drop-connection log
 match body length gt 10000000
!
policy-map global_policy
 class inspection_default
  inspect dns preset_dns_map
  inspect ftp
 class smtp-in
  inspect esmtp edge_esmtp
  set connection conn-max 5000 embryonic-conn-max 500 per-client-max 50 per-client-embryonic-max 10
  set connection timeout embryonic 0:00:30 idle 1:00:00 half-closed 0:10:00
  set connection random-sequence-number disable
!
service-policy global_policy global
"#;

    fn with_listener(toml: &str, policy: &str) -> String {
        format!(
            "{toml}\n[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2526\"\npolicy = \"{policy}\"\n"
        )
    }

    #[test]
    fn deployed_edge_round_trips_into_a_valid_config() {
        let toml = import_asa(EDGE).unwrap();
        let config = Config::from_toml_str(&with_listener(&toml, "edge_esmtp"))
            .unwrap_or_else(|e| panic!("{e}\n---\n{toml}"));
        assert_eq!(config.limits.max_connections, 5000);
        assert_eq!(config.limits.max_embryonic, 500);
        assert_eq!(config.limits.per_client_max, 50);
        assert_eq!(config.limits.per_client_embryonic_max, 10);
        assert_eq!(config.timeouts.embryonic, Duration::from_secs(30));
        assert_eq!(config.timeouts.idle, Duration::from_secs(3600));

        let p = &config.listeners[0].policy;
        assert_eq!(p.name, "edge_esmtp");
        // asa-compat protocol handling.
        assert!(!p.ehlo_allowed(b"STARTTLS"));
        assert!(!p.ehlo_allowed(b"PIPELINING"));
        assert!(!p.allowed_commands.contains(Verb::Bdat, b"BDAT"));
        assert!(p.banner_rule.is_some());
        assert!(p.special_character_rule.is_some());
        assert_eq!(p.mail_relay.as_deref(), Some("example.com"));
        // Smuggling defence stays on (asa-compat's), unlike the firewall.
        assert!(p.bare_newline_rule.is_some());
        // Exactly the map's 12 importable rules, none inherited twice.
        let rules: Vec<&str> = p
            .rules
            .iter()
            .map(|r| r.text.as_str())
            .filter(|t| t.starts_with("match"))
            .collect();
        assert_eq!(rules.len(), 12, "{rules:#?}");
        assert_eq!(rules[0], "match cmd line length gt 512 drop-connection log");
        assert_eq!(rules[10], "match invalid-recipients count gt 5 reset log");
        // The regex class became one alternation that matches both senders.
        let class_rule = p
            .rules
            .iter()
            .find(|r| r.text.contains("(?:@spam"))
            .expect("class rule");
        let Criterion::SenderAddressRegex(re) = &class_rule.criterion else {
            panic!("{class_rule:?}")
        };
        assert!(re.is_match(b"a@spam.example"));
        assert!(re.is_match(b"a@bulk42.example.net"));
        assert!(!re.is_match(b"a@example.net"));
        assert!(p
            .rules
            .iter()
            .any(|r| matches!(r.criterion, Criterion::HeaderToFieldsCount(Cmp::Gt(50)))));
    }

    #[test]
    fn what_cannot_be_imported_is_said_not_dropped() {
        let toml = import_asa(EDGE).unwrap();
        for expected in [
            "# not imported (line 52): `match sender-address regex undefined_re / drop-connection log`: regex `undefined_re` is not defined in the input",
            "# not imported (line 54): `match body length gt 10000000`: no action line under it",
            "# not imported (line 63): `timeout half-closed 0:10:00`: no smtpgate equivalent",
            "# not imported (line 64): `random-sequence-number disable`: no smtpgate equivalent",
            "# not imported: other firewall configuration, unrelated to SMTP inspection: asa (1), class-map (4), hostname (1), inspect (2), interface (4), service-policy (1)",
            "# policy = \"edge_esmtp\"",
        ] {
            assert!(toml.contains(expected), "missing {expected:?} in:\n{toml}");
        }
    }

    #[test]
    fn tls_and_starttls_masking() {
        let base = "policy-map type inspect esmtp tls\n parameters\n  allow-tls action log\n match cmd line length gt 512\n  drop-connection log\n";
        let toml = import_asa(base).unwrap();
        let c = Config::from_toml_str(&with_listener(&toml, "tls"))
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let p = &c.listeners[0].policy;
        assert!(p.ehlo_allowed(b"STARTTLS"));
        assert!(p.tls_started_rule.is_some());
        assert!(p.banner_rule.is_none(), "no mask-banner in the map");
        assert_eq!(
            p.rules
                .iter()
                .filter(|r| r.text.starts_with("match"))
                .count(),
            1
        );

        // Without allow-tls and without `others mask`, STARTTLS is still masked.
        let toml = import_asa(&base.replace("  allow-tls action log\n", "")).unwrap();
        let c = Config::from_toml_str(&with_listener(&toml, "tls")).unwrap();
        let p = &c.listeners[0].policy;
        let masks = p
            .rules
            .iter()
            .find(|r| r.text == "match ehlo-reply-parameter starttls mask")
            .expect("starttls rule");
        let Criterion::EhloReplyParameter(set) = masks.criterion else {
            panic!()
        };
        assert!(p.ehlo_matches(set, b"STARTTLS"));
        assert!(!p.ehlo_matches(set, b"SIZE"));
    }

    #[test]
    fn default_map_and_limits_only() {
        let text = "policy-map global_policy\n class smtp\n  inspect esmtp\n  set connection conn-max 100\n";
        let toml = import_asa(text).unwrap();
        assert!(toml.contains("policy \"asa-compat\""), "{toml}");
        let c = Config::from_toml_str(&with_listener(&toml, "asa-compat"))
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        // Unset firewall limits are unlimited there, so unlimited here too.
        assert_eq!(c.limits.max_connections, 100);
        assert_eq!(c.limits.max_embryonic, 0);
    }

    #[test]
    fn names_and_errors() {
        assert_eq!(
            import_asa("hostname fw\ninterface x\n"),
            Err(AsaImportError::NothingToImport)
        );
        assert_eq!(policy_name("my.map"), "my-map");
        assert_eq!(policy_name("default"), "default-asa");
        assert_eq!(asa_duration("0:05:00"), Some(300));
        assert_eq!(asa_duration("1:00:00"), Some(3600));
        assert_eq!(asa_duration("x"), None);
        assert_eq!(duration_text(90), "90s");
        assert_eq!(duration_text(300), "5m");
    }

    proptest::proptest! {
        /// Any mix of firewall lines, indented anyhow, imports without panicking, and
        /// whatever it imports is a config smtpgate accepts.
        #[test]
        fn any_firewall_text_imports_into_a_valid_config(
            lines in proptest::collection::vec(
                (0usize..3, proptest::sample::select(&[
                    "policy-map type inspect esmtp m", "parameters", "mask-banner",
                    "allow-tls action log", "mail-relay example.com action log",
                    "mail-relay", "special-character action drop-connection",
                    "match cmd line length gt 512", "match sender-address regex r",
                    "match sender-address regex class c", "match ehlo-reply-parameter others",
                    "match MIME encoding base64", "match body length gt x",
                    "drop-connection log", "mask", "log", "reset", "rate-limit 5",
                    "regex r \"@x$\"", "regex bad \"(\"", "class-map type regex match-any c",
                    "match regex r", "match regex bad", "policy-map global_policy", "class smtp",
                    "inspect esmtp m", "inspect esmtp", "set connection conn-max 10",
                    "set connection embryonic-conn-max 5 per-client-max", "set connection timeout idle 0:00:00",
                    "set connection timeout embryonic 0:01:00 half-closed", "!", "interface x",
                ][..])),
                0..30,
            )
        ) {
            let text: String = lines
                .iter()
                .map(|(indent, line)| format!("{}{line}\n", " ".repeat(*indent)))
                .collect();
            if let Ok(toml) = import_asa(&text) {
                let policy = if toml.contains("[policy.m]") { "m" } else { "asa-compat" };
                let config = with_listener(&toml, policy);
                if let Err(e) = Config::from_toml_str(&config) {
                    // Limits the firewall itself would take but smtpgate rejects
                    // (embryonic above total) are the only acceptable failure.
                    proptest::prop_assert!(
                        e.0.iter().all(|e| e.path.starts_with("limits.")),
                        "{e}\n---\n{config}"
                    );
                }
            }
        }
    }

    #[test]
    fn match_all_classes_and_bad_regexes_are_noted() {
        let text = r#"regex a "x"
regex bad "(unclosed"
class-map type regex match-all both
 match regex a
policy-map type inspect esmtp m
 match sender-address regex class both
  drop-connection log
 match sender-address regex bad
  log
 match sender-address regex a
  log
"#;
        let toml = import_asa(text).unwrap();
        assert!(
            toml.contains("is match-all, which one regex cannot express"),
            "{toml}"
        );
        assert!(toml.contains("invalid regex at column 28"), "{toml}");
        let c = Config::from_toml_str(&with_listener(&toml, "m"))
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let p = &c.listeners[0].policy;
        assert!(p
            .rules
            .iter()
            .any(|r| r.text == "match sender-address regex \"x\" log"));
    }
}
