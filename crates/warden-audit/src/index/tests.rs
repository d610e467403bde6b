use std::path::{Path, PathBuf};
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::*;
use crate::{search_records, AuditLog, AuditOptions, EventBody, FsyncMode, IdentityRecord};

/// A varied record: humans, agents acting for two humans, a workload, events without identity.
fn varied(i: usize) -> EventBody {
    let session = format!("sess-{:03}", i % 37);
    let (kind, name, requester) = match i % 5 {
        0 => ("human", "alice".to_string(), None),
        1 => ("agent", format!("bot-{}", i % 3), Some("human:alice")),
        2 => ("agent", format!("bot-{}", i % 4), Some("human:bob")),
        3 => ("workload", "etl".to_string(), None),
        _ => ("agent", "alice".to_string(), Some("bob")),
    };
    let event = [
        "session.start",
        "query",
        "query.result",
        "query",
        "session.end",
        "auth.failed",
    ][i % 6];
    let mut body = EventBody {
        event: event.into(),
        session_id: Some(session.into()),
        identity: Some(
            IdentityRecord {
                kind: kind.into(),
                name,
                requester: requester.map(str::to_string),
                task: (!i.is_multiple_of(3)).then(|| format!("T-{}", i % 7)),
                roles: vec!["analyst".into()],
            }
            .into(),
        ),
        ..EventBody::default()
    };
    if event == "query" {
        body.statement = Some(format!("SELECT {i}").into());
        body.decision = Some(if i.is_multiple_of(5) { "deny" } else { "allow" }.into());
    }
    if event == "auth.failed" {
        body.identity = None;
        body.session_id = None;
    }
    body
}

/// A log of `n` varied records, rotated every few KiB.
fn write_log(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("audit/audit.jsonl");
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            fsync: FsyncMode::Off,
            rotate_bytes: Some(16 * 1024),
            checkpoint_every: None,
        },
    )
    .unwrap();
    for i in 0..n {
        log.append_blocking(varied(i)).unwrap();
        if i.is_multiple_of(200) {
            // Spread the timestamps a little, for the time ranges.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    path
}

fn ts_of(path: &Path, seq: u64) -> OffsetDateTime {
    let r = crate::read_after(path, seq - 1).unwrap().next().unwrap().unwrap();
    OffsetDateTime::parse(&r.event.ts, &Rfc3339).unwrap()
}

fn filters(path: &Path) -> Vec<SearchFilter> {
    let n = crate::read_after(path, 0).unwrap().count() as u64;
    let t300 = ts_of(path, n * 3 / 10);
    let t700 = ts_of(path, n * 7 / 10);
    let f = SearchFilter::default;
    let mut out = vec![
        f(),
        SearchFilter {
            identity: Some("human:alice".into()),
            ..f()
        },
        SearchFilter {
            identity: Some("alice".into()),
            ..f()
        },
        SearchFilter {
            identity: Some("agent:bot-1".into()),
            ..f()
        },
        SearchFilter {
            identity: Some("bob".into()),
            ..f()
        },
        SearchFilter {
            identity: Some("nobody".into()),
            ..f()
        },
        SearchFilter {
            requester: Some("human:alice".into()),
            ..f()
        },
        SearchFilter {
            requester: Some("bob".into()),
            ..f()
        },
        SearchFilter {
            requester: Some("human:bob".into()),
            task: Some("T-2".into()),
            ..f()
        },
        SearchFilter {
            task: Some("T-3".into()),
            ..f()
        },
        SearchFilter {
            session: Some("sess-005".into()),
            ..f()
        },
        SearchFilter {
            decision: Some("deny".into()),
            ..f()
        },
        SearchFilter {
            decision: Some("deny".into()),
            since: Some(t300),
            until: Some(t700),
            ..f()
        },
        SearchFilter {
            since: Some(t700),
            ..f()
        },
        SearchFilter {
            until: Some(t300),
            ..f()
        },
        SearchFilter {
            event: Some("auth.failed".into()),
            ..f()
        },
        SearchFilter {
            event: Some("query".into()),
            identity: Some("human:bob".into()),
            ..f()
        },
        SearchFilter {
            identity: Some("human:alice".into()),
            limit: Some(5),
            ..f()
        },
        SearchFilter {
            identity: Some("human:alice".into()),
            limit: Some(5),
            newest: true,
            ..f()
        },
        SearchFilter {
            decision: Some("allow".into()),
            limit: Some(0),
            newest: true,
            ..f()
        },
        // Who and where with the rest: the subject's records, then the other conditions.
        SearchFilter {
            session: Some("sess-005".into()),
            event: Some("query".into()),
            ..f()
        },
        SearchFilter {
            session: Some("sess-005".into()),
            since: Some(t300),
            until: Some(t700),
            ..f()
        },
        SearchFilter {
            identity: Some("alice".into()),
            decision: Some("deny".into()),
            since: Some(t300),
            ..f()
        },
        SearchFilter {
            task: Some("T-2".into()),
            decision: Some("allow".into()),
            limit: Some(7),
            newest: true,
            ..f()
        },
        SearchFilter {
            requester: Some("human:alice".into()),
            event: Some("auth.failed".into()),
            ..f()
        },
        // The records of every statement, outside the partial indexes.
        SearchFilter {
            decision: Some("allow".into()),
            ..f()
        },
        SearchFilter {
            event: Some("query.result".into()),
            until: Some(t700),
            ..f()
        },
        SearchFilter {
            event: Some("session.start".into()),
            since: Some(t300),
            ..f()
        },
    ];
    // Bounds with nanoseconds, just around a record's microsecond.
    out.push(SearchFilter {
        since: Some(t300 + time::Duration::nanoseconds(1)),
        ..f()
    });
    out.push(SearchFilter {
        until: Some(t300 - time::Duration::nanoseconds(1)),
        ..f()
    });
    out
}

fn seqs_and_lines(records: &[StoredRecord]) -> Vec<(u64, Vec<u8>)> {
    records.iter().map(|r| (r.event.seq, r.line.clone())).collect()
}

fn assert_same(path: &Path, index: &mut Index) {
    for filter in filters(path) {
        let scan = search_records(path, &filter).unwrap();
        let indexed = index.search(&filter).unwrap();
        assert_eq!(
            seqs_and_lines(&indexed),
            seqs_and_lines(&scan),
            "index and scan differ for {filter:?}"
        );
    }
}

#[test]
fn index_answers_as_the_linear_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 1000);
    assert!(crate::segments(&path).unwrap().len() > 3, "the log rotated");
    let mut index = Index::open(&path).unwrap();
    assert_eq!(index.catch_up().unwrap(), 1000);
    assert_same(&path, &mut index);
    // The filters are not trivially empty or full.
    let deny = index
        .search(&SearchFilter {
            decision: Some("deny".into()),
            ..SearchFilter::default()
        })
        .unwrap();
    assert!(!deny.is_empty() && deny.len() < 1000);

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(index.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn index_catches_up_incrementally_across_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 300);
    let mut index = Index::open(&path).unwrap();
    assert_eq!(index.catch_up().unwrap(), 300);
    assert_eq!(index.catch_up().unwrap(), 0);
    // More records, with rotations in between: only those are indexed, by a new opener too.
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            fsync: FsyncMode::Off,
            rotate_bytes: Some(16 * 1024),
            checkpoint_every: None,
        },
    )
    .unwrap();
    for i in 300..1000 {
        log.append_blocking(varied(i)).unwrap();
    }
    assert_eq!(index.catch_up().unwrap(), 700);
    let mut second = Index::open(&path).unwrap();
    assert_eq!(second.catch_up().unwrap(), 0);
    assert_eq!(second.last_seq().unwrap(), 1000);
    assert_same(&path, &mut second);
}

#[test]
fn index_rebuilds_when_the_log_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 400);
    let mut index = Index::open(&path).unwrap();
    index.catch_up().unwrap();
    drop(index);

    // Another log of the same length in the same place: other bytes at the same offsets.
    let other = tempfile::tempdir().unwrap();
    let other_path = other.path().join("audit/audit.jsonl");
    let log = AuditLog::open_with(
        &other_path,
        AuditOptions {
            fsync: FsyncMode::Off,
            rotate_bytes: None,
            checkpoint_every: None,
        },
    )
    .unwrap();
    for i in 0..500 {
        log.append_blocking(varied(i * 7 + 1)).unwrap();
    }
    drop(log);
    for s in crate::segments(&path).unwrap() {
        let _ = std::fs::remove_file(&s.path);
    }
    std::fs::copy(&other_path, &path).unwrap();

    let mut index = Index::open(&path).unwrap();
    index.catch_up().unwrap();
    assert_eq!(index.last_seq().unwrap(), 500);
    assert_same(&path, &mut index);

    // A row whose line changed under it (same seq, other content) is caught at query time.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"sess-005\"", "\"sess-00X\"");
    std::fs::write(&path, text).unwrap();
    let found = index
        .search(&SearchFilter {
            session: Some("sess-005".into()),
            ..SearchFilter::default()
        })
        .unwrap();
    assert!(found.is_empty(), "rebuilt from the changed log");
    let moved = index
        .search(&SearchFilter {
            session: Some("sess-00X".into()),
            ..SearchFilter::default()
        })
        .unwrap();
    assert!(!moved.is_empty());
}

/// A record that cannot be read right where a batch starts, after a rebuild: an error, not a loop.
#[test]
fn an_unreadable_record_at_a_batch_boundary_is_an_error_not_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit/audit.jsonl");
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            fsync: FsyncMode::Off,
            rotate_bytes: None,
            checkpoint_every: None,
        },
    )
    .unwrap();
    for i in 0..BATCH + 5 {
        log.append_blocking(varied(i)).unwrap();
    }
    drop(log);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[BATCH] = "{not a record".into();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let mut index = Index::open(&p).unwrap();
        let _ = tx.send(index.catch_up().map_err(|e| e.to_string()));
    });
    let outcome = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("catch_up did not return (it loops)");
    let e = outcome.expect_err("an unreadable record is reported");
    assert!(e.contains("even after a rebuild"), "{e}");
}

#[test]
fn sessions_are_summarised_and_found_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 600);
    let mut index = Index::open(&path).unwrap();
    index.catch_up().unwrap();
    let sessions = index.sessions(false, None).unwrap();
    assert_eq!(sessions.len(), 37);
    let s5 = sessions.iter().find(|s| s.session_id == "sess-005").unwrap();
    let scan = search_records(
        &path,
        &SearchFilter {
            session: Some("sess-005".into()),
            event: Some("query".into()),
            ..SearchFilter::default()
        },
    )
    .unwrap();
    assert_eq!(s5.statements, scan.len() as u64);
    let denied = scan
        .iter()
        .filter(|r| r.event.body.decision.as_deref() == Some("deny"))
        .count();
    assert_eq!(s5.denials, denied as u64);
    let newest = index.sessions(false, Some(3)).unwrap();
    let ids: Vec<&str> = newest.iter().map(|s| s.session_id.as_str()).collect();
    let all_ids: Vec<&str> = sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, all_ids[all_ids.len() - 3..]);
    assert_eq!(newest[2].statements, sessions[sessions.len() - 1].statements);
    assert_eq!(newest[2].denials, sessions[sessions.len() - 1].denials);
    assert!(index.sessions(true, None).unwrap().iter().all(|s| s.active()));
    assert_eq!(index.sessions_with_prefix("sess-00", 20).unwrap().len(), 10);
    assert_eq!(index.sessions_with_prefix("sess-005", 2).unwrap(), vec!["sess-005"]);
    assert!(index.sessions_with_prefix("zzz", 2).unwrap().is_empty());
}

#[test]
fn followers_share_the_index_while_the_log_grows() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 100);
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            fsync: FsyncMode::Off,
            rotate_bytes: Some(16 * 1024),
            checkpoint_every: None,
        },
    )
    .unwrap();
    let writer = std::thread::spawn(move || {
        for i in 100..3000 {
            log.append_blocking(varied(i)).unwrap();
        }
    });
    let followers: Vec<_> = (0..3)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut index = Index::open(&path).unwrap();
                for _ in 0..20 {
                    index.catch_up().unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for f in followers {
        f.join().unwrap();
    }
    let mut index = Index::open(&path).unwrap();
    index.catch_up().unwrap();
    assert_eq!(index.last_seq().unwrap(), 3000);
    let all = index.search(&SearchFilter::default()).unwrap();
    assert_eq!(all.len(), 3000, "no record missing or indexed twice");
    assert!(all.iter().enumerate().all(|(i, r)| r.event.seq == i as u64 + 1));
    assert_same(&path, &mut index);
}

/// The plan SQLite chooses for a statement, one step per line.
fn plan(index: &Index, sql: &str, values: &[Value]) -> String {
    let mut stmt = index.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let steps = stmt
        .query_map(rusqlite::params_from_iter(values), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    steps.join("\n")
}

#[test]
fn searches_go_through_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 300);
    let mut index = Index::open(&path).unwrap();
    index.catch_up().unwrap();
    let now = OffsetDateTime::now_utc();
    let f = SearchFilter::default;
    let cases = [
        (
            SearchFilter {
                session: Some("sess-005".into()),
                ..f()
            },
            "events_subject",
        ),
        (
            SearchFilter {
                identity: Some("human:alice".into()),
                event: Some("auth.failed".into()),
                ..f()
            },
            "events_",
        ),
        (
            SearchFilter {
                task: Some("T-2".into()),
                event: Some("query".into()),
                since: Some(now),
                ..f()
            },
            "events_subject",
        ),
        (
            SearchFilter {
                requester: Some("bob".into()),
                decision: Some("allow".into()),
                until: Some(now),
                limit: Some(3),
                newest: true,
                ..f()
            },
            "events_subject",
        ),
        (
            SearchFilter {
                event: Some("auth.failed".into()),
                limit: Some(3),
                newest: true,
                ..f()
            },
            "events_event",
        ),
        (
            SearchFilter {
                decision: Some("deny".into()),
                since: Some(now),
                until: Some(now),
                ..f()
            },
            "events_decision",
        ),
        (
            SearchFilter {
                since: Some(now),
                ..f()
            },
            "INTEGER PRIMARY KEY",
        ),
        (
            SearchFilter {
                until: Some(now),
                limit: Some(3),
                newest: true,
                ..f()
            },
            "INTEGER PRIMARY KEY",
        ),
        (
            SearchFilter {
                event: Some("query".into()),
                since: Some(now),
                until: Some(now),
                ..f()
            },
            "INTEGER PRIMARY KEY",
        ),
    ];
    for (filter, expected) in cases {
        let (sql, values) = query(&filter);
        let plan = plan(&index, &sql, &values);
        assert!(plan.contains(expected), "{filter:?}: {sql}\n{plan}");
        assert!(!plan.contains("SCAN events"), "{filter:?}: {sql}\n{plan}");
    }
    // The session summaries: their start and end through the event index, statements through
    // the subject, and the counts of every session at once agree with those one by one.
    let summaries = plan(&index, &sessions::BOUNDS_SQL, &[]);
    assert!(summaries.contains("events_event"), "{summaries}");
    let one = plan(&index, sessions::COUNT_ONE_SQL, &[Value::Text("sess-005".into())]);
    assert!(one.contains("events_subject"), "{one}");
    let all = index.query_counts(true).unwrap().unwrap();
    assert_eq!(all.len(), 37);
    for (id, counts) in all {
        assert_eq!(counts, index.count_one(&id).unwrap(), "{id}");
    }
}

#[test]
fn time_ranges_hold_when_the_clock_goes_back() {
    // A log written by hand: 10,000 records (three blocks of seqs), one a minute, with the clock
    // set back two hours at record 5,000 and forward again at 9,000.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit/audit.jsonl");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let start = OffsetDateTime::parse("2026-01-01T00:00:00Z", &Rfc3339).unwrap();
    let ts = |seq: u64| {
        let minutes = match seq {
            ..5_000 => seq as i64,
            5_000..9_000 => seq as i64 - 120,
            _ => seq as i64 + 1_000,
        };
        start + time::Duration::minutes(minutes)
    };
    let mut out = Vec::new();
    let mut prev = crate::GENESIS.to_string();
    for seq in 1..=10_000u64 {
        crate::event::encode_line(
            &crate::format_ts(ts(seq)),
            seq,
            &varied(seq as usize),
            &mut prev,
            &mut out,
        );
    }
    std::fs::write(&path, &out).unwrap();
    let mut index = Index::open(&path).unwrap();
    assert_eq!(index.catch_up().unwrap(), 10_000);
    let f = SearchFilter::default;
    let around = |seq: u64, seconds: i64| ts(seq) + time::Duration::seconds(seconds);
    let mut filters = vec![];
    for (a, b) in [
        (4_900, 5_010),
        (4_950, 4_960),
        (5_010, 5_020),
        (8_990, 9_010),
        (100, 9_999),
        (3_000, 3_000),
    ] {
        for (since, until) in [
            (Some(around(a, 0)), Some(around(b, 0))),
            (Some(around(a, 1)), Some(around(b, -1))),
            (Some(around(a, 0)), None),
            (None, Some(around(b, 0))),
        ] {
            filters.push(SearchFilter { since, until, ..f() });
            filters.push(SearchFilter {
                since,
                until,
                decision: Some("deny".into()),
                ..f()
            });
            filters.push(SearchFilter {
                since,
                until,
                session: Some("sess-005".into()),
                ..f()
            });
        }
    }
    let seqs = |records: Vec<StoredRecord>| records.iter().map(|r| r.event.seq).collect::<Vec<_>>();
    // The linear scan, over records read once (no limits here).
    let all = search_records(&path, &f()).unwrap();
    for filter in filters {
        let scan: Vec<u64> = all
            .iter()
            .filter(|r| filter.matches(&r.event))
            .map(|r| r.event.seq)
            .collect();
        let indexed = index.search(&filter).unwrap();
        assert_eq!(seqs(indexed), scan, "index and scan differ for {filter:?}");
    }
    let past = index
        .search(&SearchFilter {
            since: Some(around(5_000, 0)),
            until: Some(around(5_001, 0)),
            ..f()
        })
        .unwrap();
    assert_eq!(
        seqs(past),
        [4_880, 4_881, 5_000, 5_001],
        "both times the clock read those minutes"
    );
}

#[test]
fn an_index_of_an_older_version_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 200);
    // Version 2's table and indexes, with a row: same names, other columns.
    let old = rusqlite::Connection::open(crate::files::index_path(&path)).unwrap();
    old.execute_batch(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO meta VALUES ('version', '2'), ('last_hash', 'x');
         CREATE TABLE events (seq INTEGER PRIMARY KEY, ts INTEGER, event TEXT NOT NULL, session_id TEXT,
             identity TEXT, identity_name TEXT, requester TEXT, requester_name TEXT, task TEXT, decision TEXT,
             off INTEGER NOT NULL, len INTEGER NOT NULL);
         CREATE INDEX events_event ON events (event, session_id, decision);
         CREATE INDEX events_ts ON events (ts);
         INSERT INTO events (seq, event, off, len) VALUES (1, 'query', 0, 10);",
    )
    .unwrap();
    drop(old);
    let mut index = Index::open(&path).unwrap();
    assert_eq!(index.last_seq().unwrap(), 0, "emptied");
    assert_eq!(index.catch_up().unwrap(), 200);
    assert_same(&path, &mut index);
    assert_eq!(index.sessions(false, None).unwrap().len(), 37);
}
