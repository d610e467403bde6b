use std::path::Path;

use warden_sql::{analyze, Catalog, SessionContext, Volatility};

use super::*;
use crate::Config;

const ROLES: &str = r#"
[server]
postgres_listen = "127.0.0.1:6432"
[[database]]
name = "shop"
url = "postgres://warden_admin@127.0.0.1/shop?sslmode=require"
[[role]]
name = "analyst"
databases = ["shop"]
read  = ["public.orders(id, customer_id, status, total, region)", "public.customers(id, name, region)"]
[[role]]
name = "writer"
databases = ["shop"]
read  = ["public.*"]
write = ["public.orders"]
[[role]]
name = "status-writer"
databases = ["shop"]
read  = ["public.orders(id, status)"]
write = ["public.orders(status)"]
[[role]]
name = "regional-reader"
databases = ["shop"]
read  = ["public.*"]
row_filter = { "public.orders" = "region = 'eu'" }
[[role]]
name = "regional-writer"
databases = ["shop"]
read  = ["public.orders"]
write = ["public.orders"]
row_filter = { "public.orders" = "region = 'eu'" }
"#;

fn catalog() -> Catalog {
    let mut c = Catalog::default();
    let cols = |s: &str| s.split(", ").map(str::to_string).collect::<Vec<_>>();
    c.add_relation("public", "customers", cols("id, name, email, region"));
    c.add_relation("public", "orders", cols("id, customer_id, status, total, region"));
    c.add_relation("hr", "salaries", cols("id, employee, amount"));
    c.add_relation("pg_catalog", "pg_stat_activity", cols("pid, query"));
    for (f, v) in [
        ("now", Volatility::Stable),
        ("count", Volatility::Immutable),
        ("sum", Volatility::Immutable),
        ("pg_terminate_backend", Volatility::Volatile),
        ("pg_sleep", Volatility::Volatile),
    ] {
        c.add_function("pg_catalog", f, v);
    }
    c.add_function("public", "reset_orders", Volatility::Volatile);
    c
}

fn verdict(sql: &str, role_names: &[&str]) -> Decision {
    let config = Config::parse(Path::new("/x/warden.toml"), ROLES).unwrap();
    let roles: Vec<&Role> = role_names.iter().map(|n| config.role(n).unwrap()).collect();
    let stmts = analyze(sql, &catalog(), &SessionContext::default()).unwrap();
    decide(&stmts, &roles)
}

fn reason(d: &Decision) -> &str {
    match d {
        Decision::Deny { reason, .. } => reason,
        Decision::Allow => "allowed",
    }
}

#[test]
fn analyst_corpus() {
    let denied = [
        (
            "DELETE FROM orders",
            "role analyst is read-only and may not delete from public.orders",
        ),
        ("UPDATE orders SET total = 0", "may not update public.orders"),
        ("TRUNCATE orders", "may not truncate public.orders"),
        ("DROP TABLE orders", "role analyst may not change the schema (DDL)"),
        (
            "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
            "delete from public.orders",
        ),
        ("SELECT 1; DELETE FROM orders", "delete from public.orders"),
        ("COPY orders TO PROGRAM 'true'", "PROGRAM"),
        ("DO $$ BEGIN DELETE FROM orders; END $$", "may not run DO blocks"),
        ("SET ROLE postgres", "setting role is managed by Warden"),
        (
            "SELECT email FROM customers",
            "role analyst may not read column public.customers.email",
        ),
        ("SELECT * FROM customers", "may not read column public.customers.email"),
        (
            "SELECT * FROM hr.salaries",
            "role analyst may not read table hr.salaries",
        ),
        ("CREATE TABLE leak AS SELECT * FROM orders", "DDL"),
        ("PREPARE p AS DELETE FROM orders", "delete from public.orders"),
        ("GRANT ALL ON orders TO PUBLIC", "may not change roles or privileges"),
        (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
            "function pg_terminate_backend is never allowed",
        ),
        (
            "SELECT id FROM customers WHERE email LIKE 'a%'",
            "column public.customers.email",
        ),
        (
            "SELECT reset_orders()",
            "read-only: function public.reset_orders is volatile",
        ),
        (
            "SELECT row_to_json(c) FROM customers c",
            "column public.customers.email",
        ),
        ("RESET ALL", "may not RESET ALL"),
        ("SELECT count(*) FROM hr.salaries", "may not read table hr.salaries"),
        (
            "SELECT j.email FROM (customers c JOIN orders o ON o.customer_id = c.id) j",
            "column public.customers.email",
        ),
        (
            "SELECT (SELECT email FROM (SELECT 1) s) FROM customers",
            "column public.customers.email",
        ),
        (
            "SELECT count(*) FROM customers NATURAL JOIN (VALUES ('x')) v(email)",
            "column public.customers.email",
        ),
        (
            "SELECT count(*) FROM customers JOIN (VALUES ('x')) v(email) USING (email)",
            "column public.customers.email",
        ),
        (
            "WITH customers AS (SELECT * FROM customers) SELECT email FROM customers",
            "column public.customers.email",
        ),
        ("SELECT table_to_xml('customers', true, false, '')", "never allowed"),
        (
            "SELECT id FROM orders FOR UPDATE",
            "read-only and may not lock public.orders",
        ),
        ("SELECT secret FROM orders", "column secret is not in any relation"),
        ("DISCARD ALL", "read-only and may not RESET ALL or DISCARD ALL"),
        ("RESET search_path", "SET search_path"),
        ("SET search_path TO public", "set it when connecting"),
        ("SET client_encoding = 'SJIS'", "client_encoding is managed by Warden"),
        (
            "SET standard_conforming_strings = off",
            "standard_conforming_strings is managed by Warden",
        ),
        (
            "SELECT name FROM customers AS c(id, n, name)",
            "column public.customers.email",
        ),
        (
            "SELECT (SELECT x FROM (SELECT 1 AS email) a, (SELECT email AS x) b) FROM customers",
            "column public.customers.email",
        ),
        (
            "SELECT c.email FROM customers c, ((SELECT 1 AS email) c CROSS JOIN (SELECT 1) o) j",
            "column public.customers.email",
        ),
        (
            "SELECT j.name FROM (customers CROSS JOIN (SELECT 1) s) AS j(id, email, name)",
            "column public.customers.email",
        ),
        (
            "SELECT set_config('warden.identity', 'x', false)",
            "warden.identity is managed by Warden",
        ),
        ("EXPLAIN ANALYZE DELETE FROM orders", "delete from public.orders"),
    ];
    for (sql, want) in denied {
        let d = verdict(sql, &["analyst"]);
        assert!(reason(&d).contains(want), "{sql}: {d:?}");
    }
    for sql in [
        "SELECT id, status FROM orders ORDER BY id",
        "SELECT count(*) FROM orders",
        "WITH x AS (SELECT id, total FROM orders) SELECT sum(total) FROM x",
        "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id",
        "BEGIN; SELECT 1; COMMIT",
        "SHOW search_path",
        "SELECT now()",
        "EXPLAIN SELECT id FROM orders",
        "SELECT id, name FROM customers WHERE region = 'eu'",
        "SELECT id, total FROM orders WHERE id = $1",
        "SELECT pg_sleep(0)",
        "SELECT query FROM pg_stat_activity",
        "SELECT name AS email FROM customers ORDER BY email",
        "SELECT email FROM (SELECT name AS email FROM customers) s",
        "SELECT total AS t FROM orders ORDER BY t",
        "SELECT region, count(*) AS n FROM orders GROUP BY region ORDER BY n",
        "SET client_encoding = 'UTF8'",
        "SELECT n FROM customers AS c(i, n)",
        "SELECT j.name FROM (customers c JOIN orders o ON o.customer_id = c.id) j",
    ] {
        assert_eq!(verdict(sql, &["analyst"]), Decision::Allow, "{sql}");
    }
}

#[test]
fn writers_and_column_limited_writes() {
    assert_eq!(
        verdict("UPDATE orders SET total = 0 WHERE id = 1", &["writer"]),
        Decision::Allow
    );
    assert_eq!(verdict("DELETE FROM orders WHERE id = 1", &["writer"]), Decision::Allow);
    assert!(reason(&verdict("DELETE FROM customers", &["writer"])).contains("may not delete from public.customers"));
    assert_eq!(
        verdict("UPDATE orders SET status = 'x' WHERE id = 1", &["status-writer"]),
        Decision::Allow
    );
    assert!(
        reason(&verdict("UPDATE orders SET total = 0 WHERE id = 1", &["status-writer"]))
            .contains("may not write column public.orders.total")
    );
    assert!(reason(&verdict("DELETE FROM orders", &["status-writer"])).contains("limited to columns"));
    // Reads in WHERE still need read grants.
    assert!(reason(&verdict(
        "UPDATE orders SET status = 'x' WHERE total > 5",
        &["status-writer"]
    ))
    .contains("column public.orders.total"));
    assert_eq!(verdict("DISCARD ALL", &["writer"]), Decision::Allow);
    assert_eq!(verdict("RESET ALL", &["writer"]), Decision::Allow);
    // Roles add up.
    assert_eq!(
        verdict("SELECT email FROM customers", &["analyst", "writer"]),
        Decision::Allow
    );
    assert!(reason(&verdict("DROP TABLE orders", &["analyst", "writer"])).starts_with("roles analyst, writer may not"));
}

#[test]
fn truncate_is_refused_where_a_row_filter_is_in_force() {
    let d = verdict("TRUNCATE orders", &["regional-writer"]);
    assert!(
        reason(&d).contains("a row filter limits this session"),
        "{}",
        reason(&d)
    );
    assert!(verdict("DELETE FROM orders WHERE id = 1", &["regional-writer"]).is_allow());
    assert!(verdict("TRUNCATE orders", &["writer"]).is_allow());
    // writer reads and writes every column of every row: the filter is lifted.
    assert!(verdict("TRUNCATE orders", &["regional-writer", "writer"]).is_allow());
}

#[test]
fn partitions_children_and_views_of_a_filtered_table_are_refused() {
    let config = Config::parse(Path::new("/x/warden.toml"), ROLES).unwrap();
    let mut c = catalog();
    let q = |s: &str, n: &str| warden_sql::QualifiedName {
        schema: s.into(),
        name: n.into(),
    };
    let cols = |s: &str| s.split(", ").map(str::to_string).collect::<Vec<_>>();
    c.add_relation("public", "orders_eu", cols("id, customer_id, status, total, region"));
    c.add_relation("public", "orders_view", cols("id, total"));
    c.add_relation("public", "orders_view_view", cols("id"));
    c.add_source(q("public", "orders_eu"), q("public", "orders"));
    c.add_source(q("public", "orders_view"), q("public", "orders"));
    c.add_source(q("public", "orders_view_view"), q("public", "orders_view"));
    c.close_sources();
    let run = |sql: &str, names: &[&str]| {
        let roles: Vec<&Role> = names.iter().map(|n| config.role(n).unwrap()).collect();
        decide(&analyze(sql, &c, &SessionContext::default()).unwrap(), &roles)
    };
    for sql in [
        "SELECT * FROM orders_eu",
        "SELECT id FROM orders_view",
        "SELECT id FROM orders_view_view",
        "SELECT o.id FROM customers c JOIN orders_view o ON o.id = c.id",
    ] {
        let d = run(sql, &["regional-reader"]);
        assert!(
            reason(&d).contains("only through a row filter") && reason(&d).contains("public.orders"),
            "{sql}: {}",
            reason(&d)
        );
    }
    assert!(run("SELECT * FROM orders", &["regional-reader"]).is_allow());
    // A filter on the partition only: the parent shows the partition's rows past it.
    let mut partial = config.role("writer").unwrap().clone();
    partial.name = "eu-partition".into();
    partial
        .row_filter
        .insert("public.orders_eu".into(), "region = 'eu'".into());
    let d = decide(
        &analyze("DELETE FROM orders WHERE id = 1", &c, &SessionContext::default()).unwrap(),
        &[&partial],
    );
    assert!(
        reason(&d).contains("does not apply through public.orders"),
        "{}",
        reason(&d)
    );
    assert!(decide(
        &analyze("SELECT * FROM orders_eu", &c, &SessionContext::default()).unwrap(),
        &[&partial]
    )
    .is_allow());
    // writer reads every row of every table: no filter is in force, nothing to get past.
    assert!(run("SELECT * FROM orders_eu", &["regional-reader", "writer"]).is_allow());
    assert!(run("SELECT * FROM orders_view", &["writer"]).is_allow());
}
