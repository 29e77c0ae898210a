//! `[tls]` and the listener TLS keys (`starttls`, `upstream_tls`, `upstream_ca`,
//! `implicit_tls`): defaults, the forced strip under `allow_tls = false`, and errors.

use std::path::PathBuf;

use smtpgate_policy::config::{Config, StartTls, TlsVersion, UpstreamTls};

const TLS: &str = r#"
[tls]
cert = "/etc/smtpgate/mx.pem"
key = "/etc/smtpgate/mx.key"

[[tls.sni]]
names = ["mx2.example.com"]
cert = "/etc/smtpgate/mx2.pem"
key = "/etc/smtpgate/mx2.key"
"#;

fn listener(keys: &str) -> String {
    format!("[[listener]]\nlisten = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:2526\"\n{keys}\n")
}

fn errors(text: &str) -> String {
    Config::from_toml_str(text)
        .expect_err("the config is refused")
        .to_string()
}

#[test]
fn starttls_defaults_to_inspect_with_a_certificate_and_passthrough_without() {
    let with = Config::from_toml_str(&format!("{TLS}{}", listener(""))).unwrap();
    assert_eq!(with.listeners[0].starttls, StartTls::Inspect);
    assert_eq!(with.listeners[0].upstream_tls, UpstreamTls::Opportunistic);
    assert!(!with.listeners[0].implicit_tls);
    let tls = with.tls.expect("[tls] is read");
    assert_eq!(tls.cert, PathBuf::from("/etc/smtpgate/mx.pem"));
    assert_eq!(tls.sni[0].names, ["mx2.example.com"]);
    assert_eq!(tls.sni[0].key, PathBuf::from("/etc/smtpgate/mx2.key"));
    assert_eq!(tls.protocols, [TlsVersion::Tls12, TlsVersion::Tls13]);

    let without = Config::from_toml_str(&listener("")).unwrap();
    assert_eq!(without.listeners[0].starttls, StartTls::Passthrough);
    assert!(without.tls.is_none());
}

#[test]
fn every_listener_tls_key_is_read() {
    let text = format!(
        "{TLS}{}",
        listener(
            "starttls = \"passthrough\"\nupstream_tls = \"verify\"\n\
             upstream_ca = \"/etc/ca.pem\"\nimplicit_tls = true"
        )
    );
    let config = Config::from_toml_str(&text).unwrap();
    let l = &config.listeners[0];
    assert_eq!(l.starttls, StartTls::Passthrough);
    assert_eq!(l.upstream_tls, UpstreamTls::Verify);
    assert_eq!(l.upstream_ca, Some(PathBuf::from("/etc/ca.pem")));
    assert!(l.implicit_tls);
    let off = Config::from_toml_str(&format!(
        "{TLS}{}",
        listener("starttls = \"strip\"\nupstream_tls = \"off\"")
    ))
    .unwrap();
    assert_eq!(off.listeners[0].starttls, StartTls::Strip);
    assert_eq!(off.listeners[0].upstream_tls, UpstreamTls::Off);
}

#[test]
fn a_policy_without_tls_strips_whatever_the_listener_says() {
    let text = format!(
        "{TLS}{}",
        listener("policy = \"asa-compat\"\nstarttls = \"inspect\"")
    );
    let config = Config::from_toml_str(&text).unwrap();
    assert_eq!(config.listeners[0].starttls, StartTls::Strip);
}

#[test]
fn inspect_and_implicit_tls_without_a_certificate_are_errors() {
    let e = errors(&listener("starttls = \"inspect\""));
    assert!(e.contains("line 4, column 12: listener[0].starttls"), "{e}");
    assert!(e.contains("[tls]"), "{e}");
    let e = errors(&listener("implicit_tls = true"));
    assert!(e.contains("listener[0].implicit_tls"), "{e}");
}

#[test]
fn unknown_values_name_the_allowed_ones() {
    let e = errors(&format!(
        "{TLS}{}",
        listener("starttls = \"yes\"\nupstream_tls = \"maybe\"")
    ));
    assert!(
        e.contains("expected inspect, passthrough or strip, found `yes`"),
        "{e}"
    );
    assert!(
        e.contains("expected opportunistic, verify or off, found `maybe`"),
        "{e}"
    );
}

#[test]
fn upstream_ca_without_verify_and_empty_paths_are_errors() {
    let e = errors(&format!(
        "{TLS}{}",
        listener("upstream_ca = \"/etc/ca.pem\"")
    ));
    assert!(e.contains("listener[0].upstream_ca: only used with"), "{e}");
    let e = errors(&format!(
        "[tls]\ncert = \"\"\nkey = \"k\"\n[[tls.sni]]\nnames = []\ncert = \"c\"\nkey = \"k\"\n{}",
        listener("")
    ));
    assert!(e.contains("tls.cert: a file path is required"), "{e}");
    assert!(e.contains("tls.sni[0].names"), "{e}");
    let e = errors(&format!("[tls]\ncert = \"c\"\n{}", listener("")));
    assert!(e.contains("key"), "{e}");
    let e = errors(&format!(
        "[tls]\ncert = \"c\"\nkey = \"k\"\nciphers = 1\n{}",
        listener("")
    ));
    assert!(e.contains("unknown field `ciphers`"), "{e}");
}

fn protocols(list: &str) -> Result<Vec<TlsVersion>, String> {
    let text = format!(
        "[tls]\ncert = \"c\"\nkey = \"k\"\nprotocols = {list}\n{}",
        listener("")
    );
    Config::from_toml_str(&text)
        .map(|config| config.tls.expect("[tls] is read").protocols)
        .map_err(|e| e.to_string())
}

#[test]
fn protocols_are_read_in_order_once_each_and_unknown_or_none_are_errors() {
    assert_eq!(protocols(r#"["TLSv1.3"]"#), Ok(vec![TlsVersion::Tls13]));
    assert_eq!(
        protocols(r#"["TLSv1.3", "TLSv1.2", "TLSv1.3"]"#),
        Ok(vec![TlsVersion::Tls12, TlsVersion::Tls13])
    );
    let e = protocols(r#"["TLSv1.2", "TLSv1.1"]"#).unwrap_err();
    assert!(
        e.contains(
            "line 4, column 13: tls.protocols: expected TLSv1.2 or TLSv1.3, found `TLSv1.1`"
        ),
        "{e}"
    );
    let e = protocols("[]").unwrap_err();
    assert!(e.contains("tls.protocols: enable at least one"), "{e}");
}

#[test]
fn strip_on_a_listener_masks_starttls_even_under_a_policy_that_allows_it() {
    use smtpgate_policy::verb::Verb;
    let config = Config::from_toml_str(&listener("starttls = \"strip\"")).unwrap();
    let policy = &config.listeners[0].policy;
    assert_eq!(policy.name, "default");
    assert!(!policy
        .allowed_commands
        .contains(Verb::Starttls, b"STARTTLS"));
    assert!(!policy.ehlo_allowed(b"STARTTLS"));
    let passthrough = Config::from_toml_str(&listener("")).unwrap();
    assert!(passthrough.listeners[0].policy.ehlo_allowed(b"STARTTLS"));
}
