//! Memory per idle session: open N TLS sessions through Warden (certificate login, ReadyForQuery),
//! leave them idle, and compare Warden's resident memory before and after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Semaphore;

use crate::procstat::rss_bytes;
use crate::setup::{Endpoint, DATABASE};

pub struct IdleMemory {
    pub sessions: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub open_seconds: f64,
}

impl IdleMemory {
    pub fn bytes_per_session(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.sessions as f64
    }
}

pub fn measure(endpoint: &Endpoint, pid: u32, sessions: usize) -> Result<IdleMemory> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(measure_async(endpoint, pid, sessions))
}

async fn measure_async(endpoint: &Endpoint, pid: u32, sessions: usize) -> Result<IdleMemory> {
    let tls = tls_config(endpoint)?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(endpoint.port)
        .user(&endpoint.user)
        .dbname(DATABASE)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(60));
    // One session first, so that what every session shares (catalog, provisioning) is already there.
    let warm = connect(&cfg, &tls)
        .await
        .context("a first idle session through Warden")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(pid)?;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        let (cfg, tls, gate) = (cfg.clone(), tls.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            connect(&cfg, &tls).await
        });
    }
    let mut open = Vec::with_capacity(sessions);
    while let Some(joined) = tasks.join_next().await {
        open.push(joined?.context("opening an idle session through Warden")?);
    }
    let open_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_bytes(pid)?;
    drop(open);
    drop(warm);
    Ok(IdleMemory {
        sessions,
        rss_before,
        rss_after,
        open_seconds,
    })
}

async fn connect(cfg: &tokio_postgres::Config, tls: &rustls::ClientConfig) -> Result<tokio_postgres::Client> {
    let (client, conn) = cfg
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn tls_config(e: &Endpoint) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&e.root_cert)?)?;
    let chain = vec![CertificateDer::from_pem_file(&e.cert)?];
    let key = PrivateKeyDer::from_pem_file(&e.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}
