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
        outputs_visible: false,
    };
    w.stmt(stmt);
    w.access
}

struct Walker<'a> {
    catalog: &'a Catalog,
    session: &'a SessionContext,
    access: StatementAccess,
    scopes: Vec<Scope>,
    /// While walking GROUP BY: output names count as columns.
    outputs_visible: bool,
    /// Names of CTEs visible at this point (innermost WITH last).
    ctes: Vec<Vec<String>>,
}

/// One FROM list (or the target of INSERT/UPDATE/DELETE) and the SELECT's output names.
#[derive(Debug, Clone, Default)]
struct Scope {
    entries: Vec<Entry>,
    /// Output column names of the SELECT: ORDER BY and GROUP BY may name them.
    outputs: Vec<String>,
}

impl Scope {
    fn of(entries: Vec<Entry>) -> Self {
        Scope {
            entries,
            outputs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    alias: String,
    /// The catalog relations behind the name: one for a table, every table of both sides for a join alias.
    bases: Vec<QualifiedName>,
    /// Whether a subquery, function or CTE contributes columns (checked where they came from).
    derived: bool,
    /// A derived item's output column names when known.
    columns: Option<Vec<String>>,
    /// `t AS x(a, b)`: the first columns go by these names.
    rename: Vec<String>,
    /// A join alias with a column list: any reference through it counts as reading every column.
    opaque: bool,
    /// Inside a join that has an alias: the name no longer qualifies (`j` does), the columns stay.
    hidden: bool,
}

impl Entry {
    fn table(alias: String, q: QualifiedName, rename: Vec<String>) -> Self {
        Entry {
            alias,
            bases: vec![q],
            derived: false,
            columns: None,
            rename,
            opaque: false,
            hidden: false,
        }
    }

    fn derived(alias: String, columns: Option<Vec<String>>) -> Self {
        Entry {
            alias,
            bases: Vec::new(),
            derived: true,
            columns,
            rename: Vec::new(),
            opaque: false,
            hidden: false,
        }
    }
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
                // CURSOR_OPT_HOLD in PostgreSQL's parsenodes.h.
                const HOLD: i64 = 0x0020;
                self.access.effects.push(SessionEffect::Declare {
                    name: str_field(body, "portalname").to_string(),
                    hold: body["options"].as_i64().is_some_and(|o| o & HOLD != 0),
                });
                self.stmt(&body["query"]);
            }
            "FetchStmt" => {
                self.access.raise(Class::Session);
                // MOVE too: it returns no rows, but runs the cursor's query as far as it moves (a
                // portal's INSERT ... RETURNING, a volatile function), and tells the row count.
                self.access
                    .effects
                    .push(SessionEffect::Fetch(str_field(body, "portalname").to_string()));
            }
            "ClosePortalStmt" => {
                self.access.raise(Class::Session);
                let name = str_field(body, "portalname");
                self.access
                    .effects
                    .push(SessionEffect::CloseCursor((!name.is_empty()).then(|| name.to_string())));
            }
            "VariableShowStmt" | "ListenStmt" | "UnlistenStmt" | "ConstraintsSetStmt" => {
                self.access.raise(Class::Session)
            }
            "DiscardStmt" => {
                self.access.raise(Class::Session);
                // DISCARD ALL includes RESET ALL (target 1).
                if body["target"].as_i64() == Some(1) {
                    self.access.effects.push(SessionEffect::ResetAll);
                    // ... and DEALLOCATE ALL, and CLOSE ALL.
                    self.access.effects.push(SessionEffect::Deallocate(None));
                    self.access.effects.push(SessionEffect::CloseCursor(None));
                }
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
            "TruncateStmt" => self.write_relations(&body["relations"], WriteKind::Truncate),
            "LockStmt" => self.write_relations(&body["relations"], WriteKind::Lock),
            "DoStmt" => {
                self.access.raise(Class::Utility);
                self.access.effects.push(SessionEffect::DoBlock);
            }
            "CallStmt" => {
                // A procedure may write anything: a write, whatever it calls.
                self.access.raise(Class::Write);
                self.func_call(&body["funccall"]);
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

    /// TRUNCATE and LOCK: a whole-table write on each relation listed.
    fn write_relations(&mut self, list: &Value, kind: WriteKind) {
        self.access.raise(Class::Write);
        for r in items(list) {
            if let Some(("RangeVar", rv)) = node(r) {
                if let Some(q) = self.relation(rv) {
                    self.access.write(&q, kind, []);
                }
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
            // ORDER BY of a set operation names its output columns.
            for sort in items(&s["sort_clause"]) {
                let bare = node(sort).map(|(_, b)| &b["node"]).and_then(|n| match node(n) {
                    Some(("ColumnRef", c)) => {
                        (items(&c["fields"]).count() == 1 && names(&c["fields"]).len() == 1).then_some(())
                    }
                    _ => None,
                });
                if bare.is_none() {
                    self.expr(sort);
                }
            }
            self.expr(&s["limit_count"]);
            self.expr(&s["limit_offset"]);
            self.pop_ctes(ctes);
            return;
        }
        self.scopes.push(Scope::default());
        for item in items(&s["from_clause"]) {
            self.range_item(item);
        }
        if let Some(scope) = self.scopes.last_mut() {
            scope.outputs = output_names(&s["target_list"]).into_iter().flatten().collect();
        }
        for vl in items(&s["values_lists"]) {
            self.expr(vl);
        }
        for key in ["target_list", "distinct_clause", "window_clause"] {
            self.expr_list(&s[key]);
        }
        // GROUP BY may name an output column when no input column has that name.
        self.outputs_visible = true;
        self.expr_list(&s["group_clause"]);
        self.outputs_visible = false;
        for sort in items(&s["sort_clause"]) {
            // ORDER BY a bare output name sorts by that output, not by a table column.
            let bare = node(sort).map(|(_, b)| &b["node"]).and_then(|n| match node(n) {
                Some(("ColumnRef", c)) => match names(&c["fields"]).as_slice() {
                    [one] if items(&c["fields"]).count() == 1 => Some(one.clone()),
                    _ => None,
                },
                _ => None,
            });
            let is_output = bare.is_some_and(|b| self.scopes.last().is_some_and(|sc| sc.outputs.contains(&b)));
            if !is_output {
                self.expr(sort);
            }
        }
        for key in ["where_clause", "having_clause", "limit_count", "limit_offset"] {
            self.expr(&s[key]);
        }
        // FOR UPDATE / FOR SHARE take row locks: a write, on every table of this FROM list.
        if items(&s["locking_clause"]).next().is_some() {
            self.access.raise(Class::Write);
            let bases: Vec<QualifiedName> = self.scope_bases();
            for q in bases {
                self.access.write(&q, WriteKind::Lock, []);
            }
        }
        self.scopes.pop();
        self.pop_ctes(ctes);
    }

    /// Analyses CTE queries and makes their names visible: without RECURSIVE, each name only after its
    /// own query (inside it, the name still means the real table).
    fn with_clause(&mut self, with: &Value) -> bool {
        if with.is_null() {
            return false;
        }
        let ctes: Vec<&Value> = items(&with["ctes"]).filter_map(|c| node(c).map(|(_, b)| b)).collect();
        let recursive = with["recursive"].as_bool() == Some(true);
        self.ctes.push(Vec::new());
        if recursive {
            let all = ctes.iter().map(|c| str_field(c, "ctename").to_string()).collect();
            *self.ctes.last_mut().expect("pushed above") = all;
        }
        for c in ctes {
            self.stmt(&c["ctequery"]);
            if !recursive {
                self.ctes
                    .last_mut()
                    .expect("pushed above")
                    .push(str_field(c, "ctename").to_string());
            }
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

    /// A FROM item: adds entries to the innermost scope. A table named in FROM needs a read grant even
    /// when none of its columns is named (`SELECT count(*) FROM t`, joins that multiply rows).
    fn range_item(&mut self, item: &Value) {
        let Some((kind, body)) = node(item) else { return };
        let alias = |body: &Value, default: &str| body["alias"]["aliasname"].as_str().unwrap_or(default).to_string();
        match kind {
            "RangeVar" => {
                let name = str_field(body, "relname");
                if str_field(body, "schemaname").is_empty() && self.is_cte(name) {
                    let a = alias(body, name);
                    self.push_entry(Entry::derived(a, None));
                } else if let Some(q) = self.relation(body) {
                    self.access.read(&q, []);
                    let a = alias(body, name);
                    let rename = names(&body["alias"]["colnames"]);
                    self.push_entry(Entry::table(a, q, rename));
                }
            }
            "JoinExpr" => {
                let start = self.scope_len();
                self.range_item(&body["larg"]);
                let mid = self.scope_len();
                self.range_item(&body["rarg"]);
                let end = self.scope_len();
                let left = self.bases_between(start, mid);
                let right = self.bases_between(mid, end);
                // USING (a, b) and NATURAL compare those columns of both sides.
                let mut shared: Vec<String> = names(&body["using_clause"]);
                if body["is_natural"].as_bool() == Some(true) {
                    // NATURAL compares every column name the two sides share; a side whose columns
                    // are unknown (a subquery with *) could share any of them.
                    let (lcols, lall) = self.side_columns(start, mid);
                    let (rcols, rall) = self.side_columns(mid, end);
                    for c in lcols.iter().chain(&rcols) {
                        let both = (lall || lcols.contains(c)) && (rall || rcols.contains(c));
                        if both && !shared.contains(c) {
                            shared.push(c.clone());
                        }
                    }
                }
                for col in &shared {
                    self.read_visible(start, end, col);
                }
                // ON sees only the two sides of this join (and outer query levels).
                let saved = self.narrow_scope(start, end);
                self.expr(&body["quals"]);
                self.restore_scope(saved);
                let derived = self
                    .scopes
                    .last()
                    .is_some_and(|sc| sc.entries[start..end].iter().any(|e| e.derived));
                for key in ["alias", "join_using_alias"] {
                    if let Some(a) = body[key]["aliasname"].as_str() {
                        if let Some(sc) = self.scopes.last_mut() {
                            sc.entries[start..end].iter_mut().for_each(|e| e.hidden = true);
                        }
                        let bases = left.iter().chain(&right).cloned().collect();
                        let opaque = !names(&body[key]["colnames"]).is_empty();
                        self.push_entry(Entry {
                            alias: a.to_string(),
                            bases,
                            derived,
                            columns: None,
                            rename: Vec::new(),
                            opaque,
                            hidden: false,
                        });
                    }
                }
            }
            "RangeSubselect" => {
                // Without LATERAL a subquery in FROM cannot see the other FROM items of its level.
                let saved = (body["lateral"].as_bool() != Some(true)).then(|| self.narrow_scope(0, 0));
                self.stmt(&body["subquery"]);
                if let Some(saved) = saved {
                    self.restore_scope(saved);
                }
                let mut columns = derived_columns(&body["subquery"]);
                let renamed = names(&body["alias"]["colnames"]);
                if let Some(cols) = columns.as_mut() {
                    for (i, n) in renamed.iter().enumerate() {
                        if let Some(c) = cols.get_mut(i) {
                            *c = n.clone();
                        }
                    }
                }
                self.push_entry(Entry::derived(alias(body, ""), columns));
            }
            "RangeFunction" | "RangeTableFunc" | "JsonTable" => {
                let saved = (body["lateral"].as_bool() != Some(true)).then(|| self.narrow_scope(0, 0));
                self.generic(body);
                if let Some(saved) = saved {
                    self.restore_scope(saved);
                }
                let renamed = names(&body["alias"]["colnames"]);
                let columns = (!renamed.is_empty()).then_some(renamed);
                self.push_entry(Entry::derived(alias(body, ""), columns));
            }
            "RangeTableSample" => {
                self.range_item(&body["relation"]);
                self.generic(&body["args"]);
                self.generic(&body["repeatable"]);
            }
            _ => {
                self.forbid(Forbidden::Unsupported(format!("a FROM item of type {kind}")));
            }
        }
    }

    /// The column names the entries `from..to` of the innermost scope supply, and whether some are unknown.
    fn side_columns(&self, from: usize, to: usize) -> (Vec<String>, bool) {
        let mut cols: Vec<String> = Vec::new();
        let mut unknown = false;
        if let Some(sc) = self.scopes.last() {
            for e in &sc.entries[from.min(to)..to] {
                for q in &e.bases {
                    cols.extend(self.visible_columns(e, q).into_iter().map(|(v, _)| v));
                }
                match (&e.columns, e.derived) {
                    (Some(c), _) => cols.extend(c.iter().cloned()),
                    (None, true) => unknown = true,
                    _ => {}
                }
            }
        }
        (cols, unknown)
    }

    /// Keeps only entries `from..to` of the innermost scope visible; returns the full list to restore.
    fn narrow_scope(&mut self, from: usize, to: usize) -> Vec<Entry> {
        let Some(sc) = self.scopes.last_mut() else {
            return Vec::new();
        };
        let all = std::mem::take(&mut sc.entries);
        sc.entries = all[from.min(to)..to].to_vec();
        all
    }

    fn restore_scope(&mut self, entries: Vec<Entry>) {
        if let Some(sc) = self.scopes.last_mut() {
            sc.entries = entries;
        }
    }

    /// The names an entry shows for a base relation's columns, with the real names behind them.
    fn visible_columns(&self, e: &Entry, q: &QualifiedName) -> Vec<(String, String)> {
        self.catalog
            .columns(q)
            .iter()
            .enumerate()
            .map(|(i, real)| (e.rename.get(i).cloned().unwrap_or_else(|| real.clone()), real.clone()))
            .collect()
    }

    /// Reads `col` as named by the entries `from..to` of the innermost scope.
    fn read_visible(&mut self, from: usize, to: usize, col: &str) {
        let entries: Vec<Entry> = self
            .scopes
            .last()
            .map(|sc| sc.entries[from.min(to)..to].to_vec())
            .unwrap_or_default();
        for e in entries {
            self.read_through(&e, col);
        }
    }

    /// Reads `col` through one entry; true if the entry supplies it.
    fn read_through(&mut self, e: &Entry, col: &str) -> bool {
        let mut found = false;
        for q in &e.bases {
            if e.opaque {
                self.read_all(q);
                found = true;
                continue;
            }
            if let Some((_, real)) = self.visible_columns(e, q).into_iter().find(|(v, _)| v == col) {
                self.access.read(q, [real]);
                found = true;
            }
        }
        found
    }

    fn scope_len(&self) -> usize {
        self.scopes.last().map(|s| s.entries.len()).unwrap_or(0)
    }

    fn bases_between(&self, from: usize, to: usize) -> Vec<QualifiedName> {
        let mut out: Vec<QualifiedName> = Vec::new();
        if let Some(sc) = self.scopes.last() {
            for e in &sc.entries[from.min(to)..to] {
                for q in &e.bases {
                    if !out.contains(q) {
                        out.push(q.clone());
                    }
                }
            }
        }
        out
    }

    /// Every catalog relation of the innermost scope.
    fn scope_bases(&self) -> Vec<QualifiedName> {
        self.bases_between(0, self.scope_len())
    }

    fn push_entry(&mut self, e: Entry) {
        if let Some(scope) = self.scopes.last_mut() {
            scope.entries.push(e);
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
        self.push_target_scope(&s["relation"], &target);
        let conflict = &s["on_conflict_clause"];
        if !conflict.is_null() {
            // `excluded` is the row the INSERT proposed: its values are the statement's own, and
            // PostgreSQL checks no SELECT privilege for them. Only DO UPDATE may name it.
            let proposed = target
                .as_ref()
                .map(|q| Entry::derived("excluded".into(), Some(self.catalog.columns(q).to_vec())));
            if let (Some(e), Some(sc)) = (proposed, self.scopes.last_mut()) {
                sc.entries.push(e);
            }
            if let Some(q) = &target {
                let cols: Vec<String> = self.set_targets(&conflict["target_list"]);
                if !cols.is_empty() {
                    self.access.write(q, WriteKind::Update, cols);
                }
            }
            self.expr(&conflict["where_clause"]);
            self.generic(&conflict["infer"]);
            if let Some(sc) = self.scopes.last_mut() {
                sc.entries.retain(|e| !(e.derived && e.alias == "excluded"));
            }
        }
        self.returning(&s["returning_clause"]);
        self.scopes.pop();
        self.pop_ctes(ctes);
    }

    /// The scope of a DML statement: its target table, under its alias.
    fn push_target_scope(&mut self, relation: &Value, target: &Option<QualifiedName>) {
        let alias = relation["alias"]["aliasname"]
            .as_str()
            .unwrap_or(str_field(relation, "relname"))
            .to_string();
        let entries = target
            .clone()
            .map(|q| Entry::table(alias, q, Vec::new()))
            .into_iter()
            .collect();
        self.scopes.push(Scope::of(entries));
    }

    fn update(&mut self, s: &Value) {
        self.access.raise(Class::Write);
        let ctes = self.with_clause(&s["with_clause"]);
        let target = self.relation(&s["relation"]);
        self.push_target_scope(&s["relation"], &target);
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
        self.push_target_scope(&s["relation"], &target);
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
        self.push_target_scope(&s["relation"], &target);
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
        } else if s["is_from"].as_bool() == Some(true) {
            self.access.effects.push(SessionEffect::CopyFromClient);
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
        let before = self.access.effects.len();
        self.stmt(&s["query"]);
        // EXPLAIN DECLARE plans the cursor's query but opens no cursor.
        let mut at = 0;
        self.access.effects.retain(|e| {
            at += 1;
            at <= before || !matches!(e, SessionEffect::Declare { .. })
        });
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
        if name == "client_encoding" || name == "standard_conforming_strings" {
            // Both change how PostgreSQL reads the bytes of later statements (backslash escapes,
            // multi-byte characters): Warden parses them as UTF8 with standard strings, and keeps it so.
            let value = items(&s["args"])
                .filter_map(|a| match node(a) {
                    Some(("AConst", c)) => c["val"]["Sval"]["sval"].as_str().map(str::to_ascii_lowercase),
                    _ => None,
                })
                .next();
            let keeps = match name.as_str() {
                "client_encoding" => value.as_deref().is_some_and(crate::utf8_client_encoding),
                _ => value.as_deref() == Some("on"),
            };
            if kind != 1 || !keeps {
                self.forbid(Forbidden::ProtectedSetting(name));
            }
            return;
        }
        if protected_setting(&name) {
            self.access.raise(Class::Privilege);
            self.forbid(Forbidden::ProtectedSetting(name));
            return;
        }
        if name == "search_path" {
            // PostgreSQL undoes a SET on rollback and re-plans prepared statements under a new path,
            // both out of Warden's sight: the path is fixed for the session (set it when connecting).
            self.forbid(Forbidden::Unsupported(
                "SET search_path (set it when connecting, with the search_path connection parameter)".into(),
            ));
            return;
        }
        if name == "search_path" {
            if s["is_local"].as_bool() == Some(true) {
                // Undone at transaction end, out of Warden's sight: it could not resolve names after it.
                self.forbid(Forbidden::Unsupported("SET LOCAL search_path".into()));
                return;
            }
            if kind != 1 {
                // RESET / SET DEFAULT go back to a value Warden cannot see (the role's, database's or
                // client's default): refused rather than guessed.
                self.forbid(Forbidden::Unsupported(
                    "RESET search_path (set it to an explicit list instead)".into(),
                ));
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
        if let Some(definer) = self.catalog.definer_candidate(schema, name, &self.session.search_path) {
            self.forbid(Forbidden::SecurityDefiner(definer));
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
                for q in self.scope_bases() {
                    self.read_all(&q);
                }
            }
            [Some(col)] => self.unqualified(col),
            [Some(alias), None] => match self.by_alias(alias) {
                Some(e) => e.bases.iter().for_each(|q| self.read_all(q)),
                None => self.forbid(Forbidden::UnknownColumn(format!("{alias}.*"))),
            },
            [Some(alias), Some(col)] => self.qualified(alias, col),
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

    fn qualified(&mut self, alias: &str, col: &str) {
        let Some(e) = self.by_alias(alias) else {
            // Not a FROM item: perhaps a composite field of something; PostgreSQL decides, Warden denies.
            self.forbid(Forbidden::UnknownColumn(format!("{alias}.{col}")));
            return;
        };
        if self.read_through(&e, col) {
            return;
        }
        if SYSTEM_COLUMNS.contains(&col) {
            e.bases.iter().for_each(|q| self.read_all(q));
        } else if !e.derived {
            self.forbid(Forbidden::UnknownColumn(format!("{alias}.{col}")));
        }
    }

    /// A bare column name: the innermost scope that has it supplies it, as in PostgreSQL. A name no
    /// relation, subquery or output supplies is denied (and makes the caller re-read the catalog once).
    fn unqualified(&mut self, col: &str) {
        let mut maybe_derived = false;
        for depth in (0..self.scopes.len()).rev() {
            let entries: Vec<Entry> = self.scopes[depth].entries.clone();
            let mut found = false;
            // Table entries (hidden ones too: a join alias hides the names, not the columns). An
            // aliased join with a column list reads everything when it supplies the name.
            for e in entries.iter().filter(|e| !e.derived && !e.opaque) {
                found |= self.read_through(e, col);
            }
            for e in entries.iter().filter(|e| e.opaque) {
                if e.bases.iter().any(|q| self.catalog.columns(q).iter().any(|c| c == col)) {
                    found |= self.read_through(e, col);
                }
            }
            let from_derived = entries
                .iter()
                .any(|e| e.derived && e.columns.as_ref().is_some_and(|c| c.iter().any(|x| x == col)));
            maybe_derived |= entries.iter().any(|e| e.derived && e.columns.is_none());
            if found || from_derived {
                return;
            }
        }
        // Not a column: a whole-row reference to a FROM item (`row_to_json(t)`, `SELECT t FROM t`).
        if let Some(e) = self.by_alias(col) {
            e.bases.iter().for_each(|q| self.read_all(q));
            return;
        }
        // A system column (ctid, xmin, ...) needs the whole table: count it as reading every column.
        if SYSTEM_COLUMNS.contains(&col) {
            for q in self.scope_bases() {
                self.read_all(&q);
            }
            return;
        }
        // An output name (GROUP BY alias), or an output of a subquery whose columns are unknown.
        let output = self.outputs_visible && self.scopes.last().is_some_and(|s| s.outputs.iter().any(|o| o == col));
        if maybe_derived || output {
            return;
        }
        self.forbid(Forbidden::UnknownColumn(col.to_string()));
    }

    fn by_alias(&self, alias: &str) -> Option<Entry> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.entries.iter().rev())
            .find(|e| !e.hidden && e.alias == alias)
            .cloned()
    }

    fn read_all(&mut self, q: &QualifiedName) {
        let cols = self.catalog.columns(q).to_vec();
        self.access.read(q, cols);
    }
}

/// The output column names of a target list, as PostgreSQL names them (`None` for `*`).
fn output_names(target_list: &Value) -> Vec<Option<String>> {
    items(target_list)
        .filter_map(|t| node(t))
        .map(|(_, rt)| {
            let name = str_field(rt, "name");
            if !name.is_empty() {
                return Some(name.to_string());
            }
            match node(&rt["val"]) {
                Some(("ColumnRef", c)) => {
                    let last = items(&c["fields"]).last();
                    last.and_then(string).map(str::to_string)
                }
                Some(("FuncCall", f)) => names(&f["funcname"]).pop(),
                _ => Some("?column?".to_string()),
            }
        })
        .collect()
}

/// A subquery's output columns, when every one can be named.
fn derived_columns(subquery: &Value) -> Option<Vec<String>> {
    let (_, s) = node(subquery)?;
    if !s["larg"].is_null() {
        return derived_columns(&s["larg"]);
    }
    if items(&s["values_lists"]).next().is_some() {
        return None;
    }
    output_names(&s["target_list"]).into_iter().collect()
}

fn names_of_cols(list: &Value) -> Vec<String> {
    names(list)
}

const SYSTEM_COLUMNS: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];

/// Settings a session may not change: who it runs as, how its statements are lexed, and who
/// `pg_stat_activity` and PostgreSQL's logs say is behind it (`application_name`, `warden.*`).
fn protected_setting(name: &str) -> bool {
    matches!(
        name,
        "role" | "session_authorization" | "client_encoding" | "standard_conforming_strings" | "application_name"
    ) || name.starts_with("warden.")
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
