use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::deployment::{self, Authorities, CaKind};

pub fn run(dir: &Path) -> Result<ExitCode> {
    let config = dir.join("warden.toml");
    if config.exists() {
        bail!(
            "{} already exists; `warden init` makes a new deployment and never overwrites one",
            config.display()
        );
    }
    deployment::create_private_dir(dir)?;
    Authorities::create(dir)?;
    deployment::create_private_dir(&dir.join("audit"))?;
    write_new(&config, SAMPLE_CONFIG)?;
    println!("Created a Warden deployment in {}:", dir.display());
    println!(
        "  {}        configuration (edit the [[database]] url and the roles)",
        config.display()
    );
    println!(
        "  {}/ca/              user, host and db CAs (keys are 0600; keep them here)",
        dir.display()
    );
    println!();
    println!("Next:");
    println!(
        "  1. Let PostgreSQL trust Warden's logins:  warden ca export db --config {} > warden-db-ca.pem",
        config.display()
    );
    println!("     then in postgresql.conf: ssl = on, ssl_ca_file = 'warden-db-ca.pem'");
    println!("     and in pg_hba.conf:      hostssl all all 127.0.0.1/32 cert");
    println!(
        "  2. Start Warden:            warden start --config {}",
        config.display()
    );
    println!(
        "  3. Issue an identity:       warden issue --config {} --kind human --name alice --out alice",
        config.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn export_ca(config: &Path, which: CaKind) -> Result<ExitCode> {
    let config = deployment::load_config(config)?;
    let ca = deployment::load_ca(&config.server.data_dir, which)?;
    std::io::stdout().write_all(ca.cert_pem().as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a file that must not exist yet.
pub fn write_new(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The file `warden init` writes: every section of PRODUCT.md §4, explained.
pub const SAMPLE_CONFIG: &str = r#"# Warden configuration. Reference: docs/connection.md and PRODUCT.md §4.
# Unknown keys are errors; Warden names the file, line and key of any mistake and refuses to start.

[server]
# Where PostgreSQL clients connect (TLS only). Point psql, drivers and DATABASE_URL here.
postgres_listen = "127.0.0.1:6432"
# HTTPS API for `warden exec` and access requests (mTLS with the user CA).
api_listen      = "127.0.0.1:3080"
# CAs, state and the audit log. Relative paths are relative to this file.
data_dir        = "."
# Humans who may lock anything and revoke any credential through the API. (The offline commands,
# `warden lock`, `warden revoke`, need only access to this deployment's files.)
# admins = ["human:alice"]

[audit]
# "always": fsync every record; "batch": group commit, a statement waits for its batch to be on disk;
# "off": no fsync (unsafe: a crash can lose records of statements that ran).
fsync = "batch"
# The active file is rotated (renamed audit.<last seq>.jsonl) at this size; the chain continues.
# rotate_size_mib = 256
# Warden signs the chain head (Ed25519, audit/checkpoint.key) at most this often while records arrive.
# checkpoint_interval_ms = 200
# Record the first N rows of each result in query.result (0: column names and counts only).
# result_rows = 0
# Secrets cut out of statements, parameters and errors before a record is written (regular expressions;
# each match becomes [REDACTED]). The log and every sink only ever hold the redacted text.
# redact = ['sk_live_[A-Za-z0-9]+']

# SIEM export (docs/siem.md): each sink receives every record of the log, in order, at least once; an
# outage delays records, it never loses them (the log is the buffer; AUDIT_DIR/sinks/NAME.cursor says
# what each sink has). A new sink starts from the log's first record.
# [[audit.sink]]
# name = "siem"
# type = "webhook"                 # "stdout" | "file" (path = ...) | "syslog" (address = "udp://HOST:PORT",
#                                  #   "tcp://HOST:PORT" or "unix:///dev/log"; facility, app_name) | "webhook"
# url  = "https://siem.example.com/ingest"
# headers = { Authorization = "Bearer ..." }
# batch_size = 500                 # records per POST (newline-delimited JSON: the log's own lines)
# batch_interval_ms = 1000         # longest a record waits for its batch to fill

# One [[database]] per database clients may ask for by name.
[[database]]
name = "shop"
# Warden's admin connection. It provisions one PostgreSQL role per identity, so it needs CREATEROLE and
# the privileges it hands out WITH GRANT OPTION (see docs/connection.md). Without a password in the URL
# it logs in with a certificate from Warden's db CA (CN = the user name).
url  = "postgres://warden_admin@127.0.0.1:5432/shop?sslmode=verify-ca&sslrootcert=server-ca.pem"
# "cert": provisioned roles log in with short-lived certificates from the db CA (PostgreSQL: ssl_ca_file
# = the db CA, pg_hba `hostssl ... cert`); "password": a one-time password set at each connection.
upstream_auth = "cert"

# Roles: what an identity may do. `schema.table(col, ...)` limits a grant to columns; `schema.*` is every
# table of the schema. Effective roles = credential roles ∩ the identity's roles (∩ the requester's, for agents).
[[role]]
name = "analyst"
databases = ["shop"]
read  = ["public.orders(id, customer_id, status, total, region)", "public.customers(id, name, region)"]
write = []
# Rows an identity holding this role sees; {{traits.X}} is the (requester's) trait, quoted as a literal.
row_filter = { "public.orders" = "region = {{traits.region}}" }
max_ttl = "1h"

[[role]]
name = "writer"
databases = ["shop"]
read  = ["public.*"]
write = ["public.orders"]
approval  = "session"    # "none" | "session" (an approved access request) | "statement" (each write reviewed)
approvers = ["dba"]

[[role]]
name = "dba"
databases = ["shop"]
read  = ["public.*"]

[[human]]
name = "alice"
roles = ["analyst", "writer", "dba"]
traits = { region = "eu" }

[[agent]]
name = "report-bot"
roles = ["analyst", "writer"]    # the most it may ever hold
max_ttl = "15m"
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn sample_config_is_valid() {
        let c = warden_policy::Config::parse(std::path::Path::new("/tmp/x/warden.toml"), super::SAMPLE_CONFIG).unwrap();
        assert_eq!(c.databases.len(), 1);
        assert_eq!(c.identities.len(), 2);
        // The commented sink is valid once uncommented.
        let uncommented = super::SAMPLE_CONFIG
            .replace("# redact = ", "redact = ")
            .replace("# [[audit.sink]]", "[[audit.sink]]")
            .replace("# name = \"siem\"", "name = \"siem\"")
            .replace("# type = \"webhook\"", "type = \"webhook\"")
            .replace("# url  = ", "url  = ")
            .replace("# headers = ", "headers = ")
            .replace("# batch_size = ", "batch_size = ")
            .replace("# batch_interval_ms = ", "batch_interval_ms = ");
        let c = warden_policy::Config::parse(std::path::Path::new("/tmp/x/warden.toml"), &uncommented).unwrap();
        assert_eq!((c.audit.sinks.len(), c.audit.redact.len()), (1, 1));
    }
}
