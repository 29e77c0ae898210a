//! Unit tests of the inspector on byte-literal transcripts, through the shared
//! in-memory [`Driver`](super::testing::Driver), split like the modules they test.

#![allow(unused_imports)]

mod commands;
mod content;
mod replies;
mod session;
mod tls;

pub(super) use std::sync::Arc;
pub(super) use std::time::Duration;

pub(super) use bytes::Bytes;

pub(super) use super::commands::ClientMode;
pub(super) use super::testing::{Driver, Peer};
pub(super) use super::*;
pub(super) use crate::event::{Event, MessageId};
pub(super) use crate::mime::LINE_HEAD_CAP;
pub(super) use crate::policy::Policy;
pub(super) use crate::rules::{parse_rule, Actions, Criterion, Disposition, Rule};

pub(super) const DROP_LOG: Actions = Actions {
    disposition: Disposition::Drop,
    log: true,
    mask: false,
    rate_limit: 0,
};

/// A session under a policy built (or edited) by hand.
pub(super) fn session(mut policy: Policy) -> Driver {
    policy.reindex();
    Driver::new(Arc::new(policy))
}
