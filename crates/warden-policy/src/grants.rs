//! Table grants as written in a role (`public.orders(id, status)`, `public.*`) and the privilege set
//! a group of roles adds up to, which provisioning turns into PostgreSQL GRANTs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::config::Role;

/// `schema.table` or `schema.*`, identifiers folded to lower case as PostgreSQL folds unquoted names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    pub schema: String,
    /// `None` means every table in the schema.
    pub name: Option<String>,
}

impl TableRef {
    pub fn is_all(&self) -> bool {
        self.name.is_none()
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}.{}", self.schema, n),
            None => write!(f, "{}.*", self.schema),
        }
    }
}

/// One entry of a role's `read` or `write` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableGrant {
    pub table: TableRef,
    /// `None`: every column.
    pub columns: Option<Vec<String>>,
}

impl TableGrant {
    /// Parses `schema.table`, `schema.table(col, ...)` or `schema.*`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (head, columns) = match text.find('(') {
            Some(open) => {
                let inner = text[open + 1..]
                    .strip_suffix(')')
                    .ok_or_else(|| format!("\"{text}\": a column list must end with ')'"))?;
                let cols: Vec<String> = inner
                    .split(',')
                    .map(|c| ident(c.trim(), text))
                    .collect::<Result<_, _>>()?;
                (&text[..open], Some(cols))
            }
            None => (text, None),
        };
        let (schema, name) = head
            .trim()
            .split_once('.')
            .ok_or_else(|| format!("\"{text}\": name the schema, like \"public.{}\"", head.trim()))?;
        let schema = ident(schema, text)?;
        let name = if name == "*" {
            if columns.is_some() {
                return Err(format!("\"{text}\": a column list needs one table, not \"*\""));
            }
            None
        } else {
            Some(ident(name, text)?)
        };
        Ok(TableGrant {
            table: TableRef { schema, name },
            columns,
        })
    }
}

fn ident(s: &str, whole: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("\"{whole}\": \"{s}\" is not a plain SQL identifier"))
    }
}

/// Which columns a privilege covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum ColumnScope {
    #[default]
    None,
    All,
    Columns(BTreeSet<String>),
}

impl ColumnScope {
    fn add(&mut self, columns: Option<&Vec<String>>) {
        match (columns, &mut *self) {
            (_, ColumnScope::All) => {}
            (None, _) => *self = ColumnScope::All,
            (Some(cols), ColumnScope::Columns(set)) => set.extend(cols.iter().cloned()),
            (Some(cols), ColumnScope::None) => *self = ColumnScope::Columns(cols.iter().cloned().collect()),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, ColumnScope::None)
    }

    /// Whether every column `other` covers, this covers.
    fn covers(&self, other: &ColumnScope) -> bool {
        match (self, other) {
            (_, ColumnScope::None) | (ColumnScope::All, _) => true,
            (ColumnScope::Columns(mine), ColumnScope::Columns(theirs)) => theirs.is_subset(mine),
            _ => false,
        }
    }
}

/// What one table (or a whole schema) is granted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TablePrivileges {
    pub select: ColumnScope,
    pub insert: ColumnScope,
    pub update: ColumnScope,
    pub delete: bool,
}

impl TablePrivileges {
    /// Adds what `role` grants on the table `schema.name` (by name or by `schema.*`).
    fn add_role_on(&mut self, role: &Role, table: &str) {
        let on = |g: &&TableGrant| {
            table
                .split_once('.')
                .is_some_and(|(s, n)| g.table.schema == s && g.table.name.as_deref().is_none_or(|x| x == n))
        };
        for g in role.read.iter().filter(on) {
            self.select.add(g.columns.as_ref());
        }
        for g in role.write.iter().filter(on) {
            self.insert.add(g.columns.as_ref());
            self.update.add(g.columns.as_ref());
            self.delete |= g.columns.is_none();
        }
    }

    /// Whether these privileges include all of `other`'s.
    fn covers(&self, other: &TablePrivileges) -> bool {
        self.select.covers(&other.select)
            && self.insert.covers(&other.insert)
            && self.update.covers(&other.update)
            && (self.delete || !other.delete)
    }
}

/// The union of the privileges of a set of roles: the exact set a provisioned PostgreSQL role should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GrantSet {
    pub tables: BTreeMap<TableRef, TablePrivileges>,
    /// Row filters by table (`schema.table`), one per role that sets one; rows visible = any filter holds.
    pub row_filters: BTreeMap<String, Vec<String>>,
}

impl GrantSet {
    pub fn from_roles(roles: &[&Role]) -> Self {
        let mut set = GrantSet::default();
        for role in roles {
            for g in &role.read {
                set.tables
                    .entry(g.table.clone())
                    .or_default()
                    .select
                    .add(g.columns.as_ref());
            }
            for g in &role.write {
                let p = set.tables.entry(g.table.clone()).or_default();
                p.insert.add(g.columns.as_ref());
                p.update.add(g.columns.as_ref());
                // DELETE removes whole rows, so only a write grant on every column implies it.
                p.delete |= g.columns.is_none();
            }
            for (table, filter) in &role.row_filter {
                set.row_filters.entry(table.clone()).or_default().push(filter.clone());
            }
        }
        // Roles add up, but row-level security filters whole rows, not columns: a filter is lifted
        // only when the roles without one grant, on every row, all that the filtered roles grant
        // on some. Otherwise it stays for all of the table (fewer rows than the sum: fail closed).
        set.row_filters.retain(|table, _| {
            let (mut filtered, mut open) = (TablePrivileges::default(), TablePrivileges::default());
            for r in roles {
                let p = if r.row_filter.contains_key(table) {
                    &mut filtered
                } else {
                    &mut open
                };
                p.add_role_on(r, table);
            }
            // Nothing granted on the table without a filter: nothing lifts it (a role may filter a
            // table it reaches only through a view or a partition).
            open == TablePrivileges::default() || !open.covers(&filtered)
        });
        set
    }

    /// The row filter text for each filtered table with `{{traits.X}}` replaced by quoted literals of
    /// `traits`; several roles' filters on one table are OR-ed. Err names a missing trait.
    pub fn resolved_row_filters(&self, traits: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for (table, filters) in &self.row_filters {
            let mut parts = Vec::new();
            for f in filters {
                parts.push(format!("({})", substitute_traits(f, traits)?));
            }
            out.insert(table.clone(), parts.join(" OR "));
        }
        Ok(out)
    }

    /// Schemas the role needs USAGE on.
    pub fn schemas(&self) -> BTreeSet<&str> {
        self.tables.keys().map(|t| t.schema.as_str()).collect()
    }
}

/// Replaces each `{{traits.X}}` with X's value as a SQL string literal.
fn substitute_traits(filter: &str, traits: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = filter;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let name = after[..end].trim();
        let key = name
            .strip_prefix("traits.")
            .ok_or_else(|| format!("unknown placeholder {{{{{name}}}}}"))?;
        let value = traits.get(key).ok_or_else(|| format!("trait \"{key}\" is not set"))?;
        out.push_str(&quote_literal(value));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A SQL string literal, as PostgreSQL's quote_literal writes it.
pub fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traits_become_quoted_literals() {
        let traits = BTreeMap::from([("region".to_string(), "e'u\\".to_string())]);
        assert_eq!(
            substitute_traits("region = {{ traits.region }}", &traits).unwrap(),
            "region = E'e''u\\\\'"
        );
        assert!(substitute_traits("region = {{traits.team}}", &traits)
            .unwrap_err()
            .contains("team"));
    }
}
