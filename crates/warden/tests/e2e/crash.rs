//! The audit log under failure. Warden killed with SIGKILL in the middle of a load loses no record of a
//! statement PostgreSQL ran (PostgreSQL's own `log_statement = 'all'` log is the witness); an audit log
//! that cannot be written stops statements instead of letting them run unrecorded.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// Concurrent client connections in the load.
const CLIENTS: usize = 8;
/// Statements acknowledged to clients before the kill, so that it lands while the load runs.
const KILL_AFTER: usize = 400;
/// Statements each client would run if nothing stopped it: far more than the kill lets it.
const PER_CLIENT: usize = 100_000;

#[test]
fn sigkill_mid_load_loses_no_record_with_fsync_batch() {
    crash_mid_load("batch");
}

#[test]
fn sigkill_mid_load_loses_no_record_with_fsync_always() {
    crash_mid_load("always");
}

fn crash_mid_load(fsync: &str) {
    let h = harness();
    let cred = h.agent();
    let copy = h.warden_copy(&format!("crash-{fsync}"));
    set_fsync(&copy.config, fsync);
    let mut warden = spawn_warden_child(&copy.config, &copy.log, copy.port).unwrap();
    let prefix = format!("crash-{fsync}-{}-", std::process::id());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = Arc::new(AtomicUsize::new(0));
    let outcomes = rt.block_on(async {
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let cfg = client_config(copy.port);
            let (cred, prefix, acked) = (cred.clone(), prefix.clone(), acked.clone());
            clients.push(tokio::spawn(async move {
                load(cfg, &cred, &format!("{prefix}{c}-"), &acked).await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < KILL_AFTER {
            assert!(
                Instant::now() < deadline,
                "only {} statements acknowledged before the deadline:\n{}",
                acked.load(Ordering::SeqCst),
                std::fs::read_to_string(&copy.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        warden.kill().unwrap(); // SIGKILL
        warden.wait().unwrap();
        let mut outcomes = Vec::new();
        for c in clients {
            outcomes.push(tokio::time::timeout(Duration::from_secs(30), c).await.unwrap().unwrap());
        }
        outcomes
    });
    let acked: BTreeSet<String> = outcomes.iter().flat_map(|o| o.acked.iter().cloned()).collect();
    for (c, o) in outcomes.iter().enumerate() {
        assert!(
            o.ended_by.is_some(),
            "client {c} ran all its {PER_CLIENT} statements: the kill did not land mid-load"
        );
    }

    // Restarted on the same config and log: the torn tail (if any) is cut and the chain continues.
    let restart_log = copy.log.with_extension("restart.log");
    let mut restarted = spawn_warden_child(&copy.config, &restart_log, copy.port).unwrap();
    let after = format!("{prefix}after-restart");
    let out = h.psql_at(copy.port, &cred, &format!("SELECT '{after}'"));
    assert!(out.status.success(), "after the restart: {}", stderr(&out));
    // The killed Warden's sessions cannot be running: the restarted one records their end, once.
    let closed = || stale_ends(&copy.config, &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while closed() < CLIENTS {
        assert!(Instant::now() < deadline, "{} of {CLIENTS} sessions closed", closed());
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_warden(&mut restarted);
    assert_eq!(closed(), CLIENTS);
    let active = run_ok(
        Command::new(WARDEN)
            .args(["sessions", "list", "--active", "--json", "--config"])
            .arg(&copy.config),
    );
    assert_eq!(stdout(&active).trim(), "", "sessions still listed as active");
    let verify = Command::new(WARDEN)
        .args(["audit", "verify", "--config"])
        .arg(&copy.config)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "warden audit verify after kill -9 and restart:\n{}{}",
        stdout(&verify),
        stderr(&verify)
    );

    let executed = markers(&std::fs::read_to_string(h.cluster.log_path()).unwrap(), &prefix);
    let recorded: BTreeSet<String> = audit_in(&copy.config, &["--event", "query"])
        .iter()
        .filter_map(|e| e["statement"].as_str())
        .flat_map(|s| markers(s, &prefix))
        .collect();
    // The witness works: every statement a client saw complete is in PostgreSQL's log.
    let unlogged: Vec<_> = acked.difference(&executed).collect();
    assert!(
        unlogged.is_empty(),
        "acknowledged but not in PostgreSQL's log: {unlogged:?}"
    );
    assert!(executed.len() >= KILL_AFTER, "{} statements ran", executed.len());
    assert!(executed.contains(&after), "the statement after the restart ran");
    let unrecorded: Vec<_> = executed.difference(&recorded).collect();
    assert!(
        unrecorded.is_empty(),
        "fsync = {fsync}: {} of {} statements PostgreSQL ran have no query record: {unrecorded:?}",
        unrecorded.len(),
        executed.len()
    );
    eprintln!(
        "fsync = {fsync}: {} acknowledged, {} run by PostgreSQL, {} recorded",
        acked.len(),
        executed.len(),
        recorded.len()
    );
}

/// What one client of the load did: the statements that completed, and the error that stopped it.
struct Outcome {
    acked: Vec<String>,
    ended_by: Option<String>,
}

/// Runs distinct statements until one fails: reads in the simple and in the extended protocol, and
/// writes in a transaction that is rolled back (the shared fixture keeps its rows).
async fn load(cfg: tokio_postgres::Config, cred: &Path, prefix: &str, acked: &AtomicUsize) -> Outcome {
    let mut client = connect_with(&cfg, &cred.join("ca.crt"), Some(load_cert(cred)))
        .await
        .expect("connecting through Warden");
    let mut done = Vec::new();
    for n in 0..PER_CLIENT {
        let marker = format!("{prefix}{n}");
        let result =
            match n % 3 {
                0 => client.simple_query(&format!("SELECT '{marker}'")).await.map(drop),
                1 => client.query(&format!("SELECT '{marker}'::text"), &[]).await.map(drop),
                _ => {
                    async {
                        let tx = client.transaction().await?;
                        tx.execute(
                    &format!("INSERT INTO orders (customer_id, status, total, region) VALUES (1, '{marker}', 1, 'eu')"),
                    &[],
                )
                .await?;
                        tx.rollback().await
                    }
                    .await
                }
            };
        match result {
            Ok(()) => {
                done.push(marker);
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                return Outcome {
                    acked: done,
                    ended_by: Some(e.to_string()),
                }
            }
        }
    }
    Outcome {
        acked: done,
        ended_by: None,
    }
}

/// Every `<prefix><digits and dashes>` in `text`.
fn markers(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let tail = &rest[at + prefix.len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(tail.len());
        found.insert(format!("{prefix}{}", &tail[..end]));
        rest = &tail[end..];
    }
    found
}

fn client_config(port: u16) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user("report-bot")
        .dbname("shop")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    cfg
}

fn set_fsync(config: &Path, mode: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains("fsync = \"batch\""));
    std::fs::write(
        config,
        text.replace("fsync = \"batch\"", &format!("fsync = \"{mode}\"")),
    )
    .unwrap();
}

/// The audit log's file-size limit in the fail-closed test: far above Warden's other files (its state
/// store, the checkpoints, its own log), reached by the audit log after a few large statements.
const FSIZE_LIMIT: u64 = 4 * 1024 * 1024;

#[test]
fn audit_log_that_cannot_be_written_refuses_statements() {
    let h = harness();
    let cred = h.agent();
    let copy = h.warden_copy("fail-closed");
    let state = h.deploy.join("state/warden.db");
    let state_len = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
    assert!(
        state_len < FSIZE_LIMIT / 4,
        "the state store ({state_len} bytes) is too close to the file-size limit this test sets"
    );
    let mut warden = spawn_with_file_size_limit(&copy.config, &copy.log, copy.port, FSIZE_LIMIT);
    let tag = format!("fail-closed-{}-", std::process::id());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = client_config(copy.port);
    let ca = cred.join("ca.crt");
    let (filled, refused, after, reconnect) = rt.block_on(async {
        // Connected while the log is still writable; it sends its statement once it no longer is.
        let idle = connect_with(&cfg, &ca, Some(load_cert(&cred))).await.unwrap();
        let filler = connect_with(&cfg, &ca, Some(load_cert(&cred))).await.unwrap();
        let padding = "x".repeat(128 * 1024);
        let mut filled = Vec::new();
        let mut refused = None;
        for n in 0..4 * FSIZE_LIMIT as usize / padding.len() {
            let marker = format!("{tag}fill-{n}");
            match filler
                .simple_query(&format!("SELECT '{marker}', length('{padding}')"))
                .await
            {
                Ok(_) => filled.push(marker),
                Err(e) => {
                    refused = Some((marker, e));
                    break;
                }
            }
        }
        let after = format!("{tag}after");
        let after = (
            after.clone(),
            idle.simple_query(&format!("SELECT '{after}'")).await.map(drop),
        );
        let reconnect = connect_with(&cfg, &ca, Some(load_cert(&cred))).await.map(drop);
        (filled, refused, after, reconnect)
    });

    let log = std::fs::read_to_string(&copy.log).unwrap_or_default();
    let (refused_marker, refused_err) = refused.unwrap_or_else(|| {
        panic!(
            "{} statements of 128 KiB ran under a {FSIZE_LIMIT}-byte file-size limit:\n{log}",
            filled.len()
        )
    });
    assert!(
        !filled.is_empty(),
        "the log filled before any statement ran: {refused_err}"
    );
    assert!(
        warden.try_wait().unwrap().is_none(),
        "Warden died at the file-size limit (SIGXFSZ not ignored?):\n{log}"
    );
    // The statement after the failure: a clear, actionable error, and PostgreSQL never saw it.
    let (after_marker, after_result) = after;
    let e = after_result.expect_err("a statement ran although the audit log cannot be written");
    let db = e.as_db_error().unwrap_or_else(|| panic!("not an ErrorResponse: {e}"));
    assert_eq!(db.code().code(), "57P03", "{db:?}");
    for words in [
        "warden:",
        "cannot be written",
        "File too large",
        "nothing was sent to PostgreSQL",
        "restart Warden",
    ] {
        assert!(db.message().contains(words), "{words:?} not in: {}", db.message());
    }
    let e = reconnect.expect_err("a new session started although the audit log cannot be written");
    let db = e.as_db_error().unwrap_or_else(|| panic!("not an ErrorResponse: {e}"));
    assert_eq!(db.code().code(), "57P03", "{db:?}");
    assert!(db.message().contains("cannot be written"), "{}", db.message());

    let pg = std::fs::read_to_string(h.cluster.log_path()).unwrap();
    let quoted = |m: &str| format!("'{m}'");
    assert!(
        pg.contains(&quoted(&filled[0])),
        "the witness works: the first statement is in PostgreSQL's log"
    );
    assert!(
        !pg.contains(&quoted(&refused_marker)),
        "the statement whose record failed reached PostgreSQL"
    );
    assert!(
        !pg.contains(&quoted(&after_marker)),
        "a statement after the failure reached PostgreSQL"
    );
    assert!(
        log.contains("audit unavailable") && log.contains("File too large"),
        "Warden's log does not say the audit log is unavailable:\n{log}"
    );

    // Without the limit, a restarted Warden cuts the torn record, the chain verifies, statements run.
    stop_warden(&mut warden);
    let mut restarted = spawn_warden_child(&copy.config, &copy.log.with_extension("restart.log"), copy.port).unwrap();
    let out = h.psql_at(copy.port, &cred, &format!("SELECT '{tag}restarted'"));
    assert!(out.status.success(), "after the restart: {}", stderr(&out));
    stop_warden(&mut restarted);
    let restart_log = std::fs::read_to_string(copy.log.with_extension("restart.log")).unwrap();
    assert!(
        restart_log.contains("partly written record"),
        "the restart does not say it cut a torn record:\n{restart_log}"
    );
    let verify = Command::new(WARDEN)
        .args(["audit", "verify", "--config"])
        .arg(&copy.config)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}{}", stdout(&verify), stderr(&verify));
}

/// `warden start` with RLIMIT_FSIZE set: a write past `limit` bytes of any file fails with EFBIG, a
/// real write failure that holds for root too (permissions would not).
fn spawn_with_file_size_limit(config: &Path, log: &Path, port: u16, limit: u64) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(WARDEN);
    cmd.args(["start", "--config"])
        .arg(config)
        .env("WARDEN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    watchdog(&format!("kill {}", child.id()));
    wait_for_port(port, log);
    child
}

/// A Warden started while another still runs on the same audit log (a rolling restart, the old one
/// draining) does not take that one's live sessions for ones a crash left open; once the other is
/// gone (here: killed), it records their end.
#[test]
fn a_second_warden_on_the_log_closes_only_sessions_whose_warden_is_gone() {
    let h = harness();
    let cred = h.agent();
    let first = h.warden_copy("overlap");
    let mut a = spawn_warden_child(&first.config, &first.log, first.port).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, session) = rt.block_on(async {
        let client = connect_with(&client_config(first.port), &cred.join("ca.crt"), Some(load_cert(&cred)))
            .await
            .unwrap();
        let row = client
            .query_one("SELECT current_setting('warden.session')", &[])
            .await
            .unwrap();
        (client, row.get::<_, String>(0))
    });
    // The same log, another port.
    let port = warden::cluster::free_port().unwrap();
    let text = std::fs::read_to_string(&first.config).unwrap();
    let second_config = first.config.with_extension("second.toml");
    let listen = format!("127.0.0.1:{}\"", first.port);
    assert!(text.contains(&listen));
    std::fs::write(&second_config, text.replace(&listen, &format!("127.0.0.1:{port}\""))).unwrap();
    let mut b = spawn_warden_child(&second_config, &first.log.with_extension("second.log"), port).unwrap();
    let ends = || stale_ends(&first.config, &["--session", &session]);
    // Several index passes of the second Warden: the first one's session is left alone.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ends(), 0, "a live session of the other Warden was closed");
    rt.block_on(async { client.simple_query("SELECT 1").await.expect("still served") });
    a.kill().unwrap();
    a.wait().unwrap();
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ends() == 0 {
        assert!(
            Instant::now() < deadline,
            "the killed Warden's session was never closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_warden(&mut b);
    assert_eq!(ends(), 1);
}

/// `session.end` records a restarted Warden wrote for sessions an earlier run left open.
fn stale_ends(config: &Path, filter: &[&str]) -> usize {
    let mut args = vec!["--event", "session.end"];
    args.extend_from_slice(filter);
    audit_in(config, &args)
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("stopped without ending it"))
        })
        .count()
}
