//! The TOML config (serde, `deny_unknown_fields`) and its validation into one
//! immutable [`Config`] the dataplane shares across cores.
//!
//! The dataplane reads only the validated types; the raw serde types and the
//! parser/validator below them are private to this crate. A `[policy.NAME]` section
//! is read as a [`PolicySection`] (in `section.rs`, beside nothing but itself, so the
//! policy compiler and this module both use it without depending on each other's
//! internals).
//!
//! [`Config::from_toml_str`] reports every error it can find, not just the first, each
//! with `line L, column C` in the file and the key path. serde stops at the first
//! error of a value, so the file is read item by item (each `[[listener]]`, each
//! `[policy.NAME]`, each other section) and an error in one does not hide the others.
//! Within one item, the first type error is reported.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::policy::{resolution_order, Policy, BUILTIN_NAMES};
pub use crate::section::{ParamValue, PolicySection};

/// A validated config. Cheap to share: `Arc<Config>`; policies are `Arc<Policy>`.
#[derive(Clone, Debug)]
pub struct Config {
    pub admin: Admin,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub listeners: Vec<Listener>,
    /// The edge's own certificates (`[tls]`); `None` when the section is absent.
    pub tls: Option<Tls>,
}

#[derive(Clone, Debug)]
pub struct Admin {
    /// `None` when the admin endpoint is switched off (`listen = ""`).
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token `/status` and `/metrics` require; the probes
    /// (`/healthz`, `/readyz`) stay open. `None`: no token.
    pub token_file: Option<std::path::PathBuf>,
}

/// Connection limits; 0 = unlimited / off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u64,
    pub max_embryonic: u64,
    pub per_client_max: u64,
    pub per_client_embryonic_max: u64,
    /// New sessions per client (IPv4 address, IPv6 /64) per minute.
    pub per_client_rate: u64,
    /// Bytes held and queued by all sessions together; past it the largest holders
    /// are closed.
    pub buffer_budget: u64,
    /// The kernel's accept queue per listening socket (`listen(2)` backlog).
    pub listen_backlog: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// No HELO/EHLO accepted yet.
    pub embryonic: Duration,
    /// The wait for each complete command line, from the previous reply.
    pub idle: Duration,
    /// The content phase (DATA after its 354, a BDAT chunk), extended by the bytes
    /// received divided by `min_data_rate`.
    pub data: Duration,
    /// Bytes per second that extend `data`; 0 = no extension.
    pub min_data_rate: u64,
    /// The wait for the server's reply to an end of data (RFC 5321 4.5.3.2.6).
    pub data_termination: Duration,
    pub upstream_connect: Duration,
    pub shutdown_drain: Duration,
}

#[derive(Clone, Debug)]
pub struct Listener {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// The compiled policy; `policy.inspect == false` for `none` (exempt all).
    pub policy: Arc<Policy>,
    /// Client networks relayed verbatim, never inspected.
    pub exempt: Vec<IpNet>,
    /// Send a PROXY protocol v2 header to the upstream.
    pub proxy_protocol: bool,
    /// Sources (L4 balancers) whose connections start with a PROXY v1/v2 header
    /// naming the real client; a header from any other source is never trusted.
    pub accept_proxy: Vec<IpNet>,
    /// What happens to STARTTLS. Already [`StartTls::Strip`] when the policy does not
    /// allow TLS (`allow_tls = false`), whatever the file says.
    pub starttls: StartTls,
    pub upstream_tls: UpstreamTls,
    /// Trust anchors for `upstream_tls = verify`; `None` = the system's roots.
    pub upstream_ca: Option<PathBuf>,
    /// TLS from the first byte on the client side (RFC 8314, port 465).
    pub implicit_tls: bool,
    /// The name in a neutrally masked greeting (`220 <name> ESMTP ready`); empty = this
    /// host's name, which the dataplane fills in.
    pub banner_name: String,
}

/// `[tls]`: the certificate the edge presents to clients (STARTTLS `inspect`, implicit
/// TLS). The files are read by the dataplane; this crate only knows their paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, RSA or EC).
    pub key: PathBuf,
    /// Further certificates, chosen by the name the client asks for (SNI).
    pub sni: Vec<SniCertificate>,
    /// The TLS versions the edge accepts from clients, oldest first, none twice.
    pub protocols: Vec<TlsVersion>,
}

/// A TLS version in `[tls] protocols`, spelled as nginx, Postfix and OpenSSL spell it.
/// TLS 1.0 and 1.1 do not exist here: rustls never implemented them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// What `[tls] protocols` holds when the file does not say: both versions.
    pub const ALL: [TlsVersion; 2] = [TlsVersion::Tls12, TlsVersion::Tls13];

    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

/// One `[[tls.sni]]` entry: served to clients asking for one of `names`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniCertificate {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `starttls` on a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartTls {
    /// smtpgate answers STARTTLS itself, terminates TLS and inspects the plaintext.
    Inspect,
    /// STARTTLS goes to the upstream; after its 220 the session is relayed opaquely.
    Passthrough,
    /// STARTTLS is masked in the EHLO reply and as a command (the firewall's way).
    Strip,
}

/// `upstream_tls` on a listener: TLS towards the upstream after an inspected STARTTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Encrypt when the upstream offers STARTTLS, without checking its certificate
    /// (RFC 7435 opportunistic security); plaintext when it does not.
    Opportunistic,
    /// Encryption required and the certificate checked against `upstream_ca` or the
    /// system's roots; otherwise the client gets 421 4.7.0.
    Verify,
    /// Plaintext towards the upstream.
    Off,
}

impl Listener {
    /// Whether a client is relayed verbatim (exempt CIDR or `policy = "none"`).
    pub fn is_exempt(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        !self.policy.inspect || self.exempt.iter().any(|net| net.contains(&client))
    }

    /// Whether connections from `source` must start with a PROXY header.
    pub fn expects_proxy_header(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.accept_proxy.iter().any(|net| net.contains(&source))
    }
}

impl Config {
    /// Things that are valid but probably not meant; `smtpgate check` prints them.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            for proxy in &listener.accept_proxy {
                for exempt in &listener.exempt {
                    if exempt.contains(proxy) || proxy.contains(exempt) {
                        warnings.push(format!(
                            "listener[{i}]: exempt range {exempt} covers accept_proxy sources \
                             {proxy}: a balancer that ever connects without a PROXY header \
                             would make every client behind it exempt"
                        ));
                    }
                }
            }
        }
        warnings
    }
}

// ---------------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------------

/// The config `smtpgate run` uses without `-c`.
pub const EMBEDDED_DEFAULT_TOML: &str = r#"
[admin]
listen = "127.0.0.1:9725"

[[listener]]
listen = "127.0.0.1:2525"
upstream = "127.0.0.1:2526"
policy = "default"
"#;

const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9725";

impl Limits {
    /// What an omitted `[limits]` key means (the documented defaults): 100000 connections, 10000
    /// embryonic, no per-client caps. (`Limits::default()` is all zeros: unlimited.)
    pub const DEFAULT: Limits = Limits {
        max_connections: 100_000,
        max_embryonic: 10_000,
        per_client_max: 0,
        per_client_embryonic_max: 0,
        per_client_rate: 0,
        buffer_budget: 512 << 20,
        listen_backlog: 4096,
    };
}

impl Default for Timeouts {
    /// Embryonic 30 s, idle 5 min, data 3 min at 500 bytes/s, data termination 10 min
    /// (RFC 5321 4.5.3.2), upstream connect 10 s, drain 30 s.
    fn default() -> Timeouts {
        Timeouts {
            embryonic: Duration::from_secs(30),
            idle: Duration::from_secs(300),
            data: Duration::from_secs(180),
            min_data_rate: 500,
            data_termination: Duration::from_secs(600),
            upstream_connect: Duration::from_secs(10),
            shutdown_drain: Duration::from_secs(30),
        }
    }
}

// ---------------------------------------------------------------------------------
// Raw serde types (what the file says, before validation)
// ---------------------------------------------------------------------------------

/// The top level: only these keys exist.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read only to reject unknown top-level keys
struct RawTopLevel {
    admin: Option<IgnoredAny>,
    limits: Option<IgnoredAny>,
    timeouts: Option<IgnoredAny>,
    listener: Option<IgnoredAny>,
    policy: Option<IgnoredAny>,
    tls: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// `""` switches the admin endpoint off.
    listen: Option<Spanned<String>>,
    token_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<u64>>,
    max_embryonic: Option<Spanned<u64>>,
    per_client_max: Option<Spanned<u64>>,
    per_client_embryonic_max: Option<Spanned<u64>>,
    per_client_rate: Option<Spanned<u64>>,
    buffer_budget: Option<Spanned<String>>,
    listen_backlog: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    embryonic: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
    data: Option<Spanned<String>>,
    min_data_rate: Option<Spanned<u64>>,
    data_termination: Option<Spanned<String>>,
    upstream_connect: Option<Spanned<String>>,
    shutdown_drain: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    listen: Spanned<String>,
    upstream: Spanned<String>,
    /// Default `"default"`.
    policy: Option<Spanned<String>>,
    #[serde(default)]
    exempt: Vec<Spanned<String>>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    accept_proxy: Vec<Spanned<String>>,
    starttls: Option<Spanned<String>>,
    upstream_tls: Option<Spanned<String>>,
    upstream_ca: Option<Spanned<String>>,
    #[serde(default)]
    implicit_tls: bool,
    #[serde(default)]
    banner_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    #[serde(default)]
    sni: Vec<RawSniCertificate>,
    protocols: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSniCertificate {
    names: Spanned<Vec<String>>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

/// One config error: where (line and column, 1-based, when known), which key, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Key path such as `listener[0].policy` or `policy.strict.rules[1]`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "line {line}, column {column}: ")?;
        }
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in a config file, in file order; `Display` prints one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects errors with their positions in one config text.
struct Errors<'t> {
    text: &'t str,
    list: Vec<(usize, ConfigError)>,
}

impl<'t> Errors<'t> {
    fn new(text: &'t str) -> Self {
        Errors {
            text,
            list: Vec::new(),
        }
    }

    fn at(
        &mut self,
        span: Option<Range<usize>>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (order, line, column) = match span {
            Some(span) => {
                let start = span.start.min(self.text.len());
                let before = &self.text[..start];
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let column = before[line_start..].chars().count() + 1;
                (start, Some(line), Some(column))
            }
            None => (usize::MAX, None, None),
        };
        self.list.push((
            order,
            ConfigError {
                line,
                column,
                path: path.into(),
                message: message.into(),
            },
        ));
    }

    fn toml(&mut self, path: &str, e: &toml::de::Error) {
        // toml's messages may span lines; one error per line is the contract.
        let message = e.message().trim().replace('\n', "; ");
        // serde names the item, not the key: for `key = <bad value>` add the key.
        let key = e.span().and_then(|span| {
            let before = &self.text[..span.start.min(self.text.len())];
            let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
            let (key, _) = line.split_once('=')?;
            let key = key.trim();
            let bare = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            bare.then(|| key.to_string())
        });
        let path = match key {
            Some(key) if path.is_empty() => key,
            Some(key) => format!("{path}.{key}"),
            None => path.to_string(),
        };
        self.at(e.span(), path, message);
    }

    fn finish(mut self) -> Option<ConfigErrors> {
        if self.list.is_empty() {
            return None;
        }
        // File order; errors without a position (e.g. "no listener") last.
        self.list.sort_by_key(|(order, _)| *order);
        Some(ConfigErrors(
            self.list.into_iter().map(|(_, e)| e).collect(),
        ))
    }
}

// ---------------------------------------------------------------------------------
// Reading one item of the file at a time
// ---------------------------------------------------------------------------------

/// One step of a path into the TOML document.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Deserializes the value at `path` as `T`, skipping everything else, straight from
/// the text so that errors keep their spans. `Ok(None)` when the path is absent.
fn parse_at<T: DeserializeOwned>(
    text: &str,
    path: &[Step<'_>],
) -> Result<Option<T>, toml::de::Error> {
    PathSeed::<T> {
        path,
        _t: PhantomData,
    }
    .deserialize(toml::Deserializer::new(text))
}

struct PathSeed<'p, T> {
    path: &'p [Step<'p>],
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for PathSeed<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        match self.path.first() {
            None => T::deserialize(d).map(Some),
            Some(Step::Key(_)) => d.deserialize_map(self),
            Some(Step::Index(_)) => d.deserialize_seq(self),
        }
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for PathSeed<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.first() {
            Some(Step::Index(_)) => f.write_str("an array"),
            _ => f.write_str("a table"),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let Some(Step::Key(want)) = self.path.first() else {
            unreachable!("visit_map only for a key step")
        };
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == *want {
                found = map.next_value_seed(PathSeed::<T> {
                    path: &self.path[1..],
                    _t: PhantomData,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<T>, A::Error> {
        let Some(Step::Index(want)) = self.path.first() else {
            unreachable!("visit_seq only for an index step")
        };
        let mut found = None;
        let mut i = 0;
        loop {
            if i == *want {
                match seq.next_element_seed(PathSeed::<T> {
                    path: &self.path[1..],
                    _t: PhantomData,
                })? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------

impl Config {
    /// The config `smtpgate run` uses without `-c`: [`EMBEDDED_DEFAULT_TOML`].
    pub fn embedded_default() -> Config {
        Config::from_toml_str(EMBEDDED_DEFAULT_TOML).expect("the embedded default config is valid")
    }

    /// Parses and validates a config file's text, reporting every error found. An
    /// upstream given as a host name is an error here: this crate does no I/O, so
    /// names are resolved only through [`Config::from_toml_str_resolving`].
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml_str_resolving(text, &|host, _port| {
            Err(format!(
                "`{host}` is a host name; only the dataplane resolves names, this parser takes addresses"
            ))
        })
    }

    /// Like [`Config::from_toml_str`], but an upstream written `host:port` is looked
    /// up with `resolve` (the caller's I/O), and its error is reported at the key.
    pub fn from_toml_str_resolving(text: &str, resolve: &Resolver) -> Result<Config, ConfigErrors> {
        let mut errors = Errors::new(text);

        // Syntax first: without a document there is nothing more to say.
        let doc: toml::Table = match toml::from_str(text) {
            Ok(doc) => doc,
            Err(e) => {
                errors.toml("", &e);
                return Err(errors.finish().expect("one error"));
            }
        };
        if let Err(e) = parse_at::<RawTopLevel>(text, &[]) {
            errors.toml("", &e);
        }

        let admin = validate_admin(parse_section(text, "admin", &mut errors), &mut errors);
        let limits = validate_limits(parse_section(text, "limits", &mut errors), &mut errors);
        let timeouts = validate_timeouts(parse_section(text, "timeouts", &mut errors), &mut errors);
        let tls = validate_tls(parse_section(text, "tls", &mut errors), &mut errors);
        let (sections, broken_sections) = read_policy_sections(text, &doc, &mut errors);
        let mut policies = Policies::compile(&sections, &broken_sections, &mut errors);
        let raw_listeners = read_listeners(text, &doc, &mut errors);
        let listeners = validate_listeners(
            raw_listeners,
            &admin,
            tls.is_some(),
            &mut policies,
            resolve,
            &mut errors,
        );

        match errors.finish() {
            Some(errors) => Err(errors),
            None => Ok(Config {
                admin,
                limits,
                timeouts,
                listeners,
                tls,
            }),
        }
    }
}

/// Every `[[listener]]`, each read on its own so one bad listener does not hide the
/// others; `None` when there is no `listener` key at all.
fn read_listeners(
    text: &str,
    doc: &toml::Table,
    errors: &mut Errors<'_>,
) -> Option<Vec<(usize, Spanned<RawListener>)>> {
    let count = match doc.get("listener")? {
        // `listener = []` is as good as none.
        toml::Value::Array(items) if items.is_empty() => return None,
        toml::Value::Array(items) => items.len(),
        _ => {
            if let Err(e) = parse_at::<Vec<IgnoredAny>>(text, &[Step::Key("listener")]) {
                errors.toml("listener", &e);
            } else {
                errors.at(None, "listener", "expected [[listener]] tables");
            }
            return Some(Vec::new());
        }
    };
    let mut listeners = Vec::with_capacity(count);
    for i in 0..count {
        let path = [Step::Key("listener"), Step::Index(i)];
        match parse_at::<Spanned<RawListener>>(text, &path) {
            Ok(Some(l)) => listeners.push((i, l)),
            Ok(None) => {}
            Err(e) => errors.toml(&format!("listener[{i}]"), &e),
        }
    }
    Some(listeners)
}

/// Every `[policy.NAME]`, each read on its own; also the names of those that could
/// not be read (their errors are reported; they still count as defined names).
fn read_policy_sections(
    text: &str,
    doc: &toml::Table,
    errors: &mut Errors<'_>,
) -> (BTreeMap<String, Spanned<PolicySection>>, Vec<String>) {
    let mut sections = BTreeMap::new();
    let mut broken = Vec::new();
    match doc.get("policy") {
        Some(toml::Value::Table(table)) => {
            for name in table.keys() {
                let path = [Step::Key("policy"), Step::Key(name)];
                match parse_at::<Spanned<PolicySection>>(text, &path) {
                    Ok(Some(s)) => {
                        sections.insert(name.clone(), s);
                    }
                    Ok(None) => broken.push(name.clone()),
                    Err(e) => {
                        errors.toml(&format!("policy.{name}"), &e);
                        broken.push(name.clone());
                    }
                }
            }
        }
        Some(_) => {
            if let Err(e) = parse_at::<BTreeMap<String, IgnoredAny>>(text, &[Step::Key("policy")]) {
                errors.toml("policy", &e);
            } else {
                errors.at(None, "policy", "expected [policy.NAME] tables");
            }
        }
        None => {}
    }
    (sections, broken)
}

/// The policies listeners may name: compiled user policies, and built-ins on first use
/// (each compiled once, so listeners naming the same policy share one `Arc`).
struct Policies {
    /// `None` for a user policy that failed (its errors are already reported).
    compiled: BTreeMap<String, Option<Arc<Policy>>>,
    /// Built-ins, then user policies, for "unknown policy" errors.
    known: Vec<String>,
}

impl Policies {
    fn get(&mut self, name: &str) -> Result<Option<Arc<Policy>>, String> {
        if let Some(found) = self.compiled.get(name) {
            return Ok(found.clone());
        }
        match Policy::builtin(name) {
            Some(p) => {
                let p = Arc::new(p);
                self.compiled.insert(name.to_string(), Some(p.clone()));
                Ok(Some(p))
            }
            None => Err(format!(
                "unknown policy `{name}` (known: {})",
                self.known.join(", ")
            )),
        }
    }
}

fn validate_listeners(
    raw_listeners: Option<Vec<(usize, Spanned<RawListener>)>>,
    admin: &Admin,
    tls_configured: bool,
    policies: &mut Policies,
    resolve: &Resolver,
    errors: &mut Errors<'_>,
) -> Vec<Listener> {
    let Some(raw_listeners) = raw_listeners else {
        errors.at(
            None,
            "listener",
            "at least one [[listener]] is required (listen, upstream, policy)",
        );
        return Vec::new();
    };
    let mut listeners = Vec::new();
    let mut seen_listen: Vec<(SocketAddr, usize)> = Vec::new();
    for (i, raw) in raw_listeners {
        let span = raw.span();
        let raw = raw.into_inner();
        let listen = parse_addr(&raw.listen, &format!("listener[{i}].listen"), errors);
        let upstream = parse_upstream(
            &raw.upstream,
            &format!("listener[{i}].upstream"),
            resolve,
            errors,
        );
        // Port 0 asks the kernel for a fresh port per socket, so it never collides.
        if let Some(addr) = listen.filter(|a| a.port() != 0) {
            if let Some((_, first)) = seen_listen.iter().find(|(a, _)| *a == addr) {
                errors.at(
                    Some(raw.listen.span()),
                    format!("listener[{i}].listen"),
                    format!("{addr} is already the address of listener[{first}]"),
                );
            } else {
                seen_listen.push((addr, i));
            }
            if admin.listen == Some(addr) {
                errors.at(
                    Some(raw.listen.span()),
                    format!("listener[{i}].listen"),
                    format!("{addr} is also the admin endpoint's address"),
                );
            }
            if upstream == Some(addr) {
                errors.at(
                    Some(raw.upstream.span()),
                    format!("listener[{i}].upstream"),
                    format!("{addr} is the listener's own address: it would relay to itself"),
                );
            }
        }
        let exempt = parse_cidrs(&raw.exempt, &format!("listener[{i}].exempt"), errors);
        let accept_proxy = parse_cidrs(
            &raw.accept_proxy,
            &format!("listener[{i}].accept_proxy"),
            errors,
        );
        let (policy_name, policy_span) = match &raw.policy {
            Some(p) => (p.get_ref().as_str(), p.span()),
            None => ("default", span.clone()),
        };
        let policy = match policies.get(policy_name) {
            Ok(policy) => policy,
            Err(message) => {
                errors.at(Some(policy_span), format!("listener[{i}].policy"), message);
                None
            }
        };
        let (starttls, upstream_tls, upstream_ca) = validate_listener_tls(
            i,
            span.clone(),
            &raw,
            policy.as_deref(),
            tls_configured,
            errors,
        );
        let policy = policy.map(|policy| match starttls {
            StartTls::Strip => without_tls(policy),
            _ => policy,
        });
        if let (Some(listen), Some(upstream), Some(policy)) = (listen, upstream, policy) {
            listeners.push(Listener {
                listen,
                upstream,
                policy,
                exempt,
                proxy_protocol: raw.proxy_protocol,
                accept_proxy,
                starttls,
                upstream_tls,
                upstream_ca,
                implicit_tls: raw.implicit_tls,
                banner_name: raw.banner_name.clone(),
            });
        }
    }
    listeners
}

/// A listener's `starttls`, `upstream_tls`, `upstream_ca` and `implicit_tls`: each
/// value known, and TLS termination only where `[tls]` gives a certificate.
fn validate_listener_tls(
    i: usize,
    span: Range<usize>,
    raw: &RawListener,
    policy: Option<&Policy>,
    tls_configured: bool,
    errors: &mut Errors<'_>,
) -> (StartTls, UpstreamTls, Option<PathBuf>) {
    let starttls = match &raw.starttls {
        None if tls_configured => StartTls::Inspect,
        None => StartTls::Passthrough,
        Some(value) => match value.get_ref().as_str() {
            "inspect" => {
                if !tls_configured {
                    errors.at(
                        Some(value.span()),
                        format!("listener[{i}].starttls"),
                        "`inspect` terminates TLS with the [tls] certificate; add [tls] cert and key",
                    );
                }
                StartTls::Inspect
            }
            "passthrough" => StartTls::Passthrough,
            "strip" => StartTls::Strip,
            other => {
                errors.at(
                    Some(value.span()),
                    format!("listener[{i}].starttls"),
                    format!("expected inspect, passthrough or strip, found `{other}`"),
                );
                StartTls::Passthrough
            }
        },
    };
    // A policy that does not allow TLS masks STARTTLS whatever the listener says.
    let starttls = match policy {
        Some(policy) if policy.inspect && !policy.params.allow_tls => StartTls::Strip,
        _ => starttls,
    };
    if raw.implicit_tls && !tls_configured {
        errors.at(
            Some(span),
            format!("listener[{i}].implicit_tls"),
            "implicit TLS needs the [tls] certificate; add [tls] cert and key",
        );
    }
    let upstream_tls = match &raw.upstream_tls {
        None => UpstreamTls::Opportunistic,
        Some(value) => match value.get_ref().as_str() {
            "opportunistic" => UpstreamTls::Opportunistic,
            "verify" => UpstreamTls::Verify,
            "off" => UpstreamTls::Off,
            other => {
                errors.at(
                    Some(value.span()),
                    format!("listener[{i}].upstream_tls"),
                    format!("expected opportunistic, verify or off, found `{other}`"),
                );
                UpstreamTls::Opportunistic
            }
        },
    };
    let upstream_ca = match &raw.upstream_ca {
        Some(value) if value.get_ref().trim().is_empty() => None,
        Some(value) => {
            if upstream_tls != UpstreamTls::Verify {
                errors.at(
                    Some(value.span()),
                    format!("listener[{i}].upstream_ca"),
                    "only used with upstream_tls = \"verify\"",
                );
            }
            Some(PathBuf::from(value.get_ref()))
        }
        None => None,
    };
    (starttls, upstream_tls, upstream_ca)
}

/// `starttls = "strip"` on a listener whose policy allows TLS: the same policy with
/// `allow_tls = false`, so STARTTLS is masked in EHLO replies and as a command.
fn without_tls(policy: Arc<Policy>) -> Arc<Policy> {
    if !policy.inspect || !policy.params.allow_tls {
        return policy;
    }
    let section = PolicySection {
        allow_tls: Some(false),
        ..PolicySection::default()
    };
    match Policy::compile(&policy.name, &section, &policy) {
        Ok(stripped) => Arc::new(stripped),
        Err(_) => unreachable!("allow_tls = false is valid on any policy"),
    }
}

/// `[tls]`: the paths must be given; the files are read and checked by the dataplane.
fn validate_tls(raw: Option<RawTls>, errors: &mut Errors<'_>) -> Option<Tls> {
    let raw = raw?;
    let path = |value: &Spanned<String>, key: String, errors: &mut Errors<'_>| {
        if value.get_ref().trim().is_empty() {
            errors.at(Some(value.span()), key, "a file path is required");
        }
        PathBuf::from(value.get_ref())
    };
    let cert = path(&raw.cert, "tls.cert".into(), errors);
    let key = path(&raw.key, "tls.key".into(), errors);
    let mut sni = Vec::new();
    for (j, entry) in raw.sni.iter().enumerate() {
        let cert = path(&entry.cert, format!("tls.sni[{j}].cert"), errors);
        let key = path(&entry.key, format!("tls.sni[{j}].key"), errors);
        if entry.names.get_ref().is_empty() {
            errors.at(
                Some(entry.names.span()),
                format!("tls.sni[{j}].names"),
                "name at least one server name this certificate is for",
            );
        }
        sni.push(SniCertificate {
            names: entry.names.get_ref().clone(),
            cert,
            key,
        });
    }
    let protocols = match &raw.protocols {
        None => TlsVersion::ALL.to_vec(),
        Some(list) => {
            let mut versions = Vec::new();
            for name in list.get_ref() {
                match TlsVersion::ALL.into_iter().find(|v| v.name() == name) {
                    Some(version) => versions.push(version),
                    None => errors.at(
                        Some(list.span()),
                        "tls.protocols",
                        format!("expected TLSv1.2 or TLSv1.3, found `{name}`"),
                    ),
                }
            }
            versions.sort();
            versions.dedup();
            if list.get_ref().is_empty() {
                errors.at(
                    Some(list.span()),
                    "tls.protocols",
                    "enable at least one of TLSv1.2 and TLSv1.3",
                );
            }
            versions
        }
    };
    Some(Tls {
        cert,
        key,
        sni,
        protocols,
    })
}

fn parse_section<T: DeserializeOwned + Default>(
    text: &str,
    key: &str,
    errors: &mut Errors<'_>,
) -> T {
    match parse_at::<T>(text, &[Step::Key(key)]) {
        Ok(v) => v.unwrap_or_default(),
        Err(e) => {
            errors.toml(key, &e);
            T::default()
        }
    }
}

impl Policies {
    /// Compiles user policies in `extends` order, reporting every error.
    fn compile(
        sections: &BTreeMap<String, Spanned<PolicySection>>,
        broken: &[String],
        errors: &mut Errors<'_>,
    ) -> Policies {
        let mut compiled: BTreeMap<String, Option<Arc<Policy>>> =
            broken.iter().map(|n| (n.clone(), None)).collect();
        let mut parents = Vec::new();
        for (name, section) in sections {
            let path = format!("policy.{name}");
            if BUILTIN_NAMES.contains(&name.as_str()) {
                errors.at(
                Some(section.span()),
                &path,
                format!("`{name}` is a built-in policy; give yours another name and `extends = \"{name}\"`"),
            );
                compiled.insert(name.clone(), None);
                continue;
            }
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                errors.at(
                    Some(section.span()),
                    &path,
                    "policy names are letters, digits, `-` and `_`",
                );
            }
            let parent = section
                .get_ref()
                .extends
                .as_ref()
                .map(|e| e.get_ref().as_str());
            parents.push((name.as_str(), parent.or(Some("default"))));
        }
        let order = match resolution_order(&parents) {
            Ok(order) => order,
            Err(cycle) => {
                for name in &cycle {
                    let section = &sections[*name];
                    let span = section.get_ref().extends.as_ref().map(|e| e.span());
                    errors.at(
                        span,
                        format!("policy.{name}.extends"),
                        format!("`extends` goes round in a circle: {}", cycle.join(", ")),
                    );
                    compiled.insert(name.to_string(), None);
                }
                // Compile the rest (those outside the cycle) for their own errors.
                parents
                    .iter()
                    .map(|(n, _)| *n)
                    .filter(|n| !cycle.contains(n))
                    .collect()
            }
        };
        let user_names: Vec<&str> = sections.keys().map(String::as_str).collect();
        for name in order {
            if compiled.contains_key(name) {
                continue;
            }
            let section = sections[name].get_ref();
            let parent_name = section
                .extends
                .as_ref()
                .map_or("default", |e| e.get_ref().as_str());
            let (parent, parent_ok) = match compiled.get(parent_name) {
                Some(Some(p)) => (p.clone(), true),
                // The parent failed or is in a cycle: still check this policy's own
                // settings, against `default`, but do not produce it.
                Some(None) => (
                    Arc::new(Policy::builtin("default").expect("built-in")),
                    false,
                ),
                None => match Policy::builtin(parent_name) {
                    Some(p) => (Arc::new(p), true),
                    None => {
                        let mut known: Vec<&str> = BUILTIN_NAMES.to_vec();
                        known.extend(
                            user_names
                                .iter()
                                .filter(|n| **n != name && !BUILTIN_NAMES.contains(n)),
                        );
                        errors.at(
                            section.extends.as_ref().map(|e| e.span()),
                            format!("policy.{name}.extends"),
                            format!(
                                "unknown policy `{parent_name}` (known: {})",
                                known.join(", ")
                            ),
                        );
                        (
                            Arc::new(Policy::builtin("default").expect("built-in")),
                            false,
                        )
                    }
                },
            };
            match Policy::compile(name, section, &parent) {
                Ok(policy) if parent_ok => {
                    compiled.insert(name.to_string(), Some(Arc::new(policy)));
                }
                Ok(_) => {
                    compiled.insert(name.to_string(), None);
                }
                Err(list) => {
                    for e in list {
                        let field = format!("policy.{name}.{}", e.field());
                        errors.at(e.span(), field, e.to_string());
                    }
                    compiled.insert(name.to_string(), None);
                }
            }
        }
        let mut user_names: Vec<String> = sections.keys().chain(broken).cloned().collect();
        user_names.retain(|n| !BUILTIN_NAMES.contains(&n.as_str()));
        user_names.sort();
        let mut known: Vec<String> = BUILTIN_NAMES.iter().map(|s| s.to_string()).collect();
        known.extend(user_names);
        Policies { compiled, known }
    }
}

fn parse_addr(value: &Spanned<String>, path: &str, errors: &mut Errors<'_>) -> Option<SocketAddr> {
    match value.get_ref().parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.at(
                Some(value.span()),
                path,
                format!(
                    "expected an address like 0.0.0.0:25 or [::]:25, found `{}`",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

/// Turns an upstream's `host:port` into an address: given the host name and port,
/// returns the address to connect to, or why there is none.
pub type Resolver = dyn Fn(&str, u16) -> Result<SocketAddr, String>;

/// An address, or a `host:port` handed to `resolve`.
fn parse_upstream(
    value: &Spanned<String>,
    path: &str,
    resolve: &Resolver,
    errors: &mut Errors<'_>,
) -> Option<SocketAddr> {
    let text = value.get_ref();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let name_and_port = text
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .filter(|(host, _)| !host.is_empty() && !host.contains([':', '[', ']', ' ']));
    let Some((host, port)) = name_and_port else {
        errors.at(
            Some(value.span()),
            path,
            format!(
                "expected an address like 10.0.0.5:25 or [::1]:25, or a host name and port like mx.example:25, found `{text}`"
            ),
        );
        return None;
    };
    match resolve(host, port) {
        Ok(addr) => Some(addr),
        Err(why) => {
            errors.at(Some(value.span()), path, why);
            None
        }
    }
}

/// A CIDR, or a bare address as /32 or /128. An IPv4-mapped IPv6 network
/// (`::ffff:192.0.2.0/120`) becomes the IPv4 network it means, because client
/// addresses are compared in their canonical (IPv4) form.
fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    let net = text
        .parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))?;
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .ok()
                .map(IpNet::V4),
            None => Some(net),
        },
        _ => Some(net),
    }
}

fn parse_cidrs(list: &[Spanned<String>], path: &str, errors: &mut Errors<'_>) -> Vec<IpNet> {
    let mut nets = Vec::with_capacity(list.len());
    for (j, cidr) in list.iter().enumerate() {
        match parse_cidr(cidr.get_ref()) {
            Some(net) => nets.push(net),
            None => errors.at(
                Some(cidr.span()),
                format!("{path}[{j}]"),
                format!(
                    "expected a network like 192.0.2.0/24 or an address, found `{}`",
                    cidr.get_ref()
                ),
            ),
        }
    }
    nets
}

fn validate_admin(raw: RawAdmin, errors: &mut Errors<'_>) -> Admin {
    let listen = match &raw.listen {
        None => Some(DEFAULT_ADMIN_LISTEN.parse().expect("valid default")),
        Some(v) if v.get_ref().trim().is_empty() => None,
        Some(v) => parse_addr(v, "admin.listen", errors),
    };
    let token_file = raw
        .token_file
        .filter(|path| !path.trim().is_empty())
        .map(std::path::PathBuf::from);
    Admin { listen, token_file }
}

/// Largest accepted connection count: far beyond what one host's descriptors allow,
/// small enough that no arithmetic on it can overflow.
const MAX_COUNT: u64 = 100_000_000;
/// Largest accepted duration: a week. Longer is a typo, and deadlines computed from
/// it must stay far from `Instant`'s range.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Bounds of `buffer_budget` when not 0 (off).
const BUFFER_BUDGET_RANGE: (u64, u64) = (1 << 20, 1 << 40);

/// A count at `key` within `0..=max`, or the default with an error.
fn bounded(
    v: &Option<Spanned<u64>>,
    key: &str,
    default: u64,
    range: (u64, u64),
    errors: &mut Errors<'_>,
) -> u64 {
    let Some(v) = v else { return default };
    let n = *v.get_ref();
    if n < range.0 || n > range.1 {
        errors.at(
            Some(v.span()),
            key,
            format!("{n} is out of range: {} to {}", range.0, range.1),
        );
        return default;
    }
    n
}

fn validate_limits(raw: RawLimits, errors: &mut Errors<'_>) -> Limits {
    let defaults = Limits::DEFAULT;
    let count = (0, MAX_COUNT);
    let buffer_budget = match &raw.buffer_budget {
        None => defaults.buffer_budget,
        Some(v) => match parse_size(v.get_ref()) {
            Some(0) => 0,
            Some(n) if (BUFFER_BUDGET_RANGE.0..=BUFFER_BUDGET_RANGE.1).contains(&n) => n,
            parsed => {
                let why = match parsed {
                    Some(_) => "is out of range: 1MiB to 1TiB, or 0 for no budget".to_string(),
                    None => "expected a size like \"512MiB\", \"2GiB\" or bytes".to_string(),
                };
                errors.at(
                    Some(v.span()),
                    "limits.buffer_budget",
                    format!("`{}` {why}", v.get_ref()),
                );
                defaults.buffer_budget
            }
        },
    };
    let limits = Limits {
        max_connections: bounded(
            &raw.max_connections,
            "limits.max_connections",
            defaults.max_connections,
            count,
            errors,
        ),
        max_embryonic: bounded(
            &raw.max_embryonic,
            "limits.max_embryonic",
            // Unset: 10000, but never above max_connections (0 = unlimited), so
            // `max_connections = 1000` alone is a valid config.
            match raw.max_connections.as_ref().map(|v| *v.get_ref()) {
                Some(max) if max > 0 => defaults.max_embryonic.min(max),
                _ => defaults.max_embryonic,
            },
            count,
            errors,
        ),
        per_client_max: bounded(
            &raw.per_client_max,
            "limits.per_client_max",
            defaults.per_client_max,
            count,
            errors,
        ),
        per_client_embryonic_max: bounded(
            &raw.per_client_embryonic_max,
            "limits.per_client_embryonic_max",
            defaults.per_client_embryonic_max,
            count,
            errors,
        ),
        per_client_rate: bounded(
            &raw.per_client_rate,
            "limits.per_client_rate",
            defaults.per_client_rate,
            count,
            errors,
        ),
        buffer_budget,
        listen_backlog: bounded(
            &raw.listen_backlog,
            "limits.listen_backlog",
            defaults.listen_backlog as u64,
            (1, 65_535),
            errors,
        ) as u32,
    };
    // (smaller, its key, its span, larger, its key): with both set (non-zero), the
    // smaller cap must not exceed the larger one, or it would never bite.
    let pairs = [
        (
            limits.max_embryonic,
            "max_embryonic",
            &raw.max_embryonic,
            limits.max_connections,
            "max_connections",
        ),
        (
            limits.per_client_max,
            "per_client_max",
            &raw.per_client_max,
            limits.max_connections,
            "max_connections",
        ),
        (
            limits.per_client_embryonic_max,
            "per_client_embryonic_max",
            &raw.per_client_embryonic_max,
            limits.per_client_max,
            "per_client_max",
        ),
        (
            limits.per_client_embryonic_max,
            "per_client_embryonic_max",
            &raw.per_client_embryonic_max,
            limits.max_embryonic,
            "max_embryonic",
        ),
    ];
    for (small, small_key, span, large, large_key) in pairs {
        if small != 0 && large != 0 && small > large {
            errors.at(
                span.as_ref().map(|s| s.span()),
                format!("limits.{small_key}"),
                format!("{small_key} = {small} is more than {large_key} = {large}"),
            );
        }
    }
    limits
}

fn validate_timeouts(raw: RawTimeouts, errors: &mut Errors<'_>) -> Timeouts {
    let defaults = Timeouts::default();
    let mut get =
        |v: &Option<Spanned<String>>, key: &str, default: Duration, zero_ok: bool| -> Duration {
            let Some(v) = v else { return default };
            let problem = match parse_duration(v.get_ref()) {
                Some(d) if d.is_zero() && !zero_ok => "must be more than zero".to_string(),
                Some(d) if d > MAX_DURATION => {
                    format!("`{}` is longer than the maximum, 7 days", v.get_ref())
                }
                Some(d) => return d,
                None => format!(
                "expected a duration like \"250ms\", \"90s\", \"5min\" or \"1h30m\", found `{}`",
                v.get_ref()
            ),
            };
            errors.at(Some(v.span()), format!("timeouts.{key}"), problem);
            default
        };
    let embryonic = get(&raw.embryonic, "embryonic", defaults.embryonic, false);
    let idle = get(&raw.idle, "idle", defaults.idle, false);
    let data = get(&raw.data, "data", defaults.data, false);
    let data_termination = get(
        &raw.data_termination,
        "data_termination",
        defaults.data_termination,
        false,
    );
    let upstream_connect = get(
        &raw.upstream_connect,
        "upstream_connect",
        defaults.upstream_connect,
        false,
    );
    // Zero means: stop at once, no draining.
    let shutdown_drain = get(
        &raw.shutdown_drain,
        "shutdown_drain",
        defaults.shutdown_drain,
        true,
    );
    Timeouts {
        embryonic,
        idle,
        data,
        min_data_rate: bounded(
            &raw.min_data_rate,
            "timeouts.min_data_rate",
            defaults.min_data_rate,
            (0, 1 << 30),
            errors,
        ),
        data_termination,
        upstream_connect,
        shutdown_drain,
    }
}

/// `"512MiB"`, `"64KiB"`, `"2GiB"`, `"1TiB"` or a plain number of bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = text[..digits].parse().ok()?;
    let shift = match text[digits..].trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// A duration as systemd and nginx write them (humantime's grammar): one or more
/// number-unit pairs, `"250ms"`, `"90s"`, `"5m"` or `"5min"`, `"1h30m"`, `"1h 30m"`;
/// a bare `"0"` is zero. The load generator parses its options with this too, so
/// the config and the command line accept the same text.
pub fn parse_duration(text: &str) -> Option<Duration> {
    match text.trim() {
        "0" => Some(Duration::ZERO),
        text => humantime::parse_duration(text).ok(),
    }
}
