//! `smtpgate import-asa`: a firewall's `policy-map type inspect esmtp` block and its
//! `set connection` limits, turned into smtpgate config TOML.
