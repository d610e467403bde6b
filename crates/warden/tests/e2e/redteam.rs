//! The red-team corpus (../shared/redteam/cases.tsv) through the real proxy, plus cases of our own:
//! every `deny` fails and changes nothing (a fingerprint of data and schema is compared around each),
//! every `allow` succeeds. Simple protocol with psql, extended protocol (`-x`) with tokio-postgres.
//! Then the denied writes and column reads again through a Warden whose checks are switched off:
//! PostgreSQL's own privileges on the provisioned role must refuse them by themselves.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;

struct Case {
    id: String,
    allow: bool,
    sql: String,
}

fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(redteam_dir().join("cases.tsv")).unwrap();
    let mut cases: Vec<Case> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let (id, expect, sql) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            Case {
                id: id.into(),
                allow: expect == "allow",
                sql: sql.into(),
            }
        })
        .collect();
    assert!(cases.len() >= 31, "corpus too small: {}", cases.len());
    cases.extend(OURS.iter().map(|(id, allow, sql)| Case {
        id: id.to_string(),
        allow: *allow,
        sql: sql.to_string(),
    }));
    cases
}

/// Beyond the corpus: the other ways people will try.
const OURS: &[(&str, bool, &str)] = &[
    ("W01", false, "SELECT c FROM customers c"),
    ("W02", false, "SELECT row_to_json(c) FROM customers c"),
    ("W03", false, "SELECT to_jsonb(customers) FROM customers"),
    (
        "W04",
        false,
        "SELECT o.id, x.email FROM orders o, LATERAL (SELECT email FROM customers WHERE id = o.customer_id) x",
    ),
    ("W05", false, "SELECT (SELECT email FROM customers LIMIT 1)"),
    ("W06", false, "SELECT id FROM customers ORDER BY email"),
    (
        "W07",
        false,
        "SELECT region FROM customers GROUP BY region HAVING max(email) > ''",
    ),
    ("W08", false, "SELECT id FROM orders UNION SELECT id FROM hr.salaries"),
    ("W09", false, "SET search_path TO hr, public; SELECT * FROM orders"),
    ("W10", false, "SELECT reset_orders()"),
    ("W11", false, "SELECT set_config('role', 'postgres', false)"),
    ("W12", false, "SET warden.identity = 'human:alice'"),
    // pg_stat_activity and PostgreSQL's logs name the actor through application_name.
    ("W41", false, "SET application_name = 'warden human:bob'"),
    (
        "W42",
        false,
        "SELECT set_config('application_name', 'warden human:bob', false)",
    ),
    // A cursor not declared through Warden (a function's, a protocol portal): what it reads is unknown.
    ("W43", false, "FETCH ALL FROM cursor_never_declared"),
    (
        "V11",
        true,
        "BEGIN; DECLARE c CURSOR FOR SELECT id FROM orders; FETCH 1 FROM c; CLOSE c; COMMIT",
    ),
    ("W13", false, "RESET ALL"),
    ("W14", false, "EXPLAIN ANALYZE DELETE FROM orders"),
    ("W15", false, "INSERT INTO orders SELECT * FROM orders"),
    ("W16", false, "COPY (SELECT email FROM customers) TO STDOUT"),
    ("W17", false, "CREATE TEMP TABLE t AS SELECT 1"),
    ("W18", false, "SELECT pg_read_file('/etc/passwd')"),
    ("W19", false, "SELECT lo_import('/etc/passwd')"),
    ("W20", false, "BEGIN; DELETE FROM orders; COMMIT"),
    ("W21", false, "LOCK TABLE orders"),
    ("W22", false, "VACUUM orders"),
    ("W23", false, "SELECT nextval('orders_id_seq')"),
    ("W24", false, "SELECT * FROM customers WHERE false"),
    (
        "W25",
        false,
        "WITH RECURSIVE r AS (SELECT email FROM customers) SELECT 1 FROM r",
    ),
    ("W26", false, "SELECT ctid, id FROM customers"),
    ("W27", false, "SELECT public.reset_orders()"),
    ("W28", false, "UPDATE orders SET status = status WHERE false"),
    ("W29", false, "SELECT * FROM hr.orders"),
    (
        "W30",
        false,
        "DECLARE cur CURSOR WITH HOLD FOR SELECT email FROM customers",
    ),
    ("W31", false, "SELECT upper(email) FROM customers"),
    ("W32", false, "SELECT id FROM customers WHERE email IS NOT NULL-x"),
    ("W33", false, "UPDATE orders SET total = $1 WHERE id = 1-x"),
    ("W34", false, "SELECT set_config('search_path', 'hr', false)"),
    ("W35", false, "NOTIFY jobs, 'from a read-only role'"),
    (
        "V01",
        true,
        "SELECT id, status FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE region = 'eu')",
    ),
    (
        "V02",
        true,
        "SELECT c.name, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.name",
    ),
    (
        "V03",
        true,
        "SELECT to_jsonb(x) FROM (SELECT id, name FROM customers) x",
    ),
    ("V04", true, "SELECT total AS t FROM orders ORDER BY t"),
    ("V05", true, "BEGIN; SELECT id FROM orders; ROLLBACK"),
    ("V06", true, "SELECT current_user, current_setting('warden.identity')"),
    ("V07", true, "SELECT id FROM orders; SELECT name FROM customers"),
    ("V08", true, "SELECT count(*) FROM pg_stat_activity"),
    ("W39", false, "SET search_path TO public; SELECT id FROM orders"),
    ("V10", true, "SELECT name FROM customers WHERE id = $1-x"),
    ("W40", false, "SET search_path TO public"),
    ("B17", false, "SELECT name FROM customers AS c(id, n, name)"),
    (
        "B18",
        false,
        "SELECT (SELECT x FROM (SELECT 1 AS email) a, (SELECT email AS x) b) FROM customers",
    ),
    (
        "B19",
        false,
        "SELECT c.email FROM customers c, ((SELECT 1 AS email) c CROSS JOIN (SELECT 1) o) j",
    ),
    ("B20", false, "SET standard_conforming_strings = off"),
    ("B21", false, "SET client_encoding = 'SJIS'"),
    (
        "B22",
        false,
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery')",
    ),
    (
        "V16",
        true,
        "SELECT id FROM orders UNION SELECT id FROM orders ORDER BY id",
    ),
    ("V17", true, "SET client_encoding = 'UTF8'"),
    (
        "V11",
        true,
        "PREPARE q1 AS SELECT id FROM orders WHERE id = $1; EXECUTE q1(1); DEALLOCATE q1",
    ),
    (
        "W38",
        false,
        "PREPARE q2 AS SELECT id FROM orders; DEALLOCATE q2; PREPARE q2 AS SELECT email FROM customers; EXECUTE q2",
    ),
    // Found by an internal red-team pass over the analyzer.
    ("B01", false, "SELECT count(*) FROM hr.salaries"),
    ("B02", false, "SELECT o.* FROM orders o, hr.salaries s"),
    ("B03", false, "SELECT (SELECT email FROM (SELECT 1) s) FROM customers"),
    (
        "B04",
        false,
        "SELECT (SELECT amount FROM (SELECT 1) s) FROM hr.salaries",
    ),
    (
        "B05",
        false,
        "SELECT j.email FROM (customers c JOIN orders o ON o.customer_id = c.id) j",
    ),
    (
        "B06",
        false,
        "SELECT row_to_json(j) FROM (customers CROSS JOIN orders) j",
    ),
    (
        "B07",
        false,
        "SELECT count(*) FROM customers NATURAL JOIN (VALUES ('ada@example.com')) v(email)",
    ),
    (
        "B08",
        false,
        "SELECT count(*) FROM customers JOIN (VALUES ('ada@example.com')) v(email) USING (email)",
    ),
    (
        "B09",
        false,
        "WITH customers AS (SELECT * FROM customers) SELECT email FROM customers",
    ),
    ("B10", false, "SELECT table_to_xml('customers', true, false, '')"),
    (
        "B11",
        false,
        "SELECT query_to_xml('SELECT email FROM customers', true, false, '')",
    ),
    ("B12", false, "SELECT id FROM orders FOR UPDATE"),
    ("B13", false, "DISCARD ALL"),
    ("B14", false, "RESET search_path"),
    ("B15", false, "SET search_path = public; SELECT 1/0"),
    ("B16", false, "SELECT secret FROM orders"),
    ("V12", true, "SELECT name AS email FROM customers ORDER BY email"),
    ("V13", true, "SELECT email FROM (SELECT name AS email FROM customers) s"),
    (
        "V14",
        true,
        "SELECT region, count(*) AS n FROM orders GROUP BY region ORDER BY n",
    ),
    (
        "V15",
        true,
        "SELECT o.id, c.name FROM orders o JOIN customers c USING (id)",
    ),
    ("W36", false, "BEGIN; SET search_path TO hr, public; ROLLBACK"),
    ("W37", false, "SET LOCAL search_path TO hr"),
];

/// Data and schema of the fixture, as the superuser sees them.
fn fingerprint() -> String {
    harness()
        .cluster
        .psql(
            "shop",
            "SELECT md5(string_agg(x, '|' ORDER BY x)) FROM ( \
               SELECT 'c' || t::text AS x FROM public.customers t UNION ALL \
               SELECT 'o' || t::text FROM public.orders t UNION ALL \
               SELECT 's' || t::text FROM hr.salaries t UNION ALL \
               SELECT 'h' || t::text FROM hr.orders t UNION ALL \
               SELECT 'col' || table_schema || '.' || table_name || '.' || column_name FROM information_schema.columns \
                 WHERE table_schema IN ('public', 'hr') UNION ALL \
               SELECT 'rel' || relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')) f",
        )
        .unwrap()
}

/// Runs one case as agent:report-bot for alice with the role analyst; Ok(()) if it succeeded.
async fn run(port: u16, cred: &Path, case: &Case) -> Result<(), String> {
    let h = harness();
    if let Some(sql) = case
        .sql
        .strip_suffix("-x")
        .or(case.id.strip_suffix("-x").map(|_| case.sql.as_str()))
    {
        // Extended protocol: Parse/Bind/Execute with one integer parameter where the statement has one.
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(port)
            .user("report-bot")
            .dbname("shop")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let client = connect_with(&cfg, &cred.join("ca.crt"), Some(load_cert(cred)))
            .await
            .map_err(|e| e.to_string())?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            if sql.contains("$1") { vec![&1i32] } else { vec![] };
        let sql = sql.replace("$1", "$1::int");
        return client
            .query(sql.as_str(), &params)
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}"));
    }
    let out = Command::new(psql_bin())
        .arg("-X")
        .arg("-q")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-v")
        .arg("VERBOSITY=verbose")
        .arg(h.conninfo_at(port, cred, "report-bot", "shop"))
        .arg("-c")
        .arg(&case.sql)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(stderr(&out))
    }
}

#[tokio::test]
async fn redteam_corpus_and_more_through_the_proxy() {
    let h = harness();
    let cred = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", "redteam", "--roles", "analyst"],
    );
    let mut failures = Vec::new();
    for case in corpus() {
        let before = fingerprint();
        let result = run(h.warden_port, &cred, &case).await;
        let after = fingerprint();
        match (case.allow, &result) {
            (true, Err(e)) => failures.push(format!("{} should be allowed: {} -> {e}", case.id, case.sql)),
            (false, Ok(())) => failures.push(format!("{} should be denied: {}", case.id, case.sql)),
            (false, Err(e)) if !e.contains("warden: ") => failures.push(format!(
                "{} was refused, but not by Warden: {} -> {e}",
                case.id, case.sql
            )),
            _ => {}
        }
        if before != after {
            failures.push(format!("{} changed the database: {}", case.id, case.sql));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Each denial is on record, with its reason.
    let denied = h.audit(&["--task", "redteam", "--decision", "deny"]);
    let e = denied
        .iter()
        .find(|e| e["statement"] == "SELECT email FROM customers")
        .expect("D12 recorded");
    assert_eq!(e["reason"], "role analyst may not read column public.customers.email");
}

#[tokio::test]
async fn security_definer_functions_are_refused_even_when_created_after_warden_read_the_catalog() {
    let h = harness();
    // Created now, after Warden read shop2's catalog: a miss reads it again.
    h.cluster
        .psql(
            "shop2",
            "CREATE FUNCTION public.wd_email_of(i int) RETURNS text STABLE SECURITY DEFINER LANGUAGE sql \
             AS 'SELECT email FROM public.customers WHERE id = i'",
        )
        .unwrap();
    let cred = h.issue("human", "alice", &[]);
    let client = h.connect(&cred, "alice", "shop2", false).await.unwrap();
    let err = client
        .query("SELECT wd_email_of(id) FROM customers", &[])
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a PostgreSQL error");
    assert_eq!(db.code().code(), "42501", "{db:?}");
    assert!(
        db.message().contains("function public.wd_email_of is SECURITY DEFINER"),
        "{}",
        db.message()
    );
    // An ordinary function is still called.
    client.query("SELECT lower(name) FROM customers", &[]).await.unwrap();
}

#[tokio::test]
async fn a_denial_inside_a_transaction_aborts_it_as_postgres_would() {
    let h = harness();
    let cred = h.issue(
        "agent",
        "report-bot",
        &[
            "--requester",
            "human:alice",
            "--task",
            "redteam-tx",
            "--roles",
            "analyst",
        ],
    );
    let client = h.connect(&cred, "report-bot", "shop", false).await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    client.query("SELECT id FROM orders", &[]).await.unwrap();
    let err = client.query("SELECT email FROM customers", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    let err = client.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "25P02", "in failed transaction: {err}");
    client.batch_execute("ROLLBACK").await.unwrap();
    client.query("SELECT 1", &[]).await.unwrap();
}

#[tokio::test]
async fn with_checks_off_postgres_still_refuses_the_denied_writes_and_reads() {
    let h = harness();
    let port = h.unchecked_warden();
    let cred = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", "depth", "--roles", "analyst"],
    );
    let writes_and_reads = [
        "D01", "D02", "D03", "D04", "D05", "D06", "D08", "D10", "D12", "D13", "D14", "D20", "D21-x",
    ];
    let mut failures = Vec::new();
    for case in corpus()
        .into_iter()
        .filter(|c| writes_and_reads.contains(&c.id.as_str()))
    {
        let before = fingerprint();
        match run(port, &cred, &case).await {
            Ok(()) => failures.push(format!("{} succeeded with checks off: {}", case.id, case.sql)),
            Err(e) if e.contains("warden: ") => failures.push(format!(
                "{} was refused by Warden although checks are off: {e}",
                case.id
            )),
            Err(e) if !e.contains("42501") => failures.push(format!("{} failed, but not on a privilege: {e}", case.id)),
            Err(_) => {}
        }
        if before != fingerprint() {
            failures.push(format!("{} changed the database with checks off", case.id));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The analysis cache shares an analysis between statements that differ only in numbers. An escape
/// string continued on the next line (`E'WIN'` newline `'\' 932'`) is one string to PostgreSQL,
/// `WIN' 932`, an unsafe client encoding; a cache that took `\'` for its end would answer it with the
/// analysis of the harmless `... 1'` sent just before.
#[tokio::test]
async fn a_cached_shape_does_not_answer_for_a_refused_client_encoding() {
    let h = harness();
    let cred = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", "shape", "--roles", "analyst"],
    );
    let case = |id: &str, sql: &str| Case {
        id: id.into(),
        allow: false,
        sql: sql.into(),
    };
    // PostgreSQL refuses this one itself (no such encoding); it only primes the cache.
    let _ = run(
        h.warden_port,
        &cred,
        &case("S1", "SET client_encoding TO E'WIN'\n'\\' 1'"),
    )
    .await;
    match run(
        h.warden_port,
        &cred,
        &case("S2", "SET client_encoding TO E'WIN'\n'\\' 932'"),
    )
    .await
    {
        Err(e) => assert!(e.contains("warden: ") && e.contains("client_encoding"), "{e}"),
        Ok(()) => panic!("an unsafe client_encoding was let through"),
    }
    // Numbers alone still share: the second is answered from the cache and decided the same.
    for id in [1, 2] {
        let read = case("S3", &format!("SELECT id FROM orders WHERE id = {id}"));
        assert_eq!(run(h.warden_port, &cred, &read).await, Ok(()));
        let email = case("S4", &format!("SELECT email FROM customers WHERE id = {id}"));
        let e = run(h.warden_port, &cred, &email).await.unwrap_err();
        assert!(e.contains("warden: ") && e.contains("email"), "{e}");
    }
}
