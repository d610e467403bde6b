//! Statement analysis and decision, as the proxy runs them per Query or Parse: uncached (parse with
//! PostgreSQL's grammar, walk, decide) and cached (the analysis looked up by text, then decided); and
//! a simple-protocol point select whose number changes every time, as pgbench sends it, which the
//! cache answers by the statement's shape.

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use warden_policy::{decide, Config, Role};
use warden_sql::{analyze, AnalysisCache, Catalog, SessionContext, Volatility};

const CONFIG: &str = r#"
[server]
postgres_listen = "127.0.0.1:6432"
[[database]]
name = "shop"
url = "postgres://warden_admin@127.0.0.1/shop?sslmode=require"
[[role]]
name = "analyst"
databases = ["shop"]
read  = ["public.orders(id, customer_id, status, total, region)", "public.customers(id, name, region)"]
"#;

const STATEMENTS: &[(&str, &str)] = &[
    ("point select", "SELECT id, status, total FROM orders WHERE id = $1"),
    ("join", "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.region = 'eu' ORDER BY o.id"),
    ("cte + aggregate", "WITH x AS (SELECT id, total FROM orders WHERE status = 'paid') SELECT sum(total), count(*) FROM x"),
    ("denied", "SELECT * FROM customers WHERE email LIKE 'a%'"),
];

fn catalog() -> Catalog {
    let mut c = Catalog {
        generation: 1,
        ..Catalog::default()
    };
    let cols = |s: &str| s.split(", ").map(str::to_string).collect::<Vec<_>>();
    c.add_relation("public", "customers", cols("id, name, email, region"));
    c.add_relation("public", "orders", cols("id, customer_id, status, total, region"));
    for f in ["sum", "count"] {
        c.add_function("pg_catalog", f, Volatility::Immutable);
    }
    c
}

fn bench(c: &mut Criterion) {
    let config = Config::parse(Path::new("/bench/warden.toml"), CONFIG).unwrap();
    let roles: Vec<&Role> = vec![config.role("analyst").unwrap()];
    let catalog = catalog();
    let ctx = SessionContext::default();
    let cache = AnalysisCache::default();
    for (name, sql) in STATEMENTS {
        c.bench_function(&format!("uncached/{name}"), |b| {
            b.iter(|| {
                let stmts = analyze(black_box(sql), &catalog, &ctx).unwrap();
                black_box(decide(&stmts, &roles))
            })
        });
        c.bench_function(&format!("cached/{name}"), |b| {
            b.iter(|| {
                let analysis = cache.analyze(black_box(sql), &catalog, &ctx);
                let stmts = analysis.as_ref().as_ref().unwrap();
                black_box(decide(stmts, &roles))
            })
        });
    }
    let texts: Vec<String> = (0..1000)
        .map(|i| format!("SELECT id, status, total FROM orders WHERE id = {}", 100_000 + i * 7))
        .collect();
    let mut i = 0;
    c.bench_function("cached by shape/point select, a new number each time", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            let analysis = cache.analyze(black_box(&texts[i]), &catalog, &ctx);
            let stmts = analysis.as_ref().as_ref().unwrap();
            black_box(decide(stmts, &roles))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
