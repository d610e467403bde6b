//! Loading a database's catalog for statement analysis: relations with their columns, functions with
//! their volatility and whether they run as their owner (SECURITY DEFINER), and which relations show
//! other tables' rows (partitions, child tables, views). Read through the admin connection, which sees the whole catalog.

use warden_sql::{Catalog, Volatility};

pub async fn load(client: &tokio_postgres::Client) -> Result<Catalog, tokio_postgres::Error> {
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut catalog = Catalog {
        generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ..Catalog::default()
    };
    let relations = client
        .query(
            "SELECT n.nspname::text, c.relname::text, \
                    coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), '{}') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid \
             WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S') GROUP BY 1, 2",
            &[],
        )
        .await?;
    for row in relations {
        catalog.add_relation(row.get(0), row.get(1), row.get(2));
    }
    let functions = client
        .query(
            "SELECT n.nspname::text, p.proname::text, max(p.provolatile::text), bool_or(p.prosecdef) \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace GROUP BY 1, 2",
            &[],
        )
        .await?;
    for row in functions {
        let v = match row.get::<_, String>(2).as_str() {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            _ => Volatility::Volatile,
        };
        catalog.add_function(row.get(0), row.get(1), v);
        if row.get::<_, bool>(3) {
            catalog.add_definer(row.get(0), row.get(1));
        }
    }
    // What shows rows of another table past that table's row-level security: partitions and child
    // tables (their ancestors' policies apply only through the ancestor), views and materialized
    // views (they read as their owner, or are a copy). The system's own views are left out.
    let sources = client
        .query(
            "SELECT cn.nspname::text, c.relname::text, pn.nspname::text, p.relname::text \
             FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace \
             UNION \
             SELECT vn.nspname::text, v.relname::text, tn.nspname::text, t.relname::text \
             FROM pg_rewrite r \
             JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace \
             JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                  AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> v.oid \
             JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             WHERE v.relkind IN ('v', 'm') AND vn.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await?;
    for row in sources {
        let name = |s: usize, n: usize| warden_sql::QualifiedName {
            schema: row.get(s),
            name: row.get(n),
        };
        catalog.add_source(name(0, 1), name(2, 3));
    }
    catalog.close_sources();
    Ok(catalog)
}
