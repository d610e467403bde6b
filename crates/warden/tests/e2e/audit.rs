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
