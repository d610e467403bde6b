//! The runs, aggregated over rounds: the printed table and `report.json`.

use serde::Serialize;

use crate::fsync::FsyncProbe;
use crate::pgbench::Protocol;

/// One pgbench run as measured.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: u32,
    pub target: &'static str,
    pub protocol: &'static str,
    pub clients: u32,
    pub connect_per_tx: bool,
    pub tps: f64,
    pub latency_ms: f64,
    pub p99_ms: Option<f64>,
    pub transactions: u64,
    /// CPU seconds (utime + stime from /proc) of the proxy process per transaction, in microseconds.
    pub proxy_cpu_us_per_tx: Option<f64>,
    pub load_average: String,
}

/// One line of the contract's `runs`: the median over rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub target: &'static str,
    pub protocol: &'static str,
    pub clients: u32,
    pub connect_per_tx: bool,
    pub tps: f64,
    pub latency_ms: f64,
    pub p99_ms: Option<f64>,
    pub proxy_cpu_us_per_tx: Option<f64>,
    pub rounds: usize,
    pub vs_direct: Option<f64>,
    pub vs_pgbouncer: Option<f64>,
}

pub const WARDEN_FSYNC_OFF: &str = "warden-fsync-off";
pub const TARGETS: [&str; 4] = ["direct", "pgbouncer", "warden", WARDEN_FSYNC_OFF];

pub fn aggregate(samples: &[Sample]) -> Vec<Run> {
    let mut keys: Vec<(&'static str, u32, bool)> = Vec::new();
    for s in samples {
        let k = (s.protocol, s.clients, s.connect_per_tx);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut runs = Vec::new();
    for (protocol, clients, connect_per_tx) in keys {
        let group: Vec<Run> = TARGETS
            .iter()
            .filter_map(|target| {
                let of: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| {
                        s.target == *target
                            && s.protocol == protocol
                            && s.clients == clients
                            && s.connect_per_tx == connect_per_tx
                    })
                    .collect();
                (!of.is_empty()).then(|| Run {
                    target,
                    protocol,
                    clients,
                    connect_per_tx,
                    tps: median(of.iter().map(|s| s.tps)),
                    latency_ms: median(of.iter().map(|s| s.latency_ms)),
                    p99_ms: median_opt(of.iter().map(|s| s.p99_ms)),
                    proxy_cpu_us_per_tx: median_opt(of.iter().map(|s| s.proxy_cpu_us_per_tx)),
                    rounds: of.len(),
                    vs_direct: None,
                    vs_pgbouncer: None,
                })
            })
            .collect();
        let tps_of = |t: &str| group.iter().find(|r| r.target == t).map(|r| r.tps);
        let (direct, bouncer) = (tps_of("direct"), tps_of("pgbouncer"));
        for mut r in group.clone() {
            r.vs_direct = direct.map(|d| r.tps / d);
            r.vs_pgbouncer = bouncer.map(|b| r.tps / b);
            runs.push(r);
        }
    }
    runs
}

pub fn table(runs: &[Run]) -> String {
    let mut out = String::new();
    out += &format!(
        "{:<16} {:<8} {:>4} {:>3} | {:>9} {:>8} {:>8} | {:>7} {:>7} | {:>9}\n",
        "target", "protocol", "cli", "-C", "TPS", "lat ms", "p99 ms", "×direct", "×pgbncr", "proxy µs/tx"
    );
    out += &"-".repeat(103);
    out += "\n";
    let mut last = None;
    for r in runs {
        let key = (r.protocol, r.clients, r.connect_per_tx);
        if last.is_some() && last != Some(key) {
            out += "\n";
        }
        last = Some(key);
        out += &format!(
            "{:<16} {:<8} {:>4} {:>3} | {:>9.0} {:>8.3} {:>8} | {:>7} {:>7} | {:>9}\n",
            r.target,
            r.protocol,
            r.clients,
            if r.connect_per_tx { "yes" } else { "" },
            r.tps,
            r.latency_ms,
            r.p99_ms.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()),
            ratio(r.vs_direct),
            ratio(r.vs_pgbouncer),
            r.proxy_cpu_us_per_tx
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    out
}

/// The targets, each with the figures it was judged on.
#[derive(Debug, Serialize)]
pub struct Check {
    pub target: String,
    pub measured: f64,
    pub bound: f64,
    pub met: bool,
}

/// The run of `target` in protocol `p` with `clients` clients, connecting per transaction or not.
pub fn find_run<'a>(runs: &'a [Run], target: &str, p: Protocol, clients: u32, connect_per_tx: bool) -> Option<&'a Run> {
    runs.iter().find(|r| {
        r.target == target && r.protocol == p.name() && r.clients == clients && r.connect_per_tx == connect_per_tx
    })
}

pub fn checks(runs: &[Run], idle_bytes_per_session: Option<f64>) -> Vec<Check> {
    let find = |target: &str, p: Protocol, clients: u32, c: bool| find_run(runs, target, p, clients, c);
    let mut out = Vec::new();
    for p in [Protocol::Simple, Protocol::Extended] {
        if let Some(w) = find("warden", p, 16, false) {
            if let Some(b) = w.vs_pgbouncer {
                out.push(check(tps_vs_pgbouncer(p), b, 1.0, b >= 1.0));
            }
            if let Some(d) = w.vs_direct {
                out.push(check(tps_vs_direct(p), d, 0.8, d >= 0.8));
            }
            if let (Some(wp), Some(dp)) = (w.p99_ms, find("direct", p, 16, false).and_then(|d| d.p99_ms)) {
                let r = wp / dp;
                out.push(check(p99_vs_direct(p), r, 1.3, r <= 1.3));
            }
        }
    }
    for r in runs.iter().filter(|r| r.target == "warden" && r.connect_per_tx) {
        if let Some(d) = find("direct", Protocol::Simple, r.clients, true) {
            // Connection setup time per transaction: latency, which with -C includes the connection.
            let ratio = r.latency_ms / d.latency_ms;
            out.push(check(
                format!("-C {} clients: warden setup latency / direct TLS <= 2.0", r.clients),
                ratio,
                2.0,
                ratio <= 2.0,
            ));
        }
    }
    if let Some(b) = idle_bytes_per_session {
        out.push(check(
            "idle session: bytes per session <= 65536".into(),
            b,
            65536.0,
            b <= 65536.0,
        ));
    }
    out
}

/// For a 16-client TPS or p99 target not met: whether the audit fsync alone puts it out of reach.
/// With `fsync = "batch"` a statement reaches PostgreSQL only after an fdatasync that began after its
/// record was written (the writer acknowledges a batch after its `sync_data`). So a client's round
/// trip through Warden is at least PostgreSQL's and pgbench's part with no other client competing for
/// the CPU (direct's 1-client round trip) plus one fdatasync, and each statement takes at least the
/// fdatasync that covered its record. Not a CPU bound: at 16 clients the machine is saturated, and
/// what Warden's own CPU costs is in `proxy_cpu_us_per_tx`.
#[derive(Debug, Serialize)]
pub struct FsyncBound {
    pub target: String,
    /// What the target allows: each client's round trip (TPS targets: clients / TPS), or the p99.
    pub allowed_ms: f64,
    /// TPS targets: direct's 1-client round trip (1 / its TPS), which Warden's adds to.
    pub direct_ms: Option<f64>,
    /// What is left for Warden, its fdatasync included.
    pub left_ms: f64,
    /// The fdatasync figure compared with it (measured during a 16-client direct run): the mean for
    /// TPS targets, the p99 for p99 targets.
    pub fdatasync: &'static str,
    pub fdatasync_ms: f64,
    pub out_of_reach: bool,
    pub why: String,
}

/// The bounds of the targets not met; TPS targets only when the run has 1-client runs (not `--quick`).
pub fn fsync_bounds(runs: &[Run], fdatasync: &FsyncProbe) -> Vec<FsyncBound> {
    let find = |target: &str, p: Protocol, clients: u32| find_run(runs, target, p, clients, false);
    let mut out = Vec::new();
    for p in [Protocol::Simple, Protocol::Extended] {
        let (Some(w), Some(d)) = (find("warden", p, 16), find("direct", p, 16)) else {
            continue;
        };
        let round_trip = |tps: f64| f64::from(w.clients) / tps * 1e3;
        let alone = find("direct", p, 1).map(|d1| 1e3 / d1.tps);
        let mut tps_bound = |target: String, tps: f64| {
            let Some(direct_ms) = alone else {
                return;
            };
            let allowed_ms = round_trip(tps);
            let left_ms = allowed_ms - direct_ms;
            let out_of_reach = left_ms < fdatasync.mean_ms;
            out.push(FsyncBound {
                why: format!(
                    "{tps:.0} TPS allows {allowed_ms:.3} ms per round trip; direct's with 1 client takes \
                     {direct_ms:.3} ms, leaving {left_ms:.3} ms {} one fdatasync (mean {:.3} ms)",
                    if out_of_reach { "<" } else { ">=" },
                    fdatasync.mean_ms
                ),
                target,
                allowed_ms,
                direct_ms: Some(direct_ms),
                left_ms,
                fdatasync: "mean",
                fdatasync_ms: fdatasync.mean_ms,
                out_of_reach,
            });
        };
        if let Some(b) = find("pgbouncer", p, 16).filter(|_| w.vs_pgbouncer.is_some_and(|r| r < 1.0)) {
            tps_bound(tps_vs_pgbouncer(p), b.tps);
        }
        if w.vs_direct.is_some_and(|r| r < 0.8) {
            tps_bound(tps_vs_direct(p), 0.8 * d.tps);
        }
        if let (Some(wp), Some(dp)) = (w.p99_ms, d.p99_ms) {
            if wp > 1.3 * dp {
                let allowed_ms = 1.3 * dp;
                let out_of_reach = fdatasync.p99_ms > allowed_ms;
                out.push(FsyncBound {
                    target: p99_vs_direct(p),
                    why: format!(
                        "1.3 x direct's p99 is {allowed_ms:.3} ms; the fdatasync alone has a p99 of {:.3} ms",
                        fdatasync.p99_ms
                    ),
                    allowed_ms,
                    direct_ms: None,
                    left_ms: allowed_ms,
                    fdatasync: "p99",
                    fdatasync_ms: fdatasync.p99_ms,
                    out_of_reach,
                });
            }
        }
    }
    out
}

pub fn tps_vs_pgbouncer(p: Protocol) -> String {
    format!("16 clients {}: warden TPS / pgbouncer >= 1.0", p.name())
}

pub fn tps_vs_direct(p: Protocol) -> String {
    format!("16 clients {}: warden TPS / direct >= 0.8", p.name())
}

pub fn p99_vs_direct(p: Protocol) -> String {
    format!("16 clients {}: warden p99 / direct p99 <= 1.3", p.name())
}

fn check(target: String, measured: f64, bound: f64, met: bool) -> Check {
    Check {
        target,
        measured,
        bound,
        met,
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_opt(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| median(v.into_iter()))
}

/// A 16-client simple-protocol sample, for the tests here and in `durable`.
#[cfg(test)]
pub fn sample(round: u32, target: &'static str, tps: f64) -> Sample {
    Sample {
        round,
        target,
        protocol: "simple",
        clients: 16,
        connect_per_tx: false,
        tps,
        latency_ms: 16.0 / tps * 1000.0,
        p99_ms: Some(2.0),
        transactions: 1,
        proxy_cpu_us_per_tx: None,
        load_average: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_use_the_median_of_rounds() {
        let s = vec![
            sample(0, "direct", 1000.0),
            sample(1, "direct", 3000.0),
            sample(0, "pgbouncer", 500.0),
            sample(1, "pgbouncer", 500.0),
            sample(0, "warden", 1000.0),
            sample(1, "warden", 1000.0),
        ];
        let runs = aggregate(&s);
        let w = runs.iter().find(|r| r.target == "warden").unwrap();
        assert_eq!(w.vs_direct, Some(0.5));
        assert_eq!(w.vs_pgbouncer, Some(2.0));
        let c = checks(&runs, Some(70_000.0));
        assert!(c.iter().any(|c| c.target.contains("pgbouncer") && c.met));
        assert!(c.iter().any(|c| c.target.contains("direct >= 0.8") && !c.met));
        assert!(c.iter().any(|c| c.target.contains("idle") && !c.met));
    }

    fn probe(mean_ms: f64, p99_ms: f64) -> FsyncProbe {
        FsyncProbe {
            appends: 100,
            mean_ms,
            p10_ms: mean_ms / 2.0,
            p50_ms: mean_ms,
            p90_ms: p99_ms / 2.0,
            p99_ms,
        }
    }

    #[test]
    fn a_target_is_out_of_reach_when_one_fdatasync_is_more_than_it_leaves() {
        let mut s = vec![
            sample(0, "direct", 40_000.0),
            sample(0, "pgbouncer", 24_000.0),
            sample(0, "warden", 10_000.0),
        ];
        s[0].p99_ms = Some(0.8);
        s[2].p99_ms = Some(3.0);
        // Without 1-client runs (--quick) only the p99 targets are bounded.
        let bounds = fsync_bounds(&aggregate(&s), &probe(0.36, 1.2));
        assert_eq!(bounds.len(), 1, "{bounds:?}");
        assert!(bounds[0].target.contains("p99"));
        let mut alone = sample(0, "direct", 5_000.0);
        alone.clients = 1;
        s.push(alone);
        let runs = aggregate(&s);
        let bounds = fsync_bounds(&runs, &probe(0.36, 1.2));
        let of = |t: &str| bounds.iter().find(|b| b.target.contains(t)).unwrap();
        // pgbouncer's TPS allows 16 / 24,000 s per round trip; direct's with 1 client takes 1 / 5,000 s.
        let b = of("pgbouncer >= 1.0");
        assert!((b.allowed_ms - 0.6667).abs() < 1e-3 && (b.direct_ms.unwrap() - 0.2).abs() < 1e-9);
        assert!((b.left_ms - 0.4667).abs() < 1e-3 && !b.out_of_reach, "{b:?}");
        // 0.8 x direct allows 0.5 ms: 0.3 ms left, less than the fdatasync.
        let b = of("direct >= 0.8");
        assert!((b.left_ms - 0.3).abs() < 1e-9 && b.out_of_reach, "{b:?}");
        // p99: 1.3 x 0.8 ms allowed, below the fdatasync's own p99.
        let b = of("p99");
        assert!((b.allowed_ms - 1.04).abs() < 1e-9 && b.out_of_reach && b.fdatasync_ms == 1.2);
        assert_eq!(bounds.len(), 3);
        // A faster disk leaves them within reach as far as the fsync goes.
        assert!(fsync_bounds(&runs, &probe(0.05, 0.5)).iter().all(|b| !b.out_of_reach));
        // Targets met have no bound.
        s[2].tps = 33_000.0;
        s[2].p99_ms = Some(1.0);
        assert!(fsync_bounds(&aggregate(&s), &probe(0.36, 1.2)).is_empty());
    }
}
