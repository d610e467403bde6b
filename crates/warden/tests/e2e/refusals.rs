//! Every refusal of the connection phase: SQLSTATE 28000, a `warden:` message that says what to do,
//! and an `auth.failed` event.

use time::{Duration, OffsetDateTime};
use tokio_postgres::config::SslMode;
use warden_identity::{CertificateAuthority, Claims, IdentityKind};

use crate::common::*;

fn claims(not_after: OffsetDateTime) -> Claims {
    Claims {
        kind: IdentityKind::Agent,
        name: "report-bot".into(),
        requester: Some("human:alice".parse().unwrap()),
        task: Some("T-old".into()),
        roles: vec!["analyst".into()],
        credential_id: uuid::Uuid::new_v4().to_string(),
        not_before: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - Duration::hours(2),
        not_after: not_after.replace_nanosecond(0).unwrap(),
    }
}

fn config(db: &str, user: &str) -> tokio_postgres::Config {
    let h = harness();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(h.warden_port)
        .user(user)
        .dbname(db)
        .ssl_mode(SslMode::Require);
    cfg
}

/// Asserts a 28000 refusal whose message contains `needle`, and an auth.failed event whose reason does.
fn assert_refused(result: Result<tokio_postgres::Client, tokio_postgres::Error>, needle: &str) {
    let err = match result {
        Ok(_) => panic!("connection was accepted; expected a refusal containing {needle:?}"),
        Err(e) => e,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a PostgreSQL error, got: {err}"));
    assert_eq!(db.code().code(), "28000", "{db:?}");
    assert!(db.message().starts_with("warden: "), "{}", db.message());
    assert!(
        db.message().contains(needle),
        "{:?} does not contain {needle:?}",
        db.message()
    );
    harness().wait_for_event(&["--event", "auth.failed"], |e| {
        e["reason"].as_str().is_some_and(|r| r.contains(needle))
    });
}

#[tokio::test]
async fn plain_connection_is_refused() {
    let mut cfg = config("shop", "report-bot");
    cfg.ssl_mode(SslMode::Disable);
    let result = cfg.connect(tokio_postgres::NoTls).await.map(|(c, _)| c);
    assert_refused(result, "TLS is required");

    // And psql shows the person the same sentence.
    let h = harness();
    let out = std::process::Command::new(psql_bin())
        .arg(format!(
            "host=127.0.0.1 port={} dbname=shop user=plain-probe sslmode=disable",
            h.warden_port
        ))
        .arg("-c")
        .arg("SELECT 1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("FATAL:  warden: TLS is required"),
        "{}",
        stderr(&out)
    );
    // The record says whom the client claimed to be, but not as the role a session runs as.
    let record = h.wait_for_event(&["--event", "auth.failed"], |e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("TLS is required") && r.contains("named user \"plain-probe\""))
    });
    assert!(record["db_user"].is_null(), "{record}");
}

#[test]
fn what_an_unauthenticated_client_sends_cannot_forge_lines_in_audit_search() {
    use std::io::{Read, Write};
    let h = harness();
    // A plain startup whose user carries a line break, a forged record and an escape sequence.
    let user = "forger\n2026-01-01T00:00:00Z #1 session.start human:carol (all fine)\x1b[2K";
    let mut body = 196608u32.to_be_bytes().to_vec();
    for part in ["user", user, "database", "shop"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", h.warden_port)).unwrap();
    tcp.write_all(&packet).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    h.wait_for_event(&["--event", "auth.failed"], |e| {
        e["reason"].as_str().is_some_and(|r| r.contains("forger\n2026"))
    });
    let out = run_ok(
        std::process::Command::new(WARDEN)
            .args(["audit", "search", "--event", "auth.failed", "--config"])
            .arg(&h.config),
    );
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains("forger"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("forger\\u{a}2026"), "{line}");
    assert!(
        !text.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a forged line:\n{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "an escape sequence reached the terminal:\n{text}"
    );
}

#[tokio::test]
async fn no_credential_is_refused() {
    let h = harness();
    let mut cfg = config("shop", "report-bot");
    cfg.password("");
    let result = connect_with(&cfg, &h.deploy.join("ca/host-ca.crt"), None).await;
    assert_refused(result, "no credential");
}

#[tokio::test]
async fn bad_token_is_refused() {
    let h = harness();
    let mut cfg = config("shop", "report-bot");
    cfg.password("eyJhbGciOiJFUzI1NiJ9.e30.bm90LWEtc2lnbmF0dXJl");
    let result = connect_with(&cfg, &h.deploy.join("ca/host-ca.crt"), None).await;
    assert_refused(result, "not a valid Warden token");
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_is_refused() {
    let h = harness();
    let rogue = CertificateAuthority::generate("Rogue CA", Duration::days(1)).unwrap();
    let cert = rogue
        .issue_client(&claims(OffsetDateTime::now_utc() + Duration::minutes(10)))
        .unwrap();
    let result = connect_with(
        &config("shop", "report-bot"),
        &h.deploy.join("ca/host-ca.crt"),
        Some((vec![cert.cert_der], cert.key_der)),
    )
    .await;
    assert_refused(result, "not issued by this Warden's user CA");
}

#[tokio::test]
async fn expired_certificate_and_token_are_refused_with_the_expiry_time() {
    let h = harness();
    let expired_at = OffsetDateTime::now_utc() - Duration::minutes(30);
    let c = claims(expired_at);
    let ca = h.user_ca();
    let cert = ca.issue_client(&c).unwrap();
    let when = expired_at.replace_nanosecond(0).unwrap();
    let stamp = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        when.year(),
        u8::from(when.month()),
        when.day(),
        when.hour(),
        when.minute(),
        when.second()
    );
    let needle = format!("credential expired at {stamp}; issue a new one with warden issue --kind agent --name report-bot --requester human:alice --task T-old");
    let result = connect_with(
        &config("shop", "report-bot"),
        &h.deploy.join("ca/host-ca.crt"),
        Some((vec![cert.cert_der], cert.key_der)),
    )
    .await;
    assert_refused(result, &needle);

    let mut cfg = config("shop", "report-bot");
    cfg.password(ca.sign_token(&c).unwrap());
    let result = connect_with(&cfg, &h.deploy.join("ca/host-ca.crt"), None).await;
    assert_refused(result, &needle);
}

#[tokio::test]
async fn wrong_user_is_refused() {
    let h = harness();
    let cred = h.agent();
    let result = h.connect(&cred, "alice", "shop", false).await;
    assert_refused(result, "does not match the credential's identity agent:report-bot");
}

#[tokio::test]
async fn unknown_database_is_refused() {
    let h = harness();
    let cred = h.agent();
    let result = h.connect(&cred, "report-bot", "payroll", false).await;
    assert_refused(result, "database \"payroll\" is not configured");
}

/// `warden start` on a configuration that must be refused (it exits at once).
fn start_with(config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(WARDEN)
        .args(["start", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn bad_config_names_file_line_and_key() {
    let h = harness();
    let bad = unique_dir(&h.root, "badconf");
    std::fs::create_dir_all(&bad).unwrap();
    let path = bad.join("warden.toml");
    let text = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace("fsync = \"batch\"", "fsync = \"batch\"\nfsink = true");
    std::fs::write(&path, text).unwrap();
    let out = start_with(&path);
    assert!(!out.status.success());
    let err = stderr(&out);
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("fsink"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&path.display().to_string()) && err.contains("fsink") && err.contains(&format!("line {line}")),
        "{err}"
    );
    // A missing file: said once, with what to give instead.
    let missing = bad.join("nowhere.toml");
    let out = start_with(&missing);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("warden init --dir"), "{err}");
}

/// PostgreSQL unreachable: Warden's log names where it tried and the whole cause, not tokio's bare
/// "error connecting to server"; the client is told what happened and what to do.
#[test]
fn an_unreachable_postgresql_is_named_with_its_address_and_cause() {
    let h = harness();
    let w = h.warden_copy("pg-down");
    let closed = warden::cluster::free_port().unwrap();
    let text = std::fs::read_to_string(&w.config).unwrap();
    let at = format!("@127.0.0.1:{}/", h.cluster.port);
    assert!(text.contains(&at), "{text}");
    std::fs::write(&w.config, text.replace(&at, &format!("@127.0.0.1:{closed}/"))).unwrap();
    let mut child = spawn_warden_child(&w.config, &w.log, w.port).unwrap();
    let out = h.psql_at(w.port, &h.agent(), "SELECT 1");
    stop_warden(&mut child);
    assert!(!out.status.success());
    // The client (any signed-in agent) learns what happened and what to do, not the admin
    // connection's address or role; Warden's log has those and the cause.
    let e = stderr(&out);
    assert!(
        e.contains("cannot reach PostgreSQL for database \"shop\"") && e.contains("Warden's log"),
        "{e}"
    );
    assert!(!e.contains(&format!(":{closed}")) && !e.contains("warden_admin"), "{e}");
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(
        log.contains(&format!("127.0.0.1:{closed}"))
            && log.contains("refused")
            && log.contains("check that PostgreSQL is running"),
        "{log}"
    );
}
