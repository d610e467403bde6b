//! The audit log as an investigator uses it: search by identity, verify the chain, catch tampering.

use std::process::Command;

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

    let verify = || {
        Command::new(WARDEN)
            .args(["audit", "verify", "--config"])
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

/// Sends SIGTERM and waits for the process to exit.
fn stop(mut child: std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
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
    let child = spawn_warden_child(&w.config, &w.log, w.port).unwrap();
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
    stop(child);
}

#[test]
fn verify_catches_a_dropped_tail_through_the_signed_checkpoints() {
    let h = harness();
    let cred = h.agent();
    let w = h.warden_copy("tail");
    let child = spawn_warden_child(&w.config, &w.log, w.port).unwrap();
    for n in 0..3 {
        let out = h.psql_at(w.port, &cred, &format!("SELECT 'tail-{n}'"));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // A clean stop signs the last records.
    stop(child);
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
    // Pinning the deployment's key passes on the intact log; another key fails it.
    std::fs::write(&log, &text).unwrap();
    let key = std::fs::read_to_string(h.deploy.join("audit/checkpoint.pub")).unwrap();
    assert!(verify(&["--public-key", key.trim()]).status.success());
    let wrong = verify(&["--public-key", &"ab".repeat(32)]);
    assert_eq!(wrong.status.code(), Some(1), "{}", stdout(&wrong));
}
