//! Talking to a running Warden's API as the identity in a credential directory (mTLS with its own
//! certificate, trusting only its Warden's CA): shared by `warden exec` and `warden requests`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// A credential directory and the API it names.
pub(crate) struct ApiClient {
    pub profile: Profile,
    pub api: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(dir: &Path) -> Result<Self> {
        let profile_path = dir.join("profile.toml");
        let profile: Profile = toml::from_str(
            &std::fs::read_to_string(&profile_path).with_context(|| format!("reading {}", profile_path.display()))?,
        )
        .with_context(|| format!("reading {}", profile_path.display()))?;
        let Some(api) = profile.api.clone() else {
            bail!(
                "{} names no API address: the deployment needs server.api_listen in warden.toml, then a credential issued after that",
                profile_path.display()
            );
        };
        Ok(ApiClient {
            profile,
            api,
            http: api_client(dir)?,
        })
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        call(self.http.get(format!("{}{path}", self.api))).await
    }

    pub async fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T> {
        call(self.http.post(format!("{}{path}", self.api)).json(body)).await
    }
}

/// What `warden issue` writes to profile.toml (only the parts `exec` needs).
#[derive(Deserialize)]
pub(crate) struct Profile {
    pub identity: String,
    pub api: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct Issued {
    pub credential_id: String,
    pub identity: String,
    pub roles: Vec<String>,
    pub not_after: String,
    pub certificate: String,
    pub private_key: String,
    pub ca_certificate: String,
    pub token: String,
    pub postgres: String,
    pub database: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
}

/// An HTTPS client that presents the credential in `dir` and trusts only its Warden's CA.
pub(crate) fn api_client(dir: &Path) -> Result<reqwest::Client> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    let ca = dir.join("ca.crt");
    roots.add(CertificateDer::from_pem_file(&ca).with_context(|| format!("reading {}", ca.display()))?)?;
    let cert = dir.join("identity.crt");
    let chain = vec![CertificateDer::from_pem_file(&cert).with_context(|| format!("reading {}", cert.display()))?];
    let key_path = dir.join("identity.key");
    let key = PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}

/// Sends a request; an API error becomes its message.
pub(crate) async fn call<T: serde::de::DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<T> {
    let resp = req.send().await.context("calling Warden's API")?;
    let status = resp.status();
    let text = resp.text().await.context("reading Warden's API response")?;
    if !status.is_success() {
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => bail!("{} ({})", e.error.message, e.error.code),
            Err(_) => bail!("Warden's API answered {status}: {text}"),
        }
    }
    serde_json::from_str(&text).with_context(|| format!("unexpected API response: {text}"))
}

pub(crate) fn write_private(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
