//! Warden's configuration and permission model.
//!
//! This crate turns `warden.toml` into validated types (parse, don't validate: a `Config` that exists is
//! consistent), and answers the two questions the proxy asks at every connection: which roles does this
//! identity hold for this database right now (`Config::effective_roles`), and which PostgreSQL privileges
//! do those roles add up to (`GrantSet`). It does no I/O beyond reading the config file.

mod config;
mod decide;
mod error;
mod grants;
mod raw;
mod sinks;
mod upstream;

pub use config::{Approval, AuditSettings, Config, DatabaseConfig, IdentityConfig, Role, ServerSettings, UpstreamAuth};
pub use decide::{decide, may_write, Decision};
pub use error::{ConfigError, Refusal};
pub use grants::{ColumnScope, GrantSet, TableGrant, TablePrivileges, TableRef};
pub use sinks::{Secret, SinkConfig, SinkKind, SyslogSink, SyslogTransport, WebhookFormat, WebhookSink};
pub use upstream::{SslMode, UpstreamUrl};
