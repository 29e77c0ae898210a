//! smtpgate-policy: everything smtpgate knows about SMTP, with no I/O.
//!
//! No sockets, no threads, no clock reads: callers feed bytes (and the time, where a
//! rule needs it) and get back the bytes to forward, replies to inject and events.
//!
//! # Layout
//! - [`scanner`]: memchr CRLF line framing across reads, bare CR/LF detection, overlong lines.
//! - [`verb`]: SMTP command verbs and EHLO keywords as tokens and bit sets.
//! - [`mime`]: header and MIME multipart tracking for filename / type / encoding rules.
//! - [`path`]: RFC 5321 MAIL FROM / RCPT TO paths and the canonical address rules compare.
//! - [`inspector`]: the per-session state machine (RFC 5321 / 2920 / 3030 / 3207); its
//!   `testing` module (cargo feature `testing`) is the in-memory driver tests share.
//! - [`rules`]: the firewall's `match ...` rule language, parsed and precompiled.
//! - [`policy`]: the compiled immutable [`policy::Policy`] and the built-in policies.
//! - [`config`]: the TOML config (serde) and its validation into a [`config::Config`].
//! - [`event`]: what the inspector reports: rule hits, actions, firewall message IDs.
//! - [`asa`]: `import-asa`, a firewall `policy-map type inspect esmtp` block to TOML.

#![forbid(unsafe_code)]

pub mod asa;
pub mod config;
pub mod envelope;
pub mod event;
pub mod inspector;
pub mod mime;
pub mod path;
pub mod policy;
pub mod rules;
pub mod scanner;
mod section;
pub mod verb;
