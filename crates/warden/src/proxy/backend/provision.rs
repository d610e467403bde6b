//! Provisioning: each identity reaches PostgreSQL as its own role holding exactly the privileges its
//! effective roles add up to. Done at connection time through an admin connection, skipped when the
//! same role already got the same grant set from this process.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use time::Duration;
use tokio::sync::Mutex;
use warden_identity::CertificateAuthority;
use warden_policy::{ColumnScope, DatabaseConfig, GrantSet, TablePrivileges, TableRef};

use crate::proxy::error::ProxyError;

/// One admin connection per database, serialised (concurrent GRANTs on one catalog row conflict),
/// plus a cache of the grant set each role was last given.
#[derive(Default)]
pub struct Provisioner {
    admins: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<tokio_postgres::Client>>>>>,
    done: std::sync::Mutex<HashMap<(String, String), u64>>,
    /// Each database's catalog as last loaded, for statement analysis.
    catalogs: std::sync::Mutex<HashMap<String, Arc<warden_sql::Catalog>>>,
    /// One password login per role at a time: a second one-time password set before the first login
    /// completed would replace the first one and fail that login.
    password_logins: std::sync::Mutex<HashMap<RoleKey, Arc<Mutex<()>>>>,
}

/// (database, role)
type RoleKey = (String, String);

/// Admin logins use a db-CA certificate valid only long enough to log in.
const ADMIN_CERT_VALIDITY: Duration = Duration::minutes(10);

impl Provisioner {
    /// The lock a password login of `role` in `db` holds from setting the password to logging in.
    pub fn password_login_lock(&self, db: &str, role: &str) -> Arc<Mutex<()>> {
        self.password_logins
            .lock()
            .expect("password login map lock poisoned")
            .entry((db.to_string(), role.to_string()))
            .or_default()
            .clone()
    }

    pub async fn ensure(
        &self,
        db_ca: &CertificateAuthority,
        db: &DatabaseConfig,
        role: &str,
        grants: &GrantSet,
        filters: &BTreeMap<String, String>,
    ) -> Result<(), ProxyError> {
        let fingerprint = {
            let mut h = DefaultHasher::new();
            grants.hash(&mut h);
            filters.hash(&mut h);
            h.finish()
        };
        let key = (db.name.clone(), role.to_string());
        if self.done.lock().expect("provision cache lock poisoned").get(&key) == Some(&fingerprint) {
            return Ok(());
        }
        let fail = |reason: String| ProxyError::Provision {
            role: role.to_string(),
            reason,
        };
        let slot = self.admin_slot(&db.name);
        let mut admin = slot.lock().await;
        // Another session may have provisioned the same role while we waited.
        if self.done.lock().expect("provision cache lock poisoned").get(&key) == Some(&fingerprint) {
            return Ok(());
        }
        let client = connected(&mut admin, db_ca, db)
            .await
            .map_err(|e| unreachable(db, &*e))?;
        let result = apply(client, role, grants, filters).await;
        if let Err(e) = &result {
            if client.is_closed() {
                *admin = None;
            }
            return Err(fail(e.to_string()));
        }
        self.done
            .lock()
            .expect("provision cache lock poisoned")
            .insert(key, fingerprint);
        tracing::info!(database = %db.name, role, "provisioned");
        Ok(())
    }

    /// `upstream_auth = "password"`: a fresh random password, valid for a minute, stored as a SCRAM
    /// verifier so that the clear text never reaches PostgreSQL's logs.
    pub async fn one_time_password(
        &self,
        db_ca: &CertificateAuthority,
        db: &DatabaseConfig,
        role: &str,
    ) -> Result<String, ProxyError> {
        let fail = |reason: String| ProxyError::Provision {
            role: role.to_string(),
            reason,
        };
        let password = hex::encode(rand::random::<[u8; 24]>());
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let valid_until = (time::OffsetDateTime::now_utc() + Duration::minutes(1))
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| fail(e.to_string()))?;
        let slot = self.admin_slot(&db.name);
        let mut admin = slot.lock().await;
        let client = connected(&mut admin, db_ca, db)
            .await
            .map_err(|e| unreachable(db, &*e))?;
        let sql = format!(
            "ALTER ROLE {} WITH LOGIN PASSWORD {} VALID UNTIL {}",
            quote_ident(role),
            quote_literal(&verifier),
            quote_literal(&valid_until)
        );
        client.batch_execute(&sql).await.map_err(|e| fail(describe(&e)))?;
        Ok(password)
    }

    /// The database's catalog: cached, loaded on first use and when `missed` names the generation
    /// a statement missed in (then loaded again, unless another load came since).
    pub async fn catalog(
        &self,
        db_ca: &CertificateAuthority,
        db: &DatabaseConfig,
        missed: Option<u64>,
    ) -> Result<Arc<warden_sql::Catalog>, ProxyError> {
        if missed.is_none() {
            if let Some(c) = self.catalogs.lock().expect("catalog lock poisoned").get(&db.name) {
                return Ok(c.clone());
            }
        }
        // Boxed: loading (a TLS connection and queries) needs far more room than the lookup above,
        // and every statement's decision awaits this function.
        Box::pin(self.load_catalog(db_ca, db, missed)).await
    }

    async fn load_catalog(
        &self,
        db_ca: &CertificateAuthority,
        db: &DatabaseConfig,
        missed: Option<u64>,
    ) -> Result<Arc<warden_sql::Catalog>, ProxyError> {
        let fail = |reason: String| ProxyError::Upstream {
            database: db.name.clone(),
            reason: format!("loading the catalog: {reason}"),
        };
        let slot = self.admin_slot(&db.name);
        let mut admin = slot.lock().await;
        // Sessions that missed at once load it once: whoever waited here behind a load takes its result.
        if let Some(c) = self.catalogs.lock().expect("catalog lock poisoned").get(&db.name) {
            if missed.is_none_or(|g| c.generation != g) {
                return Ok(c.clone());
            }
        }
        let client = connected(&mut admin, db_ca, db)
            .await
            .map_err(|e| unreachable(db, &*e))?;
        let catalog = super::catalog::load(client).await.map_err(|e| fail(describe(&e)))?;
        let catalog = Arc::new(catalog);
        self.catalogs
            .lock()
            .expect("catalog lock poisoned")
            .insert(db.name.clone(), catalog.clone());
        Ok(catalog)
    }

    fn admin_slot(&self, db: &str) -> Arc<Mutex<Option<tokio_postgres::Client>>> {
        self.admins
            .lock()
            .expect("admin map lock poisoned")
            .entry(db.to_string())
            .or_default()
            .clone()
    }
}

/// Warden's own connection to PostgreSQL failed. Its log gets where it tried, as whom, and the whole
/// cause (tokio's "error connecting to server" alone says nothing); the client, who may be any
/// signed-in agent, gets what happened and what to do, not the admin connection's details.
fn unreachable(db: &DatabaseConfig, e: &(dyn std::error::Error + 'static)) -> ProxyError {
    let mut cause = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        cause.push_str(": ");
        cause.push_str(&s.to_string());
        source = s.source();
    }
    tracing::error!(
        database = %db.name,
        address = %format!("{}:{}", db.url.host, db.url.port),
        dbname = %db.url.dbname,
        admin = %db.url.admin_user,
        error = %cause,
        "Warden's admin connection to PostgreSQL failed; check that PostgreSQL is running there and accepts Warden"
    );
    ProxyError::Upstream {
        database: db.name.clone(),
        reason: "Warden's connection to it failed; try again in a moment, and if it persists ask an administrator (Warden's log names the address and the cause)".into(),
    }
}

async fn connected<'a>(
    slot: &'a mut Option<tokio_postgres::Client>,
    db_ca: &CertificateAuthority,
    db: &DatabaseConfig,
) -> Result<&'a tokio_postgres::Client, Box<dyn std::error::Error + Send + Sync>> {
    if slot.as_ref().is_some_and(|c| c.is_closed()) {
        *slot = None;
    }
    if slot.is_none() {
        *slot = Some(connect_admin(db_ca, db).await?);
    }
    Ok(slot.as_ref().expect("set just above"))
}

async fn connect_admin(
    db_ca: &CertificateAuthority,
    db: &DatabaseConfig,
) -> Result<tokio_postgres::Client, Box<dyn std::error::Error + Send + Sync>> {
    let url = &db.url;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&url.host)
        .port(url.port)
        .user(&url.admin_user)
        .dbname(&url.dbname)
        .application_name("warden provisioner")
        // Bounded waits: provisioning must never hang a reload or a login behind a long lock.
        .connect_timeout(std::time::Duration::from_secs(10))
        .options("-c lock_timeout=10s -c statement_timeout=30s")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let client_cert = match &url.admin_password {
        Some(pw) => {
            cfg.password(pw);
            None
        }
        None => {
            let c = db_ca.issue_db_client(&url.admin_user, ADMIN_CERT_VALIDITY)?;
            Some((vec![c.cert_der], c.key_der))
        }
    };
    let tls = crate::tls::upstream_config(url, client_cert)?;
    let (client, connection) = cfg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "admin connection closed");
        }
    });
    Ok(client)
}

/// Brings `role` to exactly `grants` in one transaction: create if missing, revoke what it holds from
/// us, grant what it should hold.
async fn apply(
    client: &tokio_postgres::Client,
    role: &str,
    grants: &GrantSet,
    filters: &BTreeMap<String, String>,
) -> Result<(), ApplyError> {
    // Several Warden instances may provision in one database: concurrent GRANTs on one table fail
    // ("tuple concurrently updated") and two CREATE ROLEs race, so provisioning is serialized across
    // them by a transaction-scoped advisory lock, taken before the role is looked at.
    client
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtext('warden provisioning'))")
        .await?;
    let existing = match client
        .query_opt(
            "SELECT rolsuper OR rolbypassrls OR rolreplication FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
    {
        Ok(row) => row,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
    };
    let mut sql = String::new();
    let r = quote_ident(role);
    if let Some(row) = existing {
        if row.get::<_, bool>(0) {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(Unsafe(format!("role {role} already exists with SUPERUSER, BYPASSRLS or REPLICATION; drop it or rename it, Warden will not log in as it")).into());
        }
        // Only LOGIN: a provisioned role never inherits, owns or administers anything.
        sql += &format!("ALTER ROLE {r} WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT;\n");
    } else {
        sql += &format!("CREATE ROLE {r} WITH LOGIN NOINHERIT;\n");
    }
    sql += &format!(
        "COMMENT ON ROLE {r} IS {};\n",
        quote_literal("managed by Warden: privileges are reset at each connection")
    );
    let held = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), c.relkind = 'S' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)) \
                OR EXISTS (SELECT 1 FROM pg_attribute at, aclexplode(at.attacl) a \
                           WHERE at.attrelid = c.oid AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1))",
            &[&role],
        )
        .await?;
    for row in held {
        let (object, is_sequence): (String, bool) = (row.get(0), row.get(1));
        let kind = if is_sequence { "SEQUENCE" } else { "TABLE" };
        sql += &format!("REVOKE ALL ON {kind} {object} FROM {r};\n");
    }
    let schemas = client
        .query(
            "SELECT format('%I', nspname) FROM pg_namespace \
             WHERE EXISTS (SELECT 1 FROM aclexplode(nspacl) a WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1))",
            &[&role],
        )
        .await?;
    for row in schemas {
        let schema: String = row.get(0);
        sql += &format!("REVOKE ALL ON SCHEMA {schema} FROM {r};\n");
    }
    for s in grant_statements(role, grants) {
        sql += &s;
        sql += ";\n";
    }
    // INSERT into a serial or identity column draws from its sequence: writers need USAGE on it.
    for (table, privs) in &grants.tables {
        if privs.insert.is_none() {
            continue;
        }
        let sequences = client
            .query(
                "SELECT format('%I.%I', sn.nspname, s.relname) FROM pg_depend d \
                 JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
                 JOIN pg_namespace sn ON sn.oid = s.relnamespace \
                 JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
                 WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
                   AND tn.nspname = $1 AND ($2::text IS NULL OR t.relname = $2)",
                &[&table.schema, &table.name],
            )
            .await?;
        for row in sequences {
            let seq: String = row.get(0);
            sql += &format!("GRANT USAGE ON SEQUENCE {seq} TO {r};\n");
        }
    }
    sql += &row_security(client, role, filters).await?;
    sql += "COMMIT;";
    let result = client.batch_execute(&sql).await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    Ok(result?)
}

/// Row filters as row-level security for this role only: a restrictive policy per filtered table.
/// Where Warden itself enables RLS on a table (it had none), a permissive `USING (true)` policy for
/// PUBLIC keeps what every other role sees unchanged. Policies for tables no longer filtered go.
async fn row_security(
    client: &tokio_postgres::Client,
    role: &str,
    filters: &BTreeMap<String, String>,
) -> Result<String, ApplyError> {
    let r = quote_ident(role);
    let policy = crate::proxy::short_identifier(&format!("warden:{role}"));
    let mut sql = String::new();
    let existing = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_policies WHERE policyname = $1",
            &[&policy],
        )
        .await?;
    for row in existing {
        let (schema, table): (String, String) = (row.get(0), row.get(1));
        if !filters.contains_key(&format!("{schema}.{table}")) {
            sql += &format!(
                "DROP POLICY {} ON {}.{};\n",
                quote_ident(&policy),
                quote_ident(&schema),
                quote_ident(&table)
            );
        }
    }
    for (table, filter) in filters {
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        let target = format!("{}.{}", quote_ident(schema), quote_ident(name));
        let state = client
            .query_opt(
                "SELECT c.relrowsecurity, (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&schema, &name],
            )
            .await?;
        let Some(state) = state else {
            return Err(Unsafe(format!("row_filter names {table}, which does not exist")).into());
        };
        let (enabled, policies): (bool, i64) = (state.get(0), state.get(1));
        if !enabled {
            if policies > 0 {
                return Err(Unsafe(format!(
                    "{table} has row-level security policies but RLS is disabled; Warden will not switch them on for you"
                ))
                .into());
            }
            sql += &format!("ALTER TABLE {target} ENABLE ROW LEVEL SECURITY;\n");
            sql += &format!(
                "CREATE POLICY warden_others ON {target} AS PERMISSIVE FOR ALL TO PUBLIC USING (true) WITH CHECK (true);\n"
            );
        }
        sql += &format!("DROP POLICY IF EXISTS {} ON {target};\n", quote_ident(&policy));
        sql += &format!(
            "CREATE POLICY {} ON {target} AS RESTRICTIVE FOR ALL TO {r} USING ({filter}) WITH CHECK ({filter});\n",
            quote_ident(&policy)
        );
    }
    Ok(sql)
}

/// A role Warden refuses to use.
#[derive(Debug)]
struct Unsafe(String);

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("{}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{}", .0.0)]
    Unsafe(Unsafe),
}

impl From<Unsafe> for ApplyError {
    fn from(u: Unsafe) -> Self {
        ApplyError::Unsafe(u)
    }
}

/// The GRANT statements for a grant set (pure, so it is unit-tested).
pub fn grant_statements(role: &str, grants: &GrantSet) -> Vec<String> {
    let r = quote_ident(role);
    let mut out = Vec::new();
    for schema in grants.schemas() {
        out.push(format!("GRANT USAGE ON SCHEMA {} TO {r}", quote_ident(schema)));
    }
    for (table, privs) in &grants.tables {
        out.extend(table_grants(&r, table, privs));
    }
    out
}

fn table_grants(r: &str, table: &TableRef, p: &TablePrivileges) -> Vec<String> {
    let target = match &table.name {
        Some(name) => format!("TABLE {}.{}", quote_ident(&table.schema), quote_ident(name)),
        None => format!("ALL TABLES IN SCHEMA {}", quote_ident(&table.schema)),
    };
    let mut out = Vec::new();
    for (privilege, scope) in [("SELECT", &p.select), ("INSERT", &p.insert), ("UPDATE", &p.update)] {
        match scope {
            ColumnScope::None => {}
            ColumnScope::All => out.push(format!("GRANT {privilege} ON {target} TO {r}")),
            ColumnScope::Columns(cols) => {
                let cols: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
                out.push(format!("GRANT {privilege} ({}) ON {target} TO {r}", cols.join(", ")));
            }
        }
    }
    if p.delete {
        out.push(format!("GRANT DELETE ON {target} TO {r}"));
    }
    out
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) if db.message().starts_with("must be owner") => format!(
            "{} ({}); row filters need the admin role to own the table (ALTER TABLE ... OWNER TO the admin): only owners may enable row-level security",
            db.message(),
            db.code().code()
        ),
        // A privilege the admin role lacks.
        Some(db) if db.code().code() == "42501" => format!("{} ({}); the admin role needs CREATEROLE and the privileges it hands out WITH GRANT OPTION (docs/connection.md)", db.message(), db.code().code()),
        // Anything else in what Warden was asked to set up: most often a row filter naming a column
        // the table does not have (42703), or a bad expression in one.
        Some(db) => format!(
            "{} ({}); check the grants and row filters in warden.toml against the database's tables",
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_policy::Config;

    #[test]
    fn grants_follow_the_roles() {
        let config = Config::parse(std::path::Path::new("/x/warden.toml"), crate::cli::SAMPLE_CONFIG).unwrap();
        let set = config.grants(&[config.role("analyst").unwrap()]);
        let sql = grant_statements("agent:report-bot", &set);
        assert_eq!(
            sql,
            [
                "GRANT USAGE ON SCHEMA \"public\" TO \"agent:report-bot\"",
                "GRANT SELECT (\"id\", \"name\", \"region\") ON TABLE \"public\".\"customers\" TO \"agent:report-bot\"",
                "GRANT SELECT (\"customer_id\", \"id\", \"region\", \"status\", \"total\") ON TABLE \"public\".\"orders\" TO \"agent:report-bot\"",
            ]
        );
        let set = config.grants(&[config.role("writer").unwrap()]);
        let sql = grant_statements("human:alice", &set);
        assert!(sql.contains(&"GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"human:alice\"".to_string()));
        assert!(sql.contains(&"GRANT DELETE ON TABLE \"public\".\"orders\" TO \"human:alice\"".to_string()));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
