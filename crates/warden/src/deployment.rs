//! A deployment on disk: `warden.toml`, and in its data directory the three CAs and the audit log.
//!
//! ```text
//! DATA_DIR/ca/user-ca.{crt,key}   signs client identities (certificates and tokens)
//! DATA_DIR/ca/host-ca.{crt,key}   signs Warden's own server certificate; clients trust it (ca.crt)
//! DATA_DIR/ca/db-ca.{crt,key}     signs the short-lived certificates Warden logs in to PostgreSQL with
//! DATA_DIR/audit/audit.jsonl      the audit log
//! DATA_DIR/audit/sinks/NAME.cursor the last record each `[[audit.sink]]` delivered
//! DATA_DIR/state/warden.db        issued and revoked credentials, locks (SQLite)
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use time::Duration;
use warden_identity::CertificateAuthority;
use warden_policy::Config;

/// Which CA, as named on the command line (`warden ca export user|db|host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaKind {
    User,
    Host,
    Db,
}

impl CaKind {
    pub fn file_stem(self) -> &'static str {
        match self {
            CaKind::User => "user-ca",
            CaKind::Host => "host-ca",
            CaKind::Db => "db-ca",
        }
    }

    fn common_name(self) -> &'static str {
        match self {
            CaKind::User => "Warden user CA",
            CaKind::Host => "Warden host CA",
            CaKind::Db => "Warden db CA",
        }
    }
}

/// CAs are long-lived roots kept only in the data dir; what they sign is short-lived.
const CA_VALIDITY: Duration = Duration::days(3650);

pub struct Authorities {
    pub user: CertificateAuthority,
    pub host: CertificateAuthority,
    pub db: CertificateAuthority,
}

pub fn ca_paths(data_dir: &Path, kind: CaKind) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("ca");
    (
        dir.join(format!("{}.crt", kind.file_stem())),
        dir.join(format!("{}.key", kind.file_stem())),
    )
}

impl Authorities {
    /// Creates the three CAs in `data_dir/ca`; refuses to replace existing ones.
    pub fn create(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("ca");
        create_private_dir(&dir)?;
        let mut made = Vec::new();
        for kind in [CaKind::User, CaKind::Host, CaKind::Db] {
            let (crt, key) = ca_paths(data_dir, kind);
            if key.exists() {
                bail!(
                    "{} already exists; refusing to replace a CA (every credential it signed would stop working)",
                    key.display()
                );
            }
            let ca = CertificateAuthority::generate(kind.common_name(), CA_VALIDITY)?;
            ca.save(&crt, &key)?;
            made.push(ca);
        }
        let db = made.pop().expect("three CAs were made above");
        let host = made.pop().expect("three CAs were made above");
        let user = made.pop().expect("three CAs were made above");
        Ok(Authorities { user, host, db })
    }

    pub fn load(data_dir: &Path) -> Result<Self> {
        Ok(Authorities {
            user: load_ca(data_dir, CaKind::User)?,
            host: load_ca(data_dir, CaKind::Host)?,
            db: load_ca(data_dir, CaKind::Db)?,
        })
    }
}

pub fn load_ca(data_dir: &Path, kind: CaKind) -> Result<CertificateAuthority> {
    let (crt, key) = ca_paths(data_dir, kind);
    CertificateAuthority::load(&crt, &key).with_context(|| {
        format!(
            "loading the {} CA from {} (run `warden init` first?)",
            kind.file_stem(),
            crt.display()
        )
    })
}

pub fn load_config(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

/// Where the state store lives: `DATA_DIR/state/warden.db`.
pub fn state_path(config: &Config) -> PathBuf {
    config.server.data_dir.join("state").join("warden.db")
}

/// Opens the deployment's state store (credentials, revocations, locks); the proxy and CLI share it.
pub fn open_state(config: &Config) -> Result<warden_state::SqliteStore> {
    let path = state_path(config);
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    warden_state::SqliteStore::open(&path).with_context(|| format!("opening the state store {}", path.display()))
}

/// Directories holding keys are private to the user running Warden.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

pub fn audit_mode(config: &Config) -> warden_audit::FsyncMode {
    match config.audit.fsync.as_str() {
        "always" => warden_audit::FsyncMode::Always,
        "off" => warden_audit::FsyncMode::Off,
        // The config parser admits only the three names.
        _ => warden_audit::FsyncMode::Batch,
    }
}

pub fn audit_options(config: &Config) -> warden_audit::AuditOptions {
    let a = &config.audit;
    warden_audit::AuditOptions {
        fsync: audit_mode(config),
        rotate_bytes: (a.rotate_size_mib > 0).then_some(a.rotate_size_mib * 1024 * 1024),
        checkpoint_every: Some(std::time::Duration::from_millis(a.checkpoint_interval_ms)),
    }
}

/// Opens the deployment's audit log; the proxy and CLI commands share it (appends are locked).
pub fn open_audit(config: &Config) -> Result<warden_audit::AuditHandle> {
    let redactor = warden_audit::Redactor::new(config.audit.redact.clone());
    Ok(
        warden_audit::AuditLog::open_with(&config.audit.path, audit_options(config))
            .with_context(|| format!("opening the audit log {}", config.audit.path.display()))?
            .with_redactor(std::sync::Arc::new(redactor)),
    )
}
