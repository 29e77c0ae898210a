//! Property tests for the rule parser and the config reader: no input panics them,
//! errors always point inside the text, and generated well-formed rules parse to what
//! they say.

use proptest::prelude::*;
use smtpgate_policy::config::Config;
use smtpgate_policy::rules::{parse_rule, Cmp};

/// Words the rule language uses, plus near misses, so random rules get deep.
const WORDS: &[&str] = &[
    "match",
    "not",
    "cmd",
    "line",
    "length",
    "RCPT",
    "count",
    "verb",
    "VRFY",
    "X-LINK2STATE",
    "ehlo-reply-parameter",
    "others",
    "pipelining",
    "header",
    "to-fields",
    "body",
    "sender-address",
    "regex",
    "\"@x\\.example$\"",
    "\"(\"",
    "\"",
    "MIME",
    "filename",
    "filetype",
    "encoding",
    "base64",
    "invalid-recipients",
    "gt",
    "lt",
    "eq",
    "0",
    "512",
    "99999999999999999999999",
    "drop-connection",
    "reset",
    "log",
    "mask",
    "rate-limit",
    "é",
    "dropp",
    "",
];

fn rule_like() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(WORDS), 0..10).prop_map(|w| w.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_rule_text_parses_or_errors_inside_the_text(text in prop_oneof![rule_like(), ".{0,80}"]) {
        match parse_rule(&text) {
            Ok(rule) => {
                prop_assert_eq!(rule.text.as_str(), text.trim());
                prop_assert!(!rule.actions.mask || rule.criterion.allows_mask());
            }
            Err(e) => {
                let trimmed = text.trim();
                prop_assert!(e.column >= 1 && e.column <= trimmed.len() + 1, "{e:?}");
                prop_assert!(!e.message().contains('\n'));
            }
        }
    }

    #[test]
    fn generated_length_rules_parse_to_their_threshold(
        criterion in prop::sample::select(&[
            "cmd line length", "cmd RCPT count", "header line length", "header length",
            "header to-fields count", "body line length", "body length",
            "sender-address length", "MIME filename length", "invalid-recipients count",
        ][..]),
        cmp in 0usize..3,
        n in any::<u64>(),
        actions in prop::sample::select(&["log", "drop-connection", "drop-connection log", "reset log", "log rate-limit 5"][..]),
        negate in any::<bool>(),
    ) {
        let cmp_word = ["gt", "lt", "eq"][cmp];
        let not = if negate { "not " } else { "" };
        let text = format!("match {not}{criterion} {cmp_word} {n} {actions}");
        let rule = parse_rule(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(rule.negate, negate);
        prop_assert_eq!(rule.criterion.threshold(), Some([Cmp::Gt(n), Cmp::Lt(n), Cmp::Eq(n)][cmp]));
        prop_assert_eq!(rule.actions.to_string().split(' ').count(), actions.split(' ').count());
    }

    #[test]
    fn any_config_text_is_read_without_panicking(
        text in prop::collection::vec(prop::sample::select(&[
            "[admin]\n", "[limits]\n", "[timeouts]\n", "[[listener]]\n", "[policy.p]\n",
            "listen = \"127.0.0.1:25\"\n", "upstream = \"127.0.0.1:26\"\n", "policy = \"p\"\n",
            "extends = \"p\"\n", "extends = \"default\"\n", "rules = [\"match body length gt 1 log\"]\n",
            "rules = [\"match x\"]\n", "max_embryonic = 5\n", "idle = \"0s\"\n", "exempt = [\"::1\"]\n",
            "bogus = 1\n", "= \n", "[policy]\n", "listener = 3\n",
        ][..]), 0..12).prop_map(|parts| parts.concat())
    ) {
        if let Err(errors) = Config::from_toml_str(&text) {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                prop_assert!(!e.to_string().contains('\n'), "{e}");
                if let Some(line) = e.line {
                    prop_assert!(line <= text.lines().count() + 1);
                }
            }
        }
    }
}
