//! Audit write throughput: events per second and append latency (enqueue to acknowledgement, i.e.
//! written and, per the mode, fsynced) for each fsync mode and number of concurrent producers. Each
//! producer is a tokio task appending realistic `query` events (about 500 bytes stored) one after the
//! other, as a session does: it waits for each record before the next.
//!
//!     cargo bench -p warden-audit --bench throughput
//!     AUDIT_BENCH_SECS=5 AUDIT_BENCH_DIR=/var/lib/warden cargo bench -p warden-audit --bench throughput
//!
//! The log is written in AUDIT_BENCH_DIR (default: the system temp dir): measure on the disk the log
//! will live on, since fsync cost is the disk's. A measurement, not a test: it asserts nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_audit::{AuditLog, AuditOptions, EventBody, FsyncMode, IdentityRecord};

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("AUDIT_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let base = std::env::var_os("AUDIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!("audit log in {} for {secs} s per row", base.display());
    println!(
        "{:<7} {:>9} {:>12} {:>12} {:>12} {:>12}",
        "fsync", "producers", "events", "events/s", "p50 us", "p99 us"
    );
    for mode in [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Off] {
        for producers in [1, 16, 64] {
            let dir = tempfile::tempdir_in(&base).expect("a temporary directory");
            let r = run(
                &dir.path().join("audit.jsonl"),
                mode,
                producers,
                Duration::from_secs(secs),
            )
            .await;
            println!(
                "{:<7} {:>9} {:>12} {:>12.0} {:>12} {:>12}",
                format!("{mode:?}").to_lowercase(),
                producers,
                r.events,
                r.events as f64 / r.elapsed.as_secs_f64(),
                r.p50.as_micros(),
                r.p99.as_micros()
            );
        }
    }
}

struct Result {
    events: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

async fn run(path: &std::path::Path, fsync: FsyncMode, producers: usize, length: Duration) -> Result {
    let log = AuditLog::open_with(
        path,
        AuditOptions {
            fsync,
            ..AuditOptions::default()
        },
    )
    .expect("opening the audit log");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (log, stop) = (log.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = query_event(p, n);
                let t = Instant::now();
                log.append(body).await.expect("append");
                latencies.push(t.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("producer"));
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize];
    Result {
        events: all.len(),
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// A `query` event as the proxy writes one for an agent's statement.
fn query_event(producer: usize, n: u64) -> EventBody {
    EventBody {
        event: "query".into(),
        session_id: Some(format!("s_{producer:08x}5f3a9c2e7b1d4").into()),
        identity: Some(IdentityRecord {
            kind: "agent".into(),
            name: "report-bot".into(),
            requester: Some("human:alice".into()),
            task: Some("T-42".into()),
            roles: vec!["analyst".into()],
        }.into()),
        credential_id: Some("cr_7d1f0c2a9b8e4f6a".into()),
        database: Some("shop".into()),
        db_user: Some("w_agent_report_bot".into()),
        client_addr: Some("127.0.0.1:51234".into()),
        statement: Some(format!(
            "SELECT o.id, o.status, o.total, c.name FROM public.orders o JOIN public.customers c ON c.id = o.customer_id WHERE o.region = 'eu' AND o.id > {n} ORDER BY o.id LIMIT 50"
        )
        .into()),
        decision: Some("allow".into()),
        ..EventBody::default()
    }
}
