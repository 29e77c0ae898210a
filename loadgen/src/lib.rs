//! The load generator's message corpus, shared with the inspector benches so they
//! measure the very messages `compare` sends.

pub mod message;
pub mod util;
