//! A reference for what making each statement durable costs on this machine, measured without Warden:
//! PostgreSQL itself answering a one-row INSERT only once its commit is fdatasynced
//! (`synchronous_commit = on`, `fsync = on`; PostgreSQL's group commit, on the disk of Warden's audit
//! log), against the same INSERT answered at once (`synchronous_commit = off`). With
//! `[audit] fsync = "batch"`, Warden forwards a statement only once its `query` record is
//! fdatasynced: the same wait, before the statement instead of after it.
//!
//! A reference, not a proof: PostgreSQL's commit does more than one append (WAL insertion, the commit
//! log), and it has no proxy hop to pay for. The INSERT answered at once costs about what the
//! select-only statement costs (compare it with direct in the same run).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::pgbench::{self, Outcome, Protocol, Script, Workload};
use crate::report::{p99_vs_direct, tps_vs_direct, tps_vs_pgbouncer, Run};
use crate::setup::{Targets, DATABASE, DIRECT_USER};

pub const CLIENTS: u32 = 16;
const TABLE: &str = "durable_reference";

/// One protocol's pair of runs: durable and not.
#[derive(Clone, Debug, Serialize)]
pub struct DurableRun {
    pub protocol: &'static str,
    pub clients: u32,
    pub durable: Figures,
    pub not_durable: Figures,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub tps: f64,
    pub latency_ms: f64,
    pub p99_ms: Option<f64>,
}

impl From<&Outcome> for Figures {
    fn from(o: &Outcome) -> Figures {
        Figures {
            tps: o.tps,
            latency_ms: o.latency_ms,
            p99_ms: o.p99_ms,
        }
    }
}

/// Runs the reference at 16 clients in both protocols (durable and not, alternately), with `fsync`
/// turned on in PostgreSQL for the time it takes and turned off again afterwards, whatever happens.
pub fn measure(t: &Targets, seconds: u32, log_dir: &Path) -> Result<Vec<DurableRun>> {
    let c = &t.cluster;
    c.psql(
        DATABASE,
        &format!("CREATE TABLE IF NOT EXISTS {TABLE} (v int); GRANT INSERT ON {TABLE} TO {DIRECT_USER}"),
    )?;
    let script = t.root.join("durable-reference.sql");
    std::fs::write(&script, format!("INSERT INTO {TABLE} VALUES (1);\n"))?;
    set_fsync(t, true)?;
    let runs = (|| -> Result<Vec<DurableRun>> {
        let mut out = Vec::new();
        for protocol in [Protocol::Simple, Protocol::Extended] {
            let w = Workload {
                protocol,
                clients: CLIENTS,
                connect_per_tx: false,
                seconds,
            };
            let run = |commit: &str| {
                let env = [("PGOPTIONS", commit)];
                pgbench::run_script(&t.direct, &w, Script::File(&script, &env), log_dir)
                    .with_context(|| format!("the durable reference ({}, {commit})", protocol.name()))
            };
            let durable = run("-c synchronous_commit=on")?;
            let not_durable = run("-c synchronous_commit=off")?;
            eprintln!(
                "bench: PostgreSQL, an INSERT per transaction, {} c={CLIENTS}: tps {:.0} durable (p99 {:.3} ms), {:.0} not durable",
                protocol.name(),
                durable.tps,
                durable.p99_ms.unwrap_or(f64::NAN),
                not_durable.tps
            );
            out.push(DurableRun {
                protocol: protocol.name(),
                clients: CLIENTS,
                durable: (&durable).into(),
                not_durable: (&not_durable).into(),
            });
        }
        Ok(out)
    })();
    let reset = set_fsync(t, false);
    let _ = c.psql(DATABASE, &format!("DROP TABLE IF EXISTS {TABLE}"));
    let runs = runs?;
    reset?;
    Ok(runs)
}

/// `fsync` is a reload-time setting: `ALTER SYSTEM` (each in its own transaction) and a reload, then
/// waits until a new session sees it.
fn set_fsync(t: &Targets, on: bool) -> Result<()> {
    let c = &t.cluster;
    c.psql(
        "postgres",
        if on {
            "ALTER SYSTEM SET fsync = on"
        } else {
            "ALTER SYSTEM RESET fsync"
        },
    )?;
    c.psql("postgres", "SELECT pg_reload_conf()")?;
    let want = if on { "on" } else { "off" };
    for _ in 0..50 {
        if c.psql("postgres", "SHOW fsync")? == want {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    anyhow::bail!("PostgreSQL's fsync did not become {want} after a reload")
}

/// What the reference shows for a 16-client target Warden did not meet.
#[derive(Clone, Debug, Serialize)]
pub struct DurableBound {
    pub target: String,
    /// The target's figure: TPS for the TPS targets, milliseconds for the p99 ones.
    pub allowed: f64,
    /// PostgreSQL's own, durable.
    pub durable: f64,
    /// Whether PostgreSQL's own durable figure misses the target too.
    pub out_of_reach: bool,
    pub why: String,
}

/// For each 16-client target Warden missed: does PostgreSQL, answering each statement only once it is
/// durable, miss it too?
pub fn bounds(runs: &[Run], reference: &[DurableRun]) -> Vec<DurableBound> {
    let find = |target: &str, protocol: &str| {
        runs.iter()
            .find(|r| r.target == target && r.protocol == protocol && r.clients == CLIENTS && !r.connect_per_tx)
    };
    let mut out = Vec::new();
    for d in reference {
        let p = if d.protocol == Protocol::Simple.name() {
            Protocol::Simple
        } else {
            Protocol::Extended
        };
        let (Some(w), Some(direct)) = (find("warden", d.protocol), find("direct", d.protocol)) else {
            continue;
        };
        let durable = d.durable.tps;
        let mut tps = |target: String, allowed: f64, of: &str| {
            let out_of_reach = durable < allowed;
            out.push(DurableBound {
                why: format!(
                    "PostgreSQL answering each statement only once durable reaches {durable:.0} TPS ({:.0} \
                     not durable), {} {of} {allowed:.0}",
                    d.not_durable.tps,
                    if out_of_reach { "below" } else { "not below" }
                ),
                target,
                allowed,
                durable,
                out_of_reach,
            });
        };
        if let Some(b) = find("pgbouncer", d.protocol).filter(|_| w.vs_pgbouncer.is_some_and(|r| r < 1.0)) {
            tps(tps_vs_pgbouncer(p), b.tps, "pgbouncer's");
        }
        if w.vs_direct.is_some_and(|r| r < 0.8) {
            tps(tps_vs_direct(p), 0.8 * direct.tps, "0.8 x direct's");
        }
        if let (Some(wp), Some(dp), Some(durable)) = (w.p99_ms, direct.p99_ms, d.durable.p99_ms) {
            if wp > 1.3 * dp {
                let allowed = 1.3 * dp;
                let out_of_reach = durable > allowed;
                out.push(DurableBound {
                    target: p99_vs_direct(p),
                    allowed,
                    durable,
                    out_of_reach,
                    why: format!(
                        "PostgreSQL answering each statement only once durable has a p99 of {durable:.3} ms, \
                         {} 1.3 x direct's ({allowed:.3} ms)",
                        if out_of_reach { "above" } else { "not above" }
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{aggregate, Sample};

    fn sample(target: &'static str, tps: f64, p99_ms: f64) -> Sample {
        Sample {
            round: 0,
            target,
            protocol: "simple",
            clients: CLIENTS,
            connect_per_tx: false,
            tps,
            latency_ms: 16.0 / tps * 1000.0,
            p99_ms: Some(p99_ms),
            transactions: 1,
            proxy_cpu_us_per_tx: None,
            load_average: String::new(),
        }
    }

    fn reference(durable_tps: f64, durable_p99_ms: f64) -> Vec<DurableRun> {
        let figures = |tps, p99| Figures {
            tps,
            latency_ms: 16.0 / tps * 1000.0,
            p99_ms: Some(p99),
        };
        vec![DurableRun {
            protocol: "simple",
            clients: CLIENTS,
            durable: figures(durable_tps, durable_p99_ms),
            not_durable: figures(44_000.0, 0.9),
        }]
    }

    #[test]
    fn a_target_is_out_of_reach_when_postgresql_durable_misses_it_too() {
        let runs = aggregate(&[
            sample("direct", 45_000.0, 0.8),
            sample("pgbouncer", 29_000.0, 1.2),
            sample("warden", 11_000.0, 3.0),
        ]);
        let b = bounds(&runs, &reference(20_000.0, 1.5));
        let of = |t: &str| b.iter().find(|b| b.target.contains(t)).unwrap();
        assert_eq!(b.len(), 3, "{b:?}");
        assert!(of("pgbouncer >= 1.0").out_of_reach && of("pgbouncer >= 1.0").allowed == 29_000.0);
        assert!(of("direct >= 0.8").out_of_reach && of("direct >= 0.8").allowed == 36_000.0);
        let p99 = of("p99");
        assert!(p99.out_of_reach && (p99.allowed - 1.04).abs() < 1e-9 && p99.durable == 1.5);
        // A disk on which PostgreSQL durable keeps up shows no such bound.
        assert!(bounds(&runs, &reference(40_000.0, 0.9)).iter().all(|b| !b.out_of_reach));
        // Targets met have no bound; nor does a protocol the reference did not run.
        let met = aggregate(&[
            sample("direct", 45_000.0, 0.8),
            sample("pgbouncer", 29_000.0, 1.2),
            sample("warden", 37_000.0, 1.0),
        ]);
        assert!(bounds(&met, &reference(20_000.0, 1.5)).is_empty());
        let mut extended = reference(20_000.0, 1.5);
        extended[0].protocol = "extended";
        assert!(bounds(&runs, &extended).is_empty());
    }
}
