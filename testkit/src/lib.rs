//! testkit: what smtpgate's and the load generator's process-level tests share.
//! Loopback only, every wait bounded, a missing peer a failure (never a silent pass).
//!
//! # Layout
//! - `process`  — bounded waits, scratch directories, peers (tools from Debian
//!   packages, named in the failure when missing) and sibling binaries.
//! - `ready`    — readiness lines: the addresses a server bound (port 0 in its
//!   config), so tests never pick a "free" port and race for it.
//! - `datagram` — a Unix datagram socket for syslog and systemd notify messages.
//! - `gate`     — a running `smtpgate run` with its logs and admin endpoint, killed
//!   on drop.
//! - `sink`     — a running `smtpgate-loadgen sink` with its digest log.
//! - `postfix`  — a running Postfix smtp-sink, a foreign server.
//! - `postfix_instance` — a private, complete Postfix on loopback (smtpd, queue,
//!   delivery to a Maildir or to a relayhost), its log and what it delivered.
//! - `upstream` — a fake SMTP upstream that records every byte it receives.
//! - `tls`      — self-signed certificate files, the `[tls]` section, the certificate
//!   a STARTTLS server presents.
//! - `smtp`     — a raw SMTP client, reply codes, dot-stuffing, BDAT commands,
//!   Python's smtplib.

pub mod datagram;
pub mod gate;
pub mod postfix;
pub mod postfix_instance;
pub mod process;
pub mod ready;
pub mod sink;
pub mod smtp;
pub mod tls;
pub mod upstream;

pub use datagram::Datagrams;
pub use gate::{
    check_config, config, config_text, gated_upstream, http_body, http_get, http_request,
    metric_value, smtpgate, Gate,
};
pub use postfix::PostfixSink;
pub use postfix_instance::{Delivery, PostfixInstance, PostfixSetup, SmtpdTls, MAILBOX_DOMAIN};
pub use process::{
    binary, find_peer, free_port, local, peer, run_bounded, run_with_input, scratch_dir, signal,
    sorted_lines, wait_child, wait_for_listener, wait_until, MissingPeer, LIMIT,
};
pub use ready::{sink_ready, smtpgate_ready, Ready};
pub use sink::Sink;
pub use smtp::{
    bdat, command_lines, dot_stuffed, host_port, python, python_stdout, reply_code,
    smtplib_over_tls, socket_from, text, BoundSocket, Client, SmtplibTls,
};
pub use tls::{
    pem_body, presented_certificate, presented_certificate_for, self_signed, tls_section,
    write_pair,
};
pub use upstream::{Seen, Upstream, UPSTREAM_BANNER};
