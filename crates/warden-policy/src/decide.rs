//! The decision: one value, Allow or Deny { rule, reason }, from a statement's analysis and the
//! session's effective roles. Forwarding, audit and the error the client sees all act on this value.

use std::collections::BTreeMap;
use warden_sql::{Class, Forbidden, QualifiedName, SessionEffect, StatementAccess, Volatility, WriteKind};

use crate::config::Role;
use crate::grants::TableGrant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny {
        /// A short name of the rule that refused: `read`, `write`, `ddl`, `privilege`, `function`, ...
        rule: &'static str,
        /// A sentence naming the role and what it may not do.
        reason: String,
        /// What the person can do about it.
        hint: String,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Built-in functions that reach outside the session (other backends, the server's files, the
/// server's configuration): never through Warden, whatever the role.
const NEVER: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_file_write",
    "lo_import",
    "lo_export",
    "pg_switch_wal",
    "pg_promote",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_logical_emit_message",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    // These run SELECT * on a table, schema or database named in a string, or run a query given as text.
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
];

/// Volatile built-ins that change nothing: read-only roles may call them.
const HARMLESS_VOLATILE: &[&str] = &[
    // Sizes and partition parents, for psql's \d+ and database tools: metadata only.
    "pg_table_size",
    "pg_total_relation_size",
    "pg_relation_size",
    "pg_indexes_size",
    "pg_database_size",
    "pg_partition_ancestors",
    "random",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "pg_sleep",
    "set_config",
];

/// Schemas of PostgreSQL's own catalog: readable by every role (PostgreSQL's privileges still apply).
const SYSTEM_SCHEMAS: &[&str] = &["pg_catalog", "information_schema"];

/// Whether running the statement may change data: a write, a `DO` block or a procedure, or a call
/// of a volatile (or unknown) function other than the harmless built-ins. What statement review
/// holds for a person's approval.
pub fn may_write(s: &StatementAccess) -> bool {
    s.class() == warden_sql::Class::Write
        || !s.writes.is_empty()
        || s.effects.contains(&warden_sql::SessionEffect::DoBlock)
        || s.functions.iter().any(|(name, volatility)| {
            let base = name.rsplit('.').next().unwrap_or(name);
            matches!(volatility, Volatility::Volatile | Volatility::Unknown) && !HARMLESS_VOLATILE.contains(&base)
        })
}

/// Decides a whole statement string: denied as a whole if any statement in it is denied.
pub fn decide(statements: &[StatementAccess], roles: &[&Role]) -> Decision {
    for s in statements {
        let d = decide_one(s, roles);
        if !d.is_allow() {
            return d;
        }
    }
    Decision::Allow
}

fn decide_one(s: &StatementAccess, roles: &[&Role]) -> Decision {
    // Named only in a refusal's message: formatted then, not for every statement allowed.
    let who = RoleNames(roles);
    let read_only = roles.iter().all(|r| r.write.is_empty());
    if let Some(f) = s.forbidden.first() {
        let rule = match f {
            Forbidden::ProtectedSetting(_) => "privilege",
            Forbidden::UnknownRelation(_) | Forbidden::UnknownColumn(_) => "unknown",
            _ => "never",
        };
        let hint = match f {
            Forbidden::SecurityDefiner(_) => {
                "ask the database's owner for a SECURITY INVOKER version, or for the grants it needs"
            }
            _ => "this is refused for every role",
        };
        return deny(rule, f.to_string(), hint.into());
    }
    match s.class() {
        Class::Ddl => {
            return deny(
                "ddl",
                format!("{who} may not change the schema (DDL)"),
                "schema changes go through your migration process, not through Warden".into(),
            )
        }
        Class::Privilege => {
            return deny(
                "privilege",
                format!("{who} may not change roles or privileges"),
                "Warden provisions this session's PostgreSQL role; ask an administrator to change warden.toml".into(),
            )
        }
        _ => {}
    }
    for e in &s.effects {
        match e {
            SessionEffect::DoBlock if !roles.iter().any(|r| r.allow_do) => {
                return deny(
                    "do",
                    format!("{who} may not run DO blocks"),
                    "run the statements themselves, or ask for a role with allow_do = true".into(),
                )
            }
            // The read-only rules include RESET ALL (and so DISCARD ALL). For other roles it is
            // harmless: the search_path is fixed for the session, so RESET puts back the same value.
            SessionEffect::ResetAll if read_only => {
                return deny(
                    "session",
                    format!("{who} is read-only and may not RESET ALL or DISCARD ALL"),
                    "reset single settings by name".into(),
                )
            }
            SessionEffect::Notify if read_only => {
                return deny(
                    "write",
                    format!("{who} is read-only and may not NOTIFY"),
                    "ask for a role that may write".into(),
                )
            }
            _ => {}
        }
    }
    for (rel, sources) in &s.sources {
        if let Some(d) = check_sources(rel, sources, roles, &who) {
            return d;
        }
    }
    for (rel, shown) in &s.shown_by {
        if let Some(d) = check_shown(rel, shown, roles, &who) {
            return d;
        }
    }
    for (rel, cols) in &s.reads {
        if let Some(d) = check_read(rel, cols.iter(), roles, &who) {
            return d;
        }
    }
    for (rel, (kinds, cols)) in &s.writes {
        for kind in kinds {
            if let Some(d) = check_write(rel, *kind, cols.iter(), roles, &who) {
                return d;
            }
        }
    }
    if read_only && s.class() == Class::Write {
        // A write that names no table (CALL of a procedure, ...): a read-only role runs none.
        return deny(
            "write",
            format!("{who} is read-only and may not run this statement"),
            "ask for a role that may write".into(),
        );
    }
    if let Some(d) = check_functions(s, &who, read_only) {
        return d;
    }
    Decision::Allow
}

fn check_functions(s: &StatementAccess, who: &RoleNames, read_only: bool) -> Option<Decision> {
    for (name, volatility) in &s.functions {
        let base = name.rsplit('.').next().unwrap_or(name);
        if NEVER.contains(&base) {
            return Some(deny(
                "function",
                format!("function {base} is never allowed through Warden"),
                "it acts outside your session".into(),
            ));
        }
        let may_write = matches!(volatility, Volatility::Volatile | Volatility::Unknown);
        if read_only && may_write && !HARMLESS_VOLATILE.contains(&base) {
            let why = if *volatility == Volatility::Unknown {
                "is not in the catalog"
            } else {
                "is volatile and may change data"
            };
            return Some(deny(
                "function",
                format!("{who} is read-only: function {name} {why}"),
                "call only stable or immutable functions, or ask for a role that may write".into(),
            ));
        }
    }
    None
}

fn check_read<'a>(
    rel: &QualifiedName,
    cols: impl Iterator<Item = &'a String>,
    roles: &[&Role],
    who: &RoleNames,
) -> Option<Decision> {
    if SYSTEM_SCHEMAS.contains(&rel.schema.as_str()) {
        return None;
    }
    let grants = || roles.iter().flat_map(|r| &r.read).filter(|g| matches(g, rel));
    if grants().next().is_none() {
        return Some(deny(
            "read",
            format!("{who} may not read table {rel}"),
            format!("ask for a role whose read list includes {rel}"),
        ));
    }
    for col in cols {
        if !grants().any(|g| g.columns.as_ref().is_none_or(|c| c.contains(col))) {
            return Some(deny(
                "read",
                format!("{who} may not read column {rel}.{col}"),
                "name only the columns your role may read (SELECT * and whole-row references include every column)"
                    .into(),
            ));
        }
    }
    None
}

fn check_write<'a>(
    rel: &QualifiedName,
    kind: WriteKind,
    cols: impl Iterator<Item = &'a String>,
    roles: &[&Role],
    who: &RoleNames,
) -> Option<Decision> {
    let grants: Vec<&TableGrant> = roles
        .iter()
        .flat_map(|r| &r.write)
        .filter(|g| matches(g, rel))
        .collect();
    let hint = || format!("ask for a role whose write list includes {rel}");
    if grants.is_empty() {
        let what = if roles.iter().all(|r| r.write.is_empty()) {
            format!("{who} is read-only and may not {kind} {rel}")
        } else {
            format!("{who} may not {kind} {rel}")
        };
        return Some(deny("write", what, hint()));
    }
    match kind {
        WriteKind::Insert | WriteKind::Update => {
            for col in cols {
                if !grants
                    .iter()
                    .any(|g| g.columns.as_ref().is_none_or(|c| c.contains(col)))
                {
                    return Some(deny("write", format!("{who} may not write column {rel}.{col}"), hint()));
                }
            }
        }
        WriteKind::Delete | WriteKind::Truncate | WriteKind::Lock => {
            if !grants.iter().any(|g| g.columns.is_none()) {
                return Some(deny(
                    "write",
                    format!("{who} may not {kind} {rel}: its write grant is limited to columns"),
                    hint(),
                ));
            }
        }
    }
    if kind == WriteKind::Truncate {
        // TRUNCATE empties the table past row-level security: not with a row filter in force.
        let table = rel.to_string();
        if roles.iter().any(|r| r.row_filter.contains_key(&table))
            && crate::GrantSet::from_roles(roles).row_filters.contains_key(&table)
        {
            return Some(deny(
                "write",
                format!("{who} may not truncate {rel}: a row filter limits this session to some of its rows, and TRUNCATE removes all"),
                "delete the rows instead (DELETE FROM ... WHERE ...); the filter applies to it".into(),
            ));
        }
    }
    None
}

/// The row filters in force for the session (another role may lift one), computed only if some role
/// filters one of `tables`.
fn filters_in_force(tables: &[QualifiedName], roles: &[&Role]) -> Option<BTreeMap<String, Vec<String>>> {
    let filtered = |t: &QualifiedName| {
        let t = t.to_string();
        roles.iter().any(|r| r.row_filter.contains_key(&t))
    };
    tables
        .iter()
        .any(filtered)
        .then(|| crate::GrantSet::from_roles(roles).row_filters)
}

/// A relation that shows a filtered table's rows past the filter (a partition or child table of it,
/// a view over it): refused, unless a filter of its own is in force.
fn check_sources(rel: &QualifiedName, sources: &[QualifiedName], roles: &[&Role], who: &RoleNames) -> Option<Decision> {
    let in_force = filters_in_force(sources, roles)?;
    if in_force.contains_key(&rel.to_string()) {
        return None;
    }
    let source = sources.iter().find(|s| in_force.contains_key(&s.to_string()))?;
    Some(deny(
        "filter",
        format!(
            "{who} sees {source} only through a row filter, and {rel} (a partition, child table or view of it) would show its rows past the filter"
        ),
        format!("query {source} itself, where the filter applies (or, for a partition or child table, ask for a row_filter on {rel})"),
    ))
}

/// A table that holds the rows of a partition, child table (or view) whose own filter is in force:
/// PostgreSQL applies only the policies of the table a query names, so through this one the
/// partition's filter would not apply.
fn check_shown(rel: &QualifiedName, shown: &[QualifiedName], roles: &[&Role], who: &RoleNames) -> Option<Decision> {
    let in_force = filters_in_force(shown, roles)?;
    let part = shown.iter().find(|s| in_force.contains_key(&s.to_string()))?;
    Some(deny(
        "filter",
        format!(
            "{who} sees {part} only through a row filter, which does not apply through {rel} (its parent table, or a table it shows)"
        ),
        format!("query {part} itself, where the filter applies"),
    ))
}

fn matches(g: &TableGrant, rel: &QualifiedName) -> bool {
    g.table.schema == rel.schema && g.table.name.as_ref().is_none_or(|n| n == &rel.name)
}

/// `role analyst`, `roles analyst, support`: who a refusal is about.
struct RoleNames<'a>(&'a [&'a Role]);

impl std::fmt::Display for RoleNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            [one] => write!(f, "role {}", one.name),
            many => {
                f.write_str("roles ")?;
                for (i, r) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(&r.name)?;
                }
                Ok(())
            }
        }
    }
}

fn deny(rule: &'static str, reason: String, hint: String) -> Decision {
    Decision::Deny { rule, reason, hint }
}

#[cfg(test)]
mod tests;
