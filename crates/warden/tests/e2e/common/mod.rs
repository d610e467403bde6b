//! End-to-end harness: one real PostgreSQL cluster (initdb in a temporary directory, random port, TLS,
//! `cert` authentication) and one real `warden` process per test binary, shared by its tests.
//! A watchdog shell stops both and removes the directory when the test process exits, however it exits.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use warden::cluster::{free_port, ClusterOptions, LocalCluster};

pub const WARDEN: &str = env!("CARGO_BIN_EXE_warden");

pub struct Harness {
    pub root: PathBuf,
    pub deploy: PathBuf,
    pub config: PathBuf,
    pub cluster: LocalCluster,
    pub warden_port: u16,
    pub warden_log: PathBuf,
    pub warden_pid: u32,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

pub fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| Harness::start().expect("starting PostgreSQL and Warden for the tests"))
}

/// The red-team fixture (../shared/redteam/schema.sql): a small shop, an HR schema and traps.
pub fn redteam_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/redteam");
    assert!(
        dir.join("schema.sql").exists(),
        "the red-team fixture is missing: expected {}",
        dir.display()
    );
    dir
}

impl Harness {
    fn start() -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = tempfile::Builder::new()
            .prefix("warden-e2e-")
            .tempdir_in("/tmp")?
            .keep();
        set_mode(&root, 0o755);
        let deploy = root.join("deploy");
        run_ok(Command::new(WARDEN).args(["init", "--dir"]).arg(&deploy));
        let db_ca = std::fs::read_to_string(deploy.join("ca/db-ca.crt"))?;
        let pg_port = free_port()?;
        let options = ClusterOptions {
            client_ca_pem: db_ca,
            // shop2 is reached with one-time passwords (upstream_auth = "password"); its admin still uses a certificate.
            extra_hba: vec![
                "hostssl shop2 warden_admin 127.0.0.1/32 cert".into(),
                "hostssl shop2 all 127.0.0.1/32 scram-sha-256".into(),
            ],
            extra_conf: vec![
                "log_statement = 'all'".into(),
                "log_connections = on".into(),
                "fsync = off".into(),
            ],
        };
        let mut cluster = LocalCluster::create(&root.join("pg"), pg_port, &options)?;
        cluster.start()?;
        watchdog(&format!(
            "{}; rm -rf '{}'",
            cluster.shell_stop_command(),
            root.display()
        ));
        for db in ["shop", "shop2"] {
            cluster.psql("postgres", &format!("CREATE DATABASE {db}"))?;
            cluster.psql(db, &std::fs::read_to_string(redteam_dir().join("schema.sql"))?)?;
            cluster.create_admin("warden_admin", db, &["public"]).or_else(|e| {
                // The role is cluster-wide: the second database only needs the grants.
                if e.to_string().contains("already exists") {
                    cluster.psql(db, "GRANT USAGE ON SCHEMA public TO warden_admin WITH GRANT OPTION; \
                        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO warden_admin WITH GRANT OPTION; \
                        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO warden_admin WITH GRANT OPTION;").map(|_| ())
                } else {
                    Err(e)
                }
            })?;
        }
        // Row filters become row-level security, which only a table's owner may set up.
        cluster.psql("shop", "ALTER TABLE public.orders OWNER TO warden_admin")?;
        let warden_port = free_port()?;
        let config = deploy.join("warden.toml");
        std::fs::write(&config, test_config(warden_port, pg_port, &cluster.server_ca_path()))?;
        let warden_log = root.join("warden.log");
        let warden_pid = spawn_warden(&config, &warden_log, warden_port)?;
        Ok(Harness {
            root,
            deploy,
            config,
            cluster,
            warden_port,
            warden_log,
            warden_pid,
        })
    }

    /// `warden issue` into a fresh directory; returns the directory.
    pub fn issue(&self, kind: &str, name: &str, extra: &[&str]) -> PathBuf {
        let out = unique_dir(&self.root, &format!("cred-{name}"));
        let mut cmd = Command::new(WARDEN);
        cmd.args(["issue", "--config"])
            .arg(&self.config)
            .args(["--kind", kind, "--name", name, "--out"])
            .arg(&out)
            .args(extra);
        run_ok(&mut cmd);
        out
    }

    /// The usual agent: report-bot acting for alice on task T-42.
    pub fn agent(&self) -> PathBuf {
        self.issue("agent", "report-bot", &["--requester", "human:alice", "--task", "T-42"])
    }

    pub fn conninfo(&self, cred: &Path, user: &str, db: &str) -> String {
        self.conninfo_at(self.warden_port, cred, user, db)
    }

    pub fn conninfo_at(&self, port: u16, cred: &Path, user: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={port} dbname={db} user={user} sslmode=verify-full sslrootcert={d}/ca.crt sslcert={d}/identity.crt sslkey={d}/identity.key",
            d = cred.display()
        )
    }

    /// psql through Warden with a credential directory.
    pub fn psql(&self, cred: &Path, user: &str, db: &str, sql: &str) -> Output {
        self.psql_on(self.warden_port, cred, user, db, sql)
    }

    /// `psql` as report-bot on shop, through the Warden on `port`.
    pub fn psql_at(&self, port: u16, cred: &Path, sql: &str) -> Output {
        self.psql_on(port, cred, "report-bot", "shop", sql)
    }

    pub fn psql_on(&self, port: u16, cred: &Path, user: &str, db: &str, sql: &str) -> Output {
        Command::new(psql_bin())
            .arg("-X")
            .arg("-At")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg(self.conninfo_at(port, cred, user, db))
            .arg("-c")
            .arg(sql)
            .env_remove("PGPASSWORD")
            .output()
            .expect("running psql")
    }

    /// Audit events as stored, through `warden audit search --json`.
    pub fn audit(&self, args: &[&str]) -> Vec<Value> {
        audit_in(&self.config, args)
    }

    /// Polls the audit log until `pred` holds for some event (query.result is written just after the reply).
    pub fn wait_for_event(&self, args: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
        wait_for_event_in(&self.config, args, pred)
    }

    pub fn warden_log(&self) -> String {
        std::fs::read_to_string(&self.warden_log).unwrap_or_default()
    }

    pub fn user_ca(&self) -> warden_identity::CertificateAuthority {
        warden_identity::CertificateAuthority::load(
            &self.deploy.join("ca/user-ca.crt"),
            &self.deploy.join("ca/user-ca.key"),
        )
        .unwrap()
    }

    /// A tokio-postgres connection through Warden: with the credential's certificate, or with its token as password.
    pub async fn connect(
        &self,
        cred: &Path,
        user: &str,
        db: &str,
        use_token: bool,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.warden_port)
            .user(user)
            .dbname(db)
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let client_cert = if use_token {
            cfg.password(std::fs::read_to_string(cred.join("token")).unwrap().trim());
            None
        } else {
            Some(load_cert(cred))
        };
        connect_with(&cfg, &cred.join("ca.crt"), client_cert).await
    }
}

/// Starts `warden start --config CONFIG`, logging to `log`, and waits for its port.
pub fn spawn_warden(config: &Path, log: &Path, port: u16) -> anyhow::Result<u32> {
    Ok(spawn_warden_child(config, log, port)?.id())
}

/// As [`spawn_warden`], keeping the child so that a test can stop it and wait for it to exit.
pub fn spawn_warden_child(config: &Path, log: &Path, port: u16) -> anyhow::Result<Child> {
    let child = Command::new(WARDEN)
        .args(["start", "--config"])
        .arg(config)
        .env("WARDEN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let pid = child.id();
    watchdog(&format!("kill {pid}"));
    wait_for_port(port, log);
    Ok(child)
}

/// SIGTERM, then waits (at most 40 s) for the process to exit: a clean stop drains sessions and
/// signs the audit log's last records.
pub fn stop_warden(child: &mut Child) {
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let deadline = Instant::now() + Duration::from_secs(40);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "warden {} did not exit after SIGTERM",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Warden of its own on the shared deployment (same CAs, same state store), for tests that reload,
/// restart or stop it: the harness config with another port and another audit log.
pub struct WardenCopy {
    pub config: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

impl Harness {
    /// Writes `DEPLOY/<stem>-N.toml`: the harness config with a free port and `audit/<stem>-N.jsonl`.
    /// Does not start it (`spawn_warden_child`).
    pub fn warden_copy(&self, stem: &str) -> WardenCopy {
        let port = free_port().unwrap();
        let config = unique_dir(&self.deploy, stem).with_extension("toml");
        let name = config.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&self.config).unwrap();
        let listen = format!("127.0.0.1:{}\"", self.warden_port);
        assert!(text.contains(&listen) && text.contains("fsync = \"batch\""), "{text}");
        let text = text.replace(&listen, &format!("127.0.0.1:{port}\"")).replace(
            "fsync = \"batch\"",
            &format!("fsync = \"batch\"\npath = \"audit/{name}.jsonl\""),
        );
        std::fs::write(&config, text).unwrap();
        WardenCopy {
            log: self.root.join(format!("{name}.log")),
            config,
            port,
        }
    }
}

/// Audit events of the deployment behind `config`, through `warden audit search --json`.
pub fn audit_in(config: &Path, args: &[&str]) -> Vec<Value> {
    let out = run_ok(
        Command::new(WARDEN)
            .args(["audit", "search", "--json", "--config"])
            .arg(config)
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit search prints JSON lines"))
        .collect()
}

/// Polls the audit log behind `config` until `pred` holds for some event.
pub fn wait_for_event_in(config: &Path, args: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(e) = audit_in(config, args).into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no matching audit event for {args:?} in {}",
            config.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Harness {
    /// A second Warden on the same deployment with statement checks switched off (the test-only
    /// `danger_disable_statement_checks`), to show PostgreSQL's own privileges hold by themselves.
    pub fn unchecked_warden(&self) -> u16 {
        static PORT: OnceLock<u16> = OnceLock::new();
        *PORT.get_or_init(|| {
            let port = free_port().unwrap();
            let text = std::fs::read_to_string(&self.config)
                .unwrap()
                .replace(
                    &format!("127.0.0.1:{}\"", self.warden_port),
                    &format!("127.0.0.1:{port}\"\ndanger_disable_statement_checks = true"),
                )
                .replace(
                    "fsync = \"batch\"",
                    "fsync = \"batch\"\npath = \"audit/unchecked.jsonl\"",
                );
            let config = self.deploy.join("unchecked.toml");
            std::fs::write(&config, text).unwrap();
            spawn_warden(&config, &self.root.join("unchecked.log"), port).unwrap();
            port
        })
    }
}

/// How and when a connection ended: the outcome of tokio-postgres's connection future (an unsolicited
/// FATAL from the server is its `Err`), stamped the moment it resolved.
#[derive(Debug)]
pub struct Ended {
    pub at: Instant,
    pub wall: time::OffsetDateTime,
    pub result: Result<(), tokio_postgres::Error>,
}

/// As [`connect_with`], returning the connection task so that a test can see when and why it ended.
pub async fn connect_watched(
    cfg: &tokio_postgres::Config,
    server_ca: &Path,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<Ended>), tokio_postgres::Error> {
    let tls = tls_config(server_ca, client_cert);
    let (client, conn) = cfg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await?;
    let ended = tokio::spawn(async move {
        let result = conn.await;
        Ended {
            at: Instant::now(),
            wall: time::OffsetDateTime::now_utc(),
            result,
        }
    });
    Ok((client, ended))
}

pub async fn connect_with(
    cfg: &tokio_postgres::Config,
    server_ca: &Path,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = tls_config(server_ca, client_cert);
    let (client, conn) = cfg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub fn tls_config(
    server_ca: &Path,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(server_ca).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match client_cert {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    }
}

pub fn load_cert(cred: &Path) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rustls::pki_types::pem::PemObject;
    (
        vec![CertificateDer::from_pem_file(cred.join("identity.crt")).unwrap()],
        PrivateKeyDer::from_pem_file(cred.join("identity.key")).unwrap(),
    )
}

fn test_config(warden_port: u16, pg_port: u16, server_ca: &Path) -> String {
    format!(
        r#"
[server]
postgres_listen = "127.0.0.1:{warden_port}"
data_dir = "."

[audit]
fsync = "batch"

[[database]]
name = "shop"
url  = "postgres://warden_admin@127.0.0.1:{pg_port}/shop?sslmode=verify-full&sslrootcert={ca}"
upstream_auth = "cert"

[[database]]
name = "shop2"
url  = "postgres://warden_admin@127.0.0.1:{pg_port}/shop2?sslmode=verify-ca&sslrootcert={ca}"
upstream_auth = "password"

[[role]]
name = "analyst"
databases = ["shop", "shop2"]
read  = ["public.orders(id, customer_id, status, total, region)", "public.customers(id, name, region)"]
row_filter = {{ "public.orders" = "region = {{{{traits.region}}}}" }}

[[role]]
name = "writer"
databases = ["shop", "shop2"]
read  = ["public.*"]
write = ["public.orders"]

[[human]]
name = "alice"
roles = ["analyst", "writer"]
traits = {{ region = "eu" }}

[[human]]
name = "bob"
roles = ["analyst"]
traits = {{ region = "us" }}

[[human]]
name = "carol"
roles = ["analyst"]

[[agent]]
name = "report-bot"
roles = ["analyst", "writer"]
max_ttl = "15m"

# For lifecycle.rs: identities that its locks may cut off without touching other tests.
[[human]]
name = "dave"
roles = ["analyst"]
traits = {{ region = "eu" }}

[[human]]
name = "erin"
roles = ["analyst"]
traits = {{ region = "eu" }}

[[agent]]
name = "lock-bot"
roles = ["analyst"]

[[agent]]
name = "dave-bot"
roles = ["analyst"]

# For lifecycle.rs's reload test, whose Warden takes roles away from them (their PostgreSQL role is theirs alone).
[[human]]
name = "frank"
roles = ["analyst", "writer"]
traits = {{ region = "eu" }}

[[agent]]
name = "reload-bot"
roles = ["analyst", "writer"]

[[workload]]
name = "billing"
roles = ["writer"]
"#,
        ca = server_ca.display()
    )
}

/// Runs `cmd` and insists on success, printing its output otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawning command");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn psql_bin() -> PathBuf {
    let bin = warden::cluster::find_bin_dir()
        .expect("PostgreSQL binaries")
        .join("psql");
    if bin.exists() {
        bin
    } else {
        PathBuf::from("psql")
    }
}

pub fn unique_dir(root: &Path, stem: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    root.join(format!("{stem}-{}", N.fetch_add(1, Ordering::Relaxed)))
}

/// A shell that waits for this test process to exit, then runs `then`.
// The watchdog must outlive this process, so it is deliberately never waited for.
#[allow(clippy::zombie_processes)]
pub fn watchdog(then: &str) {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; {then}",
        std::process::id()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning watchdog");
}

pub fn wait_for_port(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "warden did not start listening:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
