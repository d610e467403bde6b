//! The relay: extended protocol, COPY both ways, NOTICE/NOTIFY, cancel, large results.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use futures_util::TryStreamExt;

use crate::common::*;

#[tokio::test]
async fn extended_protocol_records_parameters() {
    let h = harness();
    let cred = h.agent();
    let client = h.connect(&cred, "report-bot", "shop", false).await.unwrap();
    let marker = "extended-marker";
    let rows = client
        .query(
            "SELECT id, status FROM orders WHERE status = $1 AND $2::text IS NOT NULL ORDER BY id",
            &[&"open", &marker],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let q = h.wait_for_event(&["--identity", "agent:report-bot", "--event", "query"], |e| {
        e["parameters"]
            .as_array()
            .is_some_and(|p| p.iter().any(|v| v == marker))
    });
    assert_eq!(
        q["statement"],
        "SELECT id, status FROM orders WHERE status = $1 AND $2::text IS NOT NULL ORDER BY id"
    );
    assert_eq!(q["parameters"][0], "open");
    let seq = q["seq"].as_u64().unwrap();
    let r = h.wait_for_event(&["--event", "query.result"], |e| e["query_id"] == seq);
    assert_eq!(r["rows"], 2);
}

#[tokio::test]
async fn copy_in_and_copy_out() {
    let h = harness();
    let cred = h.issue("human", "alice", &[]);
    // shop2: the red-team tests compare fingerprints of shop and must see no other writer there.
    let client = h.connect(&cred, "alice", "shop2", false).await.unwrap();
    let sink = client
        .copy_in("COPY orders (customer_id, status, total, region) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\tcopied\t1.50\teu\n3\tcopied\t2.50\teu\n"))
        .await
        .unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 2);
    // tokio-postgres, like libpq, sends a Sync right after the COPY's Execute, which PostgreSQL
    // ignores while the COPY runs: the results that follow must still go to their own statements.
    let copy = h.wait_for_event(&["--identity", "human:alice", "--event", "query"], |e| {
        e["statement"] == "COPY orders (customer_id, status, total, region) FROM STDIN"
    });
    let copy_seq = copy["seq"].as_u64().unwrap();
    let marker = format!("after-copy-{}", uuid::Uuid::new_v4().simple());
    let rows = client
        .query(
            "SELECT total FROM orders WHERE status = 'copied' AND $1::text IS NOT NULL",
            &[&marker],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let after = h.wait_for_event(&["--identity", "human:alice", "--event", "query"], |e| {
        e["parameters"][0] == marker.as_str()
    });
    let after_seq = after["seq"].as_u64().unwrap();
    let results = |seq: u64| h.wait_for_event(&["--event", "query.result"], |e| e["query_id"] == seq);
    assert_eq!(results(copy_seq)["rows"], 2, "the COPY's result");
    let r = results(after_seq);
    assert_eq!((r["rows"].as_u64(), r["error"].as_str()), (Some(2), None), "{r}");

    let stream = client
        .copy_out("COPY (SELECT total FROM orders WHERE status = 'copied' ORDER BY total) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: String = chunks.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    assert!(text.starts_with("1.50\n2.50\n"), "{text}");
    client
        .execute("DELETE FROM orders WHERE status = 'copied'", &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_sync_sent_during_copy_from_the_client_does_not_shift_results() {
    use crate::approval::raw;
    let (h, _cred, mut c) = alice_raw().await;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    // A simple-protocol COPY that the client abandons, with a Sync in the middle (ignored by
    // PostgreSQL during the COPY), then statements whose results must be their own.
    c.send(&[raw::query(&format!(
        "COPY orders (customer_id, status, total, region) FROM STDIN -- {marker}"
    ))])
    .await;
    c.send(&[raw::sync(), copy_fail("the client gave up")]).await;
    let copy = c.until_ready().await;
    assert!(
        raw::errors(&copy).iter().any(|e| e.contains("the client gave up")),
        "{copy:?}"
    );
    // An extended COPY, libpq's way: Sync after the Execute (here two: both ignored), data, CopyDone, Sync.
    c.send(&[
        raw::parse(
            "",
            &format!("COPY orders (customer_id, status, total, region) FROM STDIN -- {marker}"),
        ),
        raw::bind("", "", &[]),
        raw::execute(""),
        raw::sync(),
        raw::sync(),
        copy_data(b"1\tsync-copy\t1.00\teu\n"),
        copy_done(),
        raw::sync(),
    ])
    .await;
    let copied = c.until_ready().await;
    assert!(raw::errors(&copied).is_empty(), "{copied:?}");
    for (sql, rows) in [
        (format!("SELECT 1 AS one, '{marker}' AS m"), 1),
        (
            format!("SELECT id FROM orders WHERE status = 'sync-copy' AND '{marker}' <> ''"),
            1,
        ),
        (format!("SELECT 1/0, '{marker}'"), 0),
        (
            format!("DELETE FROM orders WHERE status = 'sync-copy' AND '{marker}' <> ''"),
            1,
        ),
    ] {
        c.send(&[raw::query(&sql)]).await;
        let answer = c.until_ready().await;
        let q = h.wait_for_event(&["--identity", "human:alice", "--event", "query"], |e| {
            e["statement"] == sql.as_str()
        });
        let seq = q["seq"].as_u64().unwrap();
        let r = h.wait_for_event(&["--event", "query.result"], |e| e["query_id"] == seq);
        assert_eq!(r["rows"].as_u64(), Some(rows), "{sql}: {r}");
        assert_eq!(r["error"].is_string(), sql.contains("1/0"), "{sql}: {r} {answer:?}");
    }
}

#[tokio::test]
async fn a_portal_declared_again_after_a_rollback_to_savepoint_is_not_run_as_the_old_one() {
    use crate::approval::raw;
    let (_, _, mut c) = alice_raw().await;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    c.send(&[raw::query("BEGIN; SAVEPOINT s")]).await;
    c.until_ready().await;
    // Portal c, bound inside the savepoint: PostgreSQL drops it at ROLLBACK TO SAVEPOINT.
    let bound = format!("SELECT 1 AS one, '{marker}' AS m");
    c.send(&[raw::parse("", &bound), raw::bind("c", "", &[]), raw::sync()])
        .await;
    let ok = c.until_ready().await;
    assert!(raw::errors(&ok).is_empty(), "{ok:?}");
    c.send(&[raw::query(&format!(
        "ROLLBACK TO SAVEPOINT s; DECLARE c CURSOR FOR SELECT id FROM orders WHERE '{marker}' <> ''"
    ))])
    .await;
    let declared = c.until_ready().await;
    assert!(raw::errors(&declared).is_empty(), "{declared:?}");
    // The cursor is fetched as what it was declared with.
    c.send(&[raw::query("FETCH 1 FROM c")]).await;
    let fetched = c.until_ready().await;
    assert!(raw::errors(&fetched).is_empty(), "{fetched:?}");
    assert!(fetched.iter().any(|m| m.0 == 'D'), "{fetched:?}");
    // An Execute of c would run the cursor's query, which is not what Warden decided for the portal.
    c.send(&[raw::execute("c"), raw::sync()]).await;
    let run = c.until_ready().await;
    assert!(
        raw::errors(&run)
            .iter()
            .any(|e| e.starts_with("42501") && e.contains("declared again")),
        "{run:?}"
    );
    assert!(run.iter().all(|m| m.0 != 'D'), "rows came back: {run:?}");
    c.send(&[raw::query("ROLLBACK")]).await;
    c.until_ready().await;
}

/// A Bind that PostgreSQL refuses leaves what it held under the portal's name (a Bind with too few
/// parameters does not even drop the unnamed portal; a named one in use is kept), and a ROLLBACK TO
/// SAVEPOINT makes the transaction usable again: an Execute of the name then runs the old portal,
/// which must not be decided or recorded as the refused Bind's statement.
#[tokio::test]
async fn a_bind_postgresql_refused_does_not_change_what_warden_decides_for_the_portal() {
    use crate::approval::raw;
    let (h, _cred, mut c) = alice_raw().await;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let insert =
        format!("INSERT INTO orders (customer_id, status, total, region) VALUES (1, 'bind-{marker}', 1, 'eu')");
    // Savepoints through named portals: a simple Query would replace the unnamed portal.
    let savepoint = |n: &str| {
        [
            raw::parse("", "SAVEPOINT s"),
            raw::bind(&format!("sp{n}"), "", &[]),
            raw::execute(&format!("sp{n}")),
            raw::sync(),
        ]
    };
    let rollback_to = |n: &str| {
        [
            raw::parse(&format!("rb{n}"), "ROLLBACK TO SAVEPOINT s"),
            raw::bind(&format!("rb{n}"), &format!("rb{n}"), &[]),
            raw::execute(&format!("rb{n}")),
            raw::sync(),
        ]
    };
    c.send(&[raw::query("BEGIN")]).await;
    c.until_ready().await;

    // The unnamed portal, one round trip at a time.
    c.send(&[raw::parse("", &insert), raw::bind("", "", &[]), raw::sync()])
        .await;
    let bound = c.until_ready().await;
    assert!(raw::errors(&bound).is_empty(), "{bound:?}");
    c.send(&savepoint("1")).await;
    assert!(raw::errors(&c.until_ready().await).is_empty());
    c.send(&[
        raw::parse("", "SELECT $1::int AS refused_bind"),
        raw::bind("", "", &[]),
        raw::sync(),
    ])
    .await;
    let refused = c.until_ready().await;
    assert!(
        raw::errors(&refused).iter().any(|e| e.starts_with("08P01")),
        "{refused:?}"
    );
    c.send(&rollback_to("1")).await;
    let back = c.until_ready().await;
    assert!(raw::errors(&back).is_empty(), "{back:?}");
    c.send(&[raw::execute(""), raw::sync()]).await;
    let run = c.until_ready().await;
    refused_not_run(&run);

    // A named portal, everything sent at once: PostgreSQL refuses the second Bind of p (42P03)
    // and keeps the first.
    c.send(&[raw::query("ROLLBACK; BEGIN")]).await;
    c.until_ready().await;
    let mut all = vec![raw::parse("", &insert), raw::bind("p", "", &[]), raw::sync()];
    all.extend(savepoint("2"));
    all.extend([
        raw::parse("", "SELECT 1 AS refused_bind"),
        raw::bind("p", "", &[]),
        raw::sync(),
    ]);
    all.extend(rollback_to("2"));
    all.extend([raw::execute("p"), raw::sync()]);
    c.send(&all).await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(c.until_ready().await);
    }
    assert!(
        raw::errors(&answers[2]).iter().any(|e| e.starts_with("42P03")),
        "{answers:?}"
    );
    assert!(raw::errors(&answers[3]).is_empty(), "{answers:?}");
    refused_not_run(&answers[4]);
    // The refusal is recorded with what was asked for.
    let refused = h.wait_for_event(&["--identity", "human:alice", "--event", "query"], |e| {
        e["statement"] == "<Execute of portal \"p\">"
    });
    assert_eq!(refused["decision"], "deny", "{refused}");
    c.send(&[raw::query("ROLLBACK")]).await;
    c.until_ready().await;
}

/// A Parse that PostgreSQL skips (an earlier message of its batch failed) leaves the unnamed
/// statement as it was: a Bind of it must not be decided as the skipped Parse's text.
#[tokio::test]
async fn a_parse_postgresql_skipped_does_not_change_what_warden_decides_for_the_statement() {
    use crate::approval::raw;
    let (h, cred, mut c) = alice_raw().await;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let insert =
        format!("INSERT INTO orders (customer_id, status, total, region) VALUES (1, 'parse-{marker}', 1, 'eu')");
    // First a COPY from the client the way libpq sends it (a Sync right after the Execute, which
    // PostgreSQL ignores): Warden must still count the batches that follow as PostgreSQL does.
    c.send(&[
        raw::parse(
            "",
            &format!("COPY orders (customer_id, status, total, region) FROM STDIN -- {marker}"),
        ),
        raw::bind("", "", &[]),
        raw::execute(""),
        raw::sync(),
        copy_data(format!("1\tcopy-{marker}\t1.00\teu\n").as_bytes()),
        copy_done(),
        raw::sync(),
    ])
    .await;
    let copied = c.until_ready().await;
    assert!(raw::errors(&copied).is_empty(), "{copied:?}");
    // All at once: the Bind of the second batch fails (too few parameters), so PostgreSQL skips
    // the Parse after it, and the third batch's Bind would bind the INSERT.
    c.send(&[
        raw::parse("q", "SELECT $1::int AS needs_one"),
        raw::parse("", &insert),
        raw::sync(),
        raw::bind("", "q", &[]),
        raw::parse("", "SELECT 1 AS skipped_parse"),
        raw::sync(),
        raw::bind("", "", &[]),
        raw::execute(""),
        raw::sync(),
    ])
    .await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(c.until_ready().await);
    }
    assert!(raw::errors(&answers[0]).is_empty(), "{answers:?}");
    assert!(
        raw::errors(&answers[1]).iter().any(|e| e.starts_with("08P01")),
        "{answers:?}"
    );
    refused_not_run(&answers[2]);
    let left = h.psql(
        &cred,
        "alice",
        "shop2",
        &format!("DELETE FROM orders WHERE status IN ('parse-{marker}', 'copy-{marker}')"),
    );
    assert!(stdout(&left).contains("DELETE 1"), "{}", stdout(&left));
}

/// PostgreSQL takes any message but CopyData, CopyDone, CopyFail, Flush and Sync sent during COPY
/// FROM STDIN as the COPY's error, and answers nothing else for it: Warden ends the session rather
/// than lose count of what PostgreSQL answers.
#[tokio::test]
async fn a_message_sent_during_copy_from_stdin_ends_the_session() {
    use crate::approval::raw;
    let (h, cred, mut c) = alice_raw().await;
    c.send(&[
        raw::query("COPY orders (customer_id, status, total, region) FROM STDIN -- ended by a Parse"),
        raw::parse("junk", "SELECT 1"),
        raw::parse("t", "SELECT 2"),
        raw::sync(),
    ])
    .await;
    let said = c.last_words(Duration::from_secs(5)).await.expect("the session went on");
    assert!(
        said.contains("08P01") && said.contains("during COPY FROM STDIN"),
        "{said}"
    );
    // A COPY that fails (a bad row) with a Sync sent during it not yet read by PostgreSQL: whether
    // PostgreSQL answers that Sync depends on when it read it, so Warden relays the error and ends
    // the session rather than guess.
    let (_, _, mut c) = alice_raw().await;
    c.send(&[
        raw::query("COPY orders (customer_id, status, total, region) FROM STDIN -- bad row"),
        copy_data(b"not a number\tx\t1\teu\n"),
        raw::sync(),
    ])
    .await;
    let said = c.last_words(Duration::from_secs(5)).await.expect("the session went on");
    assert!(said.contains("22P02"), "{said}");
    assert!(
        said.contains("08P01") && said.contains("cannot tell which answers"),
        "{said}"
    );
    // Two COPYs from the client in one query string are refused.
    let (_, _, mut c) = alice_raw().await;
    c.send(&[raw::query(
        "COPY orders (status) FROM STDIN; COPY orders (status) FROM STDIN -- two copies",
    )])
    .await;
    let refused = c.until_ready().await;
    assert!(
        raw::errors(&refused).iter().any(|e| e.starts_with("0A000")),
        "{refused:?}"
    );
    // A COPY that fails before it starts leaves the session usable.
    let mut c = raw::Raw::connect_as(h.warden_port, &cred, "alice", "shop2").await;
    c.send(&[raw::query("COPY no_such_table FROM STDIN")]).await;
    let failed = c.until_ready().await;
    assert!(!raw::errors(&failed).is_empty(), "{failed:?}");
    c.send(&[
        raw::parse("", "SELECT 1"),
        raw::bind("", "", &[]),
        raw::execute(""),
        raw::sync(),
    ])
    .await;
    let ran = c.until_ready().await;
    assert!(raw::errors(&ran).is_empty(), "{ran:?}");
}

/// PostgreSQL tells statement and portal names apart by their first 63 bytes: two longer names that
/// begin alike would be one statement there and two for Warden, so longer names are refused.
#[tokio::test]
async fn names_longer_than_postgresql_keeps_are_refused() {
    use crate::approval::raw;
    let (_, _, mut c) = alice_raw().await;
    let kept = "n".repeat(63);
    let long = |tail: &str| format!("{kept}{tail}");
    c.send(&[raw::parse(&kept, "SELECT 1 AS kept"), raw::sync()]).await;
    let ok = c.until_ready().await;
    assert!(raw::errors(&ok).is_empty(), "{ok:?}");
    for message in [
        raw::parse(&long("x"), "SELECT 2"),
        raw::bind("", &long("y"), &[]),
        raw::bind(&long("p"), &kept, &[]),
        raw::execute(&long("p")),
        raw::close(b'S', &long("y")),
    ] {
        c.send(&[message, raw::sync()]).await;
        let refused = c.until_ready().await;
        assert!(
            raw::errors(&refused)
                .iter()
                .any(|e| e.starts_with("42622") && e.contains("first 63 bytes")),
            "{refused:?}"
        );
    }
    // A name with characters outside ASCII may take more bytes in the database's encoding.
    c.send(&[raw::parse(&"é".repeat(22), "SELECT 3"), raw::sync()]).await;
    let refused = c.until_ready().await;
    assert!(
        raw::errors(&refused).iter().any(|e| e.starts_with("42622")),
        "{refused:?}"
    );
    // SQL names too, and the client encoding stays UTF8 (PostgreSQL compares names in its own).
    for sql in [
        format!("PREPARE {} AS SELECT 1", "é".repeat(30)),
        "SET client_encoding = 'LATIN1'".to_string(),
    ] {
        c.send(&[raw::query(&sql)]).await;
        let refused = c.until_ready().await;
        assert!(!raw::errors(&refused).is_empty(), "{sql}: {refused:?}");
    }
    // The 63-byte name still runs what it was parsed as.
    c.send(&[raw::bind("", &kept, &[]), raw::execute(""), raw::sync()])
        .await;
    let ran = c.until_ready().await;
    assert!(raw::errors(&ran).is_empty(), "{ran:?}");
    assert!(ran.iter().any(|m| m.0 == 'D'), "{ran:?}");
}

#[test]
fn an_upsert_may_name_the_proposed_row_as_excluded() {
    let h = harness();
    let cred = h.issue("human", "alice", &[]);
    // shop2: the red-team tests compare fingerprints of shop. `WHERE false`: nothing changes.
    let out = h.psql(
        &cred,
        "alice",
        "shop2",
        "INSERT INTO orders AS o (id, customer_id, status, total, region) VALUES (1, 1, 'upsert', 1, 'eu') \
         ON CONFLICT (id) DO UPDATE SET total = excluded.total + o.total WHERE false",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("INSERT 0 0"), "{}", stdout(&out));
}

/// alice on shop2 through a client that sends protocol messages as the test spells them.
async fn alice_raw() -> (&'static Harness, std::path::PathBuf, crate::approval::raw::Raw) {
    let h = harness();
    let cred = h.issue("human", "alice", &[]);
    let c = crate::approval::raw::Raw::connect_as(h.warden_port, &cred, "alice", "shop2").await;
    (h, cred, c)
}

/// The answer to a batch whose statement must not have run: an error, and no CommandComplete.
fn refused_not_run(answer: &[crate::approval::raw::Msg]) {
    assert!(!crate::approval::raw::errors(answer).is_empty(), "it ran: {answer:?}");
    assert!(answer.iter().all(|m| m.0 != 'C'), "{answer:?}");
}

fn copy_data(data: &[u8]) -> bytes::BytesMut {
    let mut b = bytes::BytesMut::from(&b"d"[..]);
    b.extend_from_slice(&(4 + data.len() as i32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

fn copy_done() -> bytes::BytesMut {
    bytes::BytesMut::from(&b"c\0\0\0\x04"[..])
}

fn copy_fail(why: &str) -> bytes::BytesMut {
    let mut b = bytes::BytesMut::from(&b"f"[..]);
    b.extend_from_slice(&(4 + why.len() as i32 + 1).to_be_bytes());
    b.extend_from_slice(why.as_bytes());
    b.extend_from_slice(b"\0");
    b
}

#[test]
fn notice_and_notify_reach_psql() {
    let h = harness();
    let cred = h.agent();
    // A notice PostgreSQL sends by itself.
    let out = h.psql(&cred, "report-bot", "shop", "ROLLBACK");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WARNING:  there is no transaction in progress"),
        "{}",
        stderr(&out)
    );
    let out = h.psql(&cred, "report-bot", "shop", "LISTEN jobs; NOTIFY jobs, 'payload-1'");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Asynchronous notification \"jobs\" with payload \"payload-1\" received"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn large_results_stream_through() {
    let h = harness();
    let cred = h.agent();
    let client = h.connect(&cred, "report-bot", "shop", false).await.unwrap();
    let row = client
        .query_one("SELECT count(*), sum(length(x)) FROM (SELECT repeat('x', 100) || g AS x FROM generate_series(1, 200000) g) s", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 200_000);
    let rows = client
        .query("SELECT g, repeat('y', 200) FROM generate_series(1, 50000) g", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 50_000);
}

#[tokio::test]
async fn cancel_request_from_tokio_postgres_cancels_the_right_query() {
    let h = harness();
    let cred = h.agent();
    let client = h.connect(&cred, "report-bot", "shop", false).await.unwrap();
    let token = client.cancel_token();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(&cred.join("ca.crt"), None));
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tls).await
    });
    let err = client.simple_query("SELECT pg_sleep(20)").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014", "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap().unwrap();
    // The session is still usable.
    client.simple_query("SELECT 1").await.unwrap();
}

#[test]
fn psql_ctrl_c_cancels_the_running_query() {
    let h = harness();
    let cred = h.issue("human", "bob", &[]);
    let started = Instant::now();
    let child = Command::new(psql_bin())
        .arg("-X")
        .arg(h.conninfo(&cred, "bob", "shop"))
        .arg("-c")
        .arg("SELECT pg_sleep(25)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until PostgreSQL runs it, then press Ctrl-C (SIGINT) in psql.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = h
            .cluster
            .psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE usename = 'human:bob' AND query = 'SELECT pg_sleep(25)' AND state = 'active'")
            .unwrap();
        if n == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "query never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cancel did not take effect"
    );
    assert!(
        stderr(&out).contains("canceling statement due to user request"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn sigterm_lets_running_statements_finish_then_ends_sessions() {
    let h = harness();
    // A Warden of its own on the same deployment, since this one is stopped.
    let (pid, port) = own_warden("sigterm");

    let cred = h.issue("human", "bob", &[]);
    let cfg = bob_at(port);
    let busy = connect_with(&cfg, &cred.join("ca.crt"), Some(load_cert(&cred)))
        .await
        .unwrap();
    let idle = connect_with(&cfg, &cred.join("ca.crt"), Some(load_cert(&cred)))
        .await
        .unwrap();
    // A client that sent a Parse and a Bind without a Sync or Flush, and went idle: nothing runs.
    let mut half = crate::approval::raw::Raw::connect_as(port, &cred, "bob", "shop").await;
    half.send(&[
        crate::approval::raw::parse("", "SELECT 1"),
        crate::approval::raw::bind("", "", &[]),
    ])
    .await;
    let running = tokio::spawn(async move {
        let row = busy.query_one("SELECT pg_sleep(1.5)::text || 'done'", &[]).await;
        // Sent the moment the answer came: a draining Warden starts nothing new.
        let next = busy.simple_query("SELECT 'after the drain began'").await;
        (row.map(|r| r.get::<_, String>(0)), next, busy)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let signalled = Instant::now();
    Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    // The idle session is ended at once, with 57P01.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = idle.simple_query("SELECT 1").await.unwrap_err();
    assert!(err.code().is_none_or(|c| c.code() == "57P01"), "{err}");
    assert!(
        half.ends_within(Duration::from_secs(1)).await,
        "a session with only a Parse and a Bind unanswered was drained like a running statement"
    );
    // New connections are refused at once while it drains, not left unanswered.
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ());
    assert_eq!(
        refused.as_ref().map_err(std::io::Error::kind),
        Err(std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    // The running statement finishes and returns its result; then its session ends too.
    let (result, next, busy) = running.await.unwrap();
    assert_eq!(result.unwrap(), "done");
    let err = next.expect_err("a statement sent during the drain ran");
    assert!(err.code().is_none_or(|c| c.code() == "57P01"), "{err}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(800),
        "the statement was not cut short"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(busy.simple_query("SELECT 1").await.is_err());
    wait_for_exit(pid);
    assert!(std::fs::read_to_string(h.root.join("sigterm.log"))
        .unwrap()
        .contains("warden stopped"));
}

/// A Warden of its own on the shared deployment (to be stopped), with its own port, log and audit
/// log named `name`. Returns its pid and port.
fn own_warden(name: &str) -> (u32, u16) {
    let h = harness();
    let port = warden::cluster::free_port().unwrap();
    let text = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}\"", h.warden_port),
            &format!("127.0.0.1:{port}\""),
        )
        .replace(
            "fsync = \"batch\"",
            &format!("fsync = \"batch\"\npath = \"audit/{name}.jsonl\""),
        );
    let config = h.deploy.join(format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    (
        spawn_warden(&config, &h.root.join(format!("{name}.log")), port).unwrap(),
        port,
    )
}

/// bob's tokio-postgres settings for the Warden at `port`.
fn bob_at(port: u16) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user("bob")
        .dbname("shop")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    cfg
}

/// Waits until Warden exits (a zombie until this process reaps it, so its state, not its pid).
fn wait_for_exit(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("");
        if stat.is_empty() || state == "Z" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "warden did not exit after SIGTERM (state {state})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let h = harness();
    let (pid, port) = own_warden("sigterm2");
    let cred = h.issue("human", "bob", &[]);
    let cfg = bob_at(port);
    let busy = connect_with(&cfg, &cred.join("ca.crt"), Some(load_cert(&cred)))
        .await
        .unwrap();
    let running = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(20)").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let term = || Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    term();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!running.is_finished(), "the first SIGTERM let the statement run");
    let second = Instant::now();
    term();
    let err = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the statement still ran 5 s after the second SIGTERM")
        .unwrap()
        .unwrap_err();
    assert!(err.code().is_none_or(|c| c.code() == "57P01"), "{err}");
    assert!(second.elapsed() < Duration::from_secs(5));
    wait_for_exit(pid);
}
