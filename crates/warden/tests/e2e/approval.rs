//! Access requests for roles with `approval = "session"`, on a Warden of their own whose config makes
//! `writer` need a dba's approval: refused without approval, self-approval refused, approve then assume
//! then the write runs, deny, expiry, and a role that lets the requester approve.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

struct ApprovalWarden {
    config: PathBuf,
    port: u16,
    api: String,
}

fn approval_warden() -> &'static ApprovalWarden {
    static W: OnceLock<ApprovalWarden> = OnceLock::new();
    W.get_or_init(|| {
        let h = harness();
        let port = warden::cluster::free_port().unwrap();
        let api_port = warden::cluster::free_port().unwrap();
        let text = std::fs::read_to_string(&h.config).unwrap();
        let replace = |text: String, from: &str, to: &str| {
            assert!(text.contains(from), "the harness config changed: {from:?} not found");
            text.replacen(from, to, 1)
        };
        let text = replace(
            text,
            &format!("postgres_listen = \"127.0.0.1:{}\"", h.warden_port),
            &format!("postgres_listen = \"127.0.0.1:{port}\"\napi_listen = \"127.0.0.1:{api_port}\"\nreview_timeout = \"4s\""),
        );
        let text = replace(
            text,
            "fsync = \"batch\"",
            "fsync = \"batch\"\npath = \"audit/approval.jsonl\"",
        );
        let text = replace(
            text,
            "name = \"writer\"\ndatabases = [\"shop\", \"shop2\"]",
            "name = \"writer\"\napproval = \"session\"\napprovers = [\"dba\"]\ndatabases = [\"shop\", \"shop2\"]",
        );
        let text = replace(
            text,
            "name = \"alice\"\nroles = [\"analyst\", \"writer\"]",
            "name = \"alice\"\nroles = [\"analyst\", \"writer\", \"fixer\", \"reviewed\"]",
        );
        let text = replace(
            text,
            "name = \"carol\"\nroles = [\"analyst\"]",
            "name = \"carol\"\nroles = [\"analyst\", \"dba\"]",
        );
        let text = replace(
            text,
            "name = \"report-bot\"\nroles = [\"analyst\", \"writer\"]",
            "name = \"report-bot\"\nroles = [\"analyst\", \"writer\", \"fixer\", \"reviewed\"]",
        );
        let text = format!(
            "{text}\n[[role]]\nname = \"dba\"\ndatabases = [\"shop\"]\nread = [\"public.orders(id)\"]\n\n\
             [[role]]\nname = \"fixer\"\ndatabases = [\"shop\"]\nread = [\"public.orders(id, status)\"]\n\
             approval = \"session\"\napprovers = [\"analyst\"]\nrequester_may_approve = true\n\n\
             [[role]]\nname = \"reviewed\"\ndatabases = [\"shop2\"]\nread = [\"public.orders\"]\nwrite = [\"public.orders\"]\n\
             approval = \"statement\"\napprovers = [\"dba\"]\n"
        );
        let config = h.deploy.join("approval.toml");
        std::fs::write(&config, text).unwrap();
        spawn_warden(&config, &h.root.join("approval-warden.log"), port).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err() {
            assert!(Instant::now() < deadline, "the API did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        ApprovalWarden {
            config,
            port,
            api: format!("https://127.0.0.1:{api_port}"),
        }
    })
}

impl ApprovalWarden {
    fn human(&self, name: &str) -> PathBuf {
        let out = unique_dir(&harness().root, &format!("appr-{name}"));
        run_ok(
            Command::new(WARDEN)
                .args(["issue", "--config"])
                .arg(&self.config)
                .args(["--kind", "human", "--name", name, "--ttl", "1h", "--out"])
                .arg(&out),
        );
        out
    }

    /// report-bot acting for alice on `task`, issued through the API; written as a credential directory.
    async fn agent(&self, alice: &Path, task: &str) -> (PathBuf, Value) {
        self.agent_with(alice, serde_json::json!({"agent": "report-bot", "task": task}))
            .await
    }

    async fn agent_with(&self, alice: &Path, request: Value) -> (PathBuf, Value) {
        let c = api(alice);
        let resp = c
            .post(format!("{}/v1/credentials", self.api))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let body: Value = resp.json().await.unwrap();
        let dir = unique_dir(&harness().root, "appr-agent");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("identity.crt"), body["certificate"].as_str().unwrap()).unwrap();
        std::fs::write(dir.join("identity.key"), body["private_key"].as_str().unwrap()).unwrap();
        // libpq refuses a key others can read.
        std::fs::set_permissions(
            dir.join("identity.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(dir.join("ca.crt"), body["ca_certificate"].as_str().unwrap()).unwrap();
        std::fs::write(
            dir.join("profile.toml"),
            format!("identity = \"agent:report-bot\"\napi = \"{}\"\n", self.api),
        )
        .unwrap();
        (dir, body)
    }

    fn requests(&self, cred: &Path, args: &[&str]) -> Output {
        Command::new(WARDEN)
            .arg("requests")
            .args(args)
            .arg("--identity")
            .arg(cred)
            .output()
            .unwrap()
    }

    fn list(&self, cred: &Path) -> Vec<Value> {
        let out = self.requests(cred, &["list", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn create(&self, cred: &Path, roles: &str, reason: &str, extra: &[&str]) -> String {
        let mut args = vec!["create", "--roles", roles, "--reason", reason, "--json"];
        args.extend_from_slice(extra);
        let out = self.requests(cred, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let q: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(q["state"], "pending");
        q["id"].as_str().unwrap().to_string()
    }

    fn audit(&self, args: &[&str]) -> Vec<Value> {
        audit_in(&self.config, args)
    }

    async fn write(&self, cred: &Path) -> Result<u64, tokio_postgres::Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user("report-bot")
            .dbname("shop")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let client = connect_with(&cfg, &cred.join("ca.crt"), Some(load_cert(cred))).await?;
        // Rolled back: the red-team tests compare the shop's data around their cases.
        client.batch_execute("BEGIN").await?;
        let n = client
            .execute("UPDATE orders SET status = status WHERE id = 1", &[])
            .await;
        client.batch_execute("ROLLBACK").await?;
        n
    }
}

fn api(cred: &Path) -> reqwest::Client {
    let tls = tls_config(&cred.join("ca.crt"), Some(load_cert(cred)));
    reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap()
}

fn refused(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected a refusal naming {needle:?}: {}",
        stdout(out)
    );
    assert!(
        stderr(out).contains(needle),
        "{:?} does not name {needle:?}",
        stderr(out)
    );
}

#[tokio::test]
async fn a_write_role_is_requested_approved_by_a_dba_then_assumed() {
    let w = approval_warden();
    let (alice, bob, carol) = (w.human("alice"), w.human("bob"), w.human("carol"));
    let task = format!("T-appr-{}", uuid::Uuid::new_v4().simple());

    // `warden issue` leaves writer out by default too; the admin may name it.
    let issued = |extra: &[&str]| {
        let out = unique_dir(&harness().root, "appr-issue");
        let mut cmd = Command::new(WARDEN);
        cmd.args(["issue", "--config"])
            .arg(&w.config)
            .args(["--kind", "human", "--name", "alice", "--out"])
            .arg(&out)
            .args(extra);
        String::from_utf8_lossy(&run_ok(&mut cmd).stdout).into_owned()
    };
    let by_default = issued(&[]);
    assert!(by_default.contains("for analyst, reviewed "), "{by_default}");
    let named = issued(&["--roles", "analyst,writer"]);
    assert!(named.contains("for analyst, writer "), "{named}");
    assert!(named.contains("carries writer without an access request"), "{named}");
    // The agent's credential never carries writer by default, and cannot be issued with it.
    let (agent, body) = w.agent(&alice, &task).await;
    assert_eq!(body["roles"], serde_json::json!(["analyst", "reviewed"]), "{body}");
    let resp = api(&alice)
        .post(format!("{}/v1/credentials", w.api))
        .json(&serde_json::json!({"agent": "report-bot", "task": task, "roles": ["analyst", "writer"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "needs_approval", "{err}");

    // Without approval the write is refused.
    let denied = w.write(&agent).await.expect_err("no writer role yet");
    assert_eq!(denied.code().unwrap().code(), "42501", "{denied}");

    let id = w.create(&agent, "writer", "fix order 1", &[]);
    // Nobody approves their own request; the requester may not either (writer does not allow it);
    // bob holds no dba role.
    refused(&w.requests(&agent, &["approve", &id]), "only humans approve");
    refused(&w.requests(&alice, &["approve", &id]), "requester_may_approve");
    refused(&w.requests(&bob, &["approve", &id]), "dba");
    // Not approved yet: cannot be assumed.
    let early = unique_dir(&harness().root, "appr-early");
    refused(
        &w.requests(&agent, &["assume", &id, "--out", &early.to_string_lossy()]),
        "pending",
    );

    // carol sees it pending, with what it asks, and may decide it.
    let listed = w.list(&carol);
    let q = listed
        .iter()
        .find(|q| q["id"] == id.as_str())
        .expect("carol sees the request");
    assert_eq!(q["kind"], "session");
    assert_eq!(q["state"], "pending");
    assert_eq!(q["agent"], "agent:report-bot");
    assert_eq!(q["requester"], "human:alice");
    assert_eq!(q["task"], task.as_str());
    assert_eq!(q["roles"], serde_json::json!(["writer"]));
    assert_eq!(q["may_approve"], true);
    assert!(q["age_seconds"].as_i64().unwrap() >= 0);
    let out = w.requests(&carol, &["approve", &id, "--reason", "ok for order 1"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let elevated = unique_dir(&harness().root, "appr-elevated");
    let out = w.requests(&agent, &["assume", &id, "--out", &elevated.to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let profile = std::fs::read_to_string(elevated.join("profile.toml")).unwrap();
    assert!(
        profile.contains(&format!("task = \"{task}\"")) && profile.contains("requester = \"human:alice\""),
        "{profile}"
    );
    assert!(profile.contains("\"writer\""), "{profile}");
    assert_eq!(w.write(&elevated).await.expect("the write runs once approved"), 1);
    // Assumed once.
    refused(
        &w.requests(
            &agent,
            &[
                "assume",
                &id,
                "--out",
                &unique_dir(&harness().root, "x").to_string_lossy(),
            ],
        ),
        "assumed",
    );

    let events = w.audit(&["--task", &task]);
    let find = |name: &str| {
        events
            .iter()
            .find(|e| e["event"] == name && e["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no {name} for {id}"))
    };
    assert_eq!(find("request.created")["actor"], "agent:report-bot");
    assert_eq!(find("request.created")["reason"], "fix order 1");
    assert_eq!(find("request.approved")["actor"], "human:carol");
    assert_eq!(find("request.approved")["reason"], "ok for order 1");
    assert_eq!(find("request.assumed")["actor"], "agent:report-bot");
}

/// A credential assumed through a request is obtained with the agent's credential that asked: it
/// ends no later, and revoking the agent's credential (or alice's) revokes it too.
#[tokio::test]
async fn an_assumed_credential_ends_and_is_revoked_with_the_credential_that_asked() {
    let w = approval_warden();
    let (alice, carol) = (w.human("alice"), w.human("carol"));
    let task = format!("T-assume-bound-{}", uuid::Uuid::new_v4().simple());
    let (agent, body) = w
        .agent_with(
            &alice,
            serde_json::json!({"agent": "report-bot", "task": task, "ttl": "3m"}),
        )
        .await;
    let agent_id = body["credential_id"].as_str().unwrap().to_string();
    let rfc3339 = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
    };
    let agent_ends = rfc3339(body["not_after"].as_str().unwrap());
    let id = w.create(&agent, "writer", "fix order 1", &["--ttl", "15m"]);
    let out = w.requests(&carol, &["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let elevated = unique_dir(&harness().root, "appr-bound");
    let out = w.requests(&agent, &["assume", &id, "--out", &elevated.to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let profile = std::fs::read_to_string(elevated.join("profile.toml")).unwrap();
    let field = |name: &str| {
        profile
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .unwrap_or_else(|| panic!("no {name} in {profile}"))
            .trim_matches('"')
            .to_string()
    };
    let (elevated_id, elevated_ends) = (field("credential_id"), rfc3339(&field("expires")));
    assert!(
        elevated_ends <= agent_ends,
        "the assumed credential ends at {elevated_ends}, after the agent's credential that asked for it ({agent_ends})"
    );
    assert_eq!(w.write(&elevated).await.expect("the write runs once approved"), 1);

    // alice, the agent's requester, revokes the agent's credential: the assumed one goes with it.
    let resp = api(&alice)
        .post(format!("{}/v1/credentials/{agent_id}/revoke", w.api))
        .json(&serde_json::json!({"reason": "task called off"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let err = w
        .write(&elevated)
        .await
        .expect_err("the assumed credential is revoked too");
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(
        message.contains(&agent_id) && message.contains("task called off"),
        "{message}"
    );
    let revoked: Vec<Value> = w
        .audit(&["--event", "credential.revoked", "--task", &task])
        .into_iter()
        .filter(|e| e["credential_id"] == elevated_id.as_str())
        .collect();
    assert_eq!(revoked.len(), 1, "one credential.revoked for the assumed credential");
    assert_eq!(revoked[0]["actor"], "human:alice");
}

/// An asking credential with less than a minute left is refused before the approval is used up.
#[tokio::test]
async fn an_approval_is_not_used_up_by_a_credential_about_to_expire() {
    let w = approval_warden();
    let (alice, carol) = (w.human("alice"), w.human("carol"));
    let task = format!("T-assume-late-{}", uuid::Uuid::new_v4().simple());
    let (agent, _) = w
        .agent_with(
            &alice,
            serde_json::json!({"agent": "report-bot", "task": task, "ttl": "40s"}),
        )
        .await;
    let id = w.create(&agent, "writer", "fix order 1", &[]);
    let out = w.requests(&carol, &["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let early = unique_dir(&harness().root, "appr-late");
    refused(
        &w.requests(&agent, &["assume", &id, "--out", &early.to_string_lossy()]),
        "too soon",
    );
    // Still approved: a fresh credential for the same agent, requester and task assumes it.
    let (fresh, _) = w.agent(&alice, &task).await;
    let elevated = unique_dir(&harness().root, "appr-late-ok");
    let out = w.requests(&fresh, &["assume", &id, "--out", &elevated.to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test]
async fn denied_and_expired_requests_cannot_be_assumed() {
    let w = approval_warden();
    let (alice, carol) = (w.human("alice"), w.human("carol"));
    let task = format!("T-appr-{}", uuid::Uuid::new_v4().simple());
    let (agent, _) = w.agent(&alice, &task).await;

    let id = w.create(&agent, "writer", "bulk fix", &[]);
    let out = w.requests(&carol, &["deny", &id, "--reason", "use a ticket"]);
    assert!(out.status.success(), "{}", stderr(&out));
    refused(
        &w.requests(
            &agent,
            &[
                "assume",
                &id,
                "--out",
                &unique_dir(&harness().root, "d").to_string_lossy(),
            ],
        ),
        "denied",
    );
    let mine = w.list(&agent);
    assert_eq!(mine.iter().find(|q| q["id"] == id.as_str()).unwrap()["state"], "denied");
    let denied = w.audit(&["--task", &task, "--event", "request.denied"]);
    assert_eq!(denied[0]["actor"], "human:carol");
    assert_eq!(denied[0]["reason"], "use a ticket");

    let short = w.create(&agent, "writer", "quick one", &["--wait", "1s"]);
    std::thread::sleep(Duration::from_millis(2500));
    refused(&w.requests(&carol, &["approve", &short]), "expired");
    assert_eq!(
        w.list(&agent).iter().find(|q| q["id"] == short.as_str()).unwrap()["state"],
        "expired"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    // Written by whichever Warden sharing the state store notices first (the API tests run another
    // one on the same deployment, with its own audit log).
    let logs: Vec<PathBuf> = ["approval.toml", "api.toml"]
        .iter()
        .map(|c| harness().deploy.join(c))
        .filter(|c| c.exists())
        .collect();
    while !logs.iter().any(|c| {
        audit_in(c, &["--task", &task, "--event", "request.expired"])
            .iter()
            .any(|e| e["request_id"] == short.as_str())
    }) {
        assert!(Instant::now() < deadline, "no request.expired event");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A request needs a reason, and only roles that need approval are requested.
    refused(
        &w.requests(&agent, &["create", "--roles", "writer", "--reason", " "]),
        "reason is required",
    );
    refused(
        &w.requests(&agent, &["create", "--roles", "analyst", "--reason", "x"]),
        "does not need an access request",
    );
}

#[tokio::test]
async fn a_role_that_allows_it_is_approved_by_the_agents_requester() {
    let w = approval_warden();
    let alice = w.human("alice");
    let task = format!("T-appr-{}", uuid::Uuid::new_v4().simple());
    let (agent, _) = w.agent(&alice, &task).await;
    let id = w.create(&agent, "fixer", "look at statuses", &[]);
    let out = w.requests(&alice, &["approve", &id]);
    assert!(
        out.status.success(),
        "fixer says requester_may_approve: {}",
        stderr(&out)
    );
    let out = w.requests(
        &agent,
        &[
            "assume",
            &id,
            "--out",
            &unique_dir(&harness().root, "f").to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

// ---- Statement review (approval = "statement"): role `reviewed` writes shop2.orders, a dba decides each write.

fn pg_log() -> String {
    std::fs::read_to_string(harness().cluster.log_path()).unwrap_or_default()
}

impl ApprovalWarden {
    /// A held statement containing `marker`, as carol (a dba) sees it in `warden requests list`.
    fn wait_for_review(&self, carol: &Path, marker: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if let Some(q) = self
                .list(carol)
                .into_iter()
                .find(|q| q["kind"] == "statement" && q["statement"].as_str().is_some_and(|s| s.contains(marker)))
            {
                return q;
            }
            assert!(Instant::now() < deadline, "no held statement with {marker}");
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn psql(&self, cred: &Path, commands: &[&str]) -> std::process::Child {
        let mut cmd = Command::new(psql_bin());
        cmd.arg("-X").arg(format!(
            "host=127.0.0.1 port={} dbname=shop2 user=report-bot sslmode=verify-full sslrootcert={d}/ca.crt sslcert={d}/identity.crt sslkey={d}/identity.key",
            self.port,
            d = cred.display()
        ));
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        cmd.env_remove("PGPASSWORD")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    async fn reviewed_agent(&self, alice: &Path) -> (PathBuf, String) {
        let task = format!("T-rev-{}", uuid::Uuid::new_v4().simple());
        let (agent, body) = self
            .agent_with(
                alice,
                serde_json::json!({"agent": "report-bot", "task": task, "roles": ["reviewed"], "database": "shop2"}),
            )
            .await;
        assert_eq!(body["roles"], serde_json::json!(["reviewed"]));
        (agent, task)
    }
}

#[tokio::test]
async fn a_held_write_runs_only_once_a_dba_approves_simple_protocol() {
    let w = approval_warden();
    let (alice, carol) = (w.human("alice"), w.human("carol"));
    let (agent, task) = w.reviewed_agent(&alice).await;
    let marker = format!("rev-ok-{}", uuid::Uuid::new_v4().simple());
    let insert = format!("INSERT INTO orders (customer_id, status, total, region) VALUES (1, '{marker}', 1, 'eu')");
    // Outside a transaction, then inside one.
    let child = w.psql(
        &agent,
        &[
            &insert,
            "BEGIN",
            &insert.replace(&marker, &format!("{marker}-tx")),
            "COMMIT",
        ],
    );

    let held = w.wait_for_review(&carol, &marker);
    let id = held["id"].as_str().unwrap().to_string();
    assert_eq!(held["agent"], "agent:report-bot");
    assert_eq!(held["requester"], "human:alice");
    assert_eq!(held["task"], task.as_str());
    assert_eq!(held["may_approve"], true);
    // Held: PostgreSQL has not seen it.
    assert!(!pg_log().contains(&marker), "the held statement reached PostgreSQL");
    // The agent's requester and the agent itself may not approve; a dba may.
    refused(&w.requests(&alice, &["approve", &id]), "requester_may_approve");
    refused(&w.requests(&agent, &["approve", &id]), "only humans approve");
    let out = w.requests(&carol, &["approve", &id, "--reason", "looks right"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The second write, inside the transaction, is held too.
    let tx = w.wait_for_review(&carol, &format!("{marker}-tx"));
    let out = w.requests(&carol, &["approve", tx["id"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("NOTICE:  warden: waiting for approval, review id {id}")),
        "{err}"
    );
    assert_eq!(stdout(&out).matches("INSERT 0 1").count(), 2, "{}", stdout(&out));
    assert!(pg_log().contains(&marker), "the approved statement ran as sent");

    let events = audit_in(&w.config, &["--task", &task]);
    let with = |name: &str| {
        events
            .iter()
            .find(|e| e["event"] == name && e["review_id"] == id.as_str())
    };
    assert!(with("review.pending").is_some(), "review.pending");
    assert_eq!(with("review.approved").unwrap()["actor"], "human:carol");
    let query = with("query").expect("the query event links to its review");
    assert_eq!(query["decision"], "allow");
    assert!(query["statement"].as_str().unwrap().contains(&marker));
}

#[tokio::test]
async fn a_denied_write_never_runs_and_names_who_denied_it() {
    let w = approval_warden();
    let (alice, carol) = (w.human("alice"), w.human("carol"));
    let (agent, task) = w.reviewed_agent(&alice).await;
    let marker = format!("rev-no-{}", uuid::Uuid::new_v4().simple());
    let insert = format!("INSERT INTO orders (customer_id, status, total, region) VALUES (1, '{marker}', 1, 'eu')");
    let child = w.psql(&agent, &["BEGIN", &insert, "SELECT 'after'", "ROLLBACK"]);
    let held = w.wait_for_review(&carol, &marker);
    let id = held["id"].as_str().unwrap().to_string();
    let out = w.requests(&carol, &["deny", &id, "--reason", "not today"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "ERROR:  warden: review {id} was denied by human:carol: not today"
        )),
        "{err}"
    );
    // The transaction is aborted as after any failed statement.
    assert!(err.contains("current transaction is aborted"), "{err}");
    assert!(!pg_log().contains(&marker), "a denied statement reached PostgreSQL");
    let denied = audit_in(&w.config, &["--task", &task, "--event", "review.denied"]);
    assert_eq!(denied[0]["actor"], "human:carol");
    assert_eq!(denied[0]["reason"], "not today");
    let query = audit_in(&w.config, &["--task", &task, "--event", "query", "--decision", "deny"]);
    assert!(query.iter().any(|q| q["review_id"] == id.as_str()), "{query:?}");
}

#[tokio::test]
async fn extended_protocol_writes_are_held_with_their_parameters_and_time_out() {
    let w = approval_warden();
    let (alice, carol) = (w.human("alice"), w.human("carol"));
    let (agent, task) = w.reviewed_agent(&alice).await;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(w.port)
        .user("report-bot")
        .dbname("shop2")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let client = connect_with(&cfg, &agent.join("ca.crt"), Some(load_cert(&agent)))
        .await
        .unwrap();

    // Approved: runs with its parameters.
    let marker = format!("rev-ext-{}", uuid::Uuid::new_v4().simple());
    let sql = format!("INSERT INTO orders (customer_id, status, total, region) VALUES (1, $1, 1, 'eu') /* {marker} */");
    let status = format!("{marker}-param");
    let (sql2, status2) = (sql.clone(), status.clone());
    let client = std::sync::Arc::new(client);
    let c2 = client.clone();
    let run = tokio::spawn(async move { c2.execute(sql2.as_str(), &[&status2]).await });
    let carol2 = carol.clone();
    let marker2 = marker.clone();
    let held = tokio::task::spawn_blocking(move || approval_warden().wait_for_review(&carol2, &marker2))
        .await
        .unwrap();
    assert_eq!(held["parameters"], serde_json::json!([status]), "{held}");
    assert!(
        !pg_log().contains(&marker),
        "held at Execute: PostgreSQL has not run it"
    );
    // Other sessions are not held up meanwhile, not even the same agent's.
    let other = connect_with(&cfg, &agent.join("ca.crt"), Some(load_cert(&agent)))
        .await
        .unwrap();
    let n: i64 = other
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 4);
    let id = held["id"].as_str().unwrap().to_string();
    let carol3 = carol.clone();
    let out = tokio::task::spawn_blocking(move || approval_warden().requests(&carol3, &["approve", &id]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(run.await.unwrap().expect("approved"), 1);

    // Denied: 42501 naming who, and PostgreSQL never runs it.
    let no = format!("rev-extno-{}", uuid::Uuid::new_v4().simple());
    let c3 = client.clone();
    let sql3 = format!("DELETE FROM orders WHERE status = $1 /* {no} */");
    let no2 = no.clone();
    let run = tokio::spawn(async move { c3.execute(sql3.as_str(), &[&no2]).await });
    let (carol4, no3) = (carol.clone(), no.clone());
    let held = tokio::task::spawn_blocking(move || approval_warden().wait_for_review(&carol4, &no3))
        .await
        .unwrap();
    let id = held["id"].as_str().unwrap().to_string();
    let carol5 = carol.clone();
    let out = tokio::task::spawn_blocking(move || {
        approval_warden().requests(&carol5, &["deny", &id, "--reason", "keep them"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = run.await.unwrap().expect_err("denied");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message().contains("was denied by human:carol: keep them"),
        "{}",
        db.message()
    );
    assert!(!pg_log().contains(&no));

    // Nobody decides: refused after review_timeout (4s), and the session goes on.
    let late = format!("rev-late-{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let err = client
        .execute(
            format!("UPDATE orders SET status = $1 WHERE id = 1 /* {late} */").as_str(),
            &[&late],
        )
        .await
        .expect_err("times out");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "42501");
    assert!(db.message().contains("was not decided within 4s"), "{}", db.message());
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert!(!pg_log().contains(&late));
    assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    let timeouts = audit_in(&w.config, &["--task", &task, "--event", "review.timeout"]);
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
}

#[tokio::test]
async fn a_simple_protocol_write_nobody_decides_times_out() {
    let w = approval_warden();
    let alice = w.human("alice");
    let (agent, task) = w.reviewed_agent(&alice).await;
    let marker = format!("rev-simple-late-{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let child = w.psql(
        &agent,
        &[
            &format!("UPDATE orders SET status = '{marker}' WHERE id = 2"),
            "SELECT 'still here'",
        ],
    );
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(err.contains("was not decided within 4s"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert!(
        stdout(&out).contains("still here"),
        "the session goes on: {}",
        stdout(&out)
    );
    assert!(!pg_log().contains(&marker));
    assert_eq!(
        audit_in(&w.config, &["--task", &task, "--event", "review.timeout"]).len(),
        1
    );
}

/// A client that sends protocol messages exactly as a test spells them, to check what Warden does
/// with sequences that drivers rarely send.
pub(crate) mod raw {
    use std::path::Path;
    use std::sync::Arc;

    use bytes::{BufMut, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use warden_wire::backend::BackendMessage;
    use warden_wire::frontend as fe;

    use crate::common::{load_cert, tls_config};

    pub struct Raw {
        stream: tokio_rustls::client::TlsStream<TcpStream>,
        buf: BytesMut,
    }

    /// One message from Warden: its tag, and for errors and notices `CODE: message`.
    pub type Msg = (char, String);

    impl Raw {
        pub async fn connect(port: u16, cred: &Path) -> Raw {
            Raw::connect_to(port, cred, "shop2").await
        }

        pub async fn connect_to(port: u16, cred: &Path, database: &str) -> Raw {
            Raw::connect_as(port, cred, "report-bot", database).await
        }

        pub async fn connect_as(port: u16, cred: &Path, user: &str, database: &str) -> Raw {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut b = BytesMut::new();
            fe::ssl_request(&mut b);
            tcp.write_all(&b).await.unwrap();
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer[0], b'S');
            let config = tls_config(&cred.join("ca.crt"), Some(load_cert(cred)));
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let stream = connector.connect(name, tcp).await.unwrap();
            let mut raw = Raw {
                stream,
                buf: BytesMut::new(),
            };
            let mut b = BytesMut::new();
            fe::startup_message(&[("user", user), ("database", database)], &mut b);
            raw.stream.write_all(&b).await.unwrap();
            let hello = raw.until_ready().await;
            assert!(hello.iter().all(|m| m.0 != 'E'), "{hello:?}");
            raw
        }

        pub async fn send(&mut self, messages: &[BytesMut]) {
            let mut all = BytesMut::new();
            for m in messages {
                all.extend_from_slice(m);
            }
            self.stream.write_all(&all).await.unwrap();
            self.stream.flush().await.unwrap();
        }

        /// Whether Warden closes the connection within `d` (what it sends before is read and dropped).
        pub async fn ends_within(&mut self, d: std::time::Duration) -> bool {
            self.last_words(d).await.is_some()
        }

        /// What Warden sends before it closes the connection within `d`, as text; `None` if it
        /// does not close it.
        pub async fn last_words(&mut self, d: std::time::Duration) -> Option<String> {
            let deadline = tokio::time::Instant::now() + d;
            loop {
                match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                    Err(_) => return None,
                    Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&self.buf).into_owned()),
                    Ok(Ok(_)) => {}
                }
            }
        }

        /// Messages up to and including the next ReadyForQuery.
        pub async fn until_ready(&mut self) -> Vec<Msg> {
            let mut out = Vec::new();
            loop {
                while let Some(frame) = warden_wire::split_frame(&mut self.buf, 1 << 24).unwrap() {
                    let text = match BackendMessage::parse(&frame) {
                        Ok(BackendMessage::ErrorResponse(e)) => {
                            format!("{}: {}", e.code().unwrap_or(""), e.message().unwrap_or(""))
                        }
                        _ if frame.tag == b'N' => String::from_utf8_lossy(frame.body()).into_owned(),
                        _ => String::new(),
                    };
                    out.push((frame.tag as char, text));
                    if frame.tag == b'Z' {
                        return out;
                    }
                }
                let n = tokio::time::timeout(std::time::Duration::from_secs(30), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("no answer within 30 s")
                    .unwrap();
                assert!(n > 0, "connection closed; so far {out:?}");
            }
        }
    }

    pub fn parse(name: &str, sql: &str) -> BytesMut {
        let mut b = BytesMut::new();
        fe::parse_message(name, sql, &mut b);
        b
    }

    /// Bind with text parameters.
    pub fn bind(portal: &str, statement: &str, params: &[&str]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_slice(portal.as_bytes());
        body.put_u8(0);
        body.put_slice(statement.as_bytes());
        body.put_u8(0);
        body.put_i16(0);
        body.put_i16(params.len() as i16);
        for p in params {
            body.put_i32(p.len() as i32);
            body.put_slice(p.as_bytes());
        }
        body.put_i16(0);
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_i32(body.len() as i32 + 4);
        b.extend_from_slice(&body);
        b
    }

    pub fn execute(portal: &str) -> BytesMut {
        let mut b = BytesMut::new();
        fe::execute_message(portal, 0, &mut b);
        b
    }

    pub fn describe(kind: u8, name: &str) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(b'D');
        b.put_i32(4 + 1 + name.len() as i32 + 1);
        b.put_u8(kind);
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b
    }

    pub fn close(kind: u8, name: &str) -> BytesMut {
        let mut b = describe(kind, name);
        b[0] = b'C';
        b
    }

    /// A fast-path function call of the function with this OID, no arguments.
    pub fn function_call(oid: i32) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(b'F');
        b.put_i32(4 + 4 + 2 + 2 + 2);
        b.put_i32(oid);
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
        b
    }

    pub fn sync() -> BytesMut {
        BytesMut::from(&b"S\0\0\0\x04"[..])
    }

    pub fn query(sql: &str) -> BytesMut {
        let mut b = BytesMut::new();
        fe::query(sql, &mut b);
        b
    }

    pub fn errors(msgs: &[Msg]) -> Vec<&str> {
        msgs.iter().filter(|m| m.0 == 'E').map(|m| m.1.as_str()).collect()
    }
}

impl ApprovalWarden {
    /// Denies the held statement containing `marker`, as carol, once it is listed.
    /// Approves the held statement containing `marker`, as carol, once it is listed.
    fn approve_when_held(&'static self, carol: PathBuf, marker: String) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let id = self.wait_for_review(&carol, &marker)["id"]
                .as_str()
                .unwrap()
                .to_string();
            let out = self.requests(&carol, &["approve", &id]);
            assert!(out.status.success(), "{}", stderr(&out));
        })
    }

    fn deny_when_held(&'static self, carol: PathBuf, marker: String) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let held = self.wait_for_review(&carol, &marker);
            let id = held["id"].as_str().unwrap().to_string();
            let out = self.requests(&carol, &["deny", &id, "--reason", "test"]);
            assert!(out.status.success(), "{}", stderr(&out));
            id
        })
    }
}

/// A raw protocol session of an agent acting for alice under the `reviewed` role (its writes are held
/// for review), with carol's credential (a dba, who may decide them).
async fn reviewed_session() -> (&'static ApprovalWarden, PathBuf, raw::Raw) {
    let w = approval_warden();
    let (alice, carol) = (w.human("alice"), w.human("carol"));
    let (agent, _task) = w.reviewed_agent(&alice).await;
    let c = raw::Raw::connect(w.port, &agent).await;
    (w, carol, c)
}

/// PostgreSQL ran a statement holding `marker` (its log shows statements as they execute).
fn pg_ran(marker: &str) -> bool {
    pg_log().lines().any(|l| l.contains(marker) && !l.contains("warden: "))
}

/// A write after a failed message of its batch is skipped by PostgreSQL: no one is asked to approve it,
/// and it is not recorded as run.
#[tokio::test]
async fn a_write_postgresql_will_skip_is_not_held() {
    use raw::*;
    let (w, _carol, mut c) = reviewed_session().await;
    let m = format!("rev-skipped-{}", uuid::Uuid::new_v4().simple());
    c.send(&[
        parse("", "SELECT 1/0"),
        bind("", "", &[]),
        execute(""),
        parse(
            "w",
            &format!("UPDATE orders SET status = status WHERE id = 1 /* {m} */"),
        ),
        bind("q", "w", &[]),
        execute("q"),
        sync(),
    ])
    .await;
    let got = c.until_ready().await;
    assert_eq!(errors(&got).len(), 1, "{got:?}");
    assert!(errors(&got)[0].starts_with("22012"), "{got:?}");
    assert!(!pg_ran(&m));
    let about_it = audit_in(&w.config, &["--event", "review.pending"])
        .into_iter()
        .chain(audit_in(&w.config, &["--event", "query"]))
        .filter(|e| e["statement"].as_str().is_some_and(|s| s.contains(&m)))
        .count();
    assert_eq!(about_it, 0);
}

#[tokio::test]
async fn a_reused_statement_name_cannot_swap_what_a_held_write_runs() {
    use raw::*;
    let (w, carol, mut c) = reviewed_session().await;

    // A name in use is refused, as PostgreSQL would: the write stays what s1 runs, and is held.
    let m1 = format!("rev-name-{}", uuid::Uuid::new_v4().simple());
    c.send(&[
        parse(
            "s1",
            &format!("UPDATE orders SET status = status WHERE id = 1 /* {m1} */"),
        ),
        sync(),
    ])
    .await;
    assert!(errors(&c.until_ready().await).is_empty());
    c.send(&[parse("s1", "SELECT 1"), sync()]).await;
    let got = c.until_ready().await;
    assert!(errors(&got).iter().any(|e| e.starts_with("42P05:")), "{got:?}");
    let denier = w.deny_when_held(carol.clone(), m1.clone());
    c.send(&[bind("", "s1", &[]), execute(""), sync()]).await;
    let got = c.until_ready().await;
    denier.join().unwrap();
    assert!(
        errors(&got)
            .iter()
            .any(|e| e.starts_with("42501:") && e.contains("denied by human:carol")),
        "{got:?}"
    );
    assert!(!pg_ran(&m1), "the write ran unreviewed");

    // A refused Parse of a name in use creates nothing and leaves the old statement, still held.
    let m2 = format!("rev-name2-{}", uuid::Uuid::new_v4().simple());
    c.send(&[
        parse(
            "s2",
            &format!("UPDATE orders SET status = status WHERE id = 1 /* {m2} */"),
        ),
        sync(),
    ])
    .await;
    assert!(errors(&c.until_ready().await).is_empty());
    c.send(&[parse("s3", "SELECT * FROM no_such_table_anywhere"), sync()])
        .await;
    let got = c.until_ready().await;
    assert_eq!(errors(&got).len(), 1, "{got:?}");
    // s3 was never created: binding it is refused without reaching PostgreSQL.
    c.send(&[bind("", "s3", &[]), execute(""), sync()]).await;
    let got = c.until_ready().await;
    assert!(errors(&got).iter().any(|e| e.starts_with("26000:")), "{got:?}");
    let denier = w.deny_when_held(carol.clone(), m2.clone());
    c.send(&[bind("p", "s2", &[]), execute("p"), sync()]).await;
    let got = c.until_ready().await;
    denier.join().unwrap();
    assert!(errors(&got).iter().any(|e| e.starts_with("42501:")), "{got:?}");
    assert!(!pg_ran(&m2), "the write ran unreviewed");

    // The session is in step afterwards: a plain read answers as usual.
    c.send(&[parse("", "SELECT 7"), bind("", "", &[]), execute(""), sync()])
        .await;
    let got = c.until_ready().await;
    let tags: String = got.iter().map(|m| m.0).collect();
    assert_eq!(tags, "12DCZ", "{got:?}");
}

#[tokio::test]
async fn a_statement_made_by_sql_prepare_cannot_be_bound_past_review() {
    use raw::*;
    let (w, carol, mut c) = reviewed_session().await;
    let m = format!("rev-prep-{}", uuid::Uuid::new_v4().simple());
    // PREPARE of a write is itself held; approved, it only prepares.
    let approver = w.approve_when_held(carol.clone(), m.clone());
    c.send(&[query(&format!(
        "PREPARE p(text) AS UPDATE orders SET status = $1 WHERE id = 1 /* {m} */"
    ))])
    .await;
    let got = c.until_ready().await;
    approver.join().unwrap();
    assert!(errors(&got).is_empty(), "{got:?}");
    // Bound through the extended protocol it would run unreviewed: refused.
    c.send(&[bind("", "p", &["x"]), execute(""), sync()]).await;
    let got = c.until_ready().await;
    assert!(
        errors(&got)
            .iter()
            .any(|e| e.starts_with("26000:") && e.contains("SQL PREPARE")),
        "{got:?}"
    );
    assert!(
        !pg_log().lines().any(|l| l.contains("execute p") && l.contains(&m)),
        "the prepared write ran"
    );
}

#[tokio::test]
async fn a_prepared_execute_is_held_again_when_its_sql_statement_is_prepared_anew() {
    use raw::*;
    let (w, carol, mut c) = reviewed_session().await;
    let m = format!("rev-swap-{}", uuid::Uuid::new_v4().simple());
    // `EXECUTE x` prepared through the extended protocol while x only reads.
    c.send(&[query("PREPARE x AS SELECT 1")]).await;
    assert!(errors(&c.until_ready().await).is_empty());
    c.send(&[parse("px", &format!("EXECUTE x /* {m}-exec */")), sync()])
        .await;
    assert!(errors(&c.until_ready().await).is_empty());
    // x becomes a write: its PREPARE is held, and approved once.
    c.send(&[query("DEALLOCATE x")]).await;
    assert!(errors(&c.until_ready().await).is_empty());
    let approver = w.approve_when_held(carol.clone(), format!("{m}-prep"));
    c.send(&[query(&format!(
        "PREPARE x AS UPDATE orders SET status = status WHERE id = -1 /* {m}-prep */"
    ))])
    .await;
    let got = c.until_ready().await;
    approver.join().unwrap();
    assert!(errors(&got).is_empty(), "{got:?}");
    // Run through the statement parsed before: it is a write now, so it is held (and denied here).
    let denier = w.deny_when_held(carol.clone(), format!("{m}-exec"));
    c.send(&[bind("", "px", &[]), execute(""), sync()]).await;
    let got = c.until_ready().await;
    denier.join().unwrap();
    assert!(errors(&got).iter().any(|e| e.starts_with("42501:")), "{got:?}");
    assert!(!pg_ran(&format!("{m}-exec")), "the write ran without review");
}

#[tokio::test]
async fn a_prepare_that_fails_on_a_name_in_use_does_not_hide_the_write_behind_it() {
    use raw::*;
    let (w, carol, mut c) = reviewed_session().await;
    let m = format!("rev-reprep-{}", uuid::Uuid::new_v4().simple());
    let approver = w.approve_when_held(carol.clone(), format!("{m}-prep"));
    c.send(&[query(&format!(
        "PREPARE y AS UPDATE orders SET status = status WHERE id = -1 /* {m}-prep */"
    ))])
    .await;
    let got = c.until_ready().await;
    approver.join().unwrap();
    assert!(errors(&got).is_empty(), "{got:?}");
    // PostgreSQL refuses this PREPARE (y exists) and keeps the write under y.
    c.send(&[query("PREPARE y AS SELECT 1")]).await;
    let got = c.until_ready().await;
    assert!(errors(&got).iter().any(|e| e.starts_with("42P05:")), "{got:?}");
    // So EXECUTE y is still a write: held (and denied here), not run unreviewed.
    let denier = w.deny_when_held(carol.clone(), format!("{m}-exec"));
    c.send(&[query(&format!("EXECUTE y /* {m}-exec */"))]).await;
    let got = c.until_ready().await;
    denier.join().unwrap();
    assert!(errors(&got).iter().any(|e| e.starts_with("42501:")), "{got:?}");
}

#[tokio::test]
async fn a_close_or_deallocate_postgres_skipped_does_not_let_a_name_change_what_it_runs() {
    use raw::*;
    let (w, carol, mut c) = reviewed_session().await;
    let m = format!("rev-skip-{}", uuid::Uuid::new_v4().simple());
    // A write parsed under a name (Parse is not reviewed; its Execute would be).
    c.send(&[
        parse(
            "w_skip",
            &format!("UPDATE orders SET status = status WHERE id = -1 /* {m}-stmt */"),
        ),
        sync(),
    ])
    .await;
    assert!(errors(&c.until_ready().await).is_empty());
    // A DEALLOCATE PostgreSQL never runs (an error before it in the string), then a protocol Close
    // it skips (an error before it in the batch): w_skip stays in PostgreSQL, and for Warden.
    c.send(&[query("SELECT 1/0; DEALLOCATE w_skip")]).await;
    assert!(errors(&c.until_ready().await).iter().any(|e| e.starts_with("22012:")));
    c.send(&[
        parse("", "SELECT 1/0"),
        bind("", "", &[]),
        execute(""),
        close(b'S', "w_skip"),
        sync(),
    ])
    .await;
    assert!(errors(&c.until_ready().await).iter().any(|e| e.starts_with("22012:")));
    // PostgreSQL refuses to prepare the name again (it exists)...
    c.send(&[query("PREPARE w_skip AS SELECT 1")]).await;
    assert!(errors(&c.until_ready().await).iter().any(|e| e.starts_with("42P05:")));
    c.send(&[parse("w_skip", "SELECT 1"), sync()]).await;
    assert!(errors(&c.until_ready().await).iter().any(|e| e.starts_with("42P05:")));
    // ...so EXECUTE w_skip still runs the write: held (and denied here).
    let denier = w.deny_when_held(carol.clone(), format!("{m}-exec"));
    c.send(&[query(&format!("EXECUTE w_skip /* {m}-exec */"))]).await;
    let got = c.until_ready().await;
    denier.join().unwrap();
    assert!(errors(&got).iter().any(|e| e.starts_with("42501:")), "{got:?}");
    // A Close PostgreSQL confirms is forgotten: the name can be prepared again.
    c.send(&[close(b'S', "w_skip"), sync()]).await;
    assert!(errors(&c.until_ready().await).is_empty());
    c.send(&[
        parse("w_skip", "SELECT 1"),
        bind("", "w_skip", &[]),
        execute(""),
        sync(),
    ])
    .await;
    let got = c.until_ready().await;
    assert!(errors(&got).is_empty(), "{got:?}");
}

#[tokio::test]
async fn a_confirmed_close_forgets_only_what_the_name_was_before_it() {
    use raw::*;
    let (w, carol, mut c) = reviewed_session().await;
    let m = format!("rev-after-{}", uuid::Uuid::new_v4().simple());
    // A Close, then a Parse of the same name before the Close's answer (a name never used: no wait).
    c.send(&[
        close(b'S', "r_after"),
        parse(
            "r_after",
            &format!("UPDATE orders SET status = status WHERE id = -1 /* {m}-stmt */"),
        ),
        sync(),
    ])
    .await;
    assert!(errors(&c.until_ready().await).is_empty());
    // The CloseComplete came after the Parse was decided: r_after is still the write, for Warden too.
    c.send(&[parse("r_after", "SELECT 1"), sync()]).await;
    assert!(errors(&c.until_ready().await).iter().any(|e| e.starts_with("42P05:")));
    let denier = w.deny_when_held(carol.clone(), format!("{m}-stmt"));
    c.send(&[bind("", "r_after", &[]), execute(""), sync()]).await;
    let got = c.until_ready().await;
    denier.join().unwrap();
    assert!(errors(&got).iter().any(|e| e.starts_with("42501:")), "{got:?}");
}

#[tokio::test]
async fn a_name_closed_and_parsed_again_in_one_batch_runs_its_new_statement() {
    // Npgsql's auto-prepare reuses a slot's name: Close, then Parse of the same name, in one batch.
    use raw::*;
    let (_w, _carol, mut c) = reviewed_session().await;
    c.send(&[parse("_auto1", "SELECT 1 AS one"), sync()]).await;
    assert!(errors(&c.until_ready().await).is_empty());
    c.send(&[
        close(b'S', "_auto1"),
        parse("_auto1", "SELECT 2 AS two"),
        bind("", "_auto1", &[]),
        execute(""),
        sync(),
    ])
    .await;
    let got = c.until_ready().await;
    assert!(errors(&got).is_empty(), "{got:?}");
    let tags: String = got.iter().map(|m| m.0).collect();
    assert_eq!(tags, "312DCZ", "{got:?}");
}

#[tokio::test]
async fn portals_that_ended_with_their_transaction_are_forgotten() {
    use raw::*;
    let (_w, _carol, mut c) = reviewed_session().await;
    // More named portals than Warden keeps, each gone at its Sync (no transaction block).
    for i in 0..1100 {
        let name = format!("C_{i}");
        c.send(&[parse("", "SELECT 1"), bind(&name, "", &[]), execute(&name), sync()])
            .await;
        let got = c.until_ready().await;
        assert!(errors(&got).is_empty(), "portal {i}: {got:?}");
    }
    c.send(&[query(
        "BEGIN; DECLARE cur CURSOR FOR SELECT 1; FETCH 1 FROM cur; COMMIT",
    )])
    .await;
    assert!(errors(&c.until_ready().await).is_empty());
    // A portal name reused by the next batch, pipelined before the first one's answer.
    let batch = |n: &str| [parse("", "SELECT 1"), bind(n, "", &[]), execute(n), sync()];
    let mut both = batch("p_again").to_vec();
    both.extend(batch("p_again"));
    c.send(&both).await;
    for _ in 0..2 {
        let got = c.until_ready().await;
        assert!(errors(&got).is_empty(), "{got:?}");
    }
    // A name held by a cursor WITH HOLD is refused, as PostgreSQL refuses it.
    c.send(&[query("DECLARE held_p CURSOR WITH HOLD FOR SELECT 1")]).await;
    assert!(errors(&c.until_ready().await).is_empty());
    c.send(&batch("held_p")).await;
    let got = c.until_ready().await;
    assert!(errors(&got).iter().any(|e| e.starts_with("42P03:")), "{got:?}");
}

#[tokio::test]
async fn moving_through_a_bound_portal_is_held_like_executing_it() {
    use raw::*;
    let (w, carol, mut c) = reviewed_session().await;
    let m = format!("rev-move-{}", uuid::Uuid::new_v4().simple());
    c.send(&[query("BEGIN")]).await;
    assert!(errors(&c.until_ready().await).is_empty());
    // A write bound to a named portal, not executed: nothing is held yet.
    c.send(&[
        parse(
            "s_mv",
            &format!("UPDATE orders SET status = status WHERE id = -1 RETURNING id /* {m}-stmt */"),
        ),
        bind("p_mv", "s_mv", &[]),
        sync(),
    ])
    .await;
    assert!(errors(&c.until_ready().await).is_empty());
    // MOVE runs the portal's write: held (and denied here) like its Execute.
    let denier = w.deny_when_held(carol.clone(), format!("{m}-move"));
    c.send(&[query(&format!("MOVE ALL IN p_mv /* {m}-move */"))]).await;
    let got = c.until_ready().await;
    denier.join().unwrap();
    assert!(errors(&got).iter().any(|e| e.starts_with("42501:")), "{got:?}");
    c.send(&[query("ROLLBACK")]).await;
    c.until_ready().await;
}

#[tokio::test]
async fn a_failed_bind_before_a_denied_execute_leaves_the_session_in_step() {
    use raw::*;
    let (w, _carol, mut c) = reviewed_session().await;
    let m = format!("rev-step-{}", uuid::Uuid::new_v4().simple());
    // PostgreSQL refuses the Bind ('abc' is no integer) and skips the rest: the Execute is not held
    // for review (it would not run), and the session stays in step.
    c.send(&[
        parse(
            "",
            &format!("UPDATE orders SET status = status WHERE id = $1 /* {m} */"),
        ),
        bind("", "", &["abc"]),
        execute(""),
        sync(),
    ])
    .await;
    let got = c.until_ready().await;
    assert!(errors(&got).iter().any(|e| e.starts_with("22P02:")), "{got:?}");
    let held = audit_in(&w.config, &["--event", "review.pending"])
        .into_iter()
        .filter(|e| e["statement"].as_str().is_some_and(|s| s.contains(&m)))
        .count();
    assert_eq!(held, 0);
    for sql in ["SELECT 1", "SELECT 2"] {
        c.send(&[parse("", sql), bind("", "", &[]), execute(""), sync()]).await;
        let got = c.until_ready().await;
        let tags: String = got.iter().map(|m| m.0).collect();
        assert_eq!(tags, "12DCZ", "{sql}: {got:?}");
    }
}

#[tokio::test]
async fn functions_that_may_write_are_held_and_a_hang_up_withdraws_the_review() {
    let w = approval_warden();
    let (alice, carol) = (w.human("alice"), w.human("carol"));
    let (agent, task) = w.reviewed_agent(&alice).await;

    // A volatile function may write: held, and denied here.
    let m = format!("rev-fn-{}", uuid::Uuid::new_v4().simple());
    let child = w.psql(&agent, &[&format!("SELECT nextval('orders_id_seq') /* {m} */")]);
    let denier = w.deny_when_held(carol.clone(), m.clone());
    let id = denier.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        stderr(&out).contains(&format!("review {id} was denied")),
        "{}",
        stderr(&out)
    );
    assert!(!pg_ran(&m));

    // The client hangs up while held: the review is withdrawn and can no longer be approved.
    let m = format!("rev-gone-{}", uuid::Uuid::new_v4().simple());
    let mut child = w.psql(
        &agent,
        &[&format!(
            "INSERT INTO orders (customer_id, status, total, region) VALUES (1, '{m}', 1, 'eu')"
        )],
    );
    let id = w.wait_for_review(&carol, &m)["id"].as_str().unwrap().to_string();
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.list(&carol).iter().any(|q| q["id"] == id.as_str()) {
        assert!(Instant::now() < deadline, "the review outlived its client");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = w.requests(&carol, &["approve", &id]);
    assert!(!out.status.success(), "approved a withdrawn review");
    assert!(!pg_ran(&m));
    let withdrawn = wait_for_event_in(&w.config, &["--task", &task], |e| e["event"] == "review.withdrawn");
    assert_eq!(withdrawn["review_id"], id.as_str());
}
