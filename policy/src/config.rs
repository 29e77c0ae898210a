//! The TOML config (serde, `deny_unknown_fields`) and its validation into one
//! immutable [`Config`] the dataplane shares across cores.
