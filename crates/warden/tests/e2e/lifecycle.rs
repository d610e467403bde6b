//! What ends a live session from outside (PRODUCT.md §2): locks of every kind, revocation, credential
//! expiry and configuration reloads, and locks that outlive a restart. Each live session is watched
//! through tokio-postgres's connection task, which resolves with the unsolicited FATAL Warden sends;
//! the times from the command to the disconnect are printed so they can be quoted.
//!
//! These tests share one Warden (and one state store) with every other test, so every lock here names
//! an identity, task, credential or session that only this file uses (see the test config in common/).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;

use crate::common::*;

/// The bound PRODUCT.md §2 sets for a lock (and this file for revocation and expiry).
const WITHIN: Duration = Duration::from_secs(1);

fn pg_config(port: u16, user: &str, db: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(db)
        .ssl_mode(SslMode::Require);
    cfg
}

/// A session through Warden that a test watches.
struct Live {
    label: String,
    client: tokio_postgres::Client,
    ended: JoinHandle<Ended>,
    session: String,
}

async fn try_open(port: u16, cred: &Path, user: &str, db: &str) -> Result<Live, tokio_postgres::Error> {
    let (client, ended) =
        connect_watched(&pg_config(port, user, db), &cred.join("ca.crt"), Some(load_cert(cred))).await?;
    let reply = client.simple_query("SHOW warden.session").await?;
    let session = reply
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("SHOW warden.session returned {reply:?}"));
    Ok(Live {
        label: format!(
            "{user}@{db} ({}, session {})",
            cred.file_name().unwrap().to_string_lossy(),
            &session[..8]
        ),
        client,
        ended,
        session,
    })
}

/// Connects, learns the session id and runs a statement, so the session is live and in use.
async fn open(port: u16, cred: &Path, user: &str, db: &str) -> Live {
    let live = try_open(port, cred, user, db)
        .await
        .unwrap_or_else(|e| panic!("connecting as {user} to {db} on port {port}: {e:?}"));
    let rows = live
        .client
        .query("SELECT id, status FROM orders ORDER BY id", &[])
        .await
        .unwrap_or_else(|e| panic!("{}: a read failed: {e:?}", live.label));
    assert!(!rows.is_empty(), "{}: no rows", live.label);
    live
}

impl Live {
    /// Still connected: its connection task is running and a statement succeeds.
    async fn assert_alive(&self) {
        assert!(
            !self.ended.is_finished(),
            "{} ({}) was ended, but nothing covers it",
            self.label,
            self.session
        );
        self.client
            .simple_query("SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("{} should still work: {e:?}", self.label));
    }

    /// Waits for Warden to end the session; asserts the 57P01 FATAL names every needle; returns when it ended.
    async fn assert_ended(self, needles: &[&str]) -> Ended {
        let ended = tokio::time::timeout(Duration::from_secs(10), self.ended)
            .await
            .unwrap_or_else(|_| panic!("{} ({}) was not ended within 10 s", self.label, self.session))
            .unwrap();
        let err = match &ended.result {
            Ok(()) => panic!("{}: the connection closed without an error", self.label),
            Err(e) => e,
        };
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{}: expected a FATAL from Warden, got {err:?}", self.label));
        assert_eq!(db.code().code(), "57P01", "{}: {db:?}", self.label);
        assert_eq!(db.severity(), "FATAL", "{db:?}");
        assert!(
            db.message().starts_with("warden: session ended: "),
            "{}: {}",
            self.label,
            db.message()
        );
        for n in needles {
            assert!(
                db.message().contains(n),
                "{}: {:?} does not name {n:?}",
                self.label,
                db.message()
            );
        }
        ended
    }
}

/// A new connection is refused with 28000 and a message naming every needle.
async fn assert_refused(port: u16, cred: &Path, user: &str, db: &str, needles: &[&str]) {
    let err = match try_open(port, cred, user, db).await {
        Ok(l) => panic!("{} was accepted; expected a refusal naming {needles:?}", l.label),
        Err(e) => e,
    };
    let dberr = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a PostgreSQL error, got: {err:?}"));
    assert_eq!(dberr.code().code(), "28000", "{dberr:?}");
    assert!(dberr.message().starts_with("warden: "), "{}", dberr.message());
    for n in needles {
        assert!(dberr.message().contains(n), "{:?} does not name {n:?}", dberr.message());
    }
}

/// Runs a warden admin command off the runtime's threads; returns its stdout and when it returned.
async fn warden(args: Vec<String>) -> (String, Instant) {
    // $USER is whatever the caller says: the records name the real user (`lock_case` checks).
    let out = tokio::task::spawn_blocking(move || {
        run_ok(
            Command::new(WARDEN)
                .args(&args)
                .env("USER", "mallory")
                .env("LOGNAME", "mallory"),
        )
    })
    .await
    .unwrap();
    (stdout(&out), Instant::now())
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// `warden lock --config CONFIG --KIND VALUE --reason REASON --json`; returns the lock id, when the
/// command started and when it returned.
async fn lock(config: &Path, kind: &str, value: &str, reason: &str) -> (String, Instant, Instant) {
    let started = Instant::now();
    let (out, returned) = warden(args(&[
        "lock",
        "--config",
        &config.to_string_lossy(),
        &format!("--{kind}"),
        value,
        "--reason",
        reason,
        "--json",
    ]))
    .await;
    let lock: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let id = lock["id"].as_str().expect("the lock's id").to_string();
    assert_eq!(lock["target"]["kind"], kind, "{lock}");
    assert_eq!(lock["target"]["value"], value, "{lock}");
    (id, started, returned)
}

async fn unlock(config: &Path, id: &str) {
    warden(args(&["unlock", id, "--config", &config.to_string_lossy()])).await;
}

/// A value from the credential's profile.toml (`credential_id`, `expires`, ...).
fn profile(cred: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(cred.join("profile.toml")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in profile.toml:\n{text}"))
        .trim_matches('"')
        .to_string()
}

/// The `session.end` event of `session` in the audit log behind `config`; asserts its reason.
fn assert_session_end(config: &Path, session: &str, reason_prefix: &str, needle: &str) {
    let e = wait_for_event_in(config, &["--session", session, "--event", "session.end"], |_| true);
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with(reason_prefix), "session.end of {session}: {e}");
    assert!(
        reason.contains(needle),
        "session.end of {session} does not name {needle:?}: {e}"
    );
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One lock of `kind` on `value`: every victim ends within a second of `warden lock` returning with
/// 57P01 naming the lock and reason, and `session.end` says "lock: "; the bystander lives on; each
/// `refused` credential cannot connect (28000 naming the lock) and each `allowed` one can; after
/// `warden unlock`, every refused credential connects again.
async fn lock_case(
    kind: &str,
    value: &str,
    victims: Vec<Live>,
    bystander: &Live,
    refused: &[(&Path, &str)],
    allowed: &[(&Path, &str)],
) {
    let h = harness();
    let port = h.warden_port;
    let reason = format!("e2e {kind} lock {}", &uuid::Uuid::new_v4().to_string()[..8]);
    let (id, started, returned) = lock(&h.config, kind, value, &reason).await;
    let created = h.wait_for_event(&["--event", "lock.created"], |e| e["lock"]["id"] == id.as_str());
    let me = run_ok(Command::new("id").arg("-un"));
    assert_eq!(created["actor"], format!("admin:{}", stdout(&me).trim()), "{created}");
    let sessions: Vec<String> = victims.iter().map(|v| v.session.clone()).collect();
    for victim in victims {
        let label = victim.label.clone();
        let ended = victim.assert_ended(&[&id, &reason]).await;
        let after = ended.at.saturating_duration_since(returned);
        eprintln!(
            "lifecycle: {kind} lock {id} ({kind} {value}): {label} ended {} after `warden lock` returned ({} after it started)",
            ms(after),
            ms(ended.at.saturating_duration_since(started))
        );
        assert!(
            after < WITHIN,
            "{kind} lock: {label} ended {after:?} after `warden lock` returned"
        );
    }
    bystander.assert_alive().await;
    for s in &sessions {
        assert_session_end(&h.config, s, "lock: ", &id);
    }
    let created = h.wait_for_event(&["--event", "lock.created"], |e| e["lock"]["id"] == id.as_str());
    assert_eq!(created["lock"]["target"], kind, "{created}");
    assert_eq!(created["lock"]["value"], value, "{created}");
    assert_eq!(created["reason"], reason.as_str(), "{created}");
    assert!(created["actor"].as_str().is_some_and(|a| !a.is_empty()), "{created}");

    for (cred, user) in refused {
        assert_refused(port, cred, user, "shop", &[&id, &reason]).await;
    }
    for (cred, user) in allowed {
        open(port, cred, user, "shop").await.assert_alive().await;
    }
    unlock(&h.config, &id).await;
    h.wait_for_event(&["--event", "lock.removed"], |e| e["lock"]["id"] == id.as_str());
    for (cred, user) in refused {
        open(port, cred, user, "shop").await.assert_alive().await;
    }
    bystander.assert_alive().await;
}

fn task_id(stem: &str) -> String {
    format!("{stem}-{}", uuid::Uuid::new_v4())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_lock_ends_the_identitys_sessions() {
    let h = harness();
    let port = h.warden_port;
    let task = task_id("T-lock-identity");
    let cred = h.issue("agent", "lock-bot", &["--requester", "human:alice", "--task", &task]);
    let other = h.issue(
        "agent",
        "lock-bot",
        &["--requester", "human:alice", "--task", "T-other"],
    );
    // Same requester and task, another identity: not covered.
    let bystander = h.issue("agent", "report-bot", &["--requester", "human:alice", "--task", &task]);
    let victims = vec![
        open(port, &cred, "lock-bot", "shop").await,
        open(port, &other, "lock-bot", "shop").await,
    ];
    let bystander = open(port, &bystander, "report-bot", "shop").await;
    lock_case(
        "identity",
        "agent:lock-bot",
        victims,
        &bystander,
        &[(&cred, "lock-bot"), (&other, "lock-bot")],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requester_lock_ends_its_agents_and_its_own_sessions() {
    let h = harness();
    let port = h.warden_port;
    let agent = h.issue(
        "agent",
        "dave-bot",
        &["--requester", "human:dave", "--task", &task_id("T-lock-requester")],
    );
    let dave = h.issue("human", "dave", &[]);
    // Another requester's agent on the same kind of task: not covered.
    let bystander = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", &task_id("T-lock-requester")],
    );
    let victims = vec![
        open(port, &agent, "dave-bot", "shop").await,
        open(port, &dave, "dave", "shop").await,
    ];
    let bystander = open(port, &bystander, "report-bot", "shop").await;
    lock_case(
        "requester",
        "human:dave",
        victims,
        &bystander,
        &[(&agent, "dave-bot"), (&dave, "dave")],
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lock_ends_the_tasks_sessions() {
    let h = harness();
    let port = h.warden_port;
    let task = task_id("T-lock-task");
    let cred = h.issue("agent", "report-bot", &["--requester", "human:alice", "--task", &task]);
    // Issued for the same task after nothing was locked yet: covered too, by task id.
    let second = h.issue("agent", "report-bot", &["--requester", "human:alice", "--task", &task]);
    // Same agent and requester, another task: not covered.
    let other_task = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", &task_id("T-lock-task-other")],
    );
    let victims = vec![open(port, &cred, "report-bot", "shop").await];
    let bystander = open(port, &other_task, "report-bot", "shop").await;
    lock_case(
        "task",
        &task,
        victims,
        &bystander,
        &[(&cred, "report-bot"), (&second, "report-bot")],
        &[(&other_task, "report-bot")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_lock_ends_the_credentials_sessions() {
    let h = harness();
    let port = h.warden_port;
    let task = task_id("T-lock-credential");
    let cred = h.issue("agent", "report-bot", &["--requester", "human:alice", "--task", &task]);
    let id = profile(&cred, "credential_id");
    // The same identity, requester and task with another credential: not covered.
    let sibling = h.issue("agent", "report-bot", &["--requester", "human:alice", "--task", &task]);
    assert_ne!(profile(&sibling, "credential_id"), id);
    let victims = vec![
        open(port, &cred, "report-bot", "shop").await,
        open(port, &cred, "report-bot", "shop").await,
    ];
    let bystander = open(port, &sibling, "report-bot", "shop").await;
    lock_case(
        "credential",
        &id,
        victims,
        &bystander,
        &[(&cred, "report-bot")],
        &[(&sibling, "report-bot")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lock_ends_only_that_session() {
    let h = harness();
    let port = h.warden_port;
    let cred = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", &task_id("T-lock-session")],
    );
    let victim = open(port, &cred, "report-bot", "shop").await;
    let session = victim.session.clone();
    // Another session of the very same credential: not covered.
    let bystander = open(port, &cred, "report-bot", "shop").await;
    assert_ne!(bystander.session, session);
    // A session lock names one session: new connections are new sessions and are let in.
    lock_case(
        "session",
        &session,
        vec![victim],
        &bystander,
        &[],
        &[(&cred, "report-bot")],
    )
    .await;
}

/// A lock that would match nothing is refused (a mistyped session or credential id would leave a
/// session running that the operator believes cut off); a unique prefix of a live session's id is
/// expanded, as `warden sessions play` does; an identity not configured is locked with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_names_a_session_or_credential_that_exists() {
    let h = harness();
    let port = h.warden_port;
    let config = h.config.to_string_lossy().to_string();
    let cred = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", &task_id("T-lock-prefix")],
    );
    let victim = open(port, &cred, "report-bot", "shop").await;
    let session = victim.session.clone();
    let refused = |extra: &[&str], needle: &str| {
        let out = Command::new(WARDEN)
            .args(["lock", "--config", &config, "--reason", "e2e"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted: {}", stdout(&out));
        assert!(stderr(&out).contains(needle), "{extra:?}: {}", stderr(&out));
    };
    refused(&["--session", "no-such-session"], "no live session \"no-such-session\"");
    refused(&["--credential", "no-such-credential"], "no unexpired credential");

    let (out, returned) = warden(args(&[
        "lock",
        "--config",
        &config,
        "--session",
        &session[..8],
        "--json",
    ]))
    .await;
    let lock: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        lock["target"]["value"],
        session.as_str(),
        "the prefix is expanded: {lock}"
    );
    let ended = victim.assert_ended(&[lock["id"].as_str().unwrap()]).await;
    assert!(ended.at.saturating_duration_since(returned) < WITHIN);
    // The session has ended: a lock on it would stop nothing.
    refused(&["--session", &session], "has ended");
    // A whole id in another spelling (upper case) is stored as Warden writes it, so it matches.
    let second = open(port, &cred, "report-bot", "shop").await;
    let upper = second.session.to_uppercase();
    let (out, _) = warden(args(&["lock", "--config", &config, "--session", &upper, "--json"])).await;
    let lock: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(lock["target"]["value"], second.session.as_str(), "{lock}");
    second.assert_ended(&[lock["id"].as_str().unwrap()]).await;

    let out = Command::new(WARDEN)
        .args([
            "lock",
            "--config",
            &config,
            "--identity",
            "agent:nobody-configured",
            "--ttl",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("not in the configuration"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_live_sessions_and_refuses_new_ones() {
    let h = harness();
    let port = h.warden_port;
    let task = task_id("T-revoke");
    let cred = h.issue("agent", "report-bot", &["--requester", "human:alice", "--task", &task]);
    let id = profile(&cred, "credential_id");
    let sibling = h.issue("agent", "report-bot", &["--requester", "human:alice", "--task", &task]);
    let live = open(port, &cred, "report-bot", "shop").await;
    let session = live.session.clone();
    let bystander = open(port, &sibling, "report-bot", "shop").await;
    let reason = format!("e2e revocation {}", &uuid::Uuid::new_v4().to_string()[..8]);
    let started = Instant::now();
    let (out, returned) = warden(args(&[
        "revoke",
        &id,
        "--config",
        &h.config.to_string_lossy(),
        "--reason",
        &reason,
    ]))
    .await;
    assert!(out.contains(&id), "{out}");
    let ended = live
        .assert_ended(&[&format!("credential {id} was revoked by "), &reason])
        .await;
    let after = ended.at.saturating_duration_since(returned);
    eprintln!(
        "lifecycle: revocation of {id}: session ended {} after `warden revoke` returned ({} after it started)",
        ms(after),
        ms(ended.at.saturating_duration_since(started))
    );
    assert!(
        after < WITHIN,
        "revocation: the session ended {after:?} after `warden revoke` returned"
    );
    bystander.assert_alive().await;
    assert_session_end(&h.config, &session, "revocation: ", &id);
    let e = h.wait_for_event(&["--event", "credential.revoked"], |e| {
        e["credential_id"] == id.as_str()
    });
    assert_eq!(e["reason"], reason.as_str(), "{e}");
    assert_refused(
        port,
        &cred,
        "report-bot",
        "shop",
        &[&format!("credential {id} was revoked"), &reason],
    )
    .await;
    // With the token instead of the certificate: the same credential, the same refusal.
    let mut cfg = pg_config(port, "report-bot", "shop");
    cfg.password(std::fs::read_to_string(cred.join("token")).unwrap().trim());
    let Err(err) = connect_with(&cfg, &cred.join("ca.crt"), None).await else {
        panic!("the revoked token was accepted");
    };
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err:?}");
    // Revoking one credential leaves its siblings alone.
    open(port, &sibling, "report-bot", "shop").await.assert_alive().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_ends_the_session_at_not_after() {
    let h = harness();
    let port = h.warden_port;
    let cred = h.issue(
        "agent",
        "report-bot",
        &[
            "--requester",
            "human:alice",
            "--task",
            &task_id("T-expiry"),
            "--ttl",
            "5s",
        ],
    );
    let id = profile(&cred, "credential_id");
    let expires = profile(&cred, "expires");
    let not_after = OffsetDateTime::parse(&expires, &time::format_description::well_known::Rfc3339).unwrap();
    let live = open(port, &cred, "report-bot", "shop").await;
    assert!(
        OffsetDateTime::now_utc() < not_after,
        "connecting took longer than the credential lives; the test cannot observe expiry"
    );
    let session = live.session.clone();
    let ended = live
        .assert_ended(&[&format!("credential {id} expired at {expires}")])
        .await;
    let late = ended.wall - not_after;
    eprintln!(
        "lifecycle: expiry of {id}: session ended {:.1} ms after not_after {expires}",
        late.as_seconds_f64() * 1000.0
    );
    assert!(
        late >= time::Duration::milliseconds(-50),
        "the session ended {} before its credential expired",
        -late
    );
    assert!(
        late < time::Duration::seconds(1),
        "the session ended {late} after not_after"
    );
    assert_session_end(&h.config, &session, "expiry: ", &id);
    assert_refused(port, &cred, "report-bot", "shop", &["credential expired at"]).await;
}

/// Rewrites a config file in one step (a reader never sees half of it).
fn rewrite(config: &Path, text: &str) {
    let tmp: PathBuf = config.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, config).unwrap();
}

/// 42501 from Warden's decision, with the session still up.
fn assert_denied(result: Result<u64, tokio_postgres::Error>, what: &str) {
    let err = result.err().unwrap_or_else(|| panic!("{what} was allowed"));
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{what}: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_recomputes_live_sessions_roles_and_ends_those_left_without_any() {
    // frank and reload-bot (test config) exist for this test alone: the PostgreSQL role of reload-bot
    // acting for frank is provisioned again by this test's Warden, and no other test uses it.
    const FRANK: &str = "name = \"frank\"\nroles = [\"analyst\", \"writer\"]";
    const INSERT: &str =
        "INSERT INTO orders (customer_id, status, total, region) VALUES (1, 'reload-probe', 1.00, 'eu')";
    // A write that changes nothing even when allowed.
    const PROBE: &str = "UPDATE orders SET total = total WHERE id = -1";
    let h = harness();
    let w = h.warden_copy("reload");
    let text = std::fs::read_to_string(&w.config).unwrap();
    assert!(text.contains(FRANK), "{text}");
    let mut child = spawn_warden_child(&w.config, &w.log, w.port).unwrap();
    let cred = h.issue(
        "agent",
        "reload-bot",
        &["--requester", "human:frank", "--task", &task_id("T-reload")],
    );
    let live = open(w.port, &cred, "reload-bot", "shop").await;
    let db_role: String = live
        .client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    let may_insert = || {
        h.cluster
            .psql(
                "shop",
                &format!("SELECT has_table_privilege('{db_role}', 'public.orders', 'INSERT')"),
            )
            .unwrap()
    };
    assert_eq!(may_insert(), "t");
    // Writes are allowed (rolled back: the red-team tests fingerprint shop's data).
    live.client.batch_execute("BEGIN").await.unwrap();
    live.client
        .execute(INSERT, &[])
        .await
        .expect("frank's agent holds writer: INSERT is allowed");
    live.client.execute(PROBE, &[]).await.expect("UPDATE is allowed");
    live.client.batch_execute("ROLLBACK").await.unwrap();
    // A cursor declared under writer, which reads customers.email (analyst may not), kept open.
    live.client
        .batch_execute("BEGIN; DECLARE held_cur CURSOR WITH HOLD FOR SELECT id, email FROM customers; COMMIT")
        .await
        .expect("writer reads customers.email");
    live.client
        .simple_query("FETCH 1 FROM held_cur")
        .await
        .expect("the cursor is read under writer");
    // A statement prepared through the extended protocol under a name SQL EXECUTE can use.
    let mut raw = crate::approval::raw::Raw::connect_as(w.port, &cred, "reload-bot", "shop").await;
    raw.send(&[
        crate::approval::raw::parse("named_read", "SELECT id, email FROM customers"),
        crate::approval::raw::sync(),
    ])
    .await;
    assert!(crate::approval::raw::errors(&raw.until_ready().await).is_empty());
    // A statement prepared once (Parse) and executed again later (Bind, Execute).
    let prepared = live.client.prepare(PROBE).await.unwrap();
    live.client
        .execute(&prepared, &[])
        .await
        .expect("the prepared UPDATE is allowed under writer");

    // frank loses writer: a file change, no signal.
    rewrite(
        &w.config,
        &text.replace(FRANK, "name = \"frank\"\nroles = [\"analyst\"]"),
    );
    let changed = Instant::now();
    let denied_after = loop {
        match live.client.execute(PROBE, &[]).await {
            Ok(_) => {
                assert!(
                    changed.elapsed() < Duration::from_secs(3),
                    "writes are still allowed 3 s after frank lost writer:\n{}",
                    std::fs::read_to_string(&w.log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) if e.code().map(|c| c.code()) == Some("42501") => break changed.elapsed(),
            Err(e) => {
                let ended = tokio::time::timeout(Duration::from_secs(5), live.ended).await;
                panic!(
                    "expected 42501 after frank lost writer, got {e:?}; the connection: {ended:?}\n{}",
                    std::fs::read_to_string(&w.log).unwrap_or_default()
                );
            }
        }
    };
    eprintln!(
        "lifecycle: reload (file change): the live session's writes were denied {} after the rewrite",
        ms(denied_after)
    );
    assert_denied(live.client.execute(INSERT, &[]).await, "INSERT after frank lost writer");
    // The statement prepared under writer is decided again at its Execute: Warden refuses it, not
    // only PostgreSQL's grants (which follow later).
    let err = live
        .client
        .execute(&prepared, &[])
        .await
        .expect_err("the UPDATE prepared under writer ran after frank lost writer");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "42501", "{db:?}");
    assert!(
        db.message().starts_with("warden: "),
        "refused by PostgreSQL, not Warden: {db:?}"
    );
    // The cursor opened under writer is not read any further (PostgreSQL checked its privileges
    // when it was opened, and would go on).
    let err = live
        .client
        .simple_query("FETCH ALL FROM held_cur")
        .await
        .expect_err("the cursor declared under writer was read after frank lost writer");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "42501", "{db:?}");
    assert!(db.message().contains("customers.email"), "{db:?}");
    // Declaring the name again fails in PostgreSQL (the cursor exists), and changes nothing here.
    live.client
        .simple_query("DECLARE held_cur CURSOR WITH HOLD FOR SELECT 1")
        .await
        .expect_err("held_cur exists");
    let err = live.client.simple_query("FETCH ALL FROM held_cur").await.unwrap_err();
    assert!(
        err.as_db_error()
            .is_some_and(|d| d.message().contains("customers.email")),
        "{err:?}"
    );
    live.client.batch_execute("CLOSE held_cur").await.unwrap();
    // Likewise SQL EXECUTE of the statement prepared through the protocol, even after a PREPARE of
    // the same name that PostgreSQL refuses.
    {
        use crate::approval::raw::*;
        raw.send(&[query("PREPARE named_read AS SELECT 1")]).await;
        assert!(errors(&raw.until_ready().await).iter().any(|e| e.starts_with("42P05:")));
        raw.send(&[query("EXECUTE named_read")]).await;
        let got = raw.until_ready().await;
        assert!(
            errors(&got)
                .iter()
                .any(|e| e.starts_with("42501:") && e.contains("customers.email")),
            "{got:?}"
        );
    }
    // Reads under analyst go on, in the same session.
    let rows = live
        .client
        .query("SELECT id, status FROM orders ORDER BY id", &[])
        .await
        .expect("reads are still allowed under analyst");
    assert!(!rows.is_empty());
    live.assert_alive().await;
    // PostgreSQL's own privileges follow: the session's role no longer may insert.
    let deadline = Instant::now() + Duration::from_secs(5);
    while may_insert() != "f" {
        assert!(
            Instant::now() < deadline,
            "{db_role} still holds INSERT on orders in PostgreSQL after the reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    live.assert_alive().await;

    // frank loses his last role; SIGHUP.
    rewrite(&w.config, &text.replace(FRANK, "name = \"frank\"\nroles = []"));
    run_ok(Command::new("kill").args(["-HUP", &child.id().to_string()]));
    let signalled = Instant::now();
    let session = live.session.clone();
    let ended = live
        .assert_ended(&["the configuration was reloaded and this session may no longer run"])
        .await;
    let after = ended.at.saturating_duration_since(signalled);
    eprintln!(
        "lifecycle: reload (SIGHUP): the session left without a role ended {} after the signal",
        ms(after)
    );
    assert!(after < WITHIN, "the session ended {after:?} after SIGHUP");
    assert_session_end(&w.config, &session, "reload: ", "reloaded");
    let log = std::fs::read_to_string(&w.log).unwrap_or_default();
    assert!(log.contains("SIGHUP"), "no SIGHUP reload in the log:\n{log}");
    assert_refused(w.port, &cred, "reload-bot", "shop", &[]).await;
    // The shared Warden reads its own config, where frank keeps his roles.
    open(h.warden_port, &cred, "reload-bot", "shop")
        .await
        .assert_alive()
        .await;
    stop_warden(&mut child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_survive_a_restart() {
    let h = harness();
    let w = h.warden_copy("restart");
    let mut child = spawn_warden_child(&w.config, &w.log, w.port).unwrap();
    let erin = h.issue("human", "erin", &[]);
    let live = open(w.port, &erin, "erin", "shop").await;
    let reason = format!("e2e restart lock {}", &uuid::Uuid::new_v4().to_string()[..8]);
    let (id, _, _) = lock(&w.config, "identity", "human:erin", &reason).await;
    live.assert_ended(&[&id, &reason]).await;

    stop_warden(&mut child);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", w.port)).is_err(),
        "the stopped Warden still listens"
    );
    let log2 = w.log.with_extension("restarted.log");
    let mut child = spawn_warden_child(&w.config, &log2, w.port).unwrap();
    assert_refused(w.port, &erin, "erin", "shop", &[&id, &reason]).await;
    let (list, _) = warden(args(&[
        "locks",
        "list",
        "--json",
        "--config",
        &w.config.to_string_lossy(),
    ]))
    .await;
    assert!(
        list.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| l["id"] == id.as_str() && l["state"] == "active"),
        "{list}"
    );
    unlock(&w.config, &id).await;
    open(w.port, &erin, "erin", "shop").await.assert_alive().await;
    stop_warden(&mut child);
}

/// `--ttl` on a lock: it refuses while it lasts and lifts itself, with nobody running `warden unlock`.
#[tokio::test]
async fn a_lock_with_a_ttl_lifts_itself() {
    let h = harness();
    let task = task_id("T-lock-ttl");
    let cred = h.issue("agent", "report-bot", &["--requester", "human:alice", "--task", &task]);
    let (out, _) = warden(args(&[
        "lock",
        "--config",
        &h.config.to_string_lossy(),
        "--task",
        &task,
        "--ttl",
        "2s",
        "--reason",
        "short pause",
        "--json",
    ]))
    .await;
    let lock: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let id = lock["id"].as_str().unwrap().to_string();
    assert!(lock["expires_at"].is_string(), "{lock}");
    assert_refused(h.warden_port, &cred, "report-bot", "shop", &[&id, "short pause"]).await;
    let (listed, _) = warden(args(&[
        "locks",
        "list",
        "--config",
        &h.config.to_string_lossy(),
        "--json",
    ]))
    .await;
    assert!(listed.contains(&id), "an active lock is listed: {listed}");
    // Whole seconds: the lock ends within 3 s of its creation.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        match try_open(h.warden_port, &cred, "report-bot", "shop").await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "the lock did not lift itself: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (listed, _) = warden(args(&[
        "locks",
        "list",
        "--config",
        &h.config.to_string_lossy(),
        "--json",
    ]))
    .await;
    assert!(!listed.contains(&id), "an expired lock is not active: {listed}");
    let (all, _) = warden(args(&[
        "locks",
        "list",
        "--all",
        "--config",
        &h.config.to_string_lossy(),
        "--json",
    ]))
    .await;
    let line = all.lines().find(|l| l.contains(&id)).expect("listed with --all");
    assert!(line.contains("\"state\":\"expired\""), "{line}");
}
