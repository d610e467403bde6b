use std::path::Path;

use super::*;

fn body(event: &'static str, name: &str) -> EventBody {
    EventBody {
        event: event.into(),
        session_id: Some(format!("s-{name}").into()),
        identity: Some(
            IdentityRecord {
                kind: "agent".into(),
                name: name.into(),
                requester: Some("human:alice".into()),
                task: Some(format!("task-{name}")),
                roles: vec!["analyst".into()],
            }
            .into(),
        ),
        statement: Some(format!("SELECT '{name}'").into()),
        decision: Some("allow".into()),
        ..Default::default()
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn events(path: &Path) -> Vec<Event> {
    lines(path).iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A log of `n` records in a fresh directory.
async fn log_of(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLog::open(&path, FsyncMode::Off).unwrap();
    for i in 0..n {
        log.append(body("query", &format!("n{i}"))).await.unwrap();
    }
    // Signed now, so the writer thread has nothing left to do once the handle is dropped.
    log.checkpoint_now().await.unwrap();
    (dir, path)
}

/// A stored line with another statement and a fresh hash, still linking to the record before it:
/// what a forger with the format (but not the checkpoint key) can write.
fn reencoded(line: &str, statement: &str) -> String {
    let mut forged: Event = serde_json::from_str(line).unwrap();
    forged.body.statement = Some(statement.into());
    let mut out = Vec::new();
    event::encode_line(&forged.ts, forged.seq, &forged.body, &mut forged.prev_hash, &mut out);
    String::from_utf8(out).unwrap().trim_end().to_string()
}

fn tampered(path: &Path) -> (usize, String) {
    match verify(path) {
        Err(AuditError::Tampered { line, reason, .. }) => (line, reason),
        other => panic!("not caught: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_chain_in_every_mode() {
    for mode in [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Off] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/audit.jsonl");
        let log = AuditLog::open(&path, mode).unwrap();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..25 {
                    let b = body("query", &format!("bot{t}-{i}"));
                    seqs.push(log.append(b).await.unwrap());
                }
                seqs
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        let report = verify(&path).unwrap();
        assert_eq!(report.records, 200, "{mode:?}");
        let stored = events(&path);
        let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "{mode:?}");
        assert_eq!(report.last_hash, stored[199].hash);
        // Every acknowledged seq is the record that caller wrote.
        acked.sort_unstable();
        assert_eq!(acked, seqs);
        use std::os::unix::fs::PermissionsExt;
        let mode_bits = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode_bits(&path), 0o600);
        assert_eq!(mode_bits(path.parent().unwrap()), 0o700);
    }
}

#[tokio::test]
async fn submit_keeps_the_order_of_calls() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&dir.path().join("a.jsonl"), FsyncMode::Batch).unwrap();
    let pending: Vec<Pending> = (0..100).map(|i| log.submit(body("query", &format!("q{i}")))).collect();
    let mut seqs = Vec::new();
    for p in pending {
        seqs.push(p.await.unwrap());
    }
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    let stored = events(log.path());
    assert_eq!(stored[41].body.statement.as_deref(), Some("SELECT 'q41'"));
}

/// A `batch` log whose interval checkpoint never comes during a test: one would fsync a detached
/// record early.
fn batch_log_without_interval_checkpoints() -> (tempfile::TempDir, std::path::PathBuf, AuditHandle) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let opts = AuditOptions {
        checkpoint_every: Some(std::time::Duration::from_secs(3600)),
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(&path, opts).unwrap();
    (dir, path, log)
}

#[tokio::test]
async fn records_nobody_waits_on_keep_their_place_and_a_failed_one_fails_what_follows() {
    let (_dir, path, log) = batch_log_without_interval_checkpoints();
    log.record(body("query.result", "r1"));
    assert_eq!(log.append(body("query", "q2")).await.unwrap(), 2);
    log.record(body("query.result", "r3"));
    assert_eq!(log.append(body("query", "q4")).await.unwrap(), 4);
    let stored = events(&path);
    let order: Vec<_> = stored
        .iter()
        .map(|e| e.body.statement.as_deref().unwrap().to_string())
        .collect();
    assert_eq!(order, ["SELECT 'r1'", "SELECT 'q2'", "SELECT 'r3'", "SELECT 'q4'"]);
    // In `batch`, a record nobody waits on is not fsynced by itself at once; followers (the sinks,
    // which ship only durable records) hear of it once the writer's timer has fsynced it.
    let mut written = log.written();
    // Announced just after the acknowledgement.
    written.wait_for(|seq| *seq == 4).await.unwrap();
    let before = std::time::Instant::now();
    log.record(body("query.result", "r5"));
    tokio::time::timeout(std::time::Duration::from_secs(5), written.wait_for(|seq| *seq == 5))
        .await
        .expect("the detached record is made durable and announced by the timer")
        .unwrap();
    assert!(
        before.elapsed() >= crate::writer::DETACHED_SYNC_WITHIN,
        "{:?}",
        before.elapsed()
    );
    // A detached record that cannot be written refuses the next record someone waits on.
    log.fail_writes();
    log.record(body("query.result", "lost"));
    assert!(matches!(
        log.append(body("query", "next")).await,
        Err(AuditError::Unavailable { .. })
    ));
    assert_eq!(verify(&path).unwrap().records, 5);
}

#[tokio::test]
async fn an_fsync_that_fails_at_a_checkpoint_fails_the_log_for_good() {
    let (_dir, _path, log) = batch_log_without_interval_checkpoints();
    log.append(body("query", "q1")).await.unwrap();
    let mut written = log.written();
    written.wait_for(|seq| *seq == 1).await.unwrap();
    // Written, not yet fsynced; then the fsync the checkpoint asks for fails.
    log.record(body("query.result", "r2"));
    log.fail_writes();
    assert!(log.checkpoint_now().await.is_err());
    // Never announced as durable, and nothing more is accepted.
    tokio::time::sleep(crate::writer::DETACHED_SYNC_WITHIN * 4).await;
    assert_eq!(*written.borrow(), 1);
    assert!(matches!(
        log.append(body("query", "q3")).await,
        Err(AuditError::Unavailable { .. })
    ));
}

#[test]
fn append_blocking_outside_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLog::open(&path, FsyncMode::Always).unwrap();
    assert_eq!(log.append_blocking(body("credential.issued", "a")).unwrap(), 1);
    assert_eq!(log.append_blocking(body("credential.revoked", "a")).unwrap(), 2);
    assert_eq!(verify(&path).unwrap().records, 2);
}

/// A command's record is signed before the command goes on (and exits), while the server that has
/// the log open too signs only what it writes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_appended_blocking_is_signed_when_the_call_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let server = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    server.append(body("session.start", "s")).await.unwrap();
    server.checkpoint_now().await.unwrap();
    let cli_path = path.clone();
    let seq = tokio::task::spawn_blocking(move || {
        let cli = AuditLog::open(&cli_path, FsyncMode::Batch).unwrap();
        let seq = cli.append_blocking(body("lock.created", "l")).unwrap();
        // Still open: nothing here waits for the handle to be dropped.
        let signed = crate::checkpoint::last_checkpoint(&files::checkpoints_path(&cli_path))
            .unwrap()
            .map(|c| c.seq);
        (seq, signed, cli)
    })
    .await
    .unwrap();
    assert_eq!(seq.0, 2);
    assert_eq!(
        seq.1,
        Some(2),
        "the command's record is signed when append_blocking returns"
    );
    assert_eq!(verify(&path).unwrap().unsigned_tail, 0);
}

/// A crash between creating the key file and writing it (as older versions could) left an empty key:
/// with no public half nothing was signed with it, so it is made anew; with one, it is refused.
#[tokio::test]
async fn an_empty_key_left_by_a_crash_is_made_anew_unless_a_public_half_exists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (key, public) = files::key_paths(&path);
    std::fs::write(&key, b"").unwrap();
    let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    log.append(body("query", "q")).await.unwrap();
    log.checkpoint_now().await.unwrap();
    drop(log);
    assert!(std::fs::metadata(&key).unwrap().len() > 0);
    assert!(public.exists());
    verify(&path).unwrap();
    std::fs::write(&key, b"").unwrap();
    assert!(
        AuditLog::open(&path, FsyncMode::Batch).is_err(),
        "a key emptied after signing is refused"
    );
    assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp-")));
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<AuditHandle>();
}

#[tokio::test]
async fn reopening_continues_the_chain() {
    let (_dir, path) = log_of(3).await;
    let last = events(&path).pop().unwrap();
    let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    assert_eq!(log.recovered_tail, None);
    assert_eq!(log.append(body("query", "after")).await.unwrap(), 4);
    let next = events(&path).pop().unwrap();
    assert_eq!((next.seq, next.prev_hash), (4, last.hash));
    assert_eq!(verify(&path).unwrap().records, 4);
}

#[tokio::test]
async fn a_torn_final_line_is_cut_on_open_and_the_chain_continues() {
    let (_dir, path) = log_of(3).await;
    let whole = std::fs::read(&path).unwrap();
    // A crash in the middle of a write leaves part of a line.
    let mut torn = whole.clone();
    torn.extend_from_slice(b"{\"ts\":\"2026-");
    std::fs::write(&path, &torn).unwrap();
    assert!(matches!(verify(&path), Err(AuditError::Tampered { line: 4, .. })));

    let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    assert_eq!(log.recovered_tail, Some(12));
    assert_eq!(std::fs::read(&path).unwrap(), whole);
    assert_eq!(log.append(body("query", "after")).await.unwrap(), 4);
    assert_eq!(verify(&path).unwrap().records, 4);

    // A crash during the very first write of a new log leaves no complete line at all.
    std::fs::remove_file(files::checkpoints_path(&path)).unwrap();
    std::fs::write(&path, b"{\"ts\":").unwrap();
    let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    assert_eq!(log.recovered_tail, Some(6));
    assert_eq!(log.append(body("query", "first")).await.unwrap(), 1);
    assert_eq!(verify(&path).unwrap().records, 1);
}

#[tokio::test]
async fn a_corrupt_last_record_refuses_to_open() {
    let (_dir, path) = log_of(2).await;
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("garbage\n");
    std::fs::write(&path, text).unwrap();
    assert!(matches!(
        AuditLog::open(&path, FsyncMode::Batch),
        Err(AuditError::Open { .. })
    ));
}

#[tokio::test]
async fn every_one_byte_edit_is_caught_on_its_line() {
    let (_dir, path) = log_of(3).await;
    let original = std::fs::read(&path).unwrap();
    let line_of = |i: usize| 1 + original[..i].iter().filter(|&&b| b == b'\n').count();
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (i, &byte) in original.iter().enumerate() {
        for edit in [byte ^ 0x01, 0xff] {
            file.write_all_at(&[edit], i as u64).unwrap();
            let (line, reason) = tampered(&path);
            assert_eq!(line, line_of(i), "byte {i} -> {edit:#x}: {reason}");
        }
        file.write_all_at(&[byte], i as u64).unwrap();
    }
}

#[tokio::test]
async fn the_reasons_name_what_broke() {
    let (_dir, path) = log_of(5).await;
    let original = lines(&path);
    let write = |ls: &[String]| std::fs::write(&path, ls.join("\n") + "\n").unwrap();

    let mut edited = original.clone();
    edited[2] = edited[2].replace("SELECT 'n2'", "SELECT 'N2'");
    write(&edited);
    match verify(&path) {
        Err(AuditError::Tampered {
            line,
            seq,
            reason,
            record,
            ..
        }) => {
            assert_eq!((line, seq, reason.as_str()), (3, Some(3), "hash mismatch"));
            assert!(record.contains("N2"));
        }
        other => panic!("edit not caught: {other:?}"),
    }

    let mut dropped = original.clone();
    dropped.remove(1);
    write(&dropped);
    assert_eq!(tampered(&path), (2, "seq gap: expected 2 found 3".to_string()));

    // Rewriting a record with a fresh hash still breaks the link to it.
    let mut rewritten = original.clone();
    rewritten[2] = reencoded(&original[2], "SELECT 'forged'");
    write(&rewritten);
    assert_eq!(tampered(&path), (4, "prev_hash does not link to seq 3".to_string()));

    write(&["{\"ts\":1}".to_string()]);
    assert_eq!(tampered(&path), (1, "not valid JSON".to_string()));
}

#[tokio::test]
async fn verify_waits_for_a_record_in_progress() {
    use std::io::Write;
    let (_dir, path) = log_of(2).await;
    let text = std::fs::read(&path).unwrap();
    let cut = text[..text.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let (first, second) = text.split_at(cut);
    std::fs::write(&path, first).unwrap();
    // Another writer holds the lock and has written half of its record.
    let mut other = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    let lock = std::fs::File::open(files::lock_path(&path)).unwrap();
    lock.lock().unwrap();
    other.write_all(&second[..40]).unwrap();
    let verifier = std::thread::spawn({
        let path = path.clone();
        move || verify(&path)
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    other.write_all(&second[40..]).unwrap();
    lock.unlock().unwrap();
    assert_eq!(verifier.join().unwrap().unwrap().records, 2);
}

#[tokio::test]
async fn a_missing_log_verifies_empty() {
    let dir = tempfile::tempdir().unwrap();
    let report = verify(&dir.path().join("none.jsonl")).unwrap();
    assert_eq!(report.records, 0);
    assert_eq!(report.last_hash, GENESIS);
    let found = search(&dir.path().join("none.jsonl"), &SearchFilter::default()).unwrap();
    assert!(found.is_empty());
}

#[tokio::test]
async fn two_writers_on_one_file_share_one_chain() {
    let (_dir, path) = log_of(0).await;
    // The proxy and a CLI command, each with its own writer.
    let proxy = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    let cli = AuditLog::open(&path, FsyncMode::Always).unwrap();
    for i in 0..10 {
        let a = proxy.append(body("query", &format!("p{i}")));
        let b = cli.append(body("credential.issued", &format!("c{i}")));
        let (a, b) = tokio::join!(a, b);
        a.unwrap();
        b.unwrap();
    }
    assert_eq!(verify(&path).unwrap().records, 20);
}

#[test]
fn format_ts_is_utc_with_microseconds() {
    let t = time::macros::datetime!(2026-11-23 07:44:19.1234567 +01:00);
    assert_eq!(format_ts(t), "2026-11-23T06:44:19.123456Z");
    let t = time::macros::datetime!(2026-01-02 03:04:05 UTC);
    assert_eq!(format_ts(t), "2026-01-02T03:04:05.000000Z");
}

#[tokio::test]
async fn stored_lines_follow_the_documented_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    let full = EventBody {
        event: "query".into(),
        session_id: Some("s1".into()),
        identity: Some(
            IdentityRecord {
                kind: "agent".into(),
                name: "bot".into(),
                requester: Some("human:alice".into()),
                task: Some("T-1".into()),
                roles: vec!["analyst".into()],
            }
            .into(),
        ),
        credential_id: Some("c1".into()),
        database: Some("app".into()),
        db_user: Some("warden_bot".into()),
        client_addr: Some("127.0.0.1:5000".into()),
        statement: Some("SELECT $1 -- \"quoted\" \u{e9}".into()),
        parameters: Some(vec![Some("x".into()), None].into()),
        decision: Some("allow".into()),
        reason: Some("role analyst".into()),
        rows: Some(3),
        duration_us: Some(120),
        error: Some("none".into()),
        query_id: Some(7),
        actor: Some("human:alice".into()),
        lock: Some(crate::LockRecord {
            id: "lk_1".into(),
            target: "task".into(),
            value: "T-1".into(),
            expires_at: None,
        }),
        request_id: Some("rq_1".into()),
        review_id: Some("rv_1".into()),
        columns: Some(vec!["id".into()].into()),
        sample_rows: Some(vec![vec![Some("1".into()), None]]),
    };
    log.append(full.clone()).await.unwrap();
    log.append(body("session.end", "bot")).await.unwrap();

    let mut prev = GENESIS.to_string();
    for (n, line) in lines(&path).iter().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let hash = value["hash"].as_str().unwrap().to_string();
        let suffix = format!(",\"hash\":\"{hash}\"}}");
        let s = format!("{}}}", line.strip_suffix(&suffix).unwrap());
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(s.as_bytes())), hash);
        assert_eq!(value["prev_hash"], prev.as_str());
        assert_eq!(value["seq"], n as u64 + 1);
        prev = hash;
    }
    let first = &lines(&path)[0];
    let keys = [
        "ts",
        "seq",
        "event",
        "session_id",
        "identity",
        "credential_id",
        "database",
        "db_user",
        "client_addr",
        "statement",
        "parameters",
        "decision",
        "reason",
        "rows",
        "duration_us",
        "error",
        "query_id",
        "actor",
        "lock",
        "request_id",
        "review_id",
        "prev_hash",
        "hash",
    ];
    let at: Vec<usize> = keys.iter().map(|k| first.find(&format!("\"{k}\":")).unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "field order: {first}");
    assert_eq!(events(&path)[0].body, full);
}

#[tokio::test]
async fn search_filters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLog::open(&path, FsyncMode::Off).unwrap();
    log.append(body("session.start", "x")).await.unwrap();
    log.append(body("query", "x")).await.unwrap();
    let mut denied = body("query", "y");
    denied.decision = Some("deny".into());
    log.append(denied).await.unwrap();
    let mut human = body("query", "alice");
    human.identity = Some(
        IdentityRecord {
            kind: "human".into(),
            name: "alice".into(),
            ..Default::default()
        }
        .into(),
    );
    log.append(human).await.unwrap();

    let find = |f: SearchFilter| -> Vec<u64> { search(&path, &f).unwrap().iter().map(|e| e.seq).collect() };
    let by_identity = |s: &str| {
        find(SearchFilter {
            identity: Some(s.into()),
            ..Default::default()
        })
    };
    assert_eq!(by_identity("x"), [1, 2]);
    assert_eq!(by_identity("agent:y"), [3]);
    assert!(by_identity("human:y").is_empty());
    // Alice's own event, and her agents' events, by kind:name or by bare name.
    assert_eq!(by_identity("human:alice"), [1, 2, 3, 4]);
    assert_eq!(by_identity("alice"), [1, 2, 3, 4]);
    let by_requester = |s: &str| {
        find(SearchFilter {
            requester: Some(s.into()),
            ..Default::default()
        })
    };
    assert_eq!(by_requester("human:alice"), [1, 2, 3]);
    assert_eq!(by_requester("alice"), [1, 2, 3]);
    assert!(by_requester("human:bob").is_empty());
    let f = |f: fn(&mut SearchFilter)| {
        let mut filter = SearchFilter::default();
        f(&mut filter);
        find(filter)
    };
    assert_eq!(f(|f| f.session = Some("s-y".into())), [3]);
    assert_eq!(f(|f| f.task = Some("task-x".into())), [1, 2]);
    assert_eq!(f(|f| f.decision = Some("deny".into())), [3]);
    assert_eq!(f(|f| f.event = Some("session.start".into())), [1]);
    assert_eq!(f(|f| f.limit = Some(2)), [1, 2]);
    assert_eq!(
        f(|f| {
            f.identity = Some("x".into());
            f.event = Some("query".into());
        }),
        [2]
    );
    let hour = time::Duration::hours(1);
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(
        find(SearchFilter {
            since: Some(now - hour),
            ..Default::default()
        }),
        [1, 2, 3, 4]
    );
    assert!(find(SearchFilter {
        since: Some(now + hour),
        ..Default::default()
    })
    .is_empty());
    assert!(find(SearchFilter {
        until: Some(now - hour),
        ..Default::default()
    })
    .is_empty());
    // `since` is inclusive: the exact ts of record 3 finds it.
    let ts3 =
        time::OffsetDateTime::parse(&events(&path)[2].ts, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(
        find(SearchFilter {
            since: Some(ts3),
            until: Some(ts3),
            ..Default::default()
        })
        .first(),
        Some(&3)
    );
}

#[tokio::test]
async fn search_names_the_line_of_a_bad_record_and_skips_a_partial_one() {
    let (_dir, path) = log_of(2).await;
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"ts\":\"2026-"); // being written right now
    std::fs::write(&path, &text).unwrap();
    assert_eq!(search(&path, &SearchFilter::default()).unwrap().len(), 2);
    text.push('\n');
    std::fs::write(&path, &text).unwrap();
    match search(&path, &SearchFilter::default()) {
        Err(AuditError::Read { line, path: p, .. }) => assert_eq!((line, p), (3, path)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_failed_write_fails_every_later_append() {
    for mode in [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Off] {
        let (_dir, path) = log_of(0).await;
        let log = AuditLog::open(&path, mode).unwrap();
        log.append(body("query", "ok")).await.unwrap();
        log.fail_writes();
        for _ in 0..3 {
            match log.append(body("query", "later")).await {
                Err(AuditError::Unavailable { path: p, reason }) => {
                    assert_eq!(p, path);
                    assert!(reason.contains("No space left"), "{reason}");
                }
                other => panic!("{mode:?}: {other:?}"),
            }
        }
        let blocking = log.clone();
        let err = tokio::task::spawn_blocking(move || blocking.append_blocking(body("q", "z")))
            .await
            .unwrap();
        assert!(matches!(err, Err(AuditError::Unavailable { .. })));
        assert_eq!(verify(&path).unwrap().records, 1);
    }
}

#[tokio::test]
async fn a_full_disk_fails_closed() {
    // /dev/full accepts the open and fails every write with ENOSPC: a real OS failure.
    let path = Path::new("/dev/full");
    if !path.exists() {
        return;
    }
    let log = AuditLog::open(path, FsyncMode::Batch).unwrap();
    for _ in 0..2 {
        match log.append(body("query", "x")).await {
            Err(AuditError::Unavailable { reason, .. }) => {
                assert!(reason.contains("No space left"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_redacted_before_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let redactor = Redactor::new(vec![regex::Regex::new("sk_live_[A-Za-z0-9]+").unwrap()]);
    let log = AuditLog::open(&path, FsyncMode::Off)
        .unwrap()
        .with_redactor(std::sync::Arc::new(redactor));
    let mut b = body("query", "r");
    b.statement = Some("SELECT 'sk_live_abc'".into());
    b.parameters = Some(vec![Some("sk_live_def".into())].into());
    let mut written = log.written();
    log.append(b).await.unwrap();
    written.wait_for(|seq| *seq == 1).await.unwrap();
    log.checkpoint_now().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("sk_live"), "{text}");
    assert!(
        text.contains("SELECT '[REDACTED]'") && text.contains("[\"[REDACTED]\"]"),
        "{text}"
    );
    verify(&path).unwrap();
}

fn small_files(every: Option<std::time::Duration>) -> AuditOptions {
    AuditOptions {
        fsync: FsyncMode::Off,
        rotate_bytes: Some(2_000),
        checkpoint_every: every,
    }
}

#[tokio::test]
async fn rotation_keeps_one_chain_across_files_and_readers_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_with(&path, small_files(Some(std::time::Duration::from_millis(1)))).unwrap();
    for i in 0..60 {
        log.append(body("query", &format!("r{i}"))).await.unwrap();
    }
    log.checkpoint_now().await.unwrap();
    let files = segments(&path).unwrap();
    assert!(files.len() > 3, "{files:?}");
    // Each rotated file is named for its last record, and the names sort in chain order.
    for s in &files[..files.len() - 1] {
        let last = events(&s.path).last().unwrap().seq;
        assert_eq!(s.last_seq, Some(last), "{}", s.path.display());
    }
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.files), (60, files.len()));
    assert_eq!(report.unsigned_tail, 0);
    let seqs: Vec<u64> = read_after(&path, 0).unwrap().map(|r| r.unwrap().event.seq).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    let tail: Vec<u64> = read_after(&path, 41).unwrap().map(|r| r.unwrap().event.seq).collect();
    assert_eq!(tail, (42..=60).collect::<Vec<_>>());
    assert_eq!(search(&path, &SearchFilter::default()).unwrap().len(), 60);

    // A record's stored offset points at its line.
    let r = read_after(&path, 30).unwrap().next().unwrap().unwrap();
    let bytes = std::fs::read(&r.file).unwrap();
    assert!(bytes[r.offset as usize..].starts_with(&r.line));

    // A rotated file that goes missing breaks the chain where it was.
    drop(log);
    std::fs::remove_file(&files[1].path).unwrap();
    let (_, reason) = tampered(&path);
    assert!(reason.starts_with("seq gap"), "{reason}");
}

#[tokio::test]
async fn a_second_writer_continues_after_the_other_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let every = Some(std::time::Duration::from_millis(5));
    let a = AuditLog::open_with(&path, small_files(every)).unwrap();
    let b = AuditLog::open_with(&path, small_files(every)).unwrap();
    for i in 0..40 {
        let log = if i % 3 == 0 { &b } else { &a };
        assert_eq!(log.append(body("query", &format!("w{i}"))).await.unwrap(), i + 1);
    }
    assert!(segments(&path).unwrap().len() > 2);
    assert_eq!(verify(&path).unwrap().records, 40);
}

#[tokio::test]
async fn checkpoints_catch_a_dropped_or_rewritten_tail() {
    let (dir, path) = log_of(5).await;
    let report = verify(&path).unwrap();
    assert_eq!(report.last_checkpoint.as_ref().map(|c| c.0), Some(5));
    assert!(report.checkpoints >= 1);
    let original = lines(&path);
    let write = |ls: &[String]| std::fs::write(&path, ls.join("\n") + "\n").unwrap();

    // The last two records cut off: the chain that is left is intact, the checkpoint is not.
    write(&original[..3]);
    let (_, reason) = tampered(&path);
    assert!(
        reason.contains("the log ends at seq 3") && reason.contains("removed from the end"),
        "{reason}"
    );

    // The last record replaced by a well-formed one with a fresh hash that links correctly.
    let mut rewritten = original.clone();
    rewritten[4] = reencoded(&original[4], "SELECT 'nothing to see'");
    write(&rewritten);
    let (line_no, reason) = tampered(&path);
    assert_eq!(line_no, 5);
    assert!(reason.contains("the log was rewritten"), "{reason}");

    // A checkpoint re-signed by another key does not verify; a pinned key must match.
    write(&original);
    verify(&path).unwrap();
    let other = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let other = ring::signature::Ed25519KeyPair::from_pkcs8(other.as_ref()).unwrap();
    use ring::signature::KeyPair;
    let wrong_key = hex::encode(other.public_key().as_ref());
    let pinned = verify_with(
        &path,
        VerifyOptions {
            public_key: Some(wrong_key),
            ..VerifyOptions::default()
        },
    );
    assert!(
        matches!(pinned, Err(AuditError::Tampered { ref reason, .. }) if reason.contains("signature")),
        "{pinned:?}"
    );

    // The checkpoints removed while the key is there: truncation could no longer be seen, so no.
    std::fs::remove_file(files::checkpoints_path(&path)).unwrap();
    let (_, reason) = tampered(&path);
    assert!(reason.contains("no signed checkpoint"), "{reason}");
    drop(dir);
}

#[tokio::test]
async fn a_torn_checkpoint_line_is_cut_before_the_next_one() {
    let (_dir, path) = log_of(2).await;
    let ckpts = files::checkpoints_path(&path);
    let mut text = std::fs::read(&ckpts).unwrap();
    text.extend_from_slice(b"{\"seq\":2,\"ha");
    std::fs::write(&ckpts, &text).unwrap();
    verify(&path).unwrap();
    let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    log.append(body("query", "after")).await.unwrap();
    log.checkpoint_now().await.unwrap();
    let report = verify(&path).unwrap();
    assert_eq!(report.last_checkpoint.map(|c| c.0), Some(3));
    assert!(std::fs::read_to_string(&ckpts)
        .unwrap()
        .lines()
        .all(|l| l.ends_with('}')));
}

/// Checkpoints are read along with the log, in chain order: one moved out of that order was edited
/// in, and many checkpoints verify without being held all at once.
#[tokio::test]
async fn checkpoints_out_of_chain_order_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLog::open(&path, FsyncMode::Off).unwrap();
    for i in 0..300 {
        log.append(body("query", &format!("c{i}"))).await.unwrap();
        log.checkpoint_now().await.unwrap();
    }
    drop(log);
    let report = verify(&path).unwrap();
    assert!(report.checkpoints >= 300, "{report:?}");
    assert_eq!(report.last_checkpoint.as_ref().map(|c| c.0), Some(300));
    assert_eq!(report.unsigned_tail, 0);
    let ckpts = files::checkpoints_path(&path);
    let original = std::fs::read_to_string(&ckpts).unwrap();
    let mut lines: Vec<&str> = original.lines().collect();
    lines.swap(10, 200);
    std::fs::write(&ckpts, lines.join("\n") + "\n").unwrap();
    let (_, reason) = tampered(&path);
    assert!(reason.contains("chain order"), "{reason}");
}

#[tokio::test]
async fn records_are_signed_after_the_interval_without_more_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            fsync: FsyncMode::Batch,
            rotate_bytes: None,
            checkpoint_every: Some(std::time::Duration::from_millis(50)),
        },
    )
    .unwrap();
    for i in 0..5 {
        log.append(body("query", &format!("t{i}"))).await.unwrap();
    }
    // The first write is signed at once; the rest once the interval is up, with no further write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while verify(&path).unwrap().unsigned_tail > 0 {
        assert!(std::time::Instant::now() < deadline, "never signed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let key = std::fs::metadata(files::key_paths(&path).0).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn a_record_is_found_from_the_end_across_read_chunks() {
    use crate::recover::{record_near_end, Near};
    let (_dir, path) = log_of(3000).await;
    assert!(std::fs::metadata(&path).unwrap().len() > 4 * 64 * 1024);
    for seq in [3000, 2999, 1777, 2, 1] {
        match record_near_end(&path, seq).unwrap() {
            Near::Found(e) => assert_eq!(e.seq, seq),
            _ => panic!("seq {seq} not found"),
        }
    }
    assert!(matches!(record_near_end(&path, 3001).unwrap(), Near::Missing));
}

/// A tail rewritten from the signed record on and extended past it (no key needed to re-chain) is
/// refused by the next writer, not signed over.
#[tokio::test]
async fn a_writer_refuses_to_sign_over_a_rewritten_and_extended_end() {
    let (_dir, path) = log_of(5).await;
    let original = lines(&path);
    let mut forged: Event = serde_json::from_str(&original[4]).unwrap();
    forged.body.statement = Some("SELECT 'nothing to see'".into());
    let mut prev = forged.prev_hash.clone();
    let mut out = Vec::new();
    event::encode_line(&forged.ts, 5, &forged.body, &mut prev, &mut out);
    forged.body.statement = Some("SELECT 'and one more'".into());
    event::encode_line(&forged.ts, 6, &forged.body, &mut prev, &mut out);
    let mut rewritten = original[..4].join("\n") + "\n";
    rewritten.push_str(&String::from_utf8(out).unwrap());
    std::fs::write(&path, rewritten).unwrap();
    match AuditLog::open(&path, FsyncMode::Batch) {
        Err(AuditError::Open { reason, .. }) => {
            assert!(reason.contains("seq 5") && reason.contains("rewritten"), "{reason}")
        }
        other => panic!("opened a rewritten log: {:?}", other.map(|_| ())),
    }
    // The intact log, with a record after the signed one (written, not yet signed), opens.
    let signed: Event = serde_json::from_str(&original[4]).unwrap();
    let mut prev = signed.hash.clone();
    let mut out = Vec::new();
    event::encode_line(&signed.ts, 6, &body("query", "unsigned"), &mut prev, &mut out);
    std::fs::write(&path, original.join("\n") + "\n" + &String::from_utf8(out).unwrap()).unwrap();
    let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    assert_eq!(log.append(body("query", "after")).await.unwrap(), 7);
    drop(log);
    assert_eq!(verify(&path).unwrap().records, 7);
}

#[tokio::test]
async fn a_writer_refuses_to_sign_over_a_cut_or_unsigned_end() {
    let (_dir, path) = log_of(5).await;
    let original = lines(&path);
    let write = |ls: &[String]| std::fs::write(&path, ls.join("\n") + "\n").unwrap();
    // Cut: opening (the next `warden start` or `warden lock`) must not sign the shorter chain.
    write(&original[..2]);
    match AuditLog::open(&path, FsyncMode::Batch) {
        Err(AuditError::Open { reason, .. }) => assert!(reason.contains("removed from the end"), "{reason}"),
        other => panic!("opened a cut log: {:?}", other.map(|_| ())),
    }
    // The checkpoints deleted as well: still refused, and verify (with the key pinned) fails.
    let public = std::fs::read_to_string(files::key_paths(&path).1).unwrap();
    std::fs::remove_file(files::checkpoints_path(&path)).unwrap();
    match AuditLog::open(&path, FsyncMode::Batch) {
        Err(AuditError::Open { reason, .. }) => assert!(reason.contains("no signed checkpoint"), "{reason}"),
        other => panic!("opened an unsigned log: {:?}", other.map(|_| ())),
    }
    let pinned = VerifyOptions {
        public_key: Some(public.trim().to_string()),
        ..VerifyOptions::default()
    };
    assert!(verify_with(&path, pinned).is_err());
    // The public key deleted too: verify still fails rather than skipping the checkpoints.
    std::fs::remove_file(files::key_paths(&path).1).unwrap();
    let (_, reason) = tampered(&path);
    assert!(reason.contains("no checkpoint public key"), "{reason}");
    // Only an explicit chain-only check passes, and only `warden audit sign` signs such a head.
    let chain_only = VerifyOptions {
        chain_only: true,
        ..VerifyOptions::default()
    };
    assert_eq!(verify_with(&path, chain_only).unwrap().records, 2);
    // A key whose public half does not match is refused rather than overwritten.
    std::fs::write(files::key_paths(&path).1, "ab".repeat(32)).unwrap();
    assert!(AuditLog::open_signing_unsigned_head(&path, AuditOptions::default()).is_err());
    std::fs::remove_file(files::key_paths(&path).1).unwrap();
    let log = AuditLog::open_signing_unsigned_head(&path, AuditOptions::default()).unwrap();
    log.checkpoint_now().await.unwrap();
    assert_eq!(verify(&path).unwrap().last_checkpoint.map(|c| c.0), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_during_rotation_sees_one_unbroken_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            fsync: FsyncMode::Off,
            rotate_bytes: Some(4_000),
            checkpoint_every: Some(std::time::Duration::from_millis(1)),
        },
    )
    .unwrap();
    let writer = tokio::spawn({
        let log = log.clone();
        async move {
            for i in 0..3000 {
                log.append(body("query", &format!("rot{i}"))).await.unwrap();
            }
        }
    });
    let mut runs = 0;
    while !writer.is_finished() {
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || verify(&p)).await.unwrap();
        assert!(r.is_ok(), "verify during rotation: {r:?}");
        runs += 1;
    }
    writer.await.unwrap();
    assert!(runs > 0);
    // A reader that reached the end of the active file before it was rotated returns nothing twice.
    let seqs: Vec<u64> = read_after(&path, 0).unwrap().map(|r| r.unwrap().event.seq).collect();
    assert_eq!(seqs, (1..=3000).collect::<Vec<_>>());
}

#[tokio::test]
async fn reused_acks_answer_each_record_and_drop_the_answer_of_a_wait_given_up() {
    use std::future::Future;
    use std::task::Context;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    let acks = std::sync::Arc::new(Acks::default());
    for i in 1..=50u64 {
        assert_eq!(log.append_to(body("query", &format!("r{i}")), &acks).await.unwrap(), i);
    }

    // The writer is held up (another writer holds the log's lock) while a wait is given up after
    // its record was enqueued; the next record must get its own answer, not the abandoned one's.
    let lock = crate::files::open_lock(&path).unwrap();
    crate::recover::lock_exclusive(&lock).unwrap();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    {
        let abandoned = log.append_to(body("query", "abandoned"), &acks);
        let mut abandoned = std::pin::pin!(abandoned);
        assert!(abandoned.as_mut().poll(&mut cx).is_pending());
    }
    let next = log.append_to(body("query", "next"), &acks);
    let mut next = std::pin::pin!(next);
    assert!(next.as_mut().poll(&mut cx).is_pending());
    lock.unlock().unwrap();
    assert_eq!(next.await.unwrap(), 52, "the abandoned record is 51");
    let stored = events(&path);
    assert_eq!(stored[50].body.identity.as_ref().unwrap().name, "abandoned");
}
