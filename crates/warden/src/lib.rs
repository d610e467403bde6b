//! Warden: the proxy, its command line and the pieces that tie the library crates together.
//!
//! `proxy` holds the data path: `proxy::frontend` is the client side (TLS, startup, authentication),
//! `proxy::backend` is the PostgreSQL side (provisioning, upstream login), `proxy::relay` moves the
//! messages in between and records each statement. `cli` is the command line; `cluster` runs a private
//! PostgreSQL for `warden quickstart` and for the tests. `sinks` ships the audit log to SIEMs.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod control;
pub mod deployment;
pub mod proxy;
pub mod sinks;
pub mod tls;
