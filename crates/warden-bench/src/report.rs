//! The runs, aggregated over rounds: the printed table and `report.json`.

use serde::Serialize;

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

pub fn checks(runs: &[Run], idle_bytes_per_session: Option<f64>) -> Vec<Check> {
    let find = |target: &str, p: Protocol, clients: u32, c: bool| {
        runs.iter()
            .find(|r| r.target == target && r.protocol == p.name() && r.clients == clients && r.connect_per_tx == c)
    };
    let mut out = Vec::new();
    for p in [Protocol::Simple, Protocol::Extended] {
        if let Some(w) = find("warden", p, 16, false) {
            if let Some(b) = w.vs_pgbouncer {
                out.push(check(
                    format!("16 clients {}: warden TPS / pgbouncer >= 1.0", p.name()),
                    b,
                    1.0,
                    b >= 1.0,
                ));
            }
            if let Some(d) = w.vs_direct {
                out.push(check(
                    format!("16 clients {}: warden TPS / direct >= 0.8", p.name()),
                    d,
                    0.8,
                    d >= 0.8,
                ));
            }
            if let (Some(wp), Some(dp)) = (w.p99_ms, find("direct", p, 16, false).and_then(|d| d.p99_ms)) {
                let r = wp / dp;
                out.push(check(
                    format!("16 clients {}: warden p99 / direct p99 <= 1.3", p.name()),
                    r,
                    1.3,
                    r <= 1.3,
                ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: u32, target: &'static str, tps: f64) -> Sample {
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
}
