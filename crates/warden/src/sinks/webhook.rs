//! HTTP webhook: a batch per POST, the records' stored lines as newline-delimited JSON (or a JSON
//! array). Any 2xx accepts the batch; anything else, or no answer, is retried.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use warden_audit::StoredRecord;
use warden_policy::{WebhookFormat, WebhookSink};

use super::output::json_lines;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the system's CA bundle usually is (Debian, Fedora, SUSE, Alpine and BSD).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

pub(crate) struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    format: WebhookFormat,
    headers: HeaderMap,
}

impl Webhook {
    pub(crate) fn new(config: &WebhookSink) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        if config.url.scheme() == "https" {
            let bundle = match &config.ca_file {
                Some(path) => path.clone(),
                None => SYSTEM_BUNDLES
                    .iter()
                    .map(std::path::PathBuf::from)
                    .find(|p| p.exists())
                    .with_context(|| {
                        format!(
                            "webhook {}: no system CA bundle found (looked in {}); set ca_file",
                            config.url.host_str().unwrap_or_default(),
                            SYSTEM_BUNDLES.join(", ")
                        )
                    })?,
            };
            for cert in
                CertificateDer::pem_file_iter(&bundle).with_context(|| format!("reading {}", bundle.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("reading {}", bundle.display()))?)
                    .with_context(|| format!("a certificate in {}", bundle.display()))?;
            }
            if roots.is_empty() {
                bail!("{} holds no certificate", bundle.display());
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            // The config admits only header names and printable ASCII values; the value is not quoted.
            let mut value =
                HeaderValue::from_str(value.expose()).with_context(|| format!("the value of header {name}"))?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_bytes(name.as_bytes())?, value);
        }
        let content_type = match config.format {
            WebhookFormat::Ndjson => "application/x-ndjson",
            WebhookFormat::Json => "application/json",
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        Ok(Webhook {
            client,
            url: config.url.clone(),
            format: config.format,
            headers,
        })
    }

    pub(crate) async fn deliver(&mut self, batch: &[StoredRecord]) -> Result<()> {
        let body = match self.format {
            WebhookFormat::Ndjson => json_lines(batch),
            WebhookFormat::Json => json_array(batch),
        };
        let first = batch.first().map(|r| r.event.seq).unwrap_or_default();
        let last = batch.last().map(|r| r.event.seq).unwrap_or_default();
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            // Lets a receiver drop what it already has when a batch is sent again.
            .header("X-Warden-First-Seq", first)
            .header("X-Warden-Last-Seq", last)
            .body(body)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        if !status.is_success() {
            bail!("the webhook answered {status}");
        }
        Ok(())
    }
}

/// `[line,line,...]`: still the stored bytes of each record.
fn json_array(batch: &[StoredRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + batch.iter().map(|r| r.line.len() + 1).sum::<usize>());
    out.push(b'[');
    for (i, r) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.line);
    }
    out.push(b']');
    out
}

/// The error and its causes ("connection refused" is a cause), without the URL: its query string may
/// hold a token.
fn describe(e: reqwest::Error) -> anyhow::Error {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    anyhow::anyhow!(text)
}
