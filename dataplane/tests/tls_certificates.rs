//! `[tls]` certificate files as `smtpgate check` and `smtpgate run` read them: a good
//! pair passes, a key of another certificate, an expired certificate and a missing file
//! are refused with the file's name.

mod common;

use std::path::Path;

use common::*;
use rcgen::CertificateParams;
use testkit::{tls_section, write_pair};

fn params(name: &str) -> CertificateParams {
    CertificateParams::new(vec![name.to_string()]).unwrap()
}

/// A config with `[tls]` naming this pair, its upstream an address nothing listens on
/// (neither `check` nor a refused `run` connects to it).
fn tls_config(cert: &Path, key: &Path) -> String {
    config_text(local(free_port()), "", &tls_section(cert, key))
}

fn check_with(dir: &Path, cert: &Path, key: &Path) -> (Option<i32>, String, String) {
    check_config(&dir.join("smtpgate.toml"), &tls_config(cert, key))
}

#[test]
fn check_accepts_a_certificate_with_its_own_key() {
    let dir = scratch_dir("tls-check-ok");
    let (cert, key) = write_pair(&dir, "mx", params("mx.example.com"));
    let (code, out, err) = check_with(&dir, &cert, &key);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("ok: "), "{out}");
}

#[test]
fn check_refuses_a_key_of_another_certificate_naming_the_key_file() {
    let dir = scratch_dir("tls-check-mismatch");
    let (cert, _) = write_pair(&dir, "mx", params("mx.example.com"));
    let (_, other_key) = write_pair(&dir, "other", params("other.example.com"));
    let (code, _, err) = check_with(&dir, &cert, &other_key);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}: this key does not belong to the certificate in {}",
            other_key.display(),
            cert.display()
        )),
        "{err}"
    );
}

#[test]
fn check_and_run_refuse_an_expired_certificate_naming_the_file() {
    let dir = scratch_dir("tls-check-expired");
    let mut old = params("old.example.com");
    old.not_before = rcgen::date_time_ymd(2019, 1, 1);
    old.not_after = rcgen::date_time_ymd(2021, 3, 31);
    let (cert, key) = write_pair(&dir, "old", old);
    let (code, _, err) = check_with(&dir, &cert, &key);
    assert_eq!(code, Some(1), "{err}");
    let expected = format!("{}: the certificate expired on 2021-03-31", cert.display());
    assert!(err.contains(&expected), "{err}");

    let mut gate = Gate::spawn(&tls_config(&cert, &key), &[]);
    assert_eq!(
        gate.wait_exit(LIMIT),
        Some(1),
        "run starts with an expired certificate"
    );
    assert!(gate.stderr().contains(&expected), "{}", gate.stderr());
}

#[test]
fn check_refuses_a_missing_file_and_a_wrong_upstream_ca_naming_them() {
    let dir = scratch_dir("tls-check-missing");
    let (cert, _) = write_pair(&dir, "mx", params("mx.example.com"));
    let missing = dir.join("missing.key");
    let (code, _, err) = check_with(&dir, &cert, &missing);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}: cannot read a PEM private key",
            missing.display()
        )),
        "{err}"
    );

    let text = config_text(
        local(free_port()),
        &format!(
            "upstream_tls = \"verify\"\nupstream_ca = \"{}\"",
            missing.display()
        ),
        "",
    );
    let (code, _, err) = check_config(&dir.join("verify.toml"), &text);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}: cannot read PEM certificates",
            missing.display()
        )),
        "{err}"
    );
}
