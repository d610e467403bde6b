use time::{Duration, OffsetDateTime};

use super::*;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("state/warden.db")).unwrap();
    (dir, s)
}

fn credential(id: &str, not_after: OffsetDateTime) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        identity: "agent:report-bot".into(),
        requester: Some("human:alice".into()),
        task: Some("T-1".into()),
        roles: vec!["analyst".into(), "writer".into()],
        issued_at: now(),
        not_after,
        issued_by: "human:alice".into(),
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
        parent: None,
    }
}

fn subject() -> Subject {
    Subject {
        identity: "agent:report-bot".into(),
        requester: Some("human:alice".into()),
        task: Some("T-1".into()),
        credential_id: "c1".into(),
        session_id: Some("s1".into()),
    }
}

#[test]
fn every_target_kind_matches_only_its_own() {
    let s = subject();
    let hits = [
        "identity:agent:report-bot",
        "requester:human:alice",
        "task:T-1",
        "credential:c1",
        "session:s1",
    ];
    for t in hits {
        assert!(t.parse::<LockTarget>().unwrap().matches(&s), "{t}");
    }
    let misses = [
        "identity:agent:other",
        "identity:human:alice",
        "requester:human:bob",
        "task:T-2",
        "credential:c2",
        "session:s2",
    ];
    for t in misses {
        assert!(!t.parse::<LockTarget>().unwrap().matches(&s), "{t}");
    }
    // A requester lock also stops the requester's own sessions.
    let alice = Subject {
        identity: "human:alice".into(),
        ..Subject::default()
    };
    assert!("requester:human:alice".parse::<LockTarget>().unwrap().matches(&alice));
    // A connection has no session id yet: a session lock never matches it.
    let conn = Subject {
        session_id: None,
        ..subject()
    };
    assert!(!"session:s1".parse::<LockTarget>().unwrap().matches(&conn));
    assert!("bogus:x".parse::<LockTarget>().is_err());
}

#[test]
fn locks_persist_across_reopen_and_expire_and_lift() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    let t0 = now();
    let (forever, brief) = {
        let s = SqliteStore::open(&path).unwrap();
        let g0 = s.generation().unwrap();
        let forever = s
            .create_lock(NewLock {
                target: LockTarget::Task("T-1".into()),
                reason: "incident 7".into(),
                created_by: "human:alice".into(),
                created_at: t0,
                expires_at: None,
            })
            .unwrap();
        let brief = s
            .create_lock(NewLock {
                target: LockTarget::Identity("agent:x".into()),
                reason: "brief".into(),
                created_by: "admin".into(),
                created_at: t0,
                expires_at: Some(t0 + Duration::minutes(5)),
            })
            .unwrap();
        assert_eq!(s.generation().unwrap(), g0 + 2);
        (forever, brief)
    };
    assert!(forever.id.starts_with("lk_") && forever.id.len() == 19);
    let s = SqliteStore::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    assert_eq!(s.lock(&forever.id).unwrap().unwrap(), forever);
    assert_eq!(s.locks(t0, false).unwrap().len(), 2);
    // Five minutes on, the brief one has expired.
    let later = t0 + Duration::minutes(6);
    let active = s.locks(later, false).unwrap();
    assert_eq!(active, vec![forever.clone()]);
    assert_eq!(s.blocklist(later).unwrap().locks, vec![forever.clone()]);
    assert_eq!(s.locks(later, true).unwrap().len(), 2);
    assert_eq!(brief.state(later), "expired");
    // The blocklist finds it for a matching subject.
    let list = s.blocklist(t0).unwrap();
    assert_eq!(list.block_for(&subject(), t0), Some(Block::Locked(forever.clone())));
    assert_eq!(list.next_expiry(t0), brief.expires_at);
    // Lifted.
    let g = s.generation().unwrap();
    let removed = s.remove_lock(&forever.id, "admin", t0).unwrap();
    assert_eq!(removed.state(t0), "removed");
    assert_eq!(removed.removed_by.as_deref(), Some("admin"));
    assert!(s.generation().unwrap() > g);
    assert!(s.blocklist(t0).unwrap().block_for(&subject(), t0).is_none());
    assert!(matches!(
        s.remove_lock("lk_nope", "admin", t0),
        Err(StateError::NoSuchLock(_))
    ));
}

#[test]
fn revocation_is_recorded_once_and_blocks_the_credential() {
    let (_d, s) = store();
    let t0 = now();
    s.record_credential(&credential("c1", t0 + Duration::minutes(15)))
        .unwrap();
    s.record_credential(&credential("c-old", t0 - Duration::minutes(1)))
        .unwrap();
    assert!(s.record_credential(&credential("c1", t0)).is_err(), "ids are unique");
    assert_eq!(
        s.credentials(t0).unwrap().len(),
        1,
        "expired credentials are not listed"
    );
    let first = s.revoke_credential("c1", "human:alice", "task done", t0).unwrap();
    assert!(first.revoked_now);
    let r = first.credential;
    assert_eq!(r.revoke_reason.as_deref(), Some("task done"));
    let again = s
        .revoke_credential("c1", "admin", "second", t0 + Duration::seconds(5))
        .unwrap();
    assert_eq!(again.credential, r, "the first revocation stands");
    assert!(!again.revoked_now, "a second revocation changes nothing");
    assert!(again.with_it.is_empty());
    let list = s.blocklist(t0).unwrap();
    assert!(matches!(list.block_for(&subject(), t0), Some(Block::Revoked(c)) if c.id == "c1"));
    assert!(matches!(
        s.revoke_credential("nope", "a", "b", t0),
        Err(StateError::NoSuchCredential(_))
    ));
}

fn child(id: &str, parent: &str, not_after: OffsetDateTime) -> CredentialRecord {
    CredentialRecord {
        parent: Some(parent.into()),
        ..credential(id, not_after)
    }
}

#[test]
fn revoking_a_credential_revokes_those_obtained_with_it() {
    let (_d, s) = store();
    let t0 = now();
    let later = t0 + Duration::minutes(15);
    // human -> agent (exec) -> assumed request; and an unrelated credential.
    s.record_credential(&credential("human", later)).unwrap();
    s.record_credential(&child("agent", "human", later)).unwrap();
    s.record_credential(&child("assumed", "agent", later)).unwrap();
    s.record_credential(&credential("other", later)).unwrap();
    let r = s.revoke_credential("human", "admin", "laptop stolen", t0).unwrap();
    assert_eq!(r.credential.id, "human");
    let mut ids: Vec<&str> = r.with_it.iter().map(|c| c.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["agent", "assumed"]);
    for c in &r.with_it {
        let reason = c.revoke_reason.as_deref().unwrap();
        assert!(
            reason.contains("human") && reason.ends_with("laptop stolen"),
            "{reason}"
        );
        assert_eq!(c.revoked_by.as_deref(), Some("admin"));
    }
    let blocked = s.blocklist(t0).unwrap();
    for id in ["human", "agent", "assumed"] {
        let subject = Subject {
            credential_id: id.into(),
            ..subject()
        };
        assert!(
            matches!(blocked.block_for(&subject, t0), Some(Block::Revoked(_))),
            "{id}"
        );
    }
    assert!(s.credential("other").unwrap().unwrap().revoked_at.is_none());
    // Revoking again revokes nothing new; revoking a child leaves its parent alone.
    assert!(s
        .revoke_credential("human", "admin", "again", t0)
        .unwrap()
        .with_it
        .is_empty());
    s.record_credential(&credential("h2", later)).unwrap();
    s.record_credential(&child("a2", "h2", later)).unwrap();
    s.revoke_credential("a2", "human:alice", "done", t0).unwrap();
    assert!(s.credential("h2").unwrap().unwrap().revoked_at.is_none());
}

#[test]
fn a_credential_obtained_with_a_revoked_one_is_recorded_revoked() {
    let (_d, s) = store();
    let t0 = now();
    let later = t0 + Duration::minutes(15);
    s.record_credential(&credential("human", later)).unwrap();
    s.revoke_credential("human", "admin", "left the company", t0).unwrap();
    s.record_credential(&child("late", "human", later)).unwrap();
    let late = s.credential("late").unwrap().unwrap();
    assert!(late.revoked_at.is_some());
    assert!(late.revoke_reason.unwrap().ends_with("left the company"));
}

#[test]
fn a_store_made_before_parents_gains_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE credentials (id TEXT PRIMARY KEY, identity TEXT NOT NULL, requester TEXT, task TEXT, \
             roles TEXT NOT NULL, issued_at INTEGER NOT NULL, not_after INTEGER NOT NULL, issued_by TEXT NOT NULL, \
             revoked_at INTEGER, revoked_by TEXT, revoke_reason TEXT); \
             INSERT INTO credentials VALUES ('old', 'human:alice', NULL, NULL, 'analyst', 0, 4102444800, 'admin', NULL, NULL, NULL);",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.credential("old").unwrap().unwrap().parent, None);
    s.record_credential(&child("new", "old", now() + Duration::minutes(5)))
        .unwrap();
    assert_eq!(
        s.revoke_credential("old", "admin", "x", now()).unwrap().with_it.len(),
        1
    );
}

#[test]
fn two_handles_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let g = a.generation().unwrap();
    b.create_lock(NewLock {
        target: LockTarget::Session("s1".into()),
        reason: String::new(),
        created_by: "admin".into(),
        created_at: now(),
        expires_at: None,
    })
    .unwrap();
    assert_eq!(a.generation().unwrap(), g + 1);
    assert_eq!(a.blocklist(now()).unwrap().locks.len(), 1);
}

/// A writer killed with SIGKILL mid-stream leaves a sound file in which every write happened whole: each
/// write bumps the generation in the same transaction as its row, so the two counts must agree.
#[test]
fn a_writer_killed_mid_write_leaves_only_whole_writes() {
    const VAR: &str = "WARDEN_STATE_CRASH_WRITER";
    if let Ok(path) = std::env::var(VAR) {
        let s = SqliteStore::open(std::path::Path::new(&path)).unwrap();
        for i in 0u64.. {
            if i % 2 == 0 {
                s.record_credential(&credential(&format!("c{i}"), now() + Duration::hours(1)))
                    .unwrap();
            } else {
                s.create_lock(NewLock {
                    target: LockTarget::Task(format!("T-{i}")),
                    reason: "x".repeat(2000),
                    created_by: "admin".into(),
                    created_at: now(),
                    expires_at: None,
                })
                .unwrap();
            }
        }
        unreachable!();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.db");
    let observer = SqliteStore::open(&path).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::a_writer_killed_mid_write_leaves_only_whole_writes",
            "--test-threads=1",
        ])
        .env(VAR, &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while observer.generation().unwrap() < 40 {
        assert!(std::time::Instant::now() < deadline, "the writer made no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(observer);
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.integrity_check().unwrap(), "ok");
    let far = now() - Duration::days(1);
    let writes = s.credentials(far).unwrap().len() + s.locks(far, true).unwrap().len();
    assert!(writes >= 40);
    assert_eq!(s.generation().unwrap(), writes as u64);
    assert!(s.locks(far, true).unwrap().iter().all(|l| l.reason.len() == 2000));
}

fn access_request(id: &str, expires_in: Duration) -> AccessRequest {
    AccessRequest {
        id: id.into(),
        identity: "agent:report-bot".into(),
        requester: Some("human:alice".into()),
        task: Some("T-1".into()),
        credential_id: "c1".into(),
        roles: vec!["writer".into()],
        reason: "fix order 7".into(),
        ttl_seconds: 900,
        state: RequestState::Pending,
        created_at: now(),
        expires_at: now() + expires_in,
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        assumed_credential: None,
    }
}

#[test]
fn requests_are_decided_once_assumed_once_and_expire_undecided() {
    let (_d, s) = store();
    let t0 = now();
    s.create_request(&access_request("rq_a", Duration::minutes(10)))
        .unwrap();
    s.create_request(&access_request("rq_b", Duration::minutes(10)))
        .unwrap();
    s.create_request(&access_request("rq_c", Duration::seconds(1))).unwrap();
    assert_eq!(s.requests(t0 - Duration::minutes(1)).unwrap().len(), 3);

    // Not approved yet: cannot be assumed.
    assert!(s.assume_request("rq_a", "c2").unwrap().is_err());
    let approved = s
        .decide_request("rq_a", true, "human:carol", None, t0)
        .unwrap()
        .unwrap();
    assert_eq!(
        (approved.state, approved.decided_by.as_deref()),
        (RequestState::Approved, Some("human:carol"))
    );
    // Decided once: a second decision is refused and reports the request as it stands.
    let again = s
        .decide_request("rq_a", false, "human:dan", Some("no"), t0)
        .unwrap()
        .unwrap_err();
    assert_eq!(again.state, RequestState::Approved);
    let assumed = s.assume_request("rq_a", "c2").unwrap().unwrap();
    assert_eq!(
        (assumed.state, assumed.assumed_credential.as_deref()),
        (RequestState::Assumed, Some("c2"))
    );
    assert!(s.assume_request("rq_a", "c3").unwrap().is_err(), "assumed once");

    let denied = s
        .decide_request("rq_b", false, "human:carol", Some("not now"), t0)
        .unwrap()
        .unwrap();
    assert_eq!(
        (denied.state, denied.decision_reason.as_deref()),
        (RequestState::Denied, Some("not now"))
    );

    // rq_c was not decided in time.
    let later = t0 + Duration::seconds(5);
    assert!(s
        .decide_request("rq_c", true, "human:carol", None, later)
        .unwrap()
        .is_err());
    let expired = s.expire_requests(later).unwrap();
    assert_eq!(expired.iter().map(|q| q.id.as_str()).collect::<Vec<_>>(), vec!["rq_c"]);
    assert_eq!(s.request("rq_c").unwrap().unwrap().state, RequestState::Expired);
    let g = s.generation().unwrap();
    assert!(s.expire_requests(later).unwrap().is_empty());
    assert_eq!(s.generation().unwrap(), g, "a poll that finds nothing writes nothing");
    assert!(new_request_id().starts_with("rq_"));
}
