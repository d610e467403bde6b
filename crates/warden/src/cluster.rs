//! A private PostgreSQL cluster built from the machine's PostgreSQL binaries: `initdb` in a directory,
//! TLS on, client certificates from Warden's db CA trusted, `pg_ctl` to start and stop it. Used by
//! `warden quickstart` and by the end-to-end tests.
//!
//! `initdb` refuses to run as root, so when Warden runs as root the cluster runs as the unprivileged
//! `postgres` OS user (created by Debian's postgresql package), and its directories belong to that user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use time::Duration;
use warden_identity::CertificateAuthority;

pub struct ClusterOptions {
    /// The db CA certificate (PEM) PostgreSQL trusts for client certificates (`ssl_ca_file`).
    pub client_ca_pem: String,
    /// pg_hba.conf lines placed before the default `hostssl all all ... cert` lines.
    pub extra_hba: Vec<String>,
    /// Extra postgresql.conf lines.
    pub extra_conf: Vec<String>,
}

pub struct LocalCluster {
    /// The directory holding everything: pgdata/, sock/, postgres.log, server-ca.pem.
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    run_as: Option<String>,
    running: bool,
}

const SERVER_CERT_VALIDITY: Duration = Duration::days(365);

impl LocalCluster {
    /// Creates a new cluster in `dir` (which must not hold one yet) listening on 127.0.0.1:`port`.
    pub fn create(dir: &Path, port: u16, options: &ClusterOptions) -> Result<Self> {
        let bin = find_bin_dir()?;
        let run_as = unprivileged_user()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = std::fs::canonicalize(dir)?;
        let cluster = LocalCluster {
            dir: dir.clone(),
            port,
            bin,
            run_as,
            running: false,
        };
        if cluster.run_as.is_some() {
            // The postgres user must be able to reach its own directories inside ours.
            set_mode(&dir, 0o755)?;
        }
        let pgdata = cluster.pgdata();
        for sub in [&pgdata, &dir.join("sock")] {
            std::fs::create_dir_all(sub)?;
            set_mode(sub, 0o700)?;
            cluster.give_to_postgres(sub)?;
        }
        cluster.run(
            cluster.tool("initdb"),
            &[
                "-D",
                path_str(&pgdata)?,
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=reject",
                "--no-instructions",
            ],
        )?;
        cluster.configure_tls(options)?;
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {port}"),
            format!("unix_socket_directories = '{}'", dir.join("sock").display()),
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
            "ssl_ca_file = 'warden-db-ca.pem'".into(),
            "max_connections = 200".into(),
        ];
        conf.extend(options.extra_conf.iter().cloned());
        cluster.append(&pgdata.join("postgresql.conf"), &conf)?;
        let mut hba = vec!["local all all trust".to_string()];
        hba.extend(options.extra_hba.iter().cloned());
        hba.push("hostssl all all 127.0.0.1/32 cert".into());
        hba.push("hostssl all all ::1/128 cert".into());
        std::fs::write(pgdata.join("pg_hba.conf"), hba.join("\n") + "\n")?;
        cluster.give_to_postgres(&pgdata.join("pg_hba.conf"))?;
        Ok(cluster)
    }

    /// An existing cluster made by `create` (quickstart reuses its directory).
    pub fn open(dir: &Path, port: u16) -> Result<Self> {
        let dir = std::fs::canonicalize(dir)?;
        if !dir.join("pgdata/PG_VERSION").exists() {
            bail!("{} holds no cluster", dir.display());
        }
        Ok(LocalCluster {
            dir,
            port,
            bin: find_bin_dir()?,
            run_as: unprivileged_user()?,
            running: false,
        })
    }

    pub fn pgdata(&self) -> PathBuf {
        self.dir.join("pgdata")
    }

    /// The CA of PostgreSQL's server certificate: Warden's `sslrootcert`.
    pub fn server_ca_path(&self) -> PathBuf {
        self.dir.join("server-ca.pem")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    pub fn start(&mut self) -> Result<()> {
        let log = self.log_path();
        if !log.exists() {
            std::fs::write(&log, "")?;
            self.give_to_postgres(&log)?;
        }
        self.run(
            self.tool("pg_ctl"),
            &[
                "-D",
                path_str(&self.pgdata())?,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    pub fn stop(&mut self) -> Result<()> {
        // A Ctrl-C in a terminal reaches PostgreSQL too, which then stops by itself.
        if self.running && self.pgdata().join("postmaster.pid").exists() {
            self.running = false;
            self.run(
                self.tool("pg_ctl"),
                &["-D", path_str(&self.pgdata())?, "-m", "fast", "-w", "stop"],
            )?;
        }
        Ok(())
    }

    /// Runs SQL as the `postgres` superuser over the Unix socket (setup only; Warden never does this).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let sock = self.dir.join("sock");
        let out = self.run(
            self.tool("psql"),
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                path_str(&sock)?,
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Creates the non-superuser admin role Warden provisions with: CREATEROLE, plus the privileges it
    /// may hand out, WITH GRANT OPTION, on every table of `schemas` in `database`.
    pub fn create_admin(&self, admin: &str, database: &str, schemas: &[&str]) -> Result<()> {
        let mut sql = format!("CREATE ROLE {admin} LOGIN CREATEROLE;");
        for s in schemas {
            sql += &format!(
                "GRANT USAGE ON SCHEMA {s} TO {admin} WITH GRANT OPTION;\
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {admin} WITH GRANT OPTION;\
                 GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {admin} WITH GRANT OPTION;"
            );
        }
        self.psql(database, &sql)?;
        Ok(())
    }

    /// A shell command that stops this cluster at once: for watchdogs that outlive the process.
    pub fn shell_stop_command(&self) -> String {
        let ctl = format!(
            "{} -D '{}' -m immediate -w stop",
            self.tool("pg_ctl").display(),
            self.pgdata().display()
        );
        match &self.run_as {
            Some(user) => format!("runuser -u {user} -- {ctl}"),
            None => ctl,
        }
    }

    fn configure_tls(&self, options: &ClusterOptions) -> Result<()> {
        let ca = CertificateAuthority::generate("Warden local PostgreSQL server CA", Duration::days(3650))?;
        let cert = ca.issue_server(
            &["127.0.0.1".into(), "localhost".into(), "::1".into()],
            SERVER_CERT_VALIDITY,
        )?;
        let pgdata = self.pgdata();
        let files = [
            ("server.crt", cert.cert_pem.as_str()),
            ("server.key", cert.key_pem.as_str()),
            ("warden-db-ca.pem", options.client_ca_pem.as_str()),
        ];
        for (name, contents) in files {
            let path = pgdata.join(name);
            std::fs::write(&path, contents)?;
            set_mode(&path, 0o600)?;
            self.give_to_postgres(&path)?;
        }
        std::fs::write(self.server_ca_path(), ca.cert_pem())?;
        Ok(())
    }

    fn append(&self, path: &Path, lines: &[String]) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
        writeln!(f, "\n# added by warden")?;
        for l in lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn give_to_postgres(&self, path: &Path) -> Result<()> {
        if let Some(user) = &self.run_as {
            let status = Command::new("chown").arg("-R").arg(user).arg(path).status()?;
            if !status.success() {
                bail!("chown {user} {} failed", path.display());
            }
        }
        Ok(())
    }

    fn run(&self, program: PathBuf, args: &[&str]) -> Result<Output> {
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&program);
                c
            }
            None => Command::new(&program),
        };
        cmd.args(args).current_dir(&self.dir).env("PGTZ", "UTC");
        let out = cmd.output().with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{} {} failed: {}{}",
                program.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(out)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warden: stopping PostgreSQL in {}: {e:#}", self.dir.display());
        }
    }
}

/// Finds PostgreSQL's server binaries: $PG_BIN, then `pg_config --bindir`, then the newest
/// /usr/lib/postgresql/*/bin (Debian's layout).
pub fn find_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    bail!("no PostgreSQL server binaries found (looked at $PG_BIN, /usr/lib/postgresql/*/bin, pg_config); install them, e.g. `apt-get install -y postgresql`, or set PG_BIN")
}

/// `Some("postgres")` when running as root (initdb refuses root), `None` otherwise.
fn unprivileged_user() -> Result<Option<String>> {
    let uid = Command::new("id").arg("-u").output().context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Ok(None);
    }
    let exists = Command::new("id")
        .arg("postgres")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        bail!("running as root, and PostgreSQL refuses to run as root: create the `postgres` user (installing Debian's postgresql package does), or run as an ordinary user");
    }
    Ok(Some("postgres".into()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not valid UTF-8", p.display()))
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
