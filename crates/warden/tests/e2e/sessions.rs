//! Sessions from the audit log (`warden sessions list|play`) and `warden audit search` through the
//! index with --until, --decision and --requester.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::*;

fn warden(h: &Harness, args: &[&str]) -> std::process::Output {
    Command::new(WARDEN)
        .args(args)
        .arg("--config")
        .arg(&h.config)
        .output()
        .unwrap()
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{}{}", stdout(out), stderr(out));
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn listed(h: &Harness, extra: &[&str], session: &str) -> Option<Value> {
    let mut args = vec!["sessions", "list", "--json"];
    args.extend_from_slice(extra);
    json_lines(&warden(h, &args))
        .into_iter()
        .find(|s| s["session_id"] == session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_and_play_a_session_with_a_denial_and_an_error() {
    let h = harness();
    let task = format!("T-sessions-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let cred = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", &task, "--roles", "analyst"],
    );

    let first = h.connect(&cred, "report-bot", "shop", false).await.unwrap();
    first.simple_query("SELECT 'play-1'").await.unwrap();
    let denied = first.simple_query("SELECT email FROM customers").await.unwrap_err();
    assert_eq!(denied.code().map(|c| c.code()), Some("42501"), "{denied}");
    let failed = first.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(
        failed.as_db_error().map(|e| e.message()),
        Some("division by zero"),
        "{failed:?}"
    );
    let q = h.wait_for_event(&["--task", &task, "--event", "query"], |e| {
        e["statement"] == "SELECT 'play-1'"
    });
    let a = q["session_id"].as_str().unwrap().to_string();

    // A second session stays open while the first ends.
    let second = h.connect(&cred, "report-bot", "shop", false).await.unwrap();
    second.simple_query("SELECT 'still-here'").await.unwrap();
    let b = h.wait_for_event(&["--task", &task, "--event", "query"], |e| {
        e["statement"] == "SELECT 'still-here'"
    })["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(a, b);
    drop(first);
    h.wait_for_event(&["--task", &task, "--event", "session.end"], |e| e["session_id"] == a);

    let s = listed(h, &[], &a).expect("the ended session is listed");
    assert_eq!(s["active"], false);
    assert_eq!(s["statements"], 3);
    assert_eq!(s["denials"], 1);
    assert_eq!(s["end_reason"], "client");
    assert_eq!(s["database"], "shop");
    assert_eq!(s["identity"]["name"], "report-bot");
    assert_eq!(s["identity"]["requester"], "human:alice");
    assert_eq!(s["identity"]["task"], task.as_str());
    assert!(s["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(s["started_at"].is_string() && s["ended_at"].is_string());
    assert!(listed(h, &["--active"], &a).is_none(), "an ended session is not active");
    let open = listed(h, &["--active"], &b).expect("the open session is active");
    assert_eq!(open["active"], true);
    assert!(open["ended_at"].is_null());
    let table = warden(h, &["sessions", "list"]);
    assert!(
        stdout(&table)
            .lines()
            .any(|l| l.starts_with(&a) && l.contains("(client)")),
        "{}",
        stdout(&table)
    );

    // Played as stored, in order, by a unique prefix of the id.
    let events = json_lines(&warden(h, &["sessions", "play", "--json", &a[..13]]));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .filter(|k| *k != "query.result")
        .collect();
    assert_eq!(
        kinds,
        ["session.start", "query", "query", "query", "session.end"],
        "{events:#?}"
    );
    assert!(events.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    assert!(events.iter().all(|e| e["session_id"] == a.as_str()));
    let queries: Vec<&Value> = events.iter().filter(|e| e["event"] == "query").collect();
    let result_of = |q: &Value| {
        events
            .iter()
            .find(|e| e["event"] == "query.result" && e["query_id"] == q["seq"])
            .unwrap_or_else(|| panic!("no result for {q}"))
            .clone()
    };
    assert_eq!(queries[0]["statement"], "SELECT 'play-1'");
    assert_eq!(queries[0]["decision"], "allow");
    assert_eq!(result_of(queries[0])["rows"], 1);
    assert!(result_of(queries[0]).get("error").is_none());
    assert_eq!(queries[1]["statement"], "SELECT email FROM customers");
    assert_eq!(queries[1]["decision"], "deny");
    assert_eq!(
        queries[1]["reason"],
        "role analyst may not read column public.customers.email"
    );
    assert_eq!(queries[2]["statement"], "SELECT 1/0");
    assert!(result_of(queries[2])["error"]
        .as_str()
        .unwrap()
        .contains("division by zero"));

    // Replayed in the terminal: statements and outcomes in order (time is not asserted).
    let played = warden(h, &["sessions", "play", "--speed", "1000", &a]);
    assert!(played.status.success(), "{}", stderr(&played));
    let text = stdout(&played);
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the replay:\n{text}"))
    };
    let order = [
        at("session.start"),
        at("ALLOW SELECT 'play-1'"),
        at("ok, 1 row"),
        at("DENY  SELECT email FROM customers"),
        at("denied: role analyst may not read column public.customers.email"),
        at("ALLOW SELECT 1/0"),
        at("division by zero"),
        at("session.end: client"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order:\n{text}");

    // Prefixes that name no session, or several.
    let unknown = warden(h, &["sessions", "play", "zzzz-no-such-session"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no session"), "{}", stderr(&unknown));
    let ambiguous = warden(h, &["sessions", "play", "--json", ""]);
    assert_eq!(ambiguous.status.code(), Some(2));

    // The second session is listed active until it ends.
    drop(second);
    h.wait_for_event(&["--task", &task, "--event", "session.end"], |e| e["session_id"] == b);
    assert!(listed(h, &["--active"], &b).is_none());
    assert_eq!(listed(h, &[], &b).unwrap()["statements"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_search_by_until_decision_and_requester_prints_stored_lines() {
    let h = harness();
    let task = format!("T-search-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let cred = h.issue(
        "agent",
        "report-bot",
        &["--requester", "human:alice", "--task", &task, "--roles", "analyst"],
    );
    let client = h.connect(&cred, "report-bot", "shop", false).await.unwrap();
    client.simple_query("SELECT 'before-cut'").await.unwrap();
    let first = h.wait_for_event(&["--task", &task, "--event", "query"], |e| {
        e["statement"] == "SELECT 'before-cut'"
    });
    std::thread::sleep(std::time::Duration::from_millis(20));
    client.simple_query("SELECT email FROM customers").await.unwrap_err();
    let denied = h.wait_for_event(&["--task", &task, "--decision", "deny"], |_| true);
    drop(client);

    // --until an RFC 3339 time: the first query, not the later denial.
    let cut = first["ts"].as_str().unwrap();
    let until = h.audit(&["--task", &task, "--event", "query", "--until", cut]);
    assert_eq!(until.len(), 1, "{until:#?}");
    assert_eq!(until[0]["seq"], first["seq"]);
    // --until a duration ago: nothing of this test is an hour old.
    assert!(h.audit(&["--task", &task, "--until", "1h"]).is_empty());
    let since = h.audit(&["--task", &task, "--event", "query", "--since", cut]);
    assert_eq!(since.len(), 2);

    // --decision deny with --requester (kind:name and bare name).
    for requester in ["human:alice", "alice"] {
        let found = h.audit(&["--requester", requester, "--task", &task, "--decision", "deny"]);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0]["seq"], denied["seq"]);
        assert_eq!(found[0]["statement"], "SELECT email FROM customers");
    }
    assert!(h.audit(&["--requester", "human:bob", "--task", &task]).is_empty());

    // --json prints the stored bytes: the very line in the log.
    let out = run_ok(
        Command::new(WARDEN)
            .args([
                "audit",
                "search",
                "--json",
                "--task",
                &task,
                "--decision",
                "deny",
                "--config",
            ])
            .arg(&h.config),
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let log = std::fs::read_to_string(h.deploy.join("audit/audit.jsonl")).unwrap();
    let line = printed.trim_end_matches('\n');
    assert!(log.lines().any(|l| l == line), "not a stored line: {line}");

    // The index and the linear scan agree.
    let scanned = h.audit(&["--task", &task, "--no-index"]);
    let indexed = h.audit(&["--task", &task]);
    assert_eq!(scanned, indexed);
    assert!(h.deploy.join("audit/audit.index.db").exists());
}

#[test]
fn a_listing_whose_reader_is_gone_ends_quietly() {
    let h = harness();
    // Some records to print.
    let cred = h.agent();
    assert!(h.psql_at(h.warden_port, &cred, "SELECT 'pipe-probe'").status.success());
    // `warden audit search | head -0`, deterministically: the pipe's reader is closed before it runs.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(WARDEN)
        .args(["audit", "search", "--config"])
        .arg(&h.config)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}
