//! Reading the config: a file, or the embedded default (listen 127.0.0.1:2525,
//! upstream 127.0.0.1:2526, policy `default`, admin 127.0.0.1:9725). Parsing and
//! validation belong to `smtpgate-policy`; this module only reads files and reports.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use smtpgate_policy::config::Config;

/// Reads and validates a config file. The error text has one error per line, each
/// with its location, ready to print.
pub fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&text).map_err(|errors| {
        errors
            .lines()
            .map(|line| format!("{}: {line}", path.display()))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// The config used by `smtpgate run` without `-c`.
pub fn embedded_default() -> Config {
    Config::embedded_default()
}

/// Upstream host names are resolved here, at start and on every reload, on the main
/// thread: never on a shard, and never per session.
fn parse(text: &str) -> Result<Config, String> {
    let mut config =
        Config::from_toml_str_resolving(text, &resolve).map_err(|errors| errors.to_string())?;
    if let Some(admin) = ADMIN_LISTEN.get() {
        config.admin.listen = Some(*admin);
    }
    Ok(config)
}

/// `--admin-listen`: replaces `[admin] listen` of every config read (start and reload),
/// for deployments where the address is only known at run time (a pod's IP).
pub static ADMIN_LISTEN: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();

/// The first address `host` resolves to (the system resolver, as `getaddrinfo` orders them).
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    match (host, port).to_socket_addrs() {
        Ok(mut addresses) => addresses
            .next()
            .ok_or_else(|| format!("host name `{host}` has no address")),
        Err(e) => Err(format!("cannot resolve host name `{host}`: {e}")),
    }
}

/// `smtpgate import-asa`: a firewall's esmtp policy map as config TOML.
pub fn import_asa(text: &str) -> Result<String, String> {
    smtpgate_policy::asa::import_asa(text).map_err(|e| e.to_string())
}
