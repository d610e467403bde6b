//! Connecting through Warden: both credential paths, attribution in PostgreSQL and in the audit log.

use crate::common::*;

#[test]
fn psql_as_agent_reads_data_and_the_audit_names_agent_requester_and_task() {
    let h = harness();
    let cred = h.agent();
    let out = h.psql(
        &cred,
        "report-bot",
        "shop",
        "SELECT id, status FROM orders WHERE id <= 2 ORDER BY id",
    );
    assert!(out.status.success(), "psql failed: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1|paid\n2|paid");

    let events = h.audit(&["--identity", "agent:report-bot", "--event", "query"]);
    let q = events
        .iter()
        .find(|e| e["statement"] == "SELECT id, status FROM orders WHERE id <= 2 ORDER BY id")
        .expect("query event recorded");
    assert_eq!(q["identity"]["kind"], "agent");
    assert_eq!(q["identity"]["name"], "report-bot");
    assert_eq!(q["identity"]["requester"], "human:alice");
    assert_eq!(q["identity"]["task"], "T-42");
    assert_eq!(q["decision"], "allow");
    assert_eq!(q["db_user"], "agent:report-bot@human:alice");
    assert_eq!(q["database"], "shop");
    let seq = q["seq"].as_u64().unwrap();
    let result = h.wait_for_event(&["--identity", "agent:report-bot", "--event", "query.result"], |e| {
        e["query_id"] == seq
    });
    assert_eq!(result["rows"], 2);
    assert!(result.get("error").is_none());
    // The credential's issue is in the same chain, with the credential id the session used.
    let issued = h.wait_for_event(&["--event", "credential.issued", "--task", "T-42"], |e| {
        e["credential_id"] == q["credential_id"]
    });
    assert_eq!(issued["identity"]["requester"], "human:alice");
    // Chained: every record names the hash of the one before.
    assert_eq!(q["hash"].as_str().unwrap().len(), 64);
    assert_eq!(q["prev_hash"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn tokio_postgres_with_certificate_and_with_token() {
    let h = harness();
    let cred = h.agent();
    for use_token in [false, true] {
        let client = h
            .connect(&cred, "report-bot", "shop", use_token)
            .await
            .unwrap_or_else(|e| panic!("token={use_token}: {e}"));
        let row = client
            .query_one("SELECT current_user::text, count(*) FROM orders", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "agent:report-bot@human:alice");
        assert!(row.get::<_, i64>(1) >= 4);
    }
}

#[tokio::test]
async fn postgres_sees_the_agent_in_pg_stat_activity_and_warden_settings() {
    let h = harness();
    let cred = h.agent();
    let client = h.connect(&cred, "report-bot", "shop", false).await.unwrap();
    let row = client
        .query_one(
            "SELECT pg_backend_pid(), current_setting('warden.identity'), current_setting('warden.requester'), \
             current_setting('warden.task'), current_setting('warden.session')",
            &[],
        )
        .await
        .unwrap();
    let pid: i32 = row.get(0);
    assert_eq!(row.get::<_, String>(1), "agent:report-bot");
    assert_eq!(row.get::<_, String>(2), "human:alice");
    assert_eq!(row.get::<_, String>(3), "T-42");
    let session: String = row.get(4);
    // As an administrator sees it, directly in PostgreSQL.
    let seen = h
        .cluster
        .psql(
            "postgres",
            &format!("SELECT usename || '|' || application_name FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .unwrap();
    assert_eq!(
        seen,
        "agent:report-bot@human:alice|warden agent:report-bot for human:alice task T-42"
    );
    let start = h.wait_for_event(&["--session", &session, "--event", "session.start"], |_| true);
    assert_eq!(start["identity"]["name"], "report-bot");
    assert_eq!(start["identity"]["task"], "T-42");
    // The text output shows a session by its first 8 characters: that finds it too.
    let short = &session[..8];
    let by_prefix = h.wait_for_event(&["--session", short, "--event", "session.start"], |_| true);
    assert_eq!(by_prefix["session_id"], session.as_str());
}

#[tokio::test]
async fn denied_reads_are_refused_by_warden_with_the_rule() {
    let h = harness();
    let cred = h.issue("human", "bob", &[]);
    let client = h.connect(&cred, "bob", "shop", false).await.unwrap();
    let err = client.query("SELECT email FROM customers", &[]).await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42501", "{err}");
    assert_eq!(
        db.message(),
        "warden: role analyst may not read column public.customers.email"
    );
    assert!(db.hint().is_some());
    assert!(db.where_().is_none(), "the stand-in's PL/pgSQL context is not shown");
    let err = client.simple_query("SELECT * FROM hr.salaries").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501", "{err}");
    // The session goes on.
    let rows = client
        .query("SELECT name FROM customers ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
}

#[tokio::test]
async fn provisioning_is_cached_and_the_admin_is_not_a_superuser() {
    let h = harness();
    assert_eq!(
        h.cluster
            .psql(
                "postgres",
                "SELECT rolsuper::text || rolcreaterole::text FROM pg_roles WHERE rolname = 'warden_admin'"
            )
            .unwrap(),
        "falsetrue"
    );
    let cred = h.issue("workload", "billing", &[]);
    for _ in 0..3 {
        let client = h.connect(&cred, "billing", "shop", false).await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
    }
    let provisioned = h
        .warden_log()
        .lines()
        .filter(|l| l.contains("provisioned") && l.contains("workload:billing") && l.contains("database=shop"))
        .count();
    assert_eq!(provisioned, 1, "{}", h.warden_log());
    // The writer role's grants reached PostgreSQL: table-level on orders including DELETE, and the sequence.
    let privs = h
        .cluster
        .psql("shop", "SELECT string_agg(privilege_type, ',' ORDER BY privilege_type) FROM information_schema.role_table_grants WHERE grantee = 'workload:billing' AND table_name = 'orders'")
        .unwrap();
    assert_eq!(privs, "DELETE,INSERT,SELECT,UPDATE");
}

#[tokio::test]
async fn one_time_password_upstream_auth() {
    let h = harness();
    let cred = h.agent();
    let client = h.connect(&cred, "report-bot", "shop2", false).await.unwrap();
    let row = client
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "agent:report-bot@human:alice");
    assert_eq!(row.get::<_, String>(1), "shop2");
}

#[tokio::test]
async fn row_filters_limit_rows_to_the_requesters_trait_and_no_one_else() {
    let h = harness();
    let count = |client: tokio_postgres::Client| async move {
        let rows = client
            .query(
                "SELECT region, count(*) FROM orders GROUP BY region ORDER BY region",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
    };
    // report-bot for alice (region eu), holding only the filtered role.
    let cred = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", "rows", "--roles", "analyst"],
    );
    let client = h.connect(&cred, "report-bot", "shop", false).await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    assert_eq!(count(client).await, ["eu=2"]);
    // bob (region us) sees his region.
    let bob = h.issue("human", "bob", &[]);
    assert_eq!(
        count(h.connect(&bob, "bob", "shop", false).await.unwrap()).await,
        ["us=2"]
    );
    // The same agent with the unfiltered writer role as well sees every row.
    let both = h.issue("agent", "report-bot", &["--requester", "human:alice", "--task", "rows"]);
    assert_eq!(
        count(h.connect(&both, "report-bot", "shop", false).await.unwrap()).await,
        ["eu=2", "us=2"]
    );
    // Any other PostgreSQL role sees every row, as before.
    h.cluster
        .psql("shop", "DO $$ BEGIN CREATE ROLE plain_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$; GRANT SELECT ON public.orders TO plain_reader")
        .unwrap();
    assert_eq!(
        h.cluster
            .psql("shop", "SET ROLE plain_reader; SELECT count(*) FROM public.orders")
            .unwrap(),
        "4"
    );
    // A missing trait refuses the connection rather than showing rows unfiltered.
    let carol = h.issue("human", "carol", &[]);
    let Err(err) = h.connect(&carol, "carol", "shop", false).await else {
        panic!("carol has no region trait, yet her connection was accepted");
    };
    let db = err.as_db_error().expect("a PostgreSQL error");
    assert_eq!(db.code().code(), "28000");
    assert!(
        db.message().contains("trait \"region\" is not set for human:carol"),
        "{}",
        db.message()
    );
}
