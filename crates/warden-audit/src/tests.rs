use std::path::Path;

use super::*;

fn body(event: &str, name: &str) -> EventBody {
    EventBody {
        event: event.into(),
        session_id: Some(format!("s-{name}")),
        identity: Some(IdentityRecord {
            kind: "agent".into(),
            name: name.into(),
            requester: Some("human:alice".into()),
            task: Some(format!("task-{name}")),
            roles: vec!["analyst".into()],
        }),
        statement: Some(format!("SELECT '{name}'")),
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

#[tokio::test]
async fn concurrent_appends_chain_in_every_mode() {
    for mode in [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Off] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/audit.jsonl");
        let log = AuditLog::open(&path, mode).unwrap();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    log.append(body("query", &format!("bot{t}-{i}")))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let report = verify(&path).unwrap();
        assert_eq!(report.records, 200, "{mode:?}");
        let seqs: Vec<u64> = lines(&path)
            .iter()
            .map(|l| serde_json::from_str::<Event>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[tokio::test]
async fn reopening_continues_the_chain_and_trims_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    {
        let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
        for i in 0..3 {
            log.append(body("query", &format!("a{i}"))).await.unwrap();
        }
    }
    // A crash in the middle of a write leaves half a line.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"ts\":\"2026-");
    std::fs::write(&path, &text).unwrap();
    let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    assert_eq!(log.recovered_tail, 12);
    assert_eq!(log.append(body("query", "after")).await.unwrap(), 4);
    assert_eq!(verify(&path).unwrap().records, 4);
}

#[tokio::test]
async fn edits_and_removals_are_caught_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLog::open(&path, FsyncMode::Off).unwrap();
    for i in 0..5 {
        log.append(body("query", &format!("n{i}"))).await.unwrap();
    }
    let original = lines(&path);

    let mut edited = original.clone();
    edited[2] = edited[2].replace("SELECT 'n2'", "SELECT 'N2'");
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
    match verify(&path) {
        Err(AuditError::Tampered {
            line,
            reason,
            record,
            ..
        }) => {
            assert_eq!(line, 3);
            assert!(reason.contains("hash mismatch"), "{reason}");
            assert!(record.contains("N2"));
        }
        other => panic!("edit not caught: {:?}", other.map(|r| r.records)),
    }

    let mut dropped = original.clone();
    dropped.remove(1);
    std::fs::write(&path, dropped.join("\n") + "\n").unwrap();
    assert!(matches!(
        verify(&path),
        Err(AuditError::Tampered { line: 2, .. })
    ));

    // Rewriting a record with a fresh hash still breaks the link to it.
    let mut forged: Event = serde_json::from_str(&original[2]).unwrap();
    forged.body.statement = Some("SELECT 'forged'".into());
    let mut line = Vec::new();
    crate::event::encode_line(
        &forged.ts,
        forged.seq,
        &forged.body,
        &forged.prev_hash,
        &mut line,
    );
    let mut rewritten = original.clone();
    rewritten[2] = String::from_utf8(line).unwrap().trim_end().to_string();
    std::fs::write(&path, rewritten.join("\n") + "\n").unwrap();
    match verify(&path) {
        Err(AuditError::Tampered { line, reason, .. }) => {
            assert_eq!(line, 4);
            assert!(reason.contains("prev_hash"), "{reason}");
        }
        other => panic!("forgery not caught: {:?}", other.map(|r| r.records)),
    }
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
    human.identity = Some(IdentityRecord {
        kind: "human".into(),
        name: "alice".into(),
        ..Default::default()
    });
    log.append(human).await.unwrap();

    let find = |f: SearchFilter| search(&path, &f).unwrap().len();
    assert_eq!(
        find(SearchFilter {
            identity: Some("x".into()),
            ..Default::default()
        }),
        2
    );
    assert_eq!(
        find(SearchFilter {
            identity: Some("agent:y".into()),
            ..Default::default()
        }),
        1
    );
    // alice's own event, and her agents' events.
    assert_eq!(
        find(SearchFilter {
            identity: Some("human:alice".into()),
            ..Default::default()
        }),
        4
    );
    assert_eq!(
        find(SearchFilter {
            requester: Some("human:alice".into()),
            ..Default::default()
        }),
        3
    );
    assert_eq!(
        find(SearchFilter {
            session: Some("s-y".into()),
            ..Default::default()
        }),
        1
    );
    assert_eq!(
        find(SearchFilter {
            task: Some("task-x".into()),
            ..Default::default()
        }),
        2
    );
    assert_eq!(
        find(SearchFilter {
            decision: Some("deny".into()),
            ..Default::default()
        }),
        1
    );
    assert_eq!(
        find(SearchFilter {
            event: Some("session.start".into()),
            ..Default::default()
        }),
        1
    );
    let hour = time::Duration::hours(1);
    assert_eq!(
        find(SearchFilter {
            since: Some(time::OffsetDateTime::now_utc() - hour),
            ..Default::default()
        }),
        4
    );
    assert_eq!(
        find(SearchFilter {
            since: Some(time::OffsetDateTime::now_utc() + hour),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        find(SearchFilter {
            limit: Some(2),
            ..Default::default()
        }),
        2
    );
}

#[tokio::test]
async fn a_failed_write_fails_every_later_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLog::open(&path, FsyncMode::Batch).unwrap();
    log.append(body("query", "ok")).await.unwrap();
    log.test_fail_writes();
    for _ in 0..3 {
        assert!(matches!(
            log.append(body("query", "later")).await,
            Err(AuditError::Unavailable { .. })
        ));
    }
    assert_eq!(verify(&path).unwrap().records, 1);
}
