//! How long a durable append takes on the disk of Warden's audit log: the least that
//! `[audit] fsync = "batch"` adds to every statement, whose `query` record is fdatasynced before
//! PostgreSQL sees the statement (one fdatasync covers every record queued meanwhile, but each
//! statement waits for at least the one that covers its own record).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

/// About what one statement's two records take in Warden's log (a `query` and its `query.result`).
const APPEND_BYTES: usize = 512;

/// Latencies of append + fdatasync, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct FsyncProbe {
    pub appends: usize,
    pub mean_ms: f64,
    pub p10_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// Appends `APPEND_BYTES` to a new file in `dir` and fdatasyncs it, as the audit writer does for a
/// batch, `max` times or until `stop` is set (at least 10 times); the file is removed afterwards.
pub fn probe(dir: &Path, max: usize, stop: &AtomicBool) -> Result<FsyncProbe> {
    let path = dir.join(format!("fsync-probe-{}.bin", std::process::id()));
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let timed = append_and_sync(&mut file, max, stop);
    drop(file);
    let _ = std::fs::remove_file(&path);
    let mut ms = timed.with_context(|| format!("appending to {}", path.display()))?;
    Ok(summarize(&mut ms))
}

fn append_and_sync(file: &mut File, max: usize, stop: &AtomicBool) -> std::io::Result<Vec<f64>> {
    let line = {
        let mut l = vec![b'x'; APPEND_BYTES - 1];
        l.push(b'\n');
        l
    };
    let mut ms = Vec::with_capacity(max.min(1 << 20));
    while ms.len() < max && (ms.len() < 10 || !stop.load(Ordering::Relaxed)) {
        let start = Instant::now();
        file.write_all(&line)?;
        file.sync_data()?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(ms)
}

fn summarize(ms: &mut [f64]) -> FsyncProbe {
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    FsyncProbe {
        appends: ms.len(),
        mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        p10_ms: at(0.10),
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_latencies() {
        let mut ms: Vec<f64> = (1..=101).rev().map(f64::from).collect();
        let p = summarize(&mut ms);
        assert_eq!(p.appends, 101);
        assert_eq!((p.p10_ms, p.p50_ms, p.p90_ms, p.p99_ms), (11.0, 51.0, 91.0, 100.0));
        assert_eq!(p.mean_ms, 51.0);
    }

    #[test]
    fn a_probe_appends_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("warden-bench-fsync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = probe(&dir, 20, &AtomicBool::new(false)).unwrap();
        assert_eq!(p.appends, 20);
        assert!(p.p10_ms > 0.0 && p.p10_ms <= p.p50_ms && p.p50_ms <= p.p99_ms);
        // Stopped early, it still takes enough samples for a median.
        let p = probe(&dir, 1000, &AtomicBool::new(true)).unwrap();
        assert_eq!(p.appends, 10);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "the probe file was left behind"
        );
        std::fs::remove_dir(&dir).unwrap();
    }
}
