//! The three targets on one machine: a private PostgreSQL (TLS, `cert` authentication, pgbench data),
//! pgbouncer in session mode in front of it (TLS on both sides), and Warden (TLS on both hops,
//! statement checks on, audit `fsync = "batch"`). Every client logs in with a client certificate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use warden::cluster::{free_port, ClusterOptions, LocalCluster};
use warden_identity::CertificateAuthority;

/// The PostgreSQL role pgbench uses directly and through pgbouncer (its certificate's CN).
pub const DIRECT_USER: &str = "bench";
/// The Warden identity pgbench uses: `workload:pgbench`.
pub const WARDEN_USER: &str = "pgbench";
pub const DATABASE: &str = "bench";

/// How a libpq client reaches one target: host, port, user and the TLS files.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub port: u16,
    pub user: String,
    pub root_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Endpoint {
    /// libpq's environment for this endpoint (pgbench and psql read it).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", "127.0.0.1".into()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", DATABASE.into()),
            ("PGSSLMODE", "verify-full".into()),
            ("PGSSLROOTCERT", self.root_cert.display().to_string()),
            ("PGSSLCERT", self.cert.display().to_string()),
            ("PGSSLKEY", self.key.display().to_string()),
            ("PGAPPNAME", "warden-bench".into()),
        ]
    }
}

pub struct Targets {
    pub root: PathBuf,
    pub cluster: LocalCluster,
    pub direct: Endpoint,
    pub pgbouncer: Endpoint,
    pub warden: Endpoint,
    pub warden_child: Child,
    pub pgbouncer_child: Child,
    /// A second Warden on the same deployment with `fsync = "off"`: what the audit fsync costs.
    pub warden_nofsync: Option<(Child, Endpoint)>,
}

pub struct SetupOptions<'a> {
    pub warden_bin: &'a Path,
    pub pgbouncer_bin: &'a Path,
    pub work_dir: &'a Path,
    pub scale: u32,
    pub max_connections: u32,
    pub with_fsync_off: bool,
}

impl Targets {
    pub fn start(o: &SetupOptions) -> Result<Targets> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(o.work_dir)?;
        let root = o.work_dir.join(format!("run-{}", std::process::id()));
        std::fs::create_dir_all(&root)?;
        set_mode(&root, 0o755)?;
        let root = std::fs::canonicalize(&root)?;
        let deploy = root.join("deploy");
        run(Command::new(o.warden_bin).args(["init", "--dir"]).arg(&deploy))?;
        let db_ca_pem = std::fs::read_to_string(deploy.join("ca/db-ca.crt"))?;
        let pg_port = free_port()?;
        let options = ClusterOptions {
            client_ca_pem: db_ca_pem,
            extra_hba: vec![],
            extra_conf: vec![
                format!("max_connections = {}", o.max_connections),
                "shared_buffers = '512MB'".into(),
                "fsync = off".into(),
                "synchronous_commit = off".into(),
                "log_min_messages = warning".into(),
            ],
        };
        let mut cluster = LocalCluster::create(&root.join("pg"), pg_port, &options)?;
        cluster.start()?;
        eprintln!(
            "bench: PostgreSQL on 127.0.0.1:{pg_port}, loading pgbench data (scale {})",
            o.scale
        );
        cluster.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        load_pgbench(&cluster, o.scale)?;
        cluster.create_admin("warden_admin", DATABASE, &["public"])?;
        cluster.psql(
            DATABASE,
            &format!("CREATE ROLE {DIRECT_USER} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {DIRECT_USER}"),
        )?;

        // The direct role's certificate, from the db CA PostgreSQL trusts: pgbench uses it directly and
        // pgbouncer verifies clients with the same CA.
        let db_ca = CertificateAuthority::load(&deploy.join("ca/db-ca.crt"), &deploy.join("ca/db-ca.key"))?;
        let certs = root.join("certs");
        std::fs::create_dir_all(&certs)?;
        set_mode(&certs, 0o755)?;
        let direct_cert = db_ca.issue_db_client(DIRECT_USER, time::Duration::hours(12))?;
        let (cert, key) = (certs.join("bench.crt"), certs.join("bench.key"));
        std::fs::write(&cert, &direct_cert.cert_pem)?;
        write_key(&key, &direct_cert.key_pem)?;
        let direct = Endpoint {
            port: pg_port,
            user: DIRECT_USER.into(),
            root_cert: cluster.server_ca_path(),
            cert: cert.clone(),
            key: key.clone(),
        };

        let (pgbouncer_child, pgbouncer) = start_pgbouncer(o.pgbouncer_bin, &root, &cluster, &db_ca, &direct)?;
        let (warden_child, warden) = start_warden(o.warden_bin, &root, &deploy, &cluster, "batch")?;
        let warden_nofsync = if o.with_fsync_off {
            Some(start_warden(o.warden_bin, &root, &deploy, &cluster, "off")?)
        } else {
            None
        };
        Ok(Targets {
            root,
            cluster,
            direct,
            pgbouncer,
            warden,
            warden_child,
            pgbouncer_child,
            warden_nofsync,
        })
    }

    /// A shell command that stops everything: for the watchdog that outlives this process.
    pub fn shell_stop_command(&self, remove: bool) -> String {
        let mut cmd = format!(
            "kill {} {} {} $(cat '{}' 2>/dev/null) 2>/dev/null; {}",
            self.warden_child.id(),
            self.warden_nofsync
                .as_ref()
                .map(|(c, _)| c.id().to_string())
                .unwrap_or_default(),
            self.pgbouncer_child.id(),
            self.root.join("pgbouncer/pgbouncer.pid").display(),
            self.cluster.shell_stop_command()
        );
        if remove {
            cmd += &format!("; rm -rf '{}'", self.root.display());
        }
        cmd
    }

    pub fn stop(&mut self) {
        // pgbouncer runs under runuser: signal pgbouncer itself too.
        if let Ok(pid) = std::fs::read_to_string(self.root.join("pgbouncer/pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let mut children = vec![&mut self.warden_child, &mut self.pgbouncer_child];
        if let Some((c, _)) = self.warden_nofsync.as_mut() {
            children.push(c);
        }
        for child in children {
            // SIGTERM lets Warden drain and pgbouncer shut down cleanly.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = self.cluster.stop() {
            eprintln!("bench: stopping PostgreSQL: {e:#}");
        }
    }
}

fn load_pgbench(cluster: &LocalCluster, scale: u32) -> Result<()> {
    let sock = cluster.dir.join("sock");
    let mut cmd = runas_postgres("pgbench");
    cmd.args(["-i", "-q", "-s", &scale.to_string(), "-h"]).arg(&sock).args([
        "-p",
        &cluster.port.to_string(),
        "-U",
        "postgres",
        DATABASE,
    ]);
    run(&mut cmd).context("pgbench -i")?;
    cluster.psql(DATABASE, "VACUUM ANALYZE")?;
    Ok(())
}

fn start_pgbouncer(
    bin: &Path,
    root: &Path,
    cluster: &LocalCluster,
    db_ca: &CertificateAuthority,
    direct: &Endpoint,
) -> Result<(Child, Endpoint)> {
    let dir = root.join("pgbouncer");
    std::fs::create_dir_all(&dir)?;
    // pgbouncer's own server certificate, from a CA of its own; it reads its files as `postgres`.
    let ca = CertificateAuthority::generate("warden-bench pgbouncer CA", time::Duration::days(1))?;
    let server = ca.issue_server(&["127.0.0.1".into()], time::Duration::days(1))?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
    std::fs::write(dir.join("server.crt"), &server.cert_pem)?;
    write_key(&dir.join("server.key"), &server.key_pem)?;
    std::fs::write(dir.join("db-ca.crt"), db_ca.cert_pem())?;
    std::fs::copy(&direct.cert, dir.join("upstream.crt"))?;
    std::fs::copy(&direct.key, dir.join("upstream.key"))?;
    let port = free_port()?;
    let d = dir.display();
    let ini = format!(
        "[databases]\n\
         {DATABASE} = host=127.0.0.1 port={pg} dbname={DATABASE}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         pidfile = {d}/pgbouncer.pid\n\
         logfile = {d}/pgbouncer.log\n\
         pool_mode = session\n\
         max_client_conn = 500\n\
         default_pool_size = 100\n\
         auth_type = cert\n\
         auth_file = {d}/users.txt\n\
         client_tls_sslmode = verify-full\n\
         client_tls_ca_file = {d}/db-ca.crt\n\
         client_tls_cert_file = {d}/server.crt\n\
         client_tls_key_file = {d}/server.key\n\
         server_tls_sslmode = verify-full\n\
         server_tls_ca_file = {sca}\n\
         server_tls_cert_file = {d}/upstream.crt\n\
         server_tls_key_file = {d}/upstream.key\n\
         ignore_startup_parameters = extra_float_digits\n\
         log_connections = 0\n\
         log_disconnections = 0\n",
        pg = cluster.port,
        sca = cluster.server_ca_path().display(),
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini)?;
    std::fs::write(dir.join("users.txt"), format!("\"{DIRECT_USER}\" \"\"\n"))?;
    chown_postgres(&dir)?;
    // pgbouncer refuses to run as root.
    let mut cmd = runas_postgres_path(bin);
    let child = cmd
        .arg(dir.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("pgbouncer.stderr"))?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    wait_for_port(port, &dir.join("pgbouncer.log"))?;
    let endpoint = Endpoint {
        port,
        user: DIRECT_USER.into(),
        root_cert: dir.join("ca.crt"),
        cert: direct.cert.clone(),
        key: direct.key.clone(),
    };
    Ok((child, endpoint))
}

/// Warden on `deploy` with `[audit] fsync = fsync`; each mode has its own config, log and audit file,
/// and both share the CAs and state store (so one credential serves both).
fn start_warden(
    bin: &Path,
    root: &Path,
    deploy: &Path,
    cluster: &LocalCluster,
    fsync: &str,
) -> Result<(Child, Endpoint)> {
    let port = free_port()?;
    let config = deploy.join(format!("warden-{fsync}.toml"));
    let toml = format!(
        r#"[server]
postgres_listen = "127.0.0.1:{port}"
data_dir = "."

[audit]
fsync = "{fsync}"
path = "audit/{fsync}.jsonl"

[[database]]
name = "{DATABASE}"
url  = "postgres://warden_admin@127.0.0.1:{pg}/{DATABASE}?sslmode=verify-full&sslrootcert={ca}"
upstream_auth = "cert"

[[role]]
name = "pgbench"
databases = ["{DATABASE}"]
read = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers", "public.pgbench_history"]

[[workload]]
name = "{WARDEN_USER}"
roles = ["pgbench"]
"#,
        pg = cluster.port,
        ca = cluster.server_ca_path().display(),
    );
    std::fs::write(&config, toml)?;
    let log = root.join(format!("warden-{fsync}.log"));
    let child = Command::new(bin)
        .args(["start", "--config"])
        .arg(&config)
        .env("WARDEN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    wait_for_port(port, &log)?;
    let cred = root.join("cred");
    if !cred.exists() {
        run(Command::new(bin)
            .args(["issue", "--config"])
            .arg(&config)
            .args(["--kind", "workload", "--name", WARDEN_USER, "--ttl", "4h", "--out"])
            .arg(&cred))?;
    }
    let endpoint = Endpoint {
        port,
        user: WARDEN_USER.into(),
        root_cert: cred.join("ca.crt"),
        cert: cred.join("identity.crt"),
        key: cred.join("identity.key"),
    };
    Ok((child, endpoint))
}

/// Runs `cmd`, failing with its output when it fails.
pub fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
}

fn runas_postgres(tool: &str) -> Command {
    let path = warden::cluster::find_bin_dir()
        .map(|d| d.join(tool))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(tool));
    runas_postgres_path(&path)
}

fn runas_postgres_path(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn chown_postgres(path: &Path) -> Result<()> {
    if is_root() {
        run(Command::new("chown").args(["-R", "postgres"]).arg(path))?;
    }
    Ok(())
}

fn write_key(path: &Path, pem: &str) -> Result<()> {
    std::fs::write(path, pem)?;
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn wait_for_port(port: u16, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "nothing listens on 127.0.0.1:{port} after 30 s; log {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
