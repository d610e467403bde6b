//! Statement analysis with PostgreSQL's own grammar (libpg_query via the `pg_query` crate).
//!
//! `analyze` parses a statement string once and reports, for every statement in it, its class, every
//! relation it reads (with the columns, `*` and whole-row references expanded from the catalog) or
//! writes, the functions it calls, and the things that are never allowed (COPY to a program, file
//! access, an unknown relation). It decides nothing: `warden-policy` turns this into Allow or Deny.
//! Anything the walker does not understand is reported as forbidden, so the caller fails closed.

mod access;
mod catalog;
mod walk;

pub use access::{Class, Forbidden, QualifiedName, SessionEffect, StatementAccess, WriteKind};
pub use catalog::{Catalog, RelationInfo, Volatility};

/// Per-session context the analysis depends on.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// The session's search_path, `$user` already replaced by the role name.
    pub search_path: Vec<String>,
}

impl Default for SessionContext {
    fn default() -> Self {
        SessionContext {
            search_path: vec!["public".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("cannot parse the statement: {0}")]
    Parse(String),
}

/// Analyses every statement of `sql` (a simple-protocol string may hold several).
pub fn analyze(sql: &str, catalog: &Catalog, session: &SessionContext) -> Result<Vec<StatementAccess>, SqlError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| SqlError::Parse(e.to_string()))?;
    let tree = serde_json::to_value(&parsed.protobuf).map_err(|e| SqlError::Parse(e.to_string()))?;
    let mut out = Vec::new();
    for raw in tree["stmts"].as_array().into_iter().flatten() {
        let start = raw["stmt_location"].as_u64().unwrap_or(0) as usize;
        let len = raw["stmt_len"].as_u64().unwrap_or(0) as usize;
        let text = if len == 0 {
            sql.get(start..).unwrap_or(sql)
        } else {
            sql.get(start..start + len).unwrap_or(sql)
        };
        let mut access = walk::statement(&raw["stmt"], catalog, session);
        access.text = text.trim().to_string();
        out.push(access);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
