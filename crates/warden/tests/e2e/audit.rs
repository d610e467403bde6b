//! The audit log as an investigator uses it: search by identity, verify the chain, catch tampering.

use std::process::Command;

use serde_json::Value;

use crate::common::*;

#[test]
fn verify_passes_and_catches_a_one_byte_edit() {
    let h = harness();
    let cred = h.agent();
    let out = h.psql(&cred, "report-bot", "shop", "SELECT 'verify-me'");
    assert!(out.status.success(), "{}", stderr(&out));
    h.wait_for_event(&["--event", "query"], |e| e["statement"] == "SELECT 'verify-me'");

    // Work on a copy cut at the last complete line: the live log keeps growing under the other tests.
    let live = std::fs::read_to_string(h.deploy.join("audit/audit.jsonl")).unwrap();
    let complete = &live[..live.rfind('\n').unwrap() + 1];
    let dir = unique_dir(&h.root, "audit-copy");
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    let log = dir.join("copy.jsonl");
    std::fs::write(&log, complete).unwrap();
    let config = dir.join("warden.toml");
    let text = std::fs::read_to_string(&h.config).unwrap().replace(
        "fsync = \"batch\"",
        &format!("fsync = \"batch\"\npath = \"{}\"", log.display()),
    );
    std::fs::write(&config, text).unwrap();

    // A copy without its checkpoints: the chain alone can be checked, and only when asked for.
    let unsigned = Command::new(WARDEN)
        .args(["audit", "verify", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(unsigned.status.code(), Some(1), "{}", stdout(&unsigned));
    let verify = || {
        Command::new(WARDEN)
            .args(["audit", "verify", "--chain-only", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));
    assert!(stdout(&ok).contains("chain intact"), "{}", stdout(&ok));

    // One byte changed in the middle of a statement.
    let at = complete.find("verify-me").unwrap();
    let mut bytes = complete.as_bytes().to_vec();
    bytes[at] = b'V';
    std::fs::write(&log, &bytes).unwrap();
    let bad = verify();
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    assert!(
        stdout(&bad).contains("Verify-me"),
        "the first bad record is printed: {}",
        stdout(&bad)
    );

    // A record dropped from the middle.
    let lines: Vec<&str> = complete.lines().collect();
    let mut dropped: Vec<&str> = lines.clone();
    dropped.remove(lines.len() / 2);
    std::fs::write(&log, dropped.join("\n") + "\n").unwrap();
    assert_eq!(verify().status.code(), Some(1));
}

#[test]
fn search_filters_by_requester_and_task() {
    let h = harness();
    let cred = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", "T-search"],
    );
    let out = h.psql(&cred, "report-bot", "shop", "SELECT 'search-me'");
    assert!(out.status.success(), "{}", stderr(&out));
    let by_task = h.wait_for_event(&["--task", "T-search", "--event", "query"], |e| {
        e["statement"] == "SELECT 'search-me'"
    });
    assert_eq!(by_task["identity"]["requester"], "human:alice");
    let by_requester = h.audit(&["--requester", "human:alice", "--task", "T-search"]);
    assert!(by_requester.iter().all(|e| e["identity"]["task"] == "T-search"));
    assert!(by_requester.iter().any(|e| e["event"] == "session.start"));
    let human_readable = Command::new(WARDEN)
        .args(["audit", "search", "--task", "T-search", "--config"])
        .arg(&h.config)
        .output()
        .unwrap();
    assert!(
        stdout(&human_readable).contains("agent:report-bot for human:alice task=T-search"),
        "{}",
        stdout(&human_readable)
    );
}

#[test]
fn results_are_recorded_with_columns_and_rows_only_when_asked() {
    let h = harness();
    let cred = h.agent();
    // The shared Warden records no rows (the default): columns and counts only.
    let out = h.psql(
        &cred,
        "report-bot",
        "shop",
        "SELECT id, status FROM orders ORDER BY id /* rec-default */",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let q = h.wait_for_event(&["--event", "query"], |e| {
        e["statement"].as_str().is_some_and(|s| s.contains("rec-default"))
    });
    let r = h.wait_for_event(&["--event", "query.result"], |e| e["query_id"] == q["seq"]);
    assert_eq!(r["columns"], serde_json::json!(["id", "status"]), "{r}");
    assert!(r["rows"].as_u64().unwrap() >= 2, "{r}");
    assert!(r.get("sample_rows").is_none(), "rows recorded without result_rows: {r}");

    // With `result_rows = 1`: the first row too.
    let w = h.warden_copy("rows");
    let text = std::fs::read_to_string(&w.config)
        .unwrap()
        .replace("fsync = \"batch\"", "fsync = \"batch\"\nresult_rows = 1");
    std::fs::write(&w.config, text).unwrap();
    let mut child = spawn_warden_child(&w.config, &w.log, w.port).unwrap();
    let out = run_ok(
        Command::new(psql_bin())
            .arg("-X")
            .arg(h.conninfo_at(w.port, &cred, "report-bot", "shop"))
            .args(["-c", "SELECT id, status FROM orders ORDER BY id LIMIT 2 /* rec-rows */"]),
    );
    assert!(stdout(&out).contains("(2 rows)"), "{}", stdout(&out));
    let r = wait_for_event_in(&w.config, &["--event", "query.result"], |e| e["rows"] == 2);
    assert_eq!(r["columns"], serde_json::json!(["id", "status"]), "{r}");
    let sample = r["sample_rows"].as_array().expect("sample_rows");
    assert_eq!(sample.len(), 1, "{r}");
    assert_eq!(sample[0].as_array().unwrap().len(), 2, "{r}");

    // A driver that prepares once (Parse, Describe statement) and then only binds and executes gets
    // no RowDescription with its results: the statement's description gives the columns, and the
    // Bind's result formats (binary here) and the described types how the sample row is read.
    let result_of = |marker: &str| result_in(&w.config, marker);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(w.port)
            .user("report-bot")
            .dbname("shop")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let client = connect_with(&cfg, &cred.join("ca.crt"), Some(load_cert(&cred)))
            .await
            .unwrap();
        let prepared = client
            .prepare("SELECT id, status FROM orders WHERE id = $1 /* rec-prepared */")
            .await
            .unwrap();
        // Failures between the Describe and the Executes must not put the relay out of step: one in
        // PostgreSQL's answer to a Parse and Describe, one in an Execute.
        let bad = client
            .prepare("SELECT 'abc'::int4 AS bad /* rec-bad */")
            .await
            .unwrap_err();
        assert_eq!(bad.code().map(|c| c.code()), Some("22P02"), "{bad:?}");
        assert!(client
            .query("SELECT 1 / 0 AS broken /* rec-fails */", &[])
            .await
            .is_err());
        for id in [1i32, 2] {
            let rows = client.query(&prepared, &[&id]).await.unwrap();
            assert_eq!(rows.len(), 1);
        }
        let rows = client.query(TYPES, &[]).await.unwrap();
        assert_eq!(rows.len(), 1);
    });
    let failed = result_of("rec-fails");
    assert!(
        failed["error"].as_str().is_some_and(|e| e.starts_with("22012")),
        "{failed}"
    );
    let runs: Vec<Value> = audit_in(&w.config, &["--event", "query"])
        .into_iter()
        .filter(|e| e["statement"].as_str().is_some_and(|s| s.contains("rec-prepared")))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for (run, id) in runs.iter().zip(["1", "2"]) {
        let results = audit_in(&w.config, &["--event", "query.result"]);
        let r = results
            .iter()
            .find(|e| e["query_id"] == run["seq"])
            .expect("its query.result");
        assert_eq!(r["columns"], serde_json::json!(["id", "status"]), "{r}");
        assert_eq!(r["rows"], 1, "{r}");
        // As psql would show them, not as the bytes of the binary format.
        assert_eq!(r["sample_rows"][0][0], id, "{r}");
        assert_eq!(r["sample_rows"][0][1], "paid", "{r}");
    }
    // Values of common types, read in binary, are recorded as psql prints them.
    let types = result_of("rec-types");
    let out = run_ok(
        Command::new(psql_bin())
            .arg("-X")
            .args(["-A", "-t", "-F", "|"])
            .arg(h.conninfo_at(w.port, &cred, "report-bot", "shop"))
            .args(["-c", TYPES]),
    );
    let printed: Vec<Value> = stdout(&out).trim_end().split('|').map(Value::from).collect();
    assert_eq!(printed.len(), 16, "{}", stdout(&out));
    assert_eq!(types["sample_rows"][0], Value::from(printed), "{types}");
    stop_warden(&mut child);
}

/// The `query.result` of the statement containing `marker`, once it is written.
fn result_in(config: &std::path::Path, marker: &str) -> Value {
    let q = wait_for_event_in(config, &["--event", "query"], |e| {
        e["statement"].as_str().is_some_and(|s| s.contains(marker))
    });
    wait_for_event_in(config, &["--event", "query.result"], |e| e["query_id"] == q["seq"])
}

fn succeeds(answer: &[crate::approval::raw::Msg]) {
    assert!(crate::approval::raw::errors(answer).is_empty(), "{answer:?}");
}

/// PostgreSQL's one error in the answer has this SQLSTATE.
fn fails_with(answer: &[crate::approval::raw::Msg], code: &str) {
    let errors = crate::approval::raw::errors(answer);
    assert!(matches!(errors[..], [e] if e.starts_with(code)), "{answer:?}");
}

/// Values of the types whose binary form a record reads.
const TYPES: &str = "SELECT count(*) AS n, 0.1::float4, 3.3::float4, 1e6::float4, 123456.7::float4, \
    1e20::float8, 1e14::float8, 0.00001::float8, -2.5e-7::float8, 'NaN'::float8, true, 7::int2, \
    4000000000::oid, 'ü ✓'::varchar, '{\"k\": [1, 2]}'::jsonb, \
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid FROM (VALUES (1), (2), (3)) AS v (x) /* rec-types */";

#[tokio::test]
async fn extended_batches_keep_their_records_in_step() {
    use crate::approval::raw::*;
    let h = harness();
    let cred = h.agent();
    let mut c = Raw::connect_to(h.warden_port, &cred, "shop").await;
    // A Parse PostgreSQL refuses, then a Describe of it, a Bind and an Execute: PostgreSQL skips them
    // up to Sync, so the Execute did not run.
    c.send(&[
        parse("", "SELECT 'abc'::int4 /* raw-bad */"),
        describe(b'S', ""),
        bind("", "", &[]),
        execute(""),
        parse("", "SELECT 7 AS seven /* raw-after-bad */"),
        bind("", "", &[]),
        execute(""),
        sync(),
    ])
    .await;
    fails_with(&c.until_ready().await, "22P02");
    // A portal's Describe, then its statement's, before the Execute: the portal's columns are the result's.
    c.send(&[
        parse("raw_s", "SELECT id, status FROM orders WHERE id = 1 /* raw-pd */"),
        bind("raw_p", "raw_s", &[]),
        describe(b'P', "raw_p"),
        describe(b'S', "raw_s"),
        execute("raw_p"),
        sync(),
    ])
    .await;
    succeeds(&c.until_ready().await);
    // A statement described only after its portal was bound: the portal's result has its columns.
    c.send(&[
        parse(
            "raw_late",
            "SELECT id, total FROM orders WHERE id = 2 /* raw-late-describe */",
        ),
        bind("raw_late_p", "raw_late", &[]),
        describe(b'S', "raw_late"),
        execute("raw_late_p"),
        sync(),
    ])
    .await;
    succeeds(&c.until_ready().await);
    // A Query before the batch's Sync (drivers send BEGIN after a Close, or after a prepare answered
    // under Flush) runs when nothing before it in the batch failed...
    c.send(&[
        parse("", "SELECT 1 AS one /* raw-open */"),
        bind("", "", &[]),
        execute(""),
        query("SELECT 2 AS two /* raw-inside */"),
        sync(),
    ])
    .await;
    succeeds(&c.until_ready().await);
    assert!(c.until_ready().await.iter().all(|m| m.0 == 'Z'));
    c.send(&[
        describe(b'S', "raw_s"),
        query("SELECT 3 AS three /* raw-after-describe */"),
    ])
    .await;
    succeeds(&c.until_ready().await);
    c.send(&[sync()]).await;
    c.until_ready().await;
    // ...and is skipped, as PostgreSQL skips it, when something before it failed; so is a function
    // call. PostgreSQL answers the batch with its error and one ReadyForQuery, at the Sync.
    c.send(&[
        parse("", "SELECT 'abc'::int4 /* raw-bad-2 */"),
        query("SELECT 4 AS four /* raw-skipped */"),
        function_call(1),
        sync(),
    ])
    .await;
    fails_with(&c.until_ready().await, "22P02");
    // The records stay in step with what ran.
    c.send(&[query("SELECT 5 AS five /* raw-last */")]).await;
    succeeds(&c.until_ready().await);
    // A refusal after a statement that ran, in one batch: the client gets the answers to its own
    // messages in their order (not those to the Parse and Bind that stand in for the refused one).
    c.send(&[
        parse("", "SELECT 6 AS six /* raw-before-refusal */"),
        bind("", "", &[]),
        execute(""),
        parse("", "DELETE FROM customers WHERE id = -1 /* raw-refused */"),
        bind("", "", &[]),
        execute(""),
        sync(),
    ])
    .await;
    let answers = c.until_ready().await;
    let tags: String = answers.iter().map(|m| m.0).collect();
    assert_eq!(tags, "12DCEZ", "{answers:?}");
    assert!(answers[4].1.starts_with("42501"), "{answers:?}");

    let result_of = |marker: &str| result_in(&h.config, marker);
    let bad = result_of("raw-bad");
    // Its own Parse failed: that is its error.
    assert!(bad["error"].as_str().is_some_and(|e| e.starts_with("22P02")), "{bad}");
    let after = result_of("raw-after-bad");
    assert_eq!(
        after["error"], "not run: an earlier message of the batch failed",
        "{after}"
    );
    let described = result_of("raw-pd");
    assert_eq!(described["columns"], serde_json::json!(["id", "status"]), "{described}");
    assert_eq!(described["rows"], 1, "{described}");
    let late = result_of("raw-late-describe");
    assert_eq!(late["columns"], serde_json::json!(["id", "total"]), "{late}");
    // (An Execute of a portal never described has no columns.)
    for (marker, columns) in [
        ("raw-open", serde_json::Value::Null),
        ("raw-inside", serde_json::json!(["two"])),
        ("raw-after-describe", serde_json::json!(["three"])),
        ("raw-last", serde_json::json!(["five"])),
        ("raw-before-refusal", serde_json::Value::Null),
    ] {
        let r = result_of(marker);
        assert_eq!(r["columns"], columns, "{marker}: {r}");
        assert_eq!(r["rows"], 1, "{marker}: {r}");
        assert!(r["error"].is_null(), "{marker}: {r}");
    }
    // What PostgreSQL skipped was neither run nor recorded as run.
    let skipped = audit_in(&h.config, &["--event", "query"])
        .into_iter()
        .filter(|e| {
            e["statement"]
                .as_str()
                .is_some_and(|s| s.contains("raw-skipped") || s.contains("fast-path"))
        })
        .count();
    assert_eq!(skipped, 0);
}

#[test]
fn verify_catches_a_dropped_tail_through_the_signed_checkpoints() {
    let h = harness();
    let cred = h.agent();
    let w = h.warden_copy("tail");
    let mut child = spawn_warden_child(&w.config, &w.log, w.port).unwrap();
    for n in 0..3 {
        let out = h.psql_at(w.port, &cred, &format!("SELECT 'tail-{n}'"));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // A clean stop signs the last records.
    stop_warden(&mut child);
    let verify = |extra: &[&str]| {
        Command::new(WARDEN)
            .args(["audit", "verify", "--config"])
            .arg(&w.config)
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = verify(&[]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("0 record(s) after it"), "{}", stdout(&ok));
    let log = h
        .deploy
        .join("audit")
        .join(format!("{}.jsonl", w.config.file_stem().unwrap().to_string_lossy()));
    // A lock made while the log is sound, to be lifted while it is not.
    let task = format!("T-unaudited-{}", uuid::Uuid::new_v4().simple());
    let admin = |args: &[&str]| {
        Command::new(WARDEN)
            .args(args)
            .arg("--config")
            .arg(&w.config)
            .output()
            .unwrap()
    };
    let locked = admin(&["lock", "--task", &task, "--reason", "e2e", "--json"]);
    assert!(locked.status.success(), "{}", stderr(&locked));
    let lock: Value = serde_json::from_str(stdout(&locked).trim()).unwrap();
    let lock_id = lock["id"].as_str().unwrap().to_string();
    assert_eq!(lock["state"], "active", "{lock}");
    // A second lock on the same task is added, with a warning naming the first.
    let again = admin(&["lock", "--task", &task, "--reason", "e2e again", "--json"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains(&format!("already locked by {lock_id}")),
        "{}",
        stderr(&again)
    );
    let again: Value = serde_json::from_str(stdout(&again).trim()).unwrap();
    let unlocked = admin(&["unlock", again["id"].as_str().unwrap()]);
    assert!(unlocked.status.success(), "{}", stderr(&unlocked));
    let active_locks = || stdout(&admin(&["locks", "list", "--json"]));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // The last two records cut off: every remaining link holds, the checkpoint does not.
    std::fs::write(&log, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let bad = verify(&[]);
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    assert!(
        stdout(&bad).contains("records were removed from the end"),
        "{}",
        stdout(&bad)
    );
    // Not on a line of the log: none is named.
    assert!(!stdout(&bad).contains("line 0"), "{}", stdout(&bad));
    // A log that cannot be written (here: refused, its end cut) issues nothing: no credential file.
    let out_dir = unique_dir(&h.root, "issue-unaudited");
    let issue = Command::new(WARDEN)
        .args(["issue", "--config"])
        .arg(&w.config)
        .args(["--kind", "human", "--name", "alice", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        !issue.status.success(),
        "issued with an unwritable audit log: {}",
        stdout(&issue)
    );
    assert!(
        !out_dir.join("identity.key").exists() && !out_dir.join("token").exists(),
        "a credential was written that the audit log does not record"
    );
    // Nor is a lock lifted (that gives access back) or made unrecorded: each changes nothing.
    assert!(!admin(&["unlock", &lock_id]).status.success());
    assert!(active_locks().contains(&lock_id), "lifted without a record");
    let other = format!("{task}-2");
    assert!(!admin(&["lock", "--task", &other, "--reason", "e2e"]).status.success());
    assert!(!active_locks().contains(&other), "locked without a record");
    // Pinning the deployment's key passes on the intact log; another key fails it.
    std::fs::write(&log, &text).unwrap();
    let key = std::fs::read_to_string(h.deploy.join("audit/checkpoint.pub")).unwrap();
    assert!(verify(&["--public-key", key.trim()]).status.success());
    let wrong = verify(&["--public-key", &"ab".repeat(32)]);
    assert_eq!(wrong.status.code(), Some(1), "{}", stdout(&wrong));
    let unlocked = admin(&["unlock", &lock_id]);
    assert!(unlocked.status.success(), "{}", stderr(&unlocked));
    assert!(!active_locks().contains(&lock_id));
}

#[test]
fn a_rotated_log_verifies_searches_and_replays_across_its_files() {
    let h = harness();
    let cred = h.agent();
    let w = h.warden_copy("rotate");
    let text = std::fs::read_to_string(&w.config)
        .unwrap()
        .replace("fsync = \"batch\"", "fsync = \"batch\"\nrotate_size_mib = 1");
    std::fs::write(&w.config, text).unwrap();
    let mut child = spawn_warden_child(&w.config, &w.log, w.port).unwrap();
    // Twelve statements of 200 KB each: the 1 MiB file rotates twice.
    let filler = "x".repeat(200_000);
    let mut sql = String::new();
    for n in 0..12 {
        sql += &format!("SELECT length('{filler}') AS rot_{n};\n");
    }
    let script = unique_dir(&h.root, "rotate-sql").with_extension("sql");
    std::fs::write(&script, &sql).unwrap();
    let out = run_ok(
        Command::new(psql_bin())
            .arg("-X")
            .arg(h.conninfo_at(w.port, &cred, "report-bot", "shop"))
            .arg("-f")
            .arg(&script),
    );
    assert_eq!(stdout(&out).matches("200000").count(), 12, "{}", stdout(&out));
    stop_warden(&mut child);

    let stem = w.config.file_stem().unwrap().to_string_lossy().into_owned();
    let rotated: Vec<_> = std::fs::read_dir(h.deploy.join("audit"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{stem}.")) && n.ends_with(".jsonl") && n[stem.len() + 1..].starts_with('0'))
        .collect();
    assert!(rotated.len() >= 2, "rotated files: {rotated:?}");

    let verify = run_ok(
        Command::new(WARDEN)
            .args(["audit", "verify", "--config"])
            .arg(&w.config),
    );
    let report = stdout(&verify);
    assert!(report.contains("chain intact"), "{report}");
    assert!(
        report.contains(&format!("in {} file(s)", rotated.len() + 1)),
        "{report}"
    );

    // Every statement is found, in order, whichever file holds it.
    let queries = audit_in(&w.config, &["--event", "query"]);
    let names: Vec<String> = queries
        .iter()
        .filter_map(|q| q["statement"].as_str())
        .filter_map(|s| s.split("AS ").nth(1).map(|n| n.trim_end_matches(';').to_string()))
        .collect();
    let want: Vec<String> = (0..12).map(|n| format!("rot_{n}")).collect();
    assert_eq!(names, want);
    let session = queries[0]["session_id"].as_str().unwrap().to_string();
    let play = run_ok(
        Command::new(WARDEN)
            .args(["sessions", "play", "--json", "--config"])
            .arg(&w.config)
            .arg(&session),
    );
    let events: Vec<serde_json::Value> = stdout(&play)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["event"], "session.start");
    assert_eq!(events.last().unwrap()["event"], "session.end");
    assert_eq!(events.iter().filter(|e| e["event"] == "query.result").count(), 12);

    // A rotated file taken away breaks the chain where it was.
    let mut first = rotated.clone();
    first.sort();
    let gone = h.deploy.join("audit").join(&first[0]);
    let kept = std::fs::read(&gone).unwrap();
    std::fs::remove_file(&gone).unwrap();
    let bad = Command::new(WARDEN)
        .args(["audit", "verify", "--config"])
        .arg(&w.config)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    std::fs::write(&gone, kept).unwrap();
}

#[test]
fn a_statement_whose_client_hangs_up_still_gets_its_result_record() {
    let h = harness();
    let cred = h.agent();
    let marker = format!("hangup-{}", uuid::Uuid::new_v4().simple());
    let mut child = Command::new(psql_bin())
        .arg("-X")
        .arg(h.conninfo(&cred, "report-bot", "shop"))
        .args(["-c", &format!("SELECT pg_sleep(2) /* {marker} */")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let q = h.wait_for_event(&["--event", "query"], |e| {
        e["statement"].as_str().is_some_and(|s| s.contains(&marker))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let r = h.wait_for_event(&["--event", "query.result"], |e| e["query_id"] == q["seq"]);
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("session ended before")),
        "{r}"
    );
}
