//! Validated configuration: built from the raw file once, then read-only (reload builds a new one).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use time::Duration;
use toml::Spanned;
use warden_identity::{parse_duration, IdentityKind, IdentityName};

use crate::error::{ConfigError, Refusal};
use crate::grants::{GrantSet, TableGrant};
use crate::raw::{RawConfig, RawIdentity, RawRole};
use crate::sinks::{build_sinks, SinkConfig};
use crate::upstream::UpstreamUrl;

/// The whole deployment configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from; relative paths inside it are resolved against its directory.
    pub path: PathBuf,
    pub server: ServerSettings,
    pub audit: AuditSettings,
    pub databases: Vec<DatabaseConfig>,
    pub roles: Vec<Role>,
    pub identities: Vec<IdentityConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub postgres_listen: String,
    pub api_listen: Option<String>,
    pub data_dir: PathBuf,
    pub max_message_size: usize,
    /// Humans who may manage locks and any credential through the API (the offline commands need
    /// only access to the data dir).
    pub admins: Vec<IdentityName>,
    /// How long a write held for statement review waits for a decision before it is refused.
    pub review_timeout: Duration,
    /// Test-only (see raw.rs): statements are forwarded undecided; audit records say so.
    pub danger_disable_statement_checks: bool,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// "always" | "batch" | "off", checked at load.
    pub fsync: String,
    pub path: PathBuf,
    /// Rotate the active file at this size; 0 never rotates.
    pub rotate_size_mib: u64,
    /// Sign the chain head at most this often while records arrive (milliseconds, at least 1).
    pub checkpoint_interval_ms: u64,
    /// Record the first N rows of each result in `query.result` (0, the default: none).
    pub result_rows: usize,
    /// `[audit] redact`: compiled, none matching the empty string.
    pub redact: Vec<regex::Regex>,
    /// `[[audit.sink]]`, names unique.
    pub sinks: Vec<SinkConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamAuth {
    Cert,
    Password,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub name: String,
    pub url: UpstreamUrl,
    pub upstream_auth: UpstreamAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    None,
    Session,
    Statement,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub databases: Vec<String>,
    pub read: Vec<TableGrant>,
    pub write: Vec<TableGrant>,
    pub row_filter: BTreeMap<String, String>,
    pub max_ttl: Option<Duration>,
    pub approval: Approval,
    pub approvers: Vec<String>,
    pub requester_may_approve: bool,
    pub allow_do: bool,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub identity: IdentityName,
    pub roles: Vec<String>,
    pub traits: BTreeMap<String, String>,
    pub max_ttl: Option<Duration>,
}

/// How long a held write waits for a reviewer unless `server.review_timeout` says otherwise.
pub const DEFAULT_REVIEW_TIMEOUT: Duration = Duration::minutes(5);

/// Default upper bound on any credential's lifetime when neither the identity nor its roles set one.
pub const DEFAULT_MAX_TTL: Duration = Duration::hours(12);

impl Config {
    /// Reads and validates `path`. Every error names the file, and where it can, the line and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (used by tests and by reload).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let cx = Locator { path, text };
        build(&cx, raw)
    }

    /// Whether `[audit]` differs from `other`'s: the log, its redaction and its sinks are set up at
    /// start, so a reload cannot change them.
    pub fn audit_differs(&self, other: &Config) -> bool {
        let (a, b) = (&self.audit, &other.audit);
        let patterns = |s: &AuditSettings| s.redact.iter().map(|r| r.as_str().to_string()).collect::<Vec<_>>();
        (&a.fsync, &a.path, a.rotate_size_mib, a.checkpoint_interval_ms, &a.sinks)
            != (&b.fsync, &b.path, b.rotate_size_mib, b.checkpoint_interval_ms, &b.sinks)
            || patterns(a) != patterns(b)
    }

    /// The directory relative paths in this file are resolved against.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.name == name)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// Whether role `name` is held only through an approved access request (`approval = "session"`).
    pub fn needs_request(&self, name: &str) -> bool {
        self.role(name).is_some_and(|r| r.approval == Approval::Session)
    }

    /// Admins in `server.admins` that no `[[human]]` defines. They cannot log in, so they administer
    /// nothing: most likely a typo, or a human removed whose admin line was forgotten. Not an error:
    /// refusing such a file at reload would keep the removed human's access.
    pub fn unconfigured_admins(&self) -> Vec<&IdentityName> {
        self.server
            .admins
            .iter()
            .filter(|a| self.identity(a).is_none())
            .collect()
    }

    pub fn identity(&self, id: &IdentityName) -> Option<&IdentityConfig> {
        self.identities.iter().find(|i| &i.identity == id)
    }

    /// Effective roles for one connection (PRODUCT.md §2): credential roles ∩ the identity's configured roles,
    /// ∩ the requester's current roles for an agent, limited to roles that cover `database`.
    pub fn effective_roles(
        &self,
        identity: &IdentityName,
        requester: Option<&IdentityName>,
        credential_roles: &[String],
        database: &str,
    ) -> Result<Vec<&Role>, Refusal> {
        if self.database(database).is_none() {
            let known: Vec<&str> = self.databases.iter().map(|d| d.name.as_str()).collect();
            return Err(Refusal::UnknownDatabase {
                database: database.to_string(),
                known: known.join(", "),
            });
        }
        let configured = self.identity(identity).ok_or_else(|| Refusal::UnknownIdentity {
            identity: identity.clone(),
        })?;
        let requester_roles: Option<&[String]> = match (identity.kind, requester) {
            (IdentityKind::Agent, None) => {
                return Err(Refusal::MissingRequester {
                    identity: identity.clone(),
                })
            }
            (_, None) => None,
            (_, Some(req)) => {
                let r = self.identity(req).ok_or_else(|| Refusal::UnknownRequester {
                    identity: identity.clone(),
                    requester: req.clone(),
                })?;
                Some(&r.roles)
            }
        };
        let roles: Vec<&Role> = credential_roles
            .iter()
            .filter(|r| configured.roles.contains(r))
            .filter(|r| requester_roles.is_none_or(|req| req.contains(r)))
            .filter_map(|r| self.role(r))
            .filter(|r| r.databases.iter().any(|d| d == database))
            .collect();
        if roles.is_empty() {
            return Err(Refusal::NoRoleForDatabase {
                identity: identity.clone(),
                database: database.to_string(),
                credential_roles: if credential_roles.is_empty() {
                    "none".to_string()
                } else {
                    credential_roles.join(", ")
                },
            });
        }
        Ok(roles)
    }

    /// The privileges a set of roles adds up to in one database.
    pub fn grants(&self, roles: &[&Role]) -> GrantSet {
        GrantSet::from_roles(roles)
    }

    /// The longest lifetime a credential for `identity` (acting for `requester`) with `roles` may have:
    /// the smallest `max_ttl` among the identity, the requester and the roles.
    pub fn max_ttl(&self, identity: &IdentityName, requester: Option<&IdentityName>, roles: &[String]) -> Duration {
        let mut ttl = DEFAULT_MAX_TTL;
        let mut bound = |d: Option<Duration>| {
            if let Some(d) = d {
                ttl = ttl.min(d);
            }
        };
        bound(self.identity(identity).and_then(|i| i.max_ttl));
        bound(requester.and_then(|r| self.identity(r)).and_then(|i| i.max_ttl));
        for r in roles.iter().filter_map(|r| self.role(r)) {
            bound(r.max_ttl);
        }
        ttl
    }
}

/// Turns byte offsets into line numbers for error messages.
pub(crate) struct Locator<'a> {
    pub(crate) path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|b| *b == b'\n').count() + 1
    }

    pub(crate) fn invalid<T>(&self, value: &Spanned<T>, key: &str, reason: impl Into<String>) -> ConfigError {
        self.invalid_at(value.span(), key, reason)
    }

    pub(crate) fn invalid_at(&self, span: Range<usize>, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line(span),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn duration(&self, value: &Option<Spanned<String>>, key: &str) -> Result<Option<Duration>, ConfigError> {
        let Some(v) = value else { return Ok(None) };
        match parse_duration(v.get_ref()) {
            Ok(d) if d.is_positive() => Ok(Some(d)),
            Ok(_) => Err(self.invalid(v, key, "must be longer than zero")),
            Err(e) => Err(self.invalid(v, key, e.to_string())),
        }
    }
}

fn build(cx: &Locator, raw: RawConfig) -> Result<Config, ConfigError> {
    let base = cx.path.parent().unwrap_or(Path::new("."));
    let server = build_server(cx, base, &raw)?;
    let audit = build_audit(cx, &server, &raw)?;

    let mut databases = Vec::new();
    for db in &raw.databases {
        let name = identifier(cx, &db.name, "database.name")?;
        if databases.iter().any(|d: &DatabaseConfig| d.name == name) {
            return Err(cx.invalid(
                &db.name,
                "database.name",
                format!("database \"{name}\" is defined twice"),
            ));
        }
        let url = UpstreamUrl::parse(db.url.get_ref(), base).map_err(|e| cx.invalid(&db.url, "database.url", e))?;
        let upstream_auth = match db.upstream_auth.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("cert") => UpstreamAuth::Cert,
            Some("password") => UpstreamAuth::Password,
            Some(other) => {
                let span = db.upstream_auth.as_ref().expect("matched Some above");
                return Err(cx.invalid(
                    span,
                    "database.upstream_auth",
                    format!("\"{other}\" is not one of \"cert\", \"password\""),
                ));
            }
        };
        databases.push(DatabaseConfig {
            name,
            url,
            upstream_auth,
        });
    }

    let mut roles = Vec::new();
    for r in &raw.roles {
        let role = build_role(cx, r, &databases)?;
        if roles.iter().any(|x: &Role| x.name == role.name) {
            return Err(cx.invalid(&r.name, "role.name", format!("role \"{}\" is defined twice", role.name)));
        }
        roles.push(role);
    }
    for (r, raw_role) in roles.iter().zip(&raw.roles) {
        for (a, span) in r.approvers.iter().zip(&raw_role.approvers) {
            if !roles.iter().any(|x| &x.name == a) {
                return Err(cx.invalid(span, "role.approvers", format!("unknown role \"{a}\"")));
            }
        }
    }

    let mut identities = Vec::new();
    let kinds = [
        (IdentityKind::Human, &raw.humans, "human"),
        (IdentityKind::Agent, &raw.agents, "agent"),
        (IdentityKind::Workload, &raw.workloads, "workload"),
    ];
    for (kind, list, table) in kinds {
        for i in list.iter() {
            let ident = build_identity(cx, kind, table, i, &roles)?;
            if identities.iter().any(|x: &IdentityConfig| x.identity == ident.identity) {
                return Err(cx.invalid(
                    &i.name,
                    &format!("{table}.name"),
                    format!("{} is defined twice", ident.identity),
                ));
            }
            identities.push(ident);
        }
    }
    // A trait no holder of the role has is a typo: every connection under the role would be refused
    // (a holder without it is refused alone; an agent's traits are its requester's, who holds the
    // role too).
    for (r, raw_role) in roles.iter().zip(&raw.roles) {
        let holders: Vec<&IdentityConfig> = identities
            .iter()
            .filter(|i| i.identity.kind != IdentityKind::Agent && i.roles.contains(&r.name))
            .collect();
        if holders.is_empty() {
            continue;
        }
        for (table, filter) in &raw_role.row_filter {
            if let Some(t) =
                filter_traits(filter.get_ref()).find(|t| !holders.iter().any(|i| i.traits.contains_key(*t)))
            {
                return Err(cx.invalid(
                    filter,
                    &format!("role.row_filter.\"{table}\""),
                    format!(
                        "{{{{traits.{t}}}}}: no human or workload holding role \"{}\" has a trait \"{t}\" (a typo?); add it to their traits",
                        r.name
                    ),
                ));
            }
        }
    }

    Ok(Config {
        path: cx.path.to_path_buf(),
        server,
        audit,
        databases,
        roles,
        identities,
    })
}

fn build_server(cx: &Locator, base: &Path, raw: &RawConfig) -> Result<ServerSettings, ConfigError> {
    let s = &raw.server;
    check_listen(cx, &s.postgres_listen, "server.postgres_listen")?;
    if let Some(api) = &s.api_listen {
        check_listen(cx, api, "server.api_listen")?;
    }
    let max_message_size = match &s.max_message_size {
        Some(v) if *v.get_ref() < 1024 => {
            return Err(cx.invalid(v, "server.max_message_size", "must be at least 1024 bytes"))
        }
        Some(v) => *v.get_ref(),
        None => default_max_message_size(),
    };
    let mut admins = Vec::new();
    for a in &s.admins {
        let id: IdentityName = a
            .get_ref()
            .parse()
            .map_err(|e| cx.invalid(a, "server.admins", format!("{e}; write admins as \"human:NAME\"")))?;
        if id.kind != IdentityKind::Human {
            return Err(cx.invalid(
                a,
                "server.admins",
                format!("{id} is not a human; only humans administer Warden"),
            ));
        }
        admins.push(id);
    }
    Ok(ServerSettings {
        postgres_listen: s.postgres_listen.get_ref().clone(),
        api_listen: s.api_listen.as_ref().map(|a| a.get_ref().clone()),
        data_dir: clean(&base.join(s.data_dir.as_deref().unwrap_or("."))),
        max_message_size,
        admins,
        review_timeout: match (
            &s.review_timeout,
            cx.duration(&s.review_timeout, "server.review_timeout")?,
        ) {
            (Some(v), Some(d)) if d > Duration::days(1) => {
                return Err(cx.invalid(
                    v,
                    "server.review_timeout",
                    "must be at most 1d: a held statement keeps its session and transaction waiting",
                ))
            }
            (_, d) => d.unwrap_or(DEFAULT_REVIEW_TIMEOUT),
        },
        danger_disable_statement_checks: s.danger_disable_statement_checks,
    })
}

/// PostgreSQL's own limit on most messages is 1 GiB; Warden caps lower by default to bound memory per session.
fn default_max_message_size() -> usize {
    64 * 1024 * 1024
}

/// `dir/./audit` reads as `dir/audit` in every message that shows it.
pub(crate) fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

fn check_listen(cx: &Locator, v: &Spanned<String>, key: &str) -> Result<(), ConfigError> {
    v.get_ref().parse::<std::net::SocketAddr>().map(|_| ()).map_err(|_| {
        cx.invalid(
            v,
            key,
            format!("\"{}\" is not an address like 127.0.0.1:6432", v.get_ref()),
        )
    })
}

fn build_audit(cx: &Locator, server: &ServerSettings, raw: &RawConfig) -> Result<AuditSettings, ConfigError> {
    let fsync = match &raw.audit.fsync {
        None => "batch".to_string(),
        Some(v) if ["always", "batch", "off"].contains(&v.get_ref().as_str()) => v.get_ref().clone(),
        Some(v) => {
            return Err(cx.invalid(
                v,
                "audit.fsync",
                format!("\"{}\" is not one of \"always\", \"batch\", \"off\"", v.get_ref()),
            ))
        }
    };
    let path = match &raw.audit.path {
        Some(p) => clean(&cx.path.parent().unwrap_or(Path::new(".")).join(p)),
        None => server.data_dir.join("audit").join("audit.jsonl"),
    };
    let rotate_size_mib = match &raw.audit.rotate_size_mib {
        None => 256,
        Some(v) if (0..=1024 * 1024).contains(v.get_ref()) => *v.get_ref() as u64,
        Some(v) => {
            return Err(cx.invalid(
                v,
                "audit.rotate_size_mib",
                "must be between 0 (never rotate) and 1048576",
            ))
        }
    };
    let checkpoint_interval_ms = match &raw.audit.checkpoint_interval_ms {
        None => 200,
        Some(v) if (1..=3_600_000).contains(v.get_ref()) => *v.get_ref() as u64,
        Some(v) => {
            return Err(cx.invalid(
                v,
                "audit.checkpoint_interval_ms",
                "must be between 1 and 3600000; a longer interval leaves more of the log's end unsigned",
            ))
        }
    };
    let result_rows = match &raw.audit.result_rows {
        None => 0,
        Some(v) if (0..=1000).contains(v.get_ref()) => *v.get_ref() as usize,
        Some(v) => {
            return Err(cx.invalid(
                v,
                "audit.result_rows",
                "must be between 0 (no rows recorded, the default) and 1000",
            ))
        }
    };
    let mut redact = Vec::new();
    for p in &raw.audit.redact {
        let re = regex::Regex::new(p.get_ref())
            .map_err(|e| cx.invalid(p, "audit.redact", format!("not a regular expression: {e}")))?;
        if re.is_match("") {
            return Err(cx.invalid(
                p,
                "audit.redact",
                "the pattern matches the empty string, so it would redact between every character",
            ));
        }
        redact.push(re);
    }
    let sinks = build_sinks(cx, &path, &raw.audit.sink)?;
    Ok(AuditSettings {
        fsync,
        path,
        rotate_size_mib,
        checkpoint_interval_ms,
        result_rows,
        redact,
        sinks,
    })
}

fn build_role(cx: &Locator, r: &RawRole, databases: &[DatabaseConfig]) -> Result<Role, ConfigError> {
    let name = identifier(cx, &r.name, "role.name")?;
    let mut dbs = Vec::new();
    for d in &r.databases {
        if !databases.iter().any(|x| &x.name == d.get_ref()) {
            return Err(cx.invalid(d, "role.databases", format!("unknown database \"{}\"", d.get_ref())));
        }
        dbs.push(d.get_ref().clone());
    }
    let grants = |list: &[Spanned<String>], key: &str| -> Result<Vec<TableGrant>, ConfigError> {
        list.iter()
            .map(|g| TableGrant::parse(g.get_ref()).map_err(|e| cx.invalid(g, key, e)))
            .collect()
    };
    let mut row_filter = BTreeMap::new();
    for (table, filter) in &r.row_filter {
        let key = format!("role.row_filter.\"{table}\"");
        let t = TableGrant::parse(table).map_err(|e| cx.invalid(filter, &key, e))?;
        if t.columns.is_some() || t.table.is_all() {
            return Err(cx.invalid(filter, &key, "a row filter names one table, like \"public.orders\""));
        }
        check_filter(filter.get_ref()).map_err(|e| cx.invalid(filter, &key, e))?;
        row_filter.insert(t.table.to_string(), filter.get_ref().clone());
    }
    let approval = match r.approval.as_ref().map(|a| a.get_ref().as_str()) {
        None | Some("none") => Approval::None,
        Some("session") => Approval::Session,
        Some("statement") => Approval::Statement,
        Some(other) => {
            let span = r.approval.as_ref().expect("matched Some above");
            return Err(cx.invalid(
                span,
                "role.approval",
                format!("\"{other}\" is not one of \"none\", \"session\", \"statement\""),
            ));
        }
    };
    if approval != Approval::None && r.approvers.is_empty() {
        let span = r.approval.as_ref().expect("approval is set when not none");
        return Err(cx.invalid(
            span,
            "role.approvers",
            "approval needs approvers = [\"ROLE\", ...]: the roles whose holders may approve",
        ));
    }
    Ok(Role {
        name,
        databases: dbs,
        read: grants(&r.read, "role.read")?,
        write: grants(&r.write, "role.write")?,
        row_filter,
        max_ttl: cx.duration(&r.max_ttl, "role.max_ttl")?,
        approval,
        approvers: r.approvers.iter().map(|a| a.get_ref().clone()).collect(),
        requester_may_approve: r.requester_may_approve,
        allow_do: r.allow_do,
    })
}

fn build_identity(
    cx: &Locator,
    kind: IdentityKind,
    table: &str,
    i: &RawIdentity,
    roles: &[Role],
) -> Result<IdentityConfig, ConfigError> {
    let identity = IdentityName::new(kind, i.name.get_ref())
        .map_err(|e| cx.invalid(&i.name, &format!("{table}.name"), e.to_string()))?;
    let mut seen = BTreeSet::new();
    for r in &i.roles {
        if !roles.iter().any(|x| &x.name == r.get_ref()) {
            return Err(cx.invalid(
                r,
                &format!("{table}.roles"),
                format!("unknown role \"{}\"", r.get_ref()),
            ));
        }
        seen.insert(r.get_ref().clone());
    }
    Ok(IdentityConfig {
        identity,
        roles: i.roles.iter().map(|r| r.get_ref().clone()).collect(),
        traits: i.traits.clone(),
        max_ttl: cx.duration(&i.max_ttl, &format!("{table}.max_ttl"))?,
    })
}

/// The trait names a row filter's `{{traits.X}}` placeholders use.
fn filter_traits(filter: &str) -> impl Iterator<Item = &str> {
    filter.split("{{").skip(1).filter_map(|rest| {
        let (inside, _) = rest.split_once("}}")?;
        inside.trim().strip_prefix("traits.").map(str::trim)
    })
}

fn identifier(cx: &Locator, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let s = v.get_ref();
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(s.clone())
    } else {
        Err(cx.invalid(
            v,
            key,
            format!("\"{s}\" is not a valid name (letters, digits, _ - . ; at most 63)"),
        ))
    }
}

/// Checks a row filter: one boolean expression by PostgreSQL's grammar (each placeholder read as a
/// string literal), balanced, with no `;`, and placeholders only of traits.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("the filter is empty".into());
    }
    if filter.contains(';') {
        return Err("a row filter is one boolean expression; it may not contain ';'".into());
    }
    let mut depth = 0i32;
    let mut in_quote = false;
    for c in filter.chars() {
        match c {
            '\'' => in_quote = !in_quote,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return Err("unbalanced parentheses".into());
        }
    }
    if depth != 0 || in_quote {
        return Err("unbalanced parentheses or quotes".into());
    }
    // The filter as PostgreSQL will read it, each placeholder replaced by a literal as it will be.
    let mut probe = String::with_capacity(filter.len());
    let mut rest = filter;
    while let Some(start) = rest.find("{{") {
        probe.push_str(&rest[..start]);
        // A literal with content, as it will be: a placeholder put inside quotes then fails here.
        probe.push_str("'x'");
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("a {{ placeholder is not closed with }}")?;
        let name = after[..end].trim();
        let trait_name = name
            .strip_prefix("traits.")
            .ok_or_else(|| format!("unknown placeholder {{{{{name}}}}}; use {{{{traits.NAME}}}}"))?;
        if trait_name.is_empty() || !trait_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad trait name in {{{{{name}}}}}"));
        }
        rest = &after[end + 2..];
    }
    probe.push_str(rest);
    warden_sql::check_expression(&probe).map_err(|e| format!("not a SQL expression PostgreSQL can read: {e}"))
}

#[cfg(test)]
mod tests;
