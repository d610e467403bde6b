//! The upstream PostgreSQL address, parsed from a libpq-style URL.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// TLS, server certificate not checked. Allowed, but `warden start` warns.
    Require,
    /// TLS, server certificate chain checked against `sslrootcert`, host name not checked.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub host: String,
    pub port: u16,
    /// The administrative role Warden provisions with.
    pub admin_user: String,
    /// When absent, the admin connection authenticates with a db-CA certificate.
    pub admin_password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
}

impl UpstreamUrl {
    /// Parses `postgres://user[:password]@host[:port]/dbname?sslmode=...&sslrootcert=...`;
    /// a relative `sslrootcert` is resolved against `base` (the config file's directory).
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!("scheme must be postgres://, not {}://", url.scheme()));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the URL needs a host")?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let admin_user = decode(url.username());
        if admin_user.is_empty() {
            return Err("the URL needs the admin user, like postgres://warden_admin@host/db".into());
        }
        let dbname = decode(url.path().trim_start_matches('/'));
        if dbname.is_empty() {
            return Err("the URL needs a database name, like postgres://warden_admin@host/shop".into());
        }
        let mut sslmode = SslMode::VerifyFull;
        let mut sslrootcert = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "sslmode" => {
                    sslmode = match v.as_ref() {
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(format!(
                                "sslmode={other} is not allowed: Warden always uses TLS upstream (require, verify-ca or verify-full)"
                            ))
                        }
                    }
                }
                "sslrootcert" => sslrootcert = Some(base.join(v.as_ref())),
                other => return Err(format!("unknown URL parameter \"{other}\" (known: sslmode, sslrootcert)")),
            }
        }
        if sslmode != SslMode::Require && sslrootcert.is_none() {
            return Err(
                "sslmode verify-ca/verify-full needs sslrootcert=FILE (the CA of PostgreSQL's server certificate)"
                    .into(),
            );
        }
        Ok(UpstreamUrl {
            host,
            port: url.port().unwrap_or(5432),
            admin_user,
            admin_password: url.password().map(decode),
            dbname,
            sslmode,
            sslrootcert,
        })
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}
