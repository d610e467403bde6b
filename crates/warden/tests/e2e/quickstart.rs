//! `warden quickstart` as a new user runs it: then psql with the printed agent command, then the audit search.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn quickstart_then_psql_as_agent_then_audit_search() {
    let h = harness();
    let dir = unique_dir(&h.root, "quickstart");
    let port = warden::cluster::free_port().unwrap();
    let mut child = Command::new(WARDEN)
        .args(["quickstart", "--port", &port.to_string(), "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    watchdog(&format!("kill -INT {pid}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in lines.by_ref() {
        let line = line.unwrap();
        printed.push(line.clone());
        if line.contains("Press Ctrl-C") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "quickstart is taking too long:\n{}",
            printed.join("\n")
        );
    }
    let text = printed.join("\n");
    let stop = || {
        Command::new("kill").arg("-INT").arg(pid.to_string()).status().unwrap();
    };
    let agent_cmd = printed
        .iter()
        .find(|l| l.trim_start().starts_with("psql \"") && l.contains("user=report-bot"));
    let Some(agent_cmd) = agent_cmd else {
        stop();
        panic!("no psql command for the agent printed:\n{text}");
    };
    // psql "CONNINFO" -c "SQL"
    let conninfo = agent_cmd.split('"').nth(1).unwrap().to_string();
    let out = Command::new(psql_bin())
        .arg("-X")
        .arg("-At")
        .arg(&conninfo)
        .arg("-c")
        .arg("SELECT id, status, total, region FROM orders ORDER BY id")
        .output()
        .unwrap();
    // Step 4, as printed: warden exec runs psql as the agent acting for alice.
    let exec_line = printed.iter().find(|l| l.contains(" exec --identity ")).cloned();
    let exec = exec_line.as_deref().map(|l| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(l.trim());
        // psql as the printed command names it, from the same installation the tests use.
        let path = format!(
            "{}:{}",
            psql_bin().parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path).output().unwrap()
    });
    // The lock step's follow-up commands run as printed.
    let locks_list = printed
        .iter()
        .find_map(|l| l.split("(then: ").nth(1))
        .and_then(|rest| rest.split(", and ").next())
        .map(|cmd| Command::new("sh").arg("-c").arg(cmd).output().unwrap());
    let audit = Command::new(WARDEN)
        .args([
            "audit",
            "search",
            "--json",
            "--identity",
            "agent:report-bot",
            "--config",
        ])
        .arg(dir.join("warden.toml"))
        .output()
        .unwrap();
    stop();
    let status = child.wait().unwrap();
    assert!(
        out.status.success(),
        "psql as the agent failed: {}\n{text}",
        stderr(&out)
    );
    assert!(stdout(&out).starts_with("1|paid|10.00|eu\n"), "{}", stdout(&out));
    let exec = exec.unwrap_or_else(|| panic!("no warden exec command printed:\n{text}"));
    assert!(
        exec.status.success(),
        "the printed warden exec failed: {}\n{text}",
        stderr(&exec)
    );
    // alice's region: 2 of the 4 orders, through row-level security on the agent's own role.
    assert_eq!(
        stdout(&exec).split_whitespace().find(|w| w.parse::<u32>().is_ok()),
        Some("2"),
        "{}",
        stdout(&exec)
    );
    let events: Vec<serde_json::Value> = stdout(&audit)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let q = events
        .iter()
        .find(|e| e["event"] == "query" && e["statement"] == "SELECT id, status, total, region FROM orders ORDER BY id")
        .unwrap_or_else(|| panic!("query not in the audit log: {}", stdout(&audit)));
    assert_eq!(q["identity"]["name"], "report-bot");
    assert_eq!(q["identity"]["requester"], "human:alice");
    assert_eq!(q["identity"]["task"], "quickstart-demo");
    assert!(status.success(), "quickstart did not exit cleanly on Ctrl-C: {status}");
    assert!(text.contains("audit search"), "{text}");
    let locks_list = locks_list.unwrap_or_else(|| panic!("no locks list command printed:\n{text}"));
    assert!(
        locks_list.status.success(),
        "the printed locks list failed: {}\n{text}",
        stderr(&locks_list)
    );
    // Ctrl-C stopped PostgreSQL too: nothing listens on its port any more.
    let toml = std::fs::read_to_string(dir.join("warden.toml")).unwrap();
    let pg_port: u16 = toml
        .split("@127.0.0.1:")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", pg_port)).is_err(),
        "PostgreSQL still running after Ctrl-C"
    );
}
