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
            // A redirect is not delivery: followed, a 301-303 turns the POST into a GET without the
            // records (a 2xx after it would count as delivered), and a 307/308 sends them and the
            // configured headers wherever it points.
            .redirect(reqwest::redirect::Policy::none())
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
        if status.is_redirection() {
            bail!("the webhook answered {status}, a redirect, which Warden does not follow (it could drop the records or send them elsewhere); set the sink's url to the address it redirects to");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warden_audit::EventBody;
    use warden_identity::CertificateAuthority;

    fn queries(statements: &[&str]) -> Vec<EventBody> {
        statements
            .iter()
            .map(|s| EventBody {
                event: "query".into(),
                statement: Some((*s).into()),
                ..Default::default()
            })
            .collect()
    }

    /// An https receiver whose certificate only `ca_file` vouches for gets the records as a JSON array.
    #[tokio::test]
    async fn https_with_a_ca_file_and_a_json_array() {
        let (dir, records) = super::super::stored(queries(&["SELECT 1", "SELECT 2"])).await;

        let ca = CertificateAuthority::generate("test SIEM CA", time::Duration::hours(1)).unwrap();
        let server = ca
            .issue_server(&["localhost".into()], time::Duration::hours(1))
            .unwrap();
        let tls = crate::tls::server_config(vec![server.cert_der.clone()], server.key_der, b"http/1.1").unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = acceptor.accept(tcp).await.unwrap();
            let mut got = Vec::new();
            loop {
                let mut chunk = [0u8; 4096];
                let n = conn.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.to_lowercase().strip_prefix("content-length: ").map(str::to_string))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= length {
                        conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                            .await
                            .unwrap();
                        conn.shutdown().await.unwrap();
                        return (head.to_lowercase(), body.to_string());
                    }
                }
                assert!(n > 0, "the request ended early: {text}");
            }
        });

        let ca_file = dir.path().join("siem-ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let config = WebhookSink {
            url: format!("https://localhost:{port}/ingest").parse().unwrap(),
            ca_file: Some(ca_file),
            format: WebhookFormat::Json,
            batch_size: 10,
            batch_interval: Duration::ZERO,
            headers: Vec::new(),
        };
        Webhook::new(&config).unwrap().deliver(&records).await.unwrap();
        let (head, body) = received.await.unwrap();
        assert!(head.starts_with("post /ingest http/1.1"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains("x-warden-first-seq: 1") && head.contains("x-warden-last-seq: 2"),
            "{head}"
        );
        let lines: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.line.clone()).unwrap())
            .collect();
        assert_eq!(body, format!("[{}]", lines.join(",")));
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed[1]["statement"], "SELECT 2");
    }

    /// A redirect is a failed delivery (retried), never followed: a 302 then a 200 for the GET it
    /// leads to would otherwise count records as delivered that never arrived.
    #[tokio::test]
    async fn a_redirect_is_not_followed_and_not_counted_as_delivered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = tokio::spawn(async move {
            let mut requests = Vec::new();
            loop {
                let accepted = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
                let Ok(Ok((mut tcp, _))) = accepted else {
                    return requests;
                };
                let mut got = Vec::new();
                let mut chunk = [0u8; 4096];
                while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                    let n = tcp.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&chunk[..n]);
                }
                let text = String::from_utf8_lossy(&got).into_owned();
                let first = text.lines().next().unwrap_or_default().to_string();
                let answer: &[u8] = if first.contains("/ingest") {
                    b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                requests.push(first);
                tcp.write_all(answer).await.unwrap();
                tcp.shutdown().await.unwrap();
            }
        });
        let config = WebhookSink {
            url: format!("http://127.0.0.1:{port}/ingest").parse().unwrap(),
            ca_file: None,
            format: WebhookFormat::Ndjson,
            batch_size: 10,
            batch_interval: Duration::ZERO,
            headers: Vec::new(),
        };
        let (_dir, records) = super::super::stored(queries(&["SELECT 1"])).await;
        let err = Webhook::new(&config)
            .unwrap()
            .deliver(&records)
            .await
            .expect_err("a redirect is not a delivery");
        assert!(err.to_string().contains("302"), "{err}");
        let requests = served.await.unwrap();
        assert_eq!(requests, ["POST /ingest HTTP/1.1"], "the redirect was not followed");
    }

    #[test]
    fn a_missing_ca_file_is_refused_at_start() {
        let config = WebhookSink {
            url: "https://siem.example.com/".parse().unwrap(),
            ca_file: Some("/nonexistent/ca.pem".into()),
            format: WebhookFormat::Ndjson,
            batch_size: 1,
            batch_interval: Duration::ZERO,
            headers: Vec::new(),
        };
        let e = Webhook::new(&config).err().expect("a missing ca_file is refused");
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"), "{e:#}");
    }
}
