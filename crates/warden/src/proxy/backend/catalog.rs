//! Loading a database's catalog for statement analysis: relations with their columns, functions with
//! their volatility and whether they run as their owner (SECURITY DEFINER). Read through the admin connection, which sees the whole catalog.

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
    Ok(catalog)
}
