//! Certificates for TLS tests: self-signed pairs written as PEM files, the `[tls]`
//! config section naming them, and the certificate a STARTTLS server shows a real
//! client (openssl s_client), to compare with the file it was given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{CertificateParams, KeyPair};

use crate::process::{peer, run_with_input, LIMIT};

/// A certificate made from `params`, self-signed with a fresh key, written to
/// `dir/STEM.pem` and its key to `dir/STEM.key`; returns the two paths.
pub fn write_pair(dir: &Path, stem: &str, params: CertificateParams) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// [`write_pair`] for a certificate naming `names` (host names or IP addresses).
pub fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    write_pair(dir, stem, CertificateParams::new(names).unwrap())
}

/// smtpgate's `[tls]` section for this certificate and key.
pub fn tls_section(cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// A PEM file's base64 body, without its BEGIN/END lines and line breaks.
pub fn pem_body(path: &Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat()
}

/// The body (as [`pem_body`]) of the first certificate openssl s_client is shown by
/// the SMTP server at `addr` after STARTTLS (no server name asked for: `addr` is an
/// IP address).
pub fn presented_certificate(addr: SocketAddr) -> String {
    s_client_certificate(addr, &[])
}

/// Like [`presented_certificate`], asking for `server_name` (SNI), or saying
/// explicitly that it asks for none.
pub fn presented_certificate_for(addr: SocketAddr, server_name: Option<&str>) -> String {
    match server_name {
        Some(name) => s_client_certificate(addr, &["-servername", name]),
        None => s_client_certificate(addr, &["-noservername"]),
    }
}

fn s_client_certificate(addr: SocketAddr, options: &[&str]) -> String {
    let out = run_with_input(
        Command::new(peer("openssl"))
            .args(["s_client", "-starttls", "smtp", "-connect"])
            .arg(addr.to_string())
            .args(options),
        b"QUIT\n",
        LIMIT,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .map(|body| body.split_whitespace().collect())
        .unwrap_or_else(|| panic!("no certificate in openssl's output:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_pair_is_pem_and_its_body_is_the_base64_between_the_markers() {
        let dir = crate::process::scratch_dir("tls-pair");
        let (cert, key) = self_signed(&dir, "mx", &["mx.example.test", "127.0.0.1"]);
        let pem = std::fs::read_to_string(&cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        let body = pem_body(&cert);
        assert!(!body.is_empty() && !body.contains('-') && !body.contains('\n'));
        assert!(std::fs::read_to_string(&key)
            .unwrap()
            .contains("PRIVATE KEY-----"));
        assert_eq!(
            tls_section(&cert, &key),
            format!(
                "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            )
        );
    }
}
