//! The HTTPS API and `warden exec`, against a Warden of their own (same deployment, same PostgreSQL)
//! with `api_listen` and `admins` set: mTLS, the OpenAPI document, delegation bounds, exec with a Python
//! agent on psycopg, revocation at exit, API locks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

struct ApiWarden {
    config: PathBuf,
    port: u16,
    api: String,
}

/// A second Warden on the harness's deployment, with the API on.
fn api_warden() -> &'static ApiWarden {
    static W: OnceLock<ApiWarden> = OnceLock::new();
    W.get_or_init(|| {
        let h = harness();
        let port = warden::cluster::free_port().unwrap();
        let api_port = warden::cluster::free_port().unwrap();
        let text = std::fs::read_to_string(&h.config)
            .unwrap()
            .replace(
                &format!("postgres_listen = \"127.0.0.1:{}\"", h.warden_port),
                &format!(
                    "postgres_listen = \"127.0.0.1:{port}\"\napi_listen = \"127.0.0.1:{api_port}\"\nadmins = [\"human:alice\"]"
                ),
            )
            .replace("fsync = \"batch\"", "fsync = \"batch\"\npath = \"audit/api.jsonl\"");
        let config = h.deploy.join("api.toml");
        std::fs::write(&config, text).unwrap();
        spawn_warden(&config, &h.root.join("api-warden.log"), port).unwrap();
        let api = format!("https://127.0.0.1:{api_port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err() {
            assert!(Instant::now() < deadline, "the API did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        ApiWarden { config, port, api }
    })
}

impl ApiWarden {
    /// `warden issue` against this Warden's config (so profile.toml names its API).
    fn issue(&self, kind: &str, name: &str, extra: &[&str]) -> PathBuf {
        let out = unique_dir(&harness().root, &format!("api-cred-{name}"));
        run_ok(
            Command::new(WARDEN)
                .args(["issue", "--config"])
                .arg(&self.config)
                .args(["--kind", kind, "--name", name, "--out"])
                .arg(&out)
                .args(extra),
        );
        out
    }

    fn audit(&self, args: &[&str]) -> Vec<Value> {
        let out = run_ok(
            Command::new(WARDEN)
                .args(["audit", "search", "--json", "--config"])
                .arg(&self.config)
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn wait_for_event(&self, args: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.audit(args).into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(Instant::now() < deadline, "no matching audit event for {args:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `POST /v1/credentials` as the identity in `cred`.
    async fn issue_via_api(&self, cred: &Path, body: Value) -> (u16, Value) {
        call(
            client(cred, true)
                .post(format!("{}/v1/credentials", self.api))
                .json(&body),
        )
        .await
    }

    fn exec(&self, cred: &Path, args: &[&str]) -> std::process::Output {
        Command::new(WARDEN)
            .args(["exec", "--identity"])
            .arg(cred)
            .args(args)
            .env_remove("PGPASSWORD")
            .output()
            .unwrap()
    }
}

/// An HTTPS client presenting `cred` (or no certificate).
fn client(cred: &Path, with_cert: bool) -> reqwest::Client {
    let cert = with_cert.then(|| load_cert(cred));
    let tls = tls_config(&cred.join("ca.crt"), cert);
    reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap()
}

async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

#[tokio::test]
async fn api_needs_a_client_certificate_and_serves_every_documented_route() {
    let w = api_warden();
    let alice = w.issue("human", "alice", &["--ttl", "1h"]);

    let anonymous = client(&alice, false);
    let (status, body) = call(anonymous.get(format!("{}/v1/whoami", w.api))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("identity.crt"),
        "{body}"
    );

    // The document is public, and the one in the repository.
    let (status, doc) = call(anonymous.get(format!("{}/openapi.json", w.api))).await;
    assert_eq!(status, 200);
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc, kept);

    let c = client(&alice, true);
    let (status, me) = call(c.get(format!("{}/v1/whoami", w.api))).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["identity"], "human:alice");
    assert_eq!(me["admin"], true);

    // Every documented route is served (whatever it answers, it is not the router's fallback).
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let url = format!("{}{}", w.api, path.replace("{id}", "nonexistent"));
            let req = match method.as_str() {
                "get" => c.get(&url),
                "post" => c.post(&url).json(&serde_json::json!({})),
                "delete" => c.delete(&url),
                m => panic!("undocumented method {m}"),
            };
            let resp = req.send().await.unwrap();
            let text = resp.text().await.unwrap();
            assert!(
                !text.contains("no route"),
                "{method} {path} is documented but not served: {text}"
            );
        }
    }
    let (status, body) = call(c.get(format!("{}/v1/nothing", w.api))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn delegation_bounds_are_enforced_and_named() {
    let w = api_warden();
    let alice = w.issue("human", "alice", &["--ttl", "1h"]);
    let bob = w.issue("human", "bob", &["--ttl", "1h"]);

    // bob holds only analyst: his agent may not write.
    let (status, body) = w
        .issue_via_api(
            &bob,
            serde_json::json!({"agent": "report-bot", "task": "T-b", "roles": ["writer"]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("outside_bounds")),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("writer"), "{body}");
    // Without roles named, bob's agent gets what both hold: analyst only.
    let (status, body) = w
        .issue_via_api(&bob, serde_json::json!({"agent": "report-bot", "task": "T-b"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["roles"], serde_json::json!(["analyst"]));
    assert_eq!(body["requester"], "human:bob");

    // report-bot's max_ttl is 15m.
    let (status, body) = w
        .issue_via_api(
            &alice,
            serde_json::json!({"agent": "report-bot", "task": "T-a", "ttl": "30m"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("outside_bounds")),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("15m bound"),
        "{body}"
    );

    // Never past the requester's own credential.
    let short = w.issue("human", "alice", &["--ttl", "5m"]);
    let (status, body) = w
        .issue_via_api(
            &short,
            serde_json::json!({"agent": "report-bot", "task": "T-a", "ttl": "10m"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("outlives your own credential"),
        "{body}"
    );

    // An agent does not issue credentials.
    let agent = w.issue("agent", "report-bot", &["--requester", "human:alice", "--task", "T-x"]);
    let (status, body) = w
        .issue_via_api(&agent, serde_json::json!({"agent": "report-bot", "task": "T-y"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only a human or a workload"),
        "{body}"
    );

    // An unknown agent.
    let (status, body) = w
        .issue_via_api(&alice, serde_json::json!({"agent": "nobody", "task": "T-a"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent:nobody is not in"),
        "{body}"
    );

    // The same bounds through warden exec, which says which bound applied and runs nothing.
    let out = w.exec(
        &bob,
        &[
            "--agent",
            "report-bot",
            "--task",
            "T-b",
            "--roles",
            "writer",
            "--",
            "touch",
            "/tmp/should-not-exist-warden",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("writer"), "{}", stderr(&out));
    assert!(!Path::new("/tmp/should-not-exist-warden").exists());
}

const PY_AGENT: &str = r#"
import os, subprocess, sys, time
import psycopg

for k in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE", "PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT", "DATABASE_URL"]:
    assert os.environ.get(k), k
print("certdir", os.path.dirname(os.environ["PGSSLCERT"]))
print("modes", oct(os.stat(os.path.dirname(os.environ["PGSSLCERT"])).st_mode & 0o777), oct(os.stat(os.environ["PGSSLKEY"]).st_mode & 0o777))
with psycopg.connect(os.environ["DATABASE_URL"]) as c:
    row = c.execute("SELECT current_setting('warden.task'), current_setting('warden.requester'), count(*) FROM orders").fetchone()
    print("agent", *row)

# A helper the agent leaves running, connected with libpq's variables alone.
status = sys.argv[1]
child = r'''
import sys, time, psycopg
status = sys.argv[1]
c = psycopg.connect("", autocommit=True)
sid = c.execute("SHOW warden.session").fetchone()[0]
open(status, "w").write("connected " + sid + "\n")
try:
    while True:
        c.execute("SELECT 1")
        time.sleep(0.02)
except Exception as e:
    open(status, "a").write("ended %s %s %.3f\n" % (getattr(e, "sqlstate", None), str(e).strip().replace("\n", " "), time.time()))
'''
subprocess.Popen([sys.executable, "-c", child, status], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = time.time() + 20
while time.time() < deadline:
    if os.path.exists(status) and open(status).read().startswith("connected"):
        break
    time.sleep(0.05)
sys.exit(7)
"#;

#[tokio::test]
async fn exec_runs_a_python_agent_and_revokes_its_credential_at_exit() {
    let w = api_warden();
    let probe = Command::new("python3").args(["-c", "import psycopg"]).output().unwrap();
    assert!(
        probe.status.success(),
        "this test needs psycopg from PyPI (pip install 'psycopg[binary]'); .ci/run installs it:\n{}",
        stderr(&probe)
    );
    let alice = w.issue("human", "alice", &["--ttl", "1h"]);
    let task = format!("T-exec-{}", uuid::Uuid::new_v4().simple());
    let status_file = harness().root.join(format!("{task}.status"));
    let script = harness().root.join(format!("{task}.py"));
    std::fs::write(&script, PY_AGENT).unwrap();

    let out = Command::new(WARDEN)
        .args(["exec", "--identity"])
        .arg(&alice)
        .args([
            "--agent",
            "report-bot",
            "--task",
            &task,
            "--roles",
            "analyst",
            "--",
            "python3",
        ])
        .arg(&script)
        .arg(&status_file)
        .output()
        .unwrap();
    let exited = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exec exits with the command's status\n{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains(&format!("agent {task} human:alice 2")), "{text}");
    // The private directory is gone.
    let certdir = text
        .lines()
        .find_map(|l| l.strip_prefix("certdir "))
        .expect("certdir printed");
    assert!(
        text.contains("modes 0o700 0o600"),
        "the directory is private and the key 0600: {text}"
    );
    assert!(!Path::new(certdir).exists(), "{certdir} was not removed");

    // The session the agent left open was ended by the revocation.
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        let s = std::fs::read_to_string(&status_file).unwrap_or_default();
        if s.contains("ended") {
            break s;
        }
        assert!(Instant::now() < deadline, "the left-open session did not end: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let session = report
        .lines()
        .next()
        .unwrap()
        .strip_prefix("connected ")
        .unwrap()
        .trim()
        .to_string();
    let ended = report.lines().find(|l| l.starts_with("ended")).unwrap();
    assert!(ended.contains("57P01") && ended.contains("revoked"), "{ended}");
    let at: f64 = ended.rsplit(' ').next().unwrap().parse().unwrap();
    eprintln!(
        "exec: command exit to left-open session ended: {:.0} ms",
        (at - exited) * 1000.0
    );

    let end = w.wait_for_event(&["--session", &session, "--event", "session.end"], |_| true);
    assert!(end["reason"].as_str().unwrap().starts_with("revocation:"), "{end}");
    let revoked = w.wait_for_event(&["--event", "credential.revoked", "--task", &task], |_| true);
    assert_eq!(revoked["actor"], "human:alice");
    assert!(revoked["reason"].as_str().unwrap().contains("status 7"), "{revoked}");
    let issued = w.wait_for_event(&["--event", "credential.issued", "--task", &task], |_| true);
    assert_eq!(issued["identity"]["requester"], "human:alice");
    assert_eq!(issued["actor"], "human:alice");
}

#[tokio::test]
async fn api_locks_end_live_sessions_and_only_admins_lock_others() {
    let w = api_warden();
    let alice = w.issue("human", "alice", &["--ttl", "1h"]);
    let carol = w.issue("human", "carol", &["--ttl", "1h"]);
    let bob = w.issue("human", "bob", &["--ttl", "1h"]);

    // bob's live session, seen by the admin.
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(w.port)
        .user("bob")
        .dbname("shop")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = tls_config(&bob.join("ca.crt"), Some(load_cert(&bob)));
    let (db, conn) = cfg
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let sid: String = db.query_one("SHOW warden.session", &[]).await.unwrap().get(0);

    let admin = client(&alice, true);
    let (status, sessions) = call(admin.get(format!("{}/v1/sessions", w.api))).await;
    assert_eq!(status, 200);
    assert!(
        sessions
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["session_id"] == sid.as_str()),
        "{sessions}"
    );
    // carol sees only his own (none).
    let (_, theirs) = call(client(&carol, true).get(format!("{}/v1/sessions", w.api))).await;
    assert!(!theirs
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["session_id"] == sid.as_str()));
    // carol may not lock bob's session or an identity.
    for (target, value) in [("session", sid.as_str()), ("identity", "human:bob"), ("task", "T-1")] {
        let (status, body) = call(
            client(&carol, true)
                .post(format!("{}/v1/locks", w.api))
                .json(&serde_json::json!({"target": target, "value": value})),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{body}"
        );
    }

    // A session that is not live is not locked (the lock would stop nothing); nor is a prefix of
    // bob's session for carol, who may not see it.
    let (status, body) = call(
        admin
            .post(format!("{}/v1/locks", w.api))
            .json(&serde_json::json!({"target": "session", "value": "no-such-session"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, body) = call(
        client(&carol, true)
            .post(format!("{}/v1/locks", w.api))
            .json(&serde_json::json!({"target": "session", "value": &sid[..8]})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );

    // The admin locks it by a unique prefix: the lock names the whole id.
    let locked_at = Instant::now();
    let (status, lock) = call(
        admin
            .post(format!("{}/v1/locks", w.api))
            .json(&serde_json::json!({"target": "session", "value": &sid[..8], "reason": "api lock test"})),
    )
    .await;
    assert_eq!(status, 201, "{lock}");
    assert_eq!(lock["target"]["value"], sid.as_str(), "{lock}");
    let err = conn.await.unwrap().expect_err("the session must be ended");
    let took = locked_at.elapsed();
    let db_err = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db_err.code().code(), "57P01");
    assert!(db_err.message().contains(lock["id"].as_str().unwrap()) && db_err.message().contains("api lock test"));
    eprintln!(
        "API session lock (request sent) to disconnect: {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    assert!(took < Duration::from_secs(1), "{took:?}");

    let id = lock["id"].as_str().unwrap();
    let (status, listed) = call(admin.get(format!("{}/v1/locks", w.api))).await;
    assert_eq!(status, 200);
    assert!(listed.as_array().unwrap().iter().any(|l| l["id"] == id));
    let (status, _) = call(client(&carol, true).delete(format!("{}/v1/locks/{id}", w.api))).await;
    assert_eq!(status, 403);
    let (status, lifted) = call(admin.delete(format!("{}/v1/locks/{id}", w.api))).await;
    assert_eq!(status, 200);
    assert_eq!(lifted["removed_by"], "human:alice");
    w.wait_for_event(&["--event", "lock.created"], |e| {
        e["lock"]["id"] == id && e["actor"] == "human:alice"
    });
    w.wait_for_event(&["--event", "lock.removed"], |e| e["lock"]["id"] == id);

    // A locked caller may not lift its lock, even one it made (lifting gives access back): carol
    // locks herself as a requester, then only an admin lifts it.
    let (status, own) = call(
        client(&carol, true)
            .post(format!("{}/v1/locks", w.api))
            .json(&serde_json::json!({"target": "requester", "value": "human:carol", "reason": "e2e"})),
    )
    .await;
    assert_eq!(status, 201, "{own}");
    let own_id = own["id"].as_str().unwrap();
    let (status, body) = call(client(&carol, true).delete(format!("{}/v1/locks/{own_id}", w.api))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("locked")),
        "{body}"
    );
    let (status, _) = call(admin.delete(format!("{}/v1/locks/{own_id}", w.api))).await;
    assert_eq!(status, 200);
}

/// `warden exec` as the human in `cred`, for report-bot on `task`, running `command`.
fn exec_as(cred: &Path, task: &str, command: &[&str]) -> Command {
    let mut c = Command::new(WARDEN);
    c.args(["exec", "--identity"])
        .arg(cred)
        .args(["--agent", "report-bot", "--task", task, "--"])
        .args(command);
    c
}

#[test]
fn exec_forwards_signals_and_exits_with_the_commands_status() {
    use std::io::{BufRead, BufReader};
    let w = api_warden();
    let alice = w.issue("human", "alice", &["--ttl", "1h"]);
    let task = format!("T-sig-{}", uuid::Uuid::new_v4().simple());
    let mut child = exec_as(
        &alice,
        &task,
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got-term");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
    // And the credential was revoked on the way out.
    let revoked = w.wait_for_event(&["--event", "credential.revoked", "--task", &task], |_| true);
    assert!(revoked["reason"].as_str().unwrap().contains("status 42"), "{revoked}");
}

#[test]
fn exec_of_a_missing_command_exits_127_as_shells_do() {
    let w = api_warden();
    let alice = w.issue("human", "alice", &["--ttl", "1h"]);
    let out = exec_as(&alice, "T-missing", &["/no/such/command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot start /no/such/command"));
}

#[test]
fn a_killed_exec_takes_its_command_with_it() {
    use std::io::{BufRead, BufReader};
    let w = api_warden();
    let alice = w.issue("human", "alice", &["--ttl", "1h"]);
    let task = format!("T-kill-{}", uuid::Uuid::new_v4().simple());
    let mut exec = exec_as(&alice, &task, &["sh", "-c", "echo $$; while :; do sleep 0.05; done"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(exec.stdout.take().unwrap()).lines();
    let pid: i32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "the command runs");
    exec.kill().unwrap(); // SIGKILL: `warden exec` cannot revoke anything now
    exec.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // The command was a child of `warden exec` and is reparented once killed; it must not live on
    // with a credential nobody will revoke.
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the command outlived the killed `warden exec`"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes an API-issued credential to a directory the test clients can use.
fn save_issued(body: &Value) -> PathBuf {
    let dir = unique_dir(&harness().root, "api-issued");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("identity.crt"), body["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("identity.key"), body["private_key"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("ca.crt"), body["ca_certificate"].as_str().unwrap()).unwrap();
    dir
}

#[tokio::test]
async fn agents_reach_only_their_own_credential_and_inputs_are_checked() {
    let w = api_warden();
    let alice = w.issue("human", "alice", &["--ttl", "1h"]);
    let bob = w.issue("human", "bob", &["--ttl", "1h"]);
    let (status, for_alice) = w
        .issue_via_api(&alice, serde_json::json!({"agent": "report-bot", "task": "T-own-a"}))
        .await;
    assert_eq!(status, 201, "{for_alice}");
    let (status, for_bob) = w
        .issue_via_api(&bob, serde_json::json!({"agent": "report-bot", "task": "T-own-b"}))
        .await;
    assert_eq!(status, 201, "{for_bob}");
    let agent = client(&save_issued(&for_alice), true);

    // The agent name is shared by alice's and bob's report-bot: the agent sees and revokes only its own.
    let (status, listed) = call(agent.get(format!("{}/v1/credentials", w.api))).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![for_alice["credential_id"].as_str().unwrap()]);
    let bobs = for_bob["credential_id"].as_str().unwrap();
    let (status, body) = call(agent.post(format!("{}/v1/credentials/{bobs}/revoke", w.api))).await;
    assert_eq!(status, 403, "{body}");
    for (target, value) in [("requester", "agent:report-bot"), ("credential", bobs)] {
        let (status, body) = call(
            agent
                .post(format!("{}/v1/locks", w.api))
                .json(&serde_json::json!({"target": target, "value": value})),
        )
        .await;
        assert_eq!(status, 403, "{target}: {body}");
    }

    // A narrow credential: none of lock-bot's roles (analyst) are in alice's (writer only).
    let narrow = w.issue("human", "alice", &["--ttl", "1h", "--roles", "writer"]);
    let (status, body) = w
        .issue_via_api(&narrow, serde_json::json!({"agent": "lock-bot", "task": "T-n"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("outside_bounds")),
        "{body}"
    );

    // Text that would travel into PostgreSQL settings and messages must be printable.
    let (status, body) = w
        .issue_via_api(
            &alice,
            serde_json::json!({"agent": "report-bot", "task": "x\u{0}client_encoding\u{0}SJIS"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let admin = client(&alice, true);
    let (status, body) = call(
        admin
            .post(format!("{}/v1/locks", w.api))
            .json(&serde_json::json!({"target": "identity", "value": "report-bot"})),
    )
    .await;
    assert_eq!(status, 400, "an identity without its kind would match nothing: {body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("KIND:NAME"),
        "{body}"
    );
    // Malformed JSON and unknown methods answer in the JSON error shape too.
    let (status, body) = call(
        admin
            .post(format!("{}/v1/locks", w.api))
            .header("content-type", "application/json")
            .body("{"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, body) = call(admin.put(format!("{}/v1/sessions", w.api))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{body}"
    );
}
