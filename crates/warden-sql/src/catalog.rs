use std::collections::HashMap;

use crate::QualifiedName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
    /// Not in the catalog: treated as volatile.
    Unknown,
}

#[derive(Debug, Clone, Default)]
pub struct RelationInfo {
    pub columns: Vec<String>,
}

/// What Warden knows of one database's schema: relations with their columns, functions with their
/// volatility. Loaded from the catalog by the proxy, refreshed on a miss.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Distinguishes one load of the catalog from the next, so cached analyses of an older one are not reused.
    pub generation: u64,
    pub relations: HashMap<QualifiedName, RelationInfo>,
    /// Function name (unqualified) -> the most volatile of its overloads, per schema.
    pub functions: HashMap<(String, String), Volatility>,
    /// Functions (schema, name) of which some overload is SECURITY DEFINER.
    pub definers: std::collections::HashSet<(String, String)>,
    /// Relation -> the other tables whose rows it shows without their row-level security applying
    /// to them (`close_sources` makes this transitive): a partition's or child table's ancestors,
    /// the relations a view or materialized view reads.
    pub sources: HashMap<QualifiedName, Vec<QualifiedName>>,
    /// The reverse of `sources`: table -> the partitions, child tables and views whose rows it
    /// holds (a parent shows its partitions' rows past their own policies).
    pub shown_by: HashMap<QualifiedName, Vec<QualifiedName>>,
}

impl Catalog {
    pub fn add_relation(&mut self, schema: &str, name: &str, columns: Vec<String>) {
        self.relations.insert(
            QualifiedName {
                schema: schema.into(),
                name: name.into(),
            },
            RelationInfo { columns },
        );
    }

    pub fn add_function(&mut self, schema: &str, name: &str, v: Volatility) {
        let e = self.functions.entry((schema.into(), name.into())).or_insert(v);
        *e = (*e).max(v);
    }

    /// `rel` shows rows of `source`: `rel` is a partition or child table of it, or a view over it.
    pub fn add_source(&mut self, rel: QualifiedName, source: QualifiedName) {
        if rel != source {
            self.sources.entry(rel).or_default().push(source);
        }
    }

    /// Makes `sources` transitive: a view over a view over a table shows the table's rows, a
    /// partition of a partition its grandparent's.
    pub fn close_sources(&mut self) {
        let direct = std::mem::take(&mut self.sources);
        for rel in direct.keys() {
            let mut all: Vec<QualifiedName> = Vec::new();
            let mut todo: Vec<&QualifiedName> = direct[rel].iter().collect();
            while let Some(s) = todo.pop() {
                if s == rel || all.contains(s) {
                    continue;
                }
                all.push(s.clone());
                todo.extend(direct.get(s).into_iter().flatten());
            }
            for s in &all {
                self.shown_by.entry(s.clone()).or_default().push(rel.clone());
            }
            self.sources.insert(rel.clone(), all);
        }
    }

    /// Marks a function of which some overload runs as its owner (SECURITY DEFINER).
    pub fn add_definer(&mut self, schema: &str, name: &str) {
        self.definers.insert((schema.into(), name.into()));
    }

    /// A SECURITY DEFINER function a call of `name` may reach: PostgreSQL picks among the
    /// overloads of every schema it searches (the explicit one, else pg_catalog and the path) by
    /// argument types, which Warden does not know, so any of them counts.
    pub fn definer_candidate(&self, schema: Option<&str>, name: &str, search_path: &[String]) -> Option<String> {
        if self.definers.is_empty() {
            return None;
        }
        let candidates: Vec<&str> = match schema {
            Some(s) => vec![s],
            None => std::iter::once("pg_catalog")
                .chain(search_path.iter().map(String::as_str))
                .collect(),
        };
        candidates
            .into_iter()
            .find(|s| self.definers.contains(&(s.to_string(), name.to_string())))
            .map(|s| format!("{s}.{name}"))
    }

    /// Resolves a relation as PostgreSQL would: an explicit schema, else pg_catalog, then the path.
    pub fn resolve(&self, schema: Option<&str>, name: &str, search_path: &[String]) -> Option<QualifiedName> {
        if let Some(s) = schema {
            let q = QualifiedName {
                schema: s.into(),
                name: name.into(),
            };
            return self.relations.contains_key(&q).then_some(q);
        }
        std::iter::once("pg_catalog")
            .chain(search_path.iter().map(String::as_str))
            .map(|s| QualifiedName {
                schema: s.into(),
                name: name.into(),
            })
            .find(|q| self.relations.contains_key(q))
    }

    pub fn columns(&self, rel: &QualifiedName) -> &[String] {
        self.relations.get(rel).map(|r| r.columns.as_slice()).unwrap_or(&[])
    }

    /// A function's name as resolved and its volatility (pg_catalog first, then the path).
    pub fn function(&self, schema: Option<&str>, name: &str, search_path: &[String]) -> (String, Volatility) {
        let candidates: Vec<&str> = match schema {
            Some(s) => vec![s],
            None => std::iter::once("pg_catalog")
                .chain(search_path.iter().map(String::as_str))
                .collect(),
        };
        for s in candidates {
            if let Some(v) = self.functions.get(&(s.to_string(), name.to_string())) {
                return (format!("{s}.{name}"), *v);
            }
        }
        (
            schema
                .map(|s| format!("{s}.{name}"))
                .unwrap_or_else(|| name.to_string()),
            Volatility::Unknown,
        )
    }
}
