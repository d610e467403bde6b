//! The file as written: serde types with spans, so that every later check can name the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default, rename = "database")]
    pub databases: Vec<RawDatabase>,
    #[serde(default, rename = "role")]
    pub roles: Vec<RawRole>,
    #[serde(default, rename = "human")]
    pub humans: Vec<RawIdentity>,
    #[serde(default, rename = "agent")]
    pub agents: Vec<RawIdentity>,
    #[serde(default, rename = "workload")]
    pub workloads: Vec<RawIdentity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub postgres_listen: Spanned<String>,
    pub api_listen: Option<Spanned<String>>,
    pub data_dir: Option<String>,
    pub max_message_size: Option<Spanned<usize>>,
    /// Identities (humans) that may manage locks and every credential through the API.
    #[serde(default)]
    pub admins: Vec<Spanned<String>>,
    /// How long a write held for statement review waits, e.g. "5m".
    pub review_timeout: Option<Spanned<String>>,
    /// Test-only: forward statements without analysing them, to prove PostgreSQL's own privileges
    /// hold on their own. Never set this in a deployment.
    #[serde(default)]
    pub danger_disable_statement_checks: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub fsync: Option<Spanned<String>>,
    pub path: Option<String>,
    pub rotate_size_mib: Option<Spanned<i64>>,
    pub checkpoint_interval_ms: Option<Spanned<i64>>,
    pub result_rows: Option<Spanned<i64>>,
    /// Regular expressions whose matches are cut out of statements and parameters.
    #[serde(default)]
    pub redact: Vec<Spanned<String>>,
    /// `[[audit.sink]]`: where the log is shipped (SIEM export).
    #[serde(default)]
    pub sink: Vec<RawSink>,
}

/// One `[[audit.sink]]`. Every key of every type is here; which ones a type admits is checked in
/// `sinks.rs`, so that a key of another type is named in the error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSink {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub facility: Option<Spanned<String>>,
    pub app_name: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub batch_size: Option<Spanned<i64>>,
    pub batch_interval_ms: Option<Spanned<i64>>,
    pub headers: Option<BTreeMap<String, Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabase {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    pub upstream_auth: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRole {
    pub name: Spanned<String>,
    #[serde(default)]
    pub databases: Vec<Spanned<String>>,
    #[serde(default)]
    pub read: Vec<Spanned<String>>,
    #[serde(default)]
    pub write: Vec<Spanned<String>>,
    #[serde(default)]
    pub row_filter: BTreeMap<String, Spanned<String>>,
    pub max_ttl: Option<Spanned<String>>,
    pub approval: Option<Spanned<String>>,
    #[serde(default)]
    pub approvers: Vec<Spanned<String>>,
    #[serde(default)]
    pub requester_may_approve: bool,
    #[serde(default)]
    pub allow_do: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentity {
    pub name: Spanned<String>,
    #[serde(default)]
    pub roles: Vec<Spanned<String>>,
    #[serde(default)]
    pub traits: BTreeMap<String, String>,
    pub max_ttl: Option<Spanned<String>>,
}
