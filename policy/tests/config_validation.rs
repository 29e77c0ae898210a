//! `Config::from_toml_str`: the product's sample config, the embedded default, defaults, and
//! one test per kind of error (each with its line and column).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use smtpgate_policy::config::{Config, ConfigErrors, Limits, EMBEDDED_DEFAULT_TOML};
use smtpgate_policy::rules::Criterion;
use smtpgate_policy::verb::Verb;

/// The product's documented sample config (every section and key), verbatim.
const SAMPLE_CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:9725"      # GET /metrics (Prometheus), GET /status (JSON)

[limits]                       # 0 = unlimited
max_connections = 100000       # conn-max, all cores together
max_embryonic = 10000          # embryonic-conn-max
per_client_max = 0             # per client IP
per_client_embryonic_max = 0

[timeouts]
embryonic = "30s"              # no HELO/EHLO accepted yet
idle = "5m"
upstream_connect = "10s"
shutdown_drain = "30s"

[[listener]]
listen = "0.0.0.0:25"
upstream = "10.0.0.5:25"
policy = "default"             # a built-in or [policy.NAME]; "none" = exempt all
exempt = ["192.0.2.10/32"]     # client CIDRs relayed verbatim, never inspected
proxy_protocol = false         # send a PROXY v2 header to the upstream

[policy.strict]
extends = "default"
mask_banner = true
allow_tls = true
rules = [
  "match cmd line length gt 512 drop-connection log",
  "match cmd RCPT count gt 100 reject",
  "match cmd verb VRFY EXPN mask log",
  "match sender-address regex \"@spam\\.example$\" drop-connection log",
]
"#;

fn errors(text: &str) -> Vec<String> {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(ConfigErrors(list)) => list.iter().map(|e| e.to_string()).collect(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const LISTENER: &str = "[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2526\"\n";

#[test]
fn spec_sample_parses_fully() {
    let c = Config::from_toml_str(SAMPLE_CONFIG).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.listen, Some(addr("127.0.0.1:9725")));
    assert_eq!(
        c.limits,
        Limits {
            max_connections: 100_000,
            max_embryonic: 10_000,
            per_client_max: 0,
            per_client_embryonic_max: 0,
            per_client_rate: 0,
            buffer_budget: 512 << 20,
            listen_backlog: 4096,
        }
    );
    assert_eq!(c.timeouts.embryonic, Duration::from_secs(30));
    assert_eq!(c.timeouts.idle, Duration::from_secs(300));
    assert_eq!(c.timeouts.upstream_connect, Duration::from_secs(10));
    assert_eq!(c.timeouts.shutdown_drain, Duration::from_secs(30));
    assert_eq!(c.listeners.len(), 1);
    let l = &c.listeners[0];
    assert_eq!(l.listen, addr("0.0.0.0:25"));
    assert_eq!(l.upstream, addr("10.0.0.5:25"));
    assert_eq!(l.policy.name, "default");
    assert!(!l.proxy_protocol);
    assert!(l.is_exempt("192.0.2.10".parse().unwrap()));
    assert!(!l.is_exempt("192.0.2.11".parse().unwrap()));
}

#[test]
fn user_policy_compiles_and_listeners_share_it() {
    let text = format!(
        "{}{LISTENER}policy = \"strict\"\n[[listener]]\nlisten = \"127.0.0.1:2527\"\nupstream = \"127.0.0.1:2526\"\npolicy = \"strict\"\n",
        SAMPLE_CONFIG
    );
    let c = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners.len(), 3);
    let strict = &c.listeners[1].policy;
    assert_eq!(strict.name, "strict");
    assert!(std::sync::Arc::ptr_eq(strict, &c.listeners[2].policy));
    // default's 8 match rules (the firewall's 7 and `MIME parse-limit`) + the 2 of the
    // 4 written here that default lacks (the other two are default's own, written
    // again: kept once, so they log once).
    let match_rules = strict
        .rules
        .iter()
        .filter(|r| r.text.starts_with("match"))
        .count();
    assert_eq!(match_rules, 10);
    let rcpt_rules = strict
        .rules
        .iter()
        .filter(|r| r.text.contains("RCPT count gt 100"))
        .count();
    assert_eq!(rcpt_rules, 1);
    let regex_rule = strict.rules.last().unwrap();
    let Criterion::SenderAddressRegex(re) = &regex_rule.criterion else {
        panic!("{regex_rule:?}")
    };
    assert!(re.is_match(b"eve@spam.example"));
    assert!(!re.is_match(b"eve@spam.example.org"));
}

#[test]
fn listeners_naming_the_same_builtin_share_it() {
    let text = format!(
        "{LISTENER}[[listener]]\nlisten = \"127.0.0.1:2527\"\nupstream = \"127.0.0.1:2526\"\n"
    );
    let c = Config::from_toml_str(&text).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &c.listeners[0].policy,
        &c.listeners[1].policy
    ));
}

#[test]
fn embedded_default_is_specs() {
    let c = Config::embedded_default();
    assert_eq!(c.admin.listen, Some(addr("127.0.0.1:9725")));
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].listen, addr("127.0.0.1:2525"));
    assert_eq!(c.listeners[0].upstream, addr("127.0.0.1:2526"));
    assert_eq!(c.listeners[0].policy.name, "default");
    assert_eq!(c.limits, Limits::DEFAULT);
    assert!(EMBEDDED_DEFAULT_TOML.contains("127.0.0.1:2525"));
}

#[test]
fn omitted_sections_and_keys_take_defaults() {
    let c = Config::from_toml_str(&format!("[limits]\nper_client_max = 20\n{LISTENER}")).unwrap();
    assert_eq!(c.admin.listen, Some(addr("127.0.0.1:9725")));
    assert_eq!(c.limits.max_connections, 100_000);
    assert_eq!(c.limits.max_embryonic, 10_000);
    assert_eq!(c.limits.per_client_max, 20);
    assert_eq!(c.timeouts.idle, Duration::from_secs(300));
    assert_eq!(c.listeners[0].policy.name, "default");
    assert!(c.listeners[0].exempt.is_empty());
}

#[test]
fn admin_can_be_switched_off_and_durations_take_units() {
    let text = format!(
        "[admin]\nlisten = \"\"\n[timeouts]\nembryonic = \"250ms\"\nidle = \"1h\"\nupstream_connect = \"2s\"\nshutdown_drain = \"0s\"\n{LISTENER}"
    );
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(c.admin.listen, None);
    assert_eq!(c.timeouts.embryonic, Duration::from_millis(250));
    assert_eq!(c.timeouts.idle, Duration::from_secs(3600));
    assert_eq!(c.timeouts.upstream_connect, Duration::from_secs(2));
    assert_eq!(c.timeouts.shutdown_drain, Duration::ZERO);
}

#[test]
fn exempt_takes_bare_addresses_and_v6() {
    let text = format!(
        "{LISTENER}exempt = [\"192.0.2.10\", \"2001:db8::/32\", \"::1\"]\npolicy = \"none\"\n"
    );
    let c = Config::from_toml_str(&text).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.exempt.len(), 3);
    assert_eq!(l.exempt[0].prefix_len(), 32);
    assert_eq!(l.exempt[2].prefix_len(), 128);
    assert!(l.exempt[1].contains(&"2001:db8::5".parse::<IpAddr>().unwrap()));
    // policy none: everything exempt.
    assert!(!l.policy.inspect);
    assert!(l.is_exempt("203.0.113.1".parse().unwrap()));
}

#[test]
fn every_error_is_reported_with_its_location() {
    let text = r#"[limits]
max_connection = 5

[timeouts]
idle = "5 minuts"

[[listener]]
listen = "0.0.0.0:25"
upstream = "10.0.0.5:25"
policy = "strct"
exempt = ["192.0.2.10/32", "10.0.0.0/33"]

[[listener]]
listen = "0.0.0.0:25"
upstream = "nohost:25"

[policy.strict]
extends = "default"
rules = [
  "match cmd line length gt 512 drop-connection log",
  "match cmd line length gt abc log",
]
"#;
    assert_eq!(
        errors(text),
        [
            "line 2, column 1: limits: unknown field `max_connection`, expected one of `max_connections`, `max_embryonic`, `per_client_max`, `per_client_embryonic_max`, `per_client_rate`, `buffer_budget`, `listen_backlog`",
            "line 5, column 8: timeouts.idle: expected a duration like \"250ms\", \"90s\", \"5min\" or \"1h30m\", found `5 minuts`",
            "line 10, column 10: listener[0].policy: unknown policy `strct` (known: default, asa-compat, mailguard, none, strict)",
            "line 11, column 28: listener[0].exempt[1]: expected a network like 192.0.2.0/24 or an address, found `10.0.0.0/33`",
            "line 14, column 10: listener[1].listen: 0.0.0.0:25 is already the address of listener[0]",
            "line 15, column 12: listener[1].upstream: `nohost` is a host name; only the dataplane resolves names, this parser takes addresses",
            "line 21, column 3: policy.strict.rules[1]: expected a number at column 26, found `abc`",
        ]
    );
}

#[test]
fn syntax_error_is_located() {
    assert_eq!(
        errors("[listener\n"),
        ["line 1, column 10: invalid table header; expected `.`, `]`"]
    );
}

#[test]
fn unknown_keys_anywhere_are_errors() {
    let text =
        format!("bogus = 1\n[admin]\nport = 1\n{LISTENER}proxy = true\n[policy.p]\nrulez = []\n");
    let e = errors(&text);
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].starts_with("line 1, column 1: unknown field `bogus`"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("line 3, column 1: admin: unknown field `port`"),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("line 7, column 1: listener[0]: unknown field `proxy`"),
        "{}",
        e[2]
    );
    assert!(
        e[3].starts_with("line 9, column 1: policy.p: unknown field `rulez`"),
        "{}",
        e[3]
    );
}

#[test]
fn wrong_types_are_errors() {
    let e = errors(
        "[[listener]]\nlisten = 25\nupstream = \"127.0.0.1:1\"\n[limits]\nmax_embryonic = -1\n",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with(
            "line 2, column 10: listener[0].listen: invalid type: integer `25`, expected a string"
        ),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("line 5, column 17: limits.max_embryonic: invalid value: integer `-1`"),
        "{}",
        e[1]
    );
    let e = errors(&format!("{LISTENER}[policy.p]\nbare_newline = 3\n"));
    assert!(e[0].contains("expected true, false or actions"), "{e:#?}");
}

#[test]
fn a_listener_is_required() {
    assert_eq!(
        errors("[admin]\nlisten = \"127.0.0.1:9725\"\n"),
        ["listener: at least one [[listener]] is required (listen, upstream, policy)"]
    );
    assert_eq!(
        errors("listener = []\n"),
        ["listener: at least one [[listener]] is required (listen, upstream, policy)"]
    );
    let e = errors("[[listener]]\nupstream = \"127.0.0.1:1\"\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains("missing field `listen`"), "{}", e[0]);
}

#[test]
fn addresses_must_differ() {
    let e = errors("[admin]\nlisten = \"127.0.0.1:2525\"\n[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2525\"\n");
    assert_eq!(
        e,
        [
            "line 4, column 10: listener[0].listen: 127.0.0.1:2525 is also the admin endpoint's address",
            "line 5, column 12: listener[0].upstream: 127.0.0.1:2525 is the listener's own address: it would relay to itself",
        ]
    );
}

#[test]
fn port_zero_may_repeat_because_each_socket_gets_its_own_port() {
    let text = "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:25\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:25\"\n";
    let config = Config::from_toml_str(text).unwrap_or_else(|e| panic!("{:#?}", e.0));
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(config.admin.listen, Some(addr("127.0.0.1:0")));
}

#[test]
fn limits_must_be_consistent() {
    let e = errors(&format!(
        "[limits]\nmax_connections = 100\nmax_embryonic = 200\nper_client_max = 10\nper_client_embryonic_max = 20\n{LISTENER}"
    ));
    assert_eq!(
        e,
        [
            "line 3, column 17: limits.max_embryonic: max_embryonic = 200 is more than max_connections = 100",
            "line 5, column 28: limits.per_client_embryonic_max: per_client_embryonic_max = 20 is more than per_client_max = 10",
        ]
    );
    // 0 = unlimited is never "less than".
    Config::from_toml_str(&format!(
        "[limits]\nmax_connections = 0\nmax_embryonic = 200\n{LISTENER}"
    ))
    .unwrap();
}

#[test]
fn timeouts_must_be_positive() {
    let e = errors(&format!(
        "[timeouts]\nidle = \"0s\"\nembryonic = \"30\"\n{LISTENER}"
    ));
    assert_eq!(
        e,
        [
            "line 2, column 8: timeouts.idle: must be more than zero",
            "line 3, column 13: timeouts.embryonic: expected a duration like \"250ms\", \"90s\", \"5min\" or \"1h30m\", found `30`",
        ]
    );
}

#[test]
fn policy_errors() {
    let text = format!(
        r#"{LISTENER}policy = "loop-a"
[policy.default]
mask_banner = false
[policy.loop-a]
extends = "loop-b"
[policy.loop-b]
extends = "loop-a"
[policy.typo]
extends = "defualt"
[policy.params]
bare_newline = "mask"
mail_relay = "exa mple.com"
allow_verbs = ["X LINK"]
special_character = "drop-connection reset"
"#
    );
    assert_eq!(
        errors(&text),
        [
            "line 5, column 1: policy.default: `default` is a built-in policy; give yours another name and `extends = \"default\"`",
            "line 8, column 11: policy.loop-a.extends: `extends` goes round in a circle: loop-a, loop-b",
            "line 10, column 11: policy.loop-b.extends: `extends` goes round in a circle: loop-a, loop-b",
            "line 12, column 11: policy.typo.extends: unknown policy `defualt` (known: default, asa-compat, mailguard, none, loop-a, loop-b, params)",
            "line 14, column 16: policy.params.bare_newline: action `mask` at column 1 is not valid for bare_newline",
            "line 15, column 14: policy.params.mail_relay: expected one of drop-connection, reset, log at column 5, found `mple.com`",
            "line 16, column 16: policy.params.allow_verbs[0]: `X LINK` is not a verb or EHLO keyword (letters, digits and `-` only)",
            "line 17, column 21: policy.params.special_character: `drop-connection` and `reset` at column 17 cannot be combined: choose one",
        ]
    );
}

#[test]
fn rule_errors_in_a_child_of_a_broken_parent_are_still_reported() {
    let text = format!(
        "{LISTENER}[policy.parent]\nrules = [\"match body length gt x log\"]\n[policy.child]\nextends = \"parent\"\nrules = [\"match nothing\"]\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("line 5, column 10: policy.parent.rules[0]: expected a number"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("line 8, column 10: policy.child.rules[0]: expected one of cmd"),
        "{}",
        e[1]
    );
}

#[test]
fn allow_verbs_pass_exchange_verbs() {
    let text = format!("{LISTENER}policy = \"exchange\"\n[policy.exchange]\nextends = \"default\"\nallow_verbs = [\"X-LINK2STATE\", \"XEXCH50\"]\n");
    let c = Config::from_toml_str(&text).unwrap();
    let p = &c.listeners[0].policy;
    assert!(p.allowed_commands.contains(Verb::Other, b"X-LINK2STATE"));
    assert!(p.ehlo_allowed(b"XEXCH50"));
}

#[test]
fn deploy_examples_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("deploy/examples exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = Config::from_toml_str(&text) {
                panic!("{}:\n{e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn hardening_keys_parse_with_their_units() {
    let text = format!(
        "[limits]\nper_client_rate = 60\nbuffer_budget = \"64MiB\"\nlisten_backlog = 1024\n\
         [timeouts]\ndata = \"2m\"\nmin_data_rate = 0\ndata_termination = \"5m\"\n\
         {LISTENER}accept_proxy = [\"10.1.0.0/16\", \"::ffff:192.0.2.0/120\"]\n"
    );
    let c = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.limits.per_client_rate, 60);
    assert_eq!(c.limits.buffer_budget, 64 << 20);
    assert_eq!(c.limits.listen_backlog, 1024);
    assert_eq!(c.timeouts.data, Duration::from_secs(120));
    assert_eq!(c.timeouts.min_data_rate, 0);
    assert_eq!(c.timeouts.data_termination, Duration::from_secs(300));
    let l = &c.listeners[0];
    assert!(l.expects_proxy_header("10.1.2.3".parse().unwrap()));
    assert!(
        l.expects_proxy_header("192.0.2.9".parse().unwrap()),
        "an IPv4-mapped network matches IPv4 sources"
    );
    assert!(l.expects_proxy_header("::ffff:10.1.0.1".parse().unwrap()));
    assert!(!l.expects_proxy_header("10.2.0.1".parse().unwrap()));
}

#[test]
fn an_ipv4_client_seen_as_ipv6_mapped_matches_an_ipv4_exemption() {
    let text = format!("{LISTENER}exempt = [\"127.0.0.2/32\"]\n");
    let c = Config::from_toml_str(&text).unwrap();
    assert!(c.listeners[0].is_exempt("::ffff:127.0.0.2".parse().unwrap()));
    assert!(!c.listeners[0].is_exempt("::ffff:127.0.0.3".parse().unwrap()));
}

#[test]
fn durations_counts_and_sizes_out_of_bounds_are_errors_not_panics_later() {
    let text = format!(
        "[limits]\nlisten_backlog = 0\nbuffer_budget = \"12 parsecs\"\nmax_connections = 1000000000000\n\
         [timeouts]\nidle = \"10000000000000000000s\"\ndata = \"8h\"\ndata_termination = \"0s\"\n\
         {LISTENER}accept_proxy = [\"not-a-net\"]\n"
    );
    let all = errors(&text).join("\n");
    for key in [
        "limits.listen_backlog",
        "limits.buffer_budget",
        "limits.max_connections",
        "timeouts.idle",
        "timeouts.data_termination",
        "listener[0].accept_proxy[0]",
    ] {
        assert!(all.contains(key), "no error for {key} in:\n{all}");
    }
    assert!(
        !all.contains("timeouts.data:"),
        "8h is within bounds:\n{all}"
    );
}

#[test]
fn an_exempt_range_covering_accept_proxy_sources_is_warned_about() {
    let text = format!("{LISTENER}exempt = [\"10.0.0.0/8\"]\naccept_proxy = [\"10.1.0.0/16\"]\n");
    let c = Config::from_toml_str(&text).unwrap();
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("10.0.0.0/8") && warnings[0].contains("10.1.0.0/16"));
    let text = format!("{LISTENER}exempt = [\"10.0.0.0/8\"]\naccept_proxy = [\"192.0.2.0/24\"]\n");
    assert!(Config::from_toml_str(&text).unwrap().warnings().is_empty());
}

#[test]
fn max_connections_alone_caps_the_embryonic_default() {
    let c = Config::from_toml_str(&format!("[limits]\nmax_connections = 1000\n{LISTENER}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.limits.max_embryonic, 1000);
    let c = Config::from_toml_str(&format!("[limits]\nmax_connections = 0\n{LISTENER}")).unwrap();
    assert_eq!(c.limits.max_embryonic, 10_000);
}

#[test]
fn durations_use_the_systemd_style_grammar() {
    use smtpgate_policy::config::parse_duration;
    use std::time::Duration;
    assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("5min"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("0"), Some(Duration::ZERO));
    assert_eq!(parse_duration("30"), None);
    assert_eq!(parse_duration("5x"), None);
    let c = Config::from_toml_str(&format!("[timeouts]\nidle = \"1h30m\"\n{LISTENER}")).unwrap();
    assert_eq!(c.timeouts.idle, Duration::from_secs(5400));
}

#[test]
fn an_upstream_host_name_goes_to_the_resolver_and_its_error_is_located() {
    let text = "[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"mx.example:2526\"\n";
    let resolved = Config::from_toml_str_resolving(text, &|host, port| {
        assert_eq!((host, port), ("mx.example", 2526));
        Ok("192.0.2.7:2526".parse().unwrap())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        resolved.listeners[0].upstream,
        "192.0.2.7:2526".parse().unwrap()
    );
    let failed = Config::from_toml_str_resolving(text, &|_, _| Err("no such host".into()))
        .unwrap_err()
        .to_string();
    assert_eq!(
        failed.trim(),
        "line 3, column 12: listener[0].upstream: no such host"
    );
}
