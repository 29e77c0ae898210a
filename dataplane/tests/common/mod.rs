//! The dataplane's integration tests share the workspace's test kit: the real
//! `smtpgate` binary ([`Gate`], its bound addresses read from its readiness line), a
//! fake upstream recording exact wire bytes, and a raw SMTP client. This module keeps
//! `mod common; use common::*;` working; `e2e_support` re-exports the rest (peers),
//! and the two lists do not overlap, so both globs stay in use.

#![allow(unused_imports)]

pub use testkit::{
    check_config, config, config_text, free_port, gated_upstream, http_body, http_get,
    http_request, local, metric_value, reply_code, scratch_dir, smtpgate, smtpgate_ready,
    socket_from, text, BoundSocket, Client, Gate, Ready, Seen, Upstream, LIMIT, UPSTREAM_BANNER,
};
