use super::*;

pub(crate) fn shop() -> Catalog {
    let mut c = Catalog::default();
    let cols = |s: &str| s.split(',').map(|x| x.trim().to_string()).collect::<Vec<_>>();
    c.add_relation("public", "customers", cols("id, name, email, region"));
    c.add_relation("public", "orders", cols("id, customer_id, status, total, region"));
    c.add_relation("hr", "salaries", cols("id, employee, amount"));
    c.add_relation("hr", "orders", cols("id, secret"));
    c.add_relation("pg_catalog", "pg_stat_activity", cols("pid, usename, query, state"));
    for (f, v) in [
        ("now", Volatility::Stable),
        ("count", Volatility::Immutable),
        ("sum", Volatility::Immutable),
        ("row_to_json", Volatility::Stable),
        ("to_jsonb", Volatility::Stable),
        ("pg_terminate_backend", Volatility::Volatile),
        ("set_config", Volatility::Volatile),
    ] {
        c.add_function("pg_catalog", f, v);
    }
    c.add_function("public", "reset_orders", Volatility::Volatile);
    c.add_function("public", "get_email", Volatility::Stable);
    c.add_definer("public", "get_email");
    c
}

#[test]
fn security_definer_functions_are_forbidden_wherever_they_are_called() {
    for sql in [
        "SELECT get_email(id) FROM customers",
        "SELECT public.get_email(1)",
        "SELECT id FROM orders WHERE status = (SELECT get_email(2))",
        "WITH x AS (SELECT get_email(3) AS e) SELECT * FROM x",
    ] {
        assert_eq!(
            one(sql).forbidden,
            [Forbidden::SecurityDefiner("public.get_email".into())],
            "{sql}"
        );
    }
    assert!(one("SELECT now()").forbidden.is_empty());
    // PostgreSQL picks an overload by argument types across the path: a definer later on the path
    // may be the one that runs.
    let mut c = shop();
    c.add_function("hr", "now", Volatility::Volatile);
    c.add_definer("hr", "now");
    let ctx = SessionContext::default().with_path(&["public".into(), "hr".into()]);
    let a = analyze("SELECT now(1)", &c, &ctx).unwrap();
    assert_eq!(a[0].forbidden, [Forbidden::SecurityDefiner("hr.now".into())]);
}

fn one(sql: &str) -> StatementAccess {
    let mut v = analyze(sql, &shop(), &SessionContext::default()).unwrap();
    assert_eq!(v.len(), 1, "{sql}");
    v.pop().unwrap()
}

fn q(s: &str) -> QualifiedName {
    let (schema, name) = s.split_once('.').unwrap();
    QualifiedName {
        schema: schema.into(),
        name: name.into(),
    }
}

fn cols(a: &StatementAccess, rel: &str) -> Vec<String> {
    a.reads
        .get(&q(rel))
        .map(|c| c.iter().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn star_and_whole_row_expand_from_the_catalog() {
    assert_eq!(
        cols(&one("SELECT * FROM customers"), "public.customers"),
        ["email", "id", "name", "region"]
    );
    assert_eq!(cols(&one("SELECT c.* FROM customers c"), "public.customers").len(), 4);
    assert_eq!(
        cols(&one("SELECT row_to_json(c) FROM customers c"), "public.customers").len(),
        4
    );
    assert_eq!(
        cols(&one("SELECT to_jsonb(customers) FROM customers"), "public.customers").len(),
        4
    );
    assert_eq!(cols(&one("SELECT c FROM customers c"), "public.customers").len(), 4);
}

#[test]
fn columns_in_where_join_order_and_functions_count() {
    let a = one("SELECT id FROM customers WHERE email LIKE 'a%'");
    assert_eq!(cols(&a, "public.customers"), ["email", "id"]);
    let a = one("SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY c.email");
    assert_eq!(cols(&a, "public.customers"), ["email", "id", "name"]);
    assert_eq!(cols(&a, "public.orders"), ["customer_id", "id"]);
    let a = one("SELECT upper(email) FROM customers");
    assert_eq!(cols(&a, "public.customers"), ["email"]);
    assert_eq!(a.functions.get("upper"), Some(&Volatility::Unknown));
}

#[test]
fn ctes_subqueries_and_correlation() {
    let a = one("WITH x AS (SELECT id, total FROM orders) SELECT sum(total) FROM x");
    assert_eq!(cols(&a, "public.orders"), ["id", "total"]);
    assert!(a.forbidden.is_empty(), "{:?}", a.forbidden);
    let a = one(
        "SELECT name FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND email = 'x')",
    );
    assert_eq!(cols(&a, "public.customers"), ["email", "id", "name"]);
    let a = one("SELECT email FROM (SELECT * FROM customers) s");
    assert_eq!(cols(&a, "public.customers").len(), 4);
}

#[test]
fn writes_hidden_anywhere_are_found() {
    let a = one("WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d");
    assert_eq!(a.class(), Class::Write);
    assert!(a.writes[&q("public.orders")].0.contains(&WriteKind::Delete));
    let a = one("/* just a read */ UPDATE orders SET status = 'void' WHERE total > 1");
    assert_eq!(a.writes[&q("public.orders")].1.iter().collect::<Vec<_>>(), ["status"]);
    assert_eq!(cols(&a, "public.orders"), ["total"]);
    let a = one("INSERT INTO orders (customer_id, status, total, region) VALUES (1, 'x', 1, 'eu') RETURNING id");
    assert_eq!(a.writes[&q("public.orders")].1.len(), 4);
    assert_eq!(cols(&a, "public.orders"), ["id"]);
    let a = one("TRUNCATE orders");
    assert!(a.writes[&q("public.orders")].0.contains(&WriteKind::Truncate));
    let a = one("EXPLAIN ANALYZE DELETE FROM orders");
    assert!(a.explain_analyze);
    assert_eq!(a.class(), Class::Write);
    let a = one("PREPARE p AS DELETE FROM orders");
    assert_eq!(a.class(), Class::Write);
    assert_eq!(a.effects, [SessionEffect::Prepare("p".into())]);
}

#[test]
fn an_upsert_reads_excluded_as_the_proposed_row_not_the_table() {
    // `excluded` is the row the INSERT proposed: PostgreSQL checks no SELECT privilege for it. The
    // existing row, named by the table, is read.
    let a = one("INSERT INTO orders AS o (id, status, total) VALUES (1, 'x', 2) \
         ON CONFLICT (id) DO UPDATE SET total = excluded.total + o.total WHERE excluded.status <> 'void'");
    assert!(a.forbidden.is_empty(), "{:?}", a.forbidden);
    assert_eq!(
        a.writes[&q("public.orders")].1.iter().collect::<Vec<_>>(),
        ["id", "status", "total"]
    );
    assert_eq!(cols(&a, "public.orders"), ["total"]);
    let a = one("INSERT INTO orders (id, total) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total");
    assert!(a.forbidden.is_empty(), "{:?}", a.forbidden);
    assert!(cols(&a, "public.orders").is_empty());
    // The table's own rows are still read under its name, and RETURNING cannot name `excluded`.
    let a = one("INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET total = orders.total RETURNING excluded.status");
    assert_eq!(cols(&a, "public.orders"), ["total"]);
    assert_eq!(a.forbidden, [Forbidden::UnknownColumn("excluded.status".into())]);
}

#[test]
fn sql_names_are_cut_to_63_bytes_as_postgresql_cuts_them() {
    // PostgreSQL's scanner truncates identifiers to NAMEDATALEN - 1 bytes (at a character
    // boundary): names that begin alike are one name, for Warden as for PostgreSQL.
    let long = format!("{}tail", "a".repeat(63));
    let a = one(&format!("PREPARE {long} AS SELECT 1"));
    assert_eq!(a.effects, [SessionEffect::Prepare("a".repeat(63))]);
    let a = one(&format!("PREPARE {}é AS SELECT 1", "a".repeat(62)));
    assert_eq!(a.effects, [SessionEffect::Prepare("a".repeat(62))]);
}

#[test]
fn schema_resolution_follows_the_search_path() {
    let hr = SessionContext {
        search_path: vec!["hr".into(), "public".into()],
        user: "u".into(),
    };
    let a = analyze("SELECT * FROM orders", &shop(), &hr).unwrap().pop().unwrap();
    assert_eq!(cols(&a, "hr.orders"), ["id", "secret"]);
    let a = one("SELECT * FROM orders");
    assert_eq!(cols(&a, "public.orders").len(), 5);
    let a = one("SELECT * FROM nowhere");
    assert_eq!(a.forbidden, [Forbidden::UnknownRelation("nowhere".into())]);
    // The session's search_path is fixed (set when connecting): SET search_path is refused.
    assert_eq!(one("SET search_path TO hr, public").forbidden.len(), 1);
    assert_eq!(one("SET LOCAL search_path TO hr").forbidden.len(), 1);
    assert_eq!(cols(&one("SELECT ctid FROM customers"), "public.customers").len(), 4);
    // A column alias list renames by position: `name` here is really email.
    assert_eq!(
        cols(&one("SELECT name FROM customers AS c(id, n, name)"), "public.customers"),
        ["email"]
    );
}

#[test]
fn classes_and_never_allowed() {
    assert_eq!(one("DROP TABLE orders").class(), Class::Ddl);
    assert_eq!(one("CREATE TABLE leak AS SELECT * FROM orders").class(), Class::Ddl);
    assert_eq!(one("ALTER TABLE orders ADD COLUMN x int").class(), Class::Ddl);
    assert_eq!(one("GRANT ALL ON orders TO PUBLIC").class(), Class::Privilege);
    assert_eq!(one("BEGIN").class(), Class::Transaction);
    assert_eq!(one("SHOW search_path").class(), Class::Session);
    assert_eq!(
        one("SET ROLE postgres").forbidden,
        [Forbidden::ProtectedSetting("role".into())]
    );
    assert_eq!(
        one("SET warden.identity = 'x'").forbidden,
        [Forbidden::ProtectedSetting("warden.identity".into())]
    );
    for spoof in [
        "SET application_name = 'warden human:bob'",
        "SET LOCAL application_name TO 'x'",
        "RESET application_name",
        "SELECT set_config('application_name', 'x', false)",
        "SELECT set_config('Application_Name', 'x', true)",
    ] {
        assert_eq!(
            one(spoof).forbidden,
            [Forbidden::ProtectedSetting("application_name".into())],
            "{spoof}"
        );
    }
    assert_eq!(
        one("SELECT set_config('role', 'postgres', false)").forbidden,
        [Forbidden::ProtectedSetting("role".into())]
    );
    assert_eq!(one("RESET ALL").effects, [SessionEffect::ResetAll]);
    let declared = one("DECLARE c CURSOR WITH HOLD FOR SELECT id FROM orders");
    assert_eq!(
        declared.effects,
        [SessionEffect::Declare {
            name: "c".into(),
            hold: true
        }]
    );
    assert!(!declared.reads.is_empty(), "{declared:?}");
    assert_eq!(
        one("DECLARE c CURSOR FOR SELECT 1").effects,
        [SessionEffect::Declare {
            name: "c".into(),
            hold: false
        }]
    );
    assert_eq!(one("FETCH 10 FROM c").effects, [SessionEffect::Fetch("c".into())]);
    assert_eq!(
        one("FETCH ALL IN \"C x\"").effects,
        [SessionEffect::Fetch("C x".into())]
    );
    assert_eq!(one("MOVE 10 IN c").effects, [SessionEffect::Fetch("c".into())]);
    // EXPLAIN DECLARE opens no cursor.
    assert!(one("EXPLAIN DECLARE c CURSOR FOR SELECT 1").effects.is_empty());
    assert_eq!(one("CLOSE c").effects, [SessionEffect::CloseCursor(Some("c".into()))]);
    assert_eq!(one("CLOSE ALL").effects, [SessionEffect::CloseCursor(None)]);
    assert!(one("DISCARD ALL").effects.contains(&SessionEffect::CloseCursor(None)));
    assert_eq!(one("COPY orders TO PROGRAM 'true'").forbidden, [Forbidden::CopyProgram]);
    assert_eq!(one("COPY orders FROM '/etc/passwd'").forbidden, [Forbidden::CopyFile]);
    assert_eq!(
        one("DO $$ BEGIN DELETE FROM orders; END $$").effects,
        [SessionEffect::DoBlock]
    );
    assert!(matches!(one("VACUUM orders").class(), Class::Ddl));
    assert!(!one("CHECKPOINT").forbidden.is_empty());
    let a = one("SELECT pg_terminate_backend(pid) FROM pg_stat_activity");
    assert_eq!(
        a.functions.get("pg_catalog.pg_terminate_backend"),
        Some(&Volatility::Volatile)
    );
    assert_eq!(cols(&a, "pg_catalog.pg_stat_activity"), ["pid"]);
}

#[test]
fn several_statements_are_each_reported() {
    let v = analyze("SELECT 1; DELETE FROM orders", &shop(), &SessionContext::default()).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[1].class(), Class::Write);
    assert_eq!(v[1].text, "DELETE FROM orders");
    assert!(analyze("SELEC 1", &shop(), &SessionContext::default()).is_err());
}

#[test]
fn sources_are_transitive_and_attached_to_what_a_statement_touches() {
    let mut c = shop();
    c.add_relation("public", "v1", vec!["id".into()]);
    c.add_relation("public", "v2", vec!["id".into()]);
    c.add_source(q("public.v2"), q("public.v1"));
    c.add_source(q("public.v1"), q("public.orders"));
    c.add_source(q("public.v1"), q("public.v1"));
    c.close_sources();
    let mut two = c.sources[&q("public.v2")].clone();
    two.sort();
    assert_eq!(two, [q("public.orders"), q("public.v1")]);
    let a = analyze("SELECT id FROM v2", &c, &SessionContext::default()).unwrap();
    assert_eq!(a[0].sources.keys().collect::<Vec<_>>(), [&q("public.v2")]);
    let a = analyze("SELECT id FROM orders", &c, &SessionContext::default()).unwrap();
    assert!(a[0].sources.is_empty());
}
