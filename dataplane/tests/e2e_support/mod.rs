//! What the end-to-end tests need beyond `common`: foreign peers (Python, swaks,
//! Postfix's tools, the load generator's sink) with every wait bounded, from the
//! workspace's test kit. This module keeps `mod e2e_support; use e2e_support::*;`
//! working; its list does not overlap `common`'s, so both globs stay in use.

#![allow(dead_code, unused_imports)]

pub use testkit::{
    bdat, binary, command_lines, dot_stuffed, find_peer, peer, python, run_bounded, run_with_input,
    signal, sorted_lines, wait_child, wait_for_listener, wait_until, MissingPeer, PostfixSink,
    Sink,
};

/// A peer's path, or `None`. Tests call [`peer`], which fails when it is missing;
/// this is for code with a fallback.
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    find_peer(name).ok()
}
