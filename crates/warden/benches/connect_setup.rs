//! Connection setup time, through Warden versus directly to PostgreSQL, both over TLS with client
//! certificates, on the same freshly made cluster: connect, `SELECT 1`, close; N times each, interleaved.
//!
//!     cargo bench --bench connect_setup            # N = 20
//!     CONNECT_SETUP_N=100 cargo bench --bench connect_setup
//!
//! A measurement for the issue notes, not a test: it asserts nothing about speed.

#[path = "../tests/e2e/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("CONNECT_SETUP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let h = harness();
    let cred = h.agent();

    // Direct: a role of its own, logging in with a db-CA certificate as Warden does, TLS verified.
    h.cluster
        .psql(
            "shop",
            "CREATE ROLE direct_bench LOGIN; GRANT SELECT ON public.orders TO direct_bench",
        )
        .unwrap();
    let db_ca =
        warden_identity::CertificateAuthority::load(&h.deploy.join("ca/db-ca.crt"), &h.deploy.join("ca/db-ca.key"))
            .unwrap();
    let direct_cert = db_ca.issue_db_client("direct_bench", time::Duration::hours(1)).unwrap();
    let mut direct = tokio_postgres::Config::new();
    direct
        .host("127.0.0.1")
        .port(h.cluster.port)
        .user("direct_bench")
        .dbname("shop")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let server_ca = h.cluster.server_ca_path();

    // Warm both paths once (provisioning, TLS session caches).
    h.connect(&cred, "report-bot", "shop", false).await.unwrap();
    connect_with(
        &direct,
        &server_ca,
        Some((vec![direct_cert.cert_der.clone()], direct_cert.key_der.clone_key())),
    )
    .await
    .unwrap();

    let (mut via, mut straight) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let c = h.connect(&cred, "report-bot", "shop", false).await.unwrap();
        c.simple_query("SELECT 1").await.unwrap();
        drop(c);
        via.push(t.elapsed());

        let t = Instant::now();
        let c = connect_with(
            &direct,
            &server_ca,
            Some((vec![direct_cert.cert_der.clone()], direct_cert.key_der.clone_key())),
        )
        .await
        .unwrap();
        c.simple_query("SELECT 1").await.unwrap();
        drop(c);
        straight.push(t.elapsed());
    }
    let (w, d) = (median(&mut via), median(&mut straight));
    println!("connection setup (connect + SELECT 1 + close), TLS with client certificates, n = {n}");
    println!(
        "  direct to PostgreSQL : median {:>7.2} ms   p90 {:>7.2} ms",
        ms(d),
        ms(p90(&straight))
    );
    println!(
        "  through Warden       : median {:>7.2} ms   p90 {:>7.2} ms",
        ms(w),
        ms(p90(&via))
    );
    println!("  ratio Warden/direct  : {:.2}", ms(w) / ms(d));
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[(s.len() * 9 / 10).min(s.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
