//! Statement analysis with PostgreSQL's own grammar (libpg_query via the `pg_query` crate).
//!
//! `analyze` parses a statement string once and reports, for every statement in it, its class, every
//! relation it reads (with the columns, `*` and whole-row references expanded from the catalog) or
//! writes, the functions it calls, and the things that are never allowed (COPY to a program, file
//! access, an unknown relation). It decides nothing: `warden-policy` turns this into Allow or Deny.
//! Anything the walker does not understand is reported as forbidden, so the caller fails closed.

mod access;
mod cache;
mod catalog;
mod shape;
mod walk;

pub use access::{Class, Forbidden, QualifiedName, SessionEffect, StatementAccess, WriteKind};
pub use cache::{Analysis, AnalysisCache};
pub use catalog::{Catalog, RelationInfo, Volatility};

/// Per-session context the analysis depends on.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// The session's search_path, `$user` already replaced by the role name.
    pub search_path: Vec<String>,
    /// The session's role, for `$user` in a search_path set by a statement.
    pub user: String,
}

impl Default for SessionContext {
    fn default() -> Self {
        SessionContext {
            search_path: vec!["public".into()],
            user: String::new(),
        }
    }
}

impl SessionContext {
    /// The path after `SET search_path TO entries`.
    pub fn with_path(&self, entries: &[String]) -> SessionContext {
        let search_path = entries
            .iter()
            .map(|e| e.trim().trim_matches('"'))
            .filter(|e| !e.is_empty())
            .map(|e| if e == "$user" { self.user.clone() } else { e.to_string() })
            .collect();
        SessionContext {
            search_path,
            user: self.user.clone(),
        }
    }
}

/// Whether `name` is UTF-8 as PostgreSQL spells it. Warden reads every statement and name as UTF-8,
/// and PostgreSQL compares names by their bytes in its own encoding after converting from the
/// client's: any other client encoding could make PostgreSQL read bytes differently (a multi-byte
/// character hiding a quote) or cut two different names to one. So the client encoding is UTF-8.
pub fn utf8_client_encoding(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(n.as_str(), "utf8" | "unicode")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("cannot parse the statement: {0}")]
    Parse(String),
}

/// Checks that `expr` is one SQL expression as PostgreSQL's grammar reads it (a row filter, which
/// becomes a row-level security policy's `USING (...)`): it must parse as the condition of
/// `SELECT WHERE (expr)` and nothing more. Names in it are not resolved.
pub fn check_expression(expr: &str) -> Result<(), String> {
    // On one line, as the policy is written: a `--` comment would swallow the rest.
    let sql = format!("SELECT WHERE ({expr})");
    let parsed = pg_query::parse(&sql, 0).map_err(|e| match e {
        pg_query::Error::Parse(message) => message,
        other => other.to_string(),
    })?;
    let condition_only = match parsed.protobuf.stmts.as_slice() {
        [one] => match one.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            Some(pg_query::NodeEnum::SelectStmt(s)) => {
                s.where_clause.is_some()
                    && s.target_list.is_empty()
                    && s.from_clause.is_empty()
                    && s.group_clause.is_empty()
                    && s.having_clause.is_none()
                    && s.sort_clause.is_empty()
                    && s.limit_count.is_none()
                    && s.limit_offset.is_none()
                    && s.larg.is_none()
            }
            _ => false,
        },
        _ => false,
    };
    if condition_only {
        Ok(())
    } else {
        Err("it is not one expression".into())
    }
}

/// Analyses every statement of `sql` (a simple-protocol string may hold several).
pub fn analyze(sql: &str, catalog: &Catalog, session: &SessionContext) -> Result<Vec<StatementAccess>, SqlError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| SqlError::Parse(e.to_string()))?;
    let tree = serde_json::to_value(&parsed.protobuf).map_err(|e| SqlError::Parse(e.to_string()))?;
    let mut out = Vec::new();
    // Statements of one string run in order: a SET search_path changes how the next ones resolve.
    let mut session = session.clone();
    for raw in tree["stmts"].as_array().into_iter().flatten() {
        let start = raw["stmt_location"].as_u64().unwrap_or(0) as usize;
        let len = raw["stmt_len"].as_u64().unwrap_or(0) as usize;
        let text = if len == 0 {
            sql.get(start..).unwrap_or(sql)
        } else {
            sql.get(start..start + len).unwrap_or(sql)
        };
        let mut access = walk::statement(&raw["stmt"], catalog, &session);
        access.text = text.trim().to_string();
        if !catalog.sources.is_empty() {
            for rel in access.reads.keys().chain(access.writes.keys()) {
                if let Some(s) = catalog.sources.get(rel) {
                    access.sources.insert(rel.clone(), s.clone());
                }
                if let Some(s) = catalog.shown_by.get(rel) {
                    access.shown_by.insert(rel.clone(), s.clone());
                }
            }
        }
        for e in &access.effects {
            if let SessionEffect::SearchPath(p) = e {
                session = session.with_path(p);
            }
        }
        out.push(access);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
