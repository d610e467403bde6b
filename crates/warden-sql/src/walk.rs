//! The walker over libpg_query's parse tree (as JSON: every node is `{"node": {"<Type>": {...}}}`,
//! typed fields such as a statement's target relation are bare objects).
//!
//! Scopes follow SQL: each SELECT (and the target of INSERT/UPDATE/DELETE) opens a scope holding its
//! FROM items; a column reference is resolved in the innermost scope that can supply it, then outward
//! (correlated subqueries). Unknown statement types are reported as forbidden: fail closed.

use serde_json::Value;

use crate::access::{Class, Forbidden, SessionEffect, StatementAccess, WriteKind};
use crate::catalog::Catalog;
use crate::{QualifiedName, SessionContext};

pub(crate) fn statement(stmt: &Value, catalog: &Catalog, session: &SessionContext) -> StatementAccess {
    let mut w = Walker {
        catalog,
        session,
        access: StatementAccess::default(),
        scopes: Vec::new(),
        ctes: Vec::new(),
    };
    w.stmt(stmt);
    w.access
}

struct Walker<'a> {
    catalog: &'a Catalog,
    session: &'a SessionContext,
    access: StatementAccess,
    scopes: Vec<Vec<Entry>>,
    /// Names of CTEs visible at this point (innermost WITH last).
    ctes: Vec<Vec<String>>,
}

#[derive(Debug, Clone)]
struct Entry {
    alias: String,
    /// `None` for a subquery, function or CTE in FROM: its columns were checked where they came from.
    base: Option<QualifiedName>,
}

/// `{"node": {"Type": body}}` -> ("Type", body).
fn node(v: &Value) -> Option<(&str, &Value)> {
    let inner = v.get("node")?.as_object()?;
    let (k, body) = inner.iter().next()?;
    // Type names are capitalised; SortBy and friends have a plain field called `node`.
    k.starts_with(|c: char| c.is_ascii_uppercase())
        .then_some((k.as_str(), body))
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn string(v: &Value) -> Option<&str> {
    match node(v) {
        Some(("String", s)) => s["sval"].as_str(),
        _ => None,
    }
}

fn names(list: &Value) -> Vec<String> {
    items(list).filter_map(string).map(str::to_string).collect()
}

fn str_field<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key].as_str().unwrap_or("")
}

impl Walker<'_> {
    fn forbid(&mut self, f: Forbidden) {
        self.access.forbidden.push(f);
    }

    /// One top-level (or nested) statement node.
    fn stmt(&mut self, v: &Value) {
        let Some((kind, body)) = node(v) else {
            self.forbid(Forbidden::Unsupported("an empty statement".into()));
            return;
        };
        match kind {
            "SelectStmt" => {
                self.access.raise(Class::Read);
                if !body["into_clause"].is_null() {
                    self.access.raise(Class::Ddl);
                }
                self.select(body);
            }
            "InsertStmt" => self.insert(body),
            "UpdateStmt" => self.update(body),
            "DeleteStmt" => self.delete(body),
            "MergeStmt" => self.merge(body),
            "CopyStmt" => self.copy(body),
            "ExplainStmt" => self.explain(body),
            "PrepareStmt" => {
                self.access
                    .effects
                    .push(SessionEffect::Prepare(str_field(body, "name").to_string()));
                // Judged as what it will run.
                self.stmt(&body["query"]);
            }
            "ExecuteStmt" => {
                self.access.raise(Class::Session);
                self.access
                    .effects
                    .push(SessionEffect::Execute(str_field(body, "name").to_string()));
                self.expr_list(&body["params"]);
            }
            "DeallocateStmt" => {
                self.access.raise(Class::Session);
                let name = str_field(body, "name");
                self.access
                    .effects
                    .push(SessionEffect::Deallocate((!name.is_empty()).then(|| name.to_string())));
            }
            "DeclareCursorStmt" => {
                self.access.raise(Class::Session);
                self.stmt(&body["query"]);
            }
            "FetchStmt" | "ClosePortalStmt" | "VariableShowStmt" | "ListenStmt" | "UnlistenStmt" | "DiscardStmt" => {
                self.access.raise(Class::Session)
            }
            "NotifyStmt" => {
                self.access.raise(Class::Session);
                self.access.effects.push(SessionEffect::Notify);
            }
            "VariableSetStmt" => self.set(body),
            "TransactionStmt" => {
                self.access.raise(Class::Transaction);
                // 8..=10: PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED.
                if body["kind"].as_i64().is_some_and(|k| k >= 8) {
                    self.forbid(Forbidden::PreparedTransaction);
                }
            }
            "TruncateStmt" => {
                self.access.raise(Class::Write);
                for r in items(&body["relations"]) {
                    if let Some(("RangeVar", rv)) = node(r) {
                        if let Some(q) = self.relation(rv) {
                            self.access.write(&q, WriteKind::Truncate, []);
                        }
                    }
                }
            }
            "LockStmt" => {
                self.access.raise(Class::Write);
                for r in items(&body["relations"]) {
                    if let Some(("RangeVar", rv)) = node(r) {
                        if let Some(q) = self.relation(rv) {
                            self.access.write(&q, WriteKind::Lock, []);
                        }
                    }
                }
            }
            "DoStmt" => {
                self.access.raise(Class::Utility);
                self.access.effects.push(SessionEffect::DoBlock);
            }
            "CallStmt" => {
                self.access.raise(Class::Write);
                self.generic(body);
            }
            "GrantStmt"
            | "GrantRoleStmt"
            | "CreateRoleStmt"
            | "AlterRoleStmt"
            | "AlterRoleSetStmt"
            | "DropRoleStmt"
            | "AlterDefaultPrivilegesStmt"
            | "ReassignOwnedStmt"
            | "DropOwnedStmt"
            | "AlterOwnerStmt"
            | "CreatePolicyStmt"
            | "AlterPolicyStmt"
            | "AlterDatabaseSetStmt"
            | "AlterSystemStmt" => self.access.raise(Class::Privilege),
            "CreateTableAsStmt" => {
                self.access.raise(Class::Ddl);
                self.stmt(&body["query"]);
            }
            k if is_ddl(k) => {
                self.access.raise(Class::Ddl);
            }
            other => {
                self.access.raise(Class::Utility);
                self.forbid(Forbidden::Unsupported(statement_name(other)));
            }
        }
    }

    fn select(&mut self, s: &Value) {
        let ctes = self.with_clause(&s["with_clause"]);
        // Set operations: both sides are selects of their own.
        if !s["larg"].is_null() || !s["rarg"].is_null() {
            for side in [&s["larg"], &s["rarg"]] {
                if !side.is_null() {
                    self.select(side);
                }
            }
            self.expr_list(&s["sort_clause"]);
            self.expr(&s["limit_count"]);
            self.expr(&s["limit_offset"]);
            self.pop_ctes(ctes);
            return;
        }
        self.scopes.push(Vec::new());
        for item in items(&s["from_clause"]) {
            self.range_item(item);
        }
        for vl in items(&s["values_lists"]) {
            self.expr(vl);
        }
        for key in [
            "target_list",
            "distinct_clause",
            "group_clause",
            "sort_clause",
            "window_clause",
        ] {
            self.expr_list(&s[key]);
        }
        for key in ["where_clause", "having_clause", "limit_count", "limit_offset"] {
            self.expr(&s[key]);
        }
        self.expr_list(&s["locking_clause"]);
        self.scopes.pop();
        self.pop_ctes(ctes);
    }

    /// Registers CTE names (visible to the rest of the statement) and analyses their queries.
    fn with_clause(&mut self, with: &Value) -> bool {
        if with.is_null() {
            return false;
        }
        let ctes: Vec<&Value> = items(&with["ctes"]).filter_map(|c| node(c).map(|(_, b)| b)).collect();
        self.ctes
            .push(ctes.iter().map(|c| str_field(c, "ctename").to_string()).collect());
        for c in ctes {
            self.stmt(&c["ctequery"]);
        }
        true
    }

    fn pop_ctes(&mut self, pushed: bool) {
        if pushed {
            self.ctes.pop();
        }
    }

    fn is_cte(&self, name: &str) -> bool {
        self.ctes.iter().any(|level| level.iter().any(|c| c == name))
    }

    /// A FROM item: adds entries to the innermost scope.
    fn range_item(&mut self, item: &Value) {
        let Some((kind, body)) = node(item) else {
            return;
        };
        match kind {
            "RangeVar" => {
                let alias = body["alias"]["aliasname"]
                    .as_str()
                    .unwrap_or(str_field(body, "relname"))
                    .to_string();
                let base = if str_field(body, "schemaname").is_empty() && self.is_cte(str_field(body, "relname")) {
                    None
                } else {
                    self.relation(body)
                };
                self.push_entry(Entry { alias, base });
            }
            "JoinExpr" => {
                self.range_item(&body["larg"]);
                self.range_item(&body["rarg"]);
                self.expr(&body["quals"]);
                if let Some(a) = body["alias"]["aliasname"].as_str() {
                    self.push_entry(Entry {
                        alias: a.to_string(),
                        base: None,
                    });
                }
            }
            "RangeSubselect" => {
                // A subquery in FROM sees the outer scopes only if LATERAL; analysing it with them
                // visible resolves no column wrongly, since its own FROM comes first.
                self.stmt(&body["subquery"]);
                if let Some(a) = body["alias"]["aliasname"].as_str() {
                    self.push_entry(Entry {
                        alias: a.to_string(),
                        base: None,
                    });
                }
            }
            "RangeFunction" => {
                self.generic(&body["functions"]);
                if let Some(a) = body["alias"]["aliasname"].as_str() {
                    self.push_entry(Entry {
                        alias: a.to_string(),
                        base: None,
                    });
                }
            }
            _ => {
                self.forbid(Forbidden::Unsupported(format!("a FROM item of type {kind}")));
            }
        }
    }

    fn push_entry(&mut self, e: Entry) {
        if let Some(scope) = self.scopes.last_mut() {
            scope.push(e);
        }
    }

    /// Resolves a RangeVar to a catalog relation, or records it as unknown.
    fn relation(&mut self, rv: &Value) -> Option<QualifiedName> {
        let schema = str_field(rv, "schemaname");
        let name = str_field(rv, "relname");
        let found = self
            .catalog
            .resolve((!schema.is_empty()).then_some(schema), name, &self.session.search_path);
        if found.is_none() {
            let shown = if schema.is_empty() {
                name.to_string()
            } else {
                format!("{schema}.{name}")
            };
            self.forbid(Forbidden::UnknownRelation(shown));
        }
        found
    }

    fn insert(&mut self, s: &Value) {
        self.access.raise(Class::Write);
        let ctes = self.with_clause(&s["with_clause"]);
        let target = self.relation(&s["relation"]);
        if let Some(q) = &target {
            let cols: Vec<String> = items(&s["cols"])
                .filter_map(|c| node(c))
                .map(|(_, b)| str_field(b, "name").to_string())
                .collect();
            let cols = if cols.is_empty() {
                self.catalog.columns(q).to_vec()
            } else {
                cols
            };
            self.access.write(q, WriteKind::Insert, cols);
        }
        if !s["select_stmt"].is_null() {
            self.stmt(&s["select_stmt"]);
        }
        let alias = s["relation"]["alias"]["aliasname"]
            .as_str()
            .unwrap_or(str_field(&s["relation"], "relname"))
            .to_string();
        self.scopes.push(vec![Entry {
            alias,
            base: target.clone(),
        }]);
        let conflict = &s["on_conflict_clause"];
        if !conflict.is_null() {
            if let Some(q) = &target {
                let cols: Vec<String> = self.set_targets(&conflict["target_list"]);
                if !cols.is_empty() {
                    self.access.write(q, WriteKind::Update, cols);
                }
            }
            self.expr(&conflict["where_clause"]);
            self.generic(&conflict["infer"]);
        }
        self.returning(&s["returning_clause"]);
        self.scopes.pop();
        self.pop_ctes(ctes);
    }

    fn update(&mut self, s: &Value) {
        self.access.raise(Class::Write);
        let ctes = self.with_clause(&s["with_clause"]);
        let target = self.relation(&s["relation"]);
        let alias = s["relation"]["alias"]["aliasname"]
            .as_str()
            .unwrap_or(str_field(&s["relation"], "relname"))
            .to_string();
        self.scopes.push(vec![Entry {
            alias,
            base: target.clone(),
        }]);
        for item in items(&s["from_clause"]) {
            self.range_item(item);
        }
        let cols = self.set_targets(&s["target_list"]);
        if let Some(q) = &target {
            self.access.write(q, WriteKind::Update, cols);
        }
        self.expr(&s["where_clause"]);
        self.returning(&s["returning_clause"]);
        self.scopes.pop();
        self.pop_ctes(ctes);
    }

    fn delete(&mut self, s: &Value) {
        self.access.raise(Class::Write);
        let ctes = self.with_clause(&s["with_clause"]);
        let target = self.relation(&s["relation"]);
        if let Some(q) = &target {
            self.access.write(q, WriteKind::Delete, []);
        }
        let alias = s["relation"]["alias"]["aliasname"]
            .as_str()
            .unwrap_or(str_field(&s["relation"], "relname"))
            .to_string();
        self.scopes.push(vec![Entry { alias, base: target }]);
        for item in items(&s["using_clause"]) {
            self.range_item(item);
        }
        self.expr(&s["where_clause"]);
        self.returning(&s["returning_clause"]);
        self.scopes.pop();
        self.pop_ctes(ctes);
    }

    fn merge(&mut self, s: &Value) {
        self.access.raise(Class::Write);
        let ctes = self.with_clause(&s["with_clause"]);
        let target = self.relation(&s["relation"]);
        if let Some(q) = &target {
            let all = self.catalog.columns(q).to_vec();
            for kind in [WriteKind::Insert, WriteKind::Update, WriteKind::Delete] {
                self.access.write(q, kind, all.clone());
            }
            // MERGE reads the target to match rows.
            self.access.read(q, all);
        }
        let alias = s["relation"]["alias"]["aliasname"]
            .as_str()
            .unwrap_or(str_field(&s["relation"], "relname"))
            .to_string();
        self.scopes.push(vec![Entry { alias, base: target }]);
        self.range_item(&s["source_relation"]);
        self.expr(&s["join_condition"]);
        self.generic(&s["merge_when_clauses"]);
        self.returning(&s["returning_clause"]);
        self.scopes.pop();
        self.pop_ctes(ctes);
    }

    /// Column names assigned by `SET a = ..., (b, c) = ...`, walking the values as reads.
    fn set_targets(&mut self, list: &Value) -> Vec<String> {
        let mut cols = Vec::new();
        for t in items(list) {
            if let Some(("ResTarget", rt)) = node(t) {
                cols.push(str_field(rt, "name").to_string());
                self.expr(&rt["val"]);
            }
        }
        cols
    }

    fn returning(&mut self, r: &Value) {
        if !r.is_null() {
            self.expr_list(&r["exprs"]);
        }
    }

    fn copy(&mut self, s: &Value) {
        if s["is_program"].as_bool() == Some(true) {
            self.forbid(Forbidden::CopyProgram);
        } else if !str_field(s, "filename").is_empty() {
            self.forbid(Forbidden::CopyFile);
        }
        let cols = names_of_cols(&s["attlist"]);
        if !s["relation"].is_null() {
            let Some(q) = self.relation(&s["relation"]) else {
                return;
            };
            let cols = if cols.is_empty() {
                self.catalog.columns(&q).to_vec()
            } else {
                cols
            };
            if s["is_from"].as_bool() == Some(true) {
                self.access.raise(Class::Write);
                self.access.write(&q, WriteKind::Insert, cols);
            } else {
                self.access.raise(Class::Read);
                self.access.read(&q, cols);
            }
        } else {
            self.stmt(&s["query"]);
        }
        self.expr(&s["where_clause"]);
    }

    fn explain(&mut self, s: &Value) {
        let analyze = items(&s["options"]).filter_map(node).any(|(_, d)| {
            str_field(d, "defname") == "analyze" && !matches!(node(&d["arg"]), Some(("String", v)) if matches!(v["sval"].as_str(), Some("false" | "off" | "0")))
        });
        self.access.explain_analyze = analyze;
        // With or without ANALYZE, EXPLAIN is judged as the statement it explains (the plan reveals
        // what the statement would touch).
        self.stmt(&s["query"]);
    }

    fn set(&mut self, s: &Value) {
        self.access.raise(Class::Session);
        let name = str_field(s, "name").to_ascii_lowercase();
        // kind: 1 SET VALUE, 2 SET DEFAULT, 3 SET CURRENT, 4 SET MULTI (SET TRANSACTION...), 5 RESET, 6 RESET ALL
        let kind = s["kind"].as_i64().unwrap_or(0);
        if kind == 6 {
            self.access.effects.push(SessionEffect::ResetAll);
            return;
        }
        if protected_setting(&name) {
            self.access.raise(Class::Privilege);
            self.forbid(Forbidden::ProtectedSetting(name));
            return;
        }
        if name == "search_path" {
            if s["is_local"].as_bool() == Some(true) {
                // Undone at transaction end, out of Warden's sight: it could not resolve names after it.
                self.forbid(Forbidden::Unsupported("SET LOCAL search_path".into()));
                return;
            }
            let path = match kind {
                1 => items(&s["args"])
                    .filter_map(|a| match node(a) {
                        Some(("AConst", c)) => c["val"]["Sval"]["sval"].as_str().map(str::to_string),
                        _ => None,
                    })
                    .collect(),
                _ => vec!["$user".to_string(), "public".to_string()],
            };
            self.access.effects.push(SessionEffect::SearchPath(path));
        }
    }

    fn expr_list(&mut self, list: &Value) {
        for v in items(list) {
            self.expr(v);
        }
    }

    /// An expression (or any node below one): column references, functions and sub-selects matter.
    fn expr(&mut self, v: &Value) {
        if v.is_null() {
            return;
        }
        match node(v) {
            Some(("ColumnRef", c)) => self.column_ref(c),
            Some(("FuncCall", f)) => self.func_call(f),
            Some(("SelectStmt", _)) | Some(("InsertStmt", _)) | Some(("UpdateStmt", _)) | Some(("DeleteStmt", _)) => {
                self.stmt(v)
            }
            Some((_, body)) => self.generic(body),
            None => self.generic(v),
        }
    }

    /// Walks every child of a node we have no special rule for.
    fn generic(&mut self, v: &Value) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| self.expr(x)),
            Value::Object(o) => {
                if node(v).is_some() {
                    self.expr(v);
                    return;
                }
                // A bare RangeVar somewhere unexpected: it is still a relation the statement names.
                if o.contains_key("relname") && o.contains_key("schemaname") {
                    if let Some(q) = self.relation(v) {
                        self.access.read(&q, []);
                    }
                    return;
                }
                for child in o.values() {
                    if child.is_object() || child.is_array() {
                        self.generic(child);
                    }
                }
            }
            _ => {}
        }
    }

    fn func_call(&mut self, f: &Value) {
        let parts = names(&f["funcname"]);
        let (schema, name) = match parts.as_slice() {
            [n] => (None, n.as_str()),
            [s, n] => (Some(s.as_str()), n.as_str()),
            _ => (None, ""),
        };
        let (resolved, volatility) = self.catalog.function(schema, name, &self.session.search_path);
        if name == "set_config" {
            match items(&f["args"]).next().and_then(|a| match node(a) {
                Some(("AConst", c)) => c["val"]["Sval"]["sval"].as_str(),
                _ => None,
            }) {
                Some(setting)
                    if protected_setting(&setting.to_ascii_lowercase())
                        || setting.eq_ignore_ascii_case("search_path") =>
                {
                    self.forbid(Forbidden::ProtectedSetting(setting.to_ascii_lowercase()))
                }
                Some(_) => {}
                None => self.forbid(Forbidden::DynamicSetConfig),
            }
        }
        self.access.functions.insert(resolved, volatility);
        for key in ["args", "agg_order", "agg_filter", "over"] {
            self.generic(&f[key]);
        }
    }

    fn column_ref(&mut self, c: &Value) {
        let fields: Vec<Option<String>> = items(&c["fields"])
            .map(|f| match node(f) {
                Some(("String", s)) => s["sval"].as_str().map(str::to_string),
                _ => None, // A_Star
            })
            .collect();
        match fields.as_slice() {
            [None] => {
                // `*`: every column of every relation in the innermost scope.
                let bases: Vec<QualifiedName> = self
                    .scopes
                    .last()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.base.clone())
                    .collect();
                for q in bases {
                    self.read_all(&q);
                }
            }
            [Some(col)] => self.unqualified(col),
            [Some(alias), None] => {
                if let Some(q) = self.by_alias(alias) {
                    self.read_all(&q);
                }
            }
            [Some(alias), Some(col)] => {
                if let Some(q) = self.by_alias(alias) {
                    if SYSTEM_COLUMNS.contains(&col.as_str()) {
                        self.read_all(&q);
                    } else {
                        self.access.read(&q, [col.clone()]);
                    }
                }
            }
            [Some(schema), Some(table), rest @ ..] => {
                let q = QualifiedName {
                    schema: schema.clone(),
                    name: table.clone(),
                };
                match rest {
                    [Some(col)] => self.access.read(&q, [col.clone()]),
                    _ => self.read_all(&q),
                }
            }
            _ => self.forbid(Forbidden::Unsupported("this column reference".into())),
        }
    }

    fn unqualified(&mut self, col: &str) {
        for scope in self.scopes.iter().rev() {
            let owners: Vec<QualifiedName> = scope
                .iter()
                .filter_map(|e| e.base.clone())
                .filter(|q| self.catalog.columns(q).iter().any(|c| c == col))
                .collect();
            if !owners.is_empty() {
                for q in owners {
                    self.access.read(&q, [col.to_string()]);
                }
                return;
            }
            if scope.iter().any(|e| e.base.is_none()) {
                // It may be an output column of a subquery or CTE, checked where it came from.
                break;
            }
        }
        // Not a column: a whole-row reference to a relation (`row_to_json(t)`, `SELECT t FROM t`).
        if let Some(q) = self.by_alias(col) {
            self.read_all(&q);
            return;
        }
        // A system column (ctid, xmin, ...) needs the whole table: count it as reading every column.
        if SYSTEM_COLUMNS.contains(&col) {
            let bases: Vec<QualifiedName> = self
                .scopes
                .last()
                .into_iter()
                .flatten()
                .filter_map(|e| e.base.clone())
                .collect();
            for q in bases {
                self.read_all(&q);
            }
        }
    }

    fn by_alias(&self, alias: &str) -> Option<QualifiedName> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.iter())
            .find(|e| e.alias == alias)
            .and_then(|e| e.base.clone())
    }

    fn read_all(&mut self, q: &QualifiedName) {
        let cols = self.catalog.columns(q).to_vec();
        self.access.read(q, cols);
    }
}

fn names_of_cols(list: &Value) -> Vec<String> {
    names(list)
}

const SYSTEM_COLUMNS: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];

fn protected_setting(name: &str) -> bool {
    name == "role" || name == "session_authorization" || name.starts_with("warden.")
}

fn is_ddl(kind: &str) -> bool {
    [
        "Create",
        "Alter",
        "Drop",
        "Rename",
        "Comment",
        "Define",
        "Index",
        "View",
        "Rule",
        "Refresh",
        "SecLabel",
        "Import",
        "Composite",
        "Reindex",
        "Cluster",
        "Vacuum",
    ]
    .iter()
    .any(|p| kind.starts_with(p))
}

/// `VacuumStmt` -> `VACUUM`, for messages.
fn statement_name(kind: &str) -> String {
    let base = kind.strip_suffix("Stmt").unwrap_or(kind);
    let mut out = String::new();
    for (i, ch) in base.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}
