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
use crate::report::{find_run, p99_vs_direct, tps_vs_direct, tps_vs_pgbouncer, Run};
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
/// turned on in PostgreSQL for the time it takes. A `CHECKPOINT` first flushes what the load left
/// dirty while `fsync` was off (the checkpointer fsyncs it at the first checkpoint with `fsync` on),
/// so that no checkpoint's fsyncs fall into the reference; `fsync` is reset and the table dropped
/// afterwards, also when a step fails, and a second `CHECKPOINT` keeps the measured runs after it
/// clear of the first timed one.
pub fn measure(t: &Targets, seconds: u32, log_dir: &Path) -> Result<Vec<DurableRun>> {
    let c = &t.cluster;
    c.psql(
        DATABASE,
        &format!("CREATE TABLE IF NOT EXISTS {TABLE} (v int); GRANT INSERT ON {TABLE} TO {DIRECT_USER}"),
    )?;
    let script = t.root.join("durable-reference.sql");
    std::fs::write(&script, format!("INSERT INTO {TABLE} VALUES (1);\n"))?;
    let runs = set_fsync(t, true)
        .and_then(|()| c.psql(DATABASE, "CHECKPOINT"))
        .and_then(|_| {
            let mut out = Vec::new();
            for protocol in [Protocol::Simple, Protocol::Extended] {
                out.push(run_pair(t, protocol, seconds, &script, log_dir)?);
            }
            Ok(out)
        });
    let mut undo = Vec::new();
    for step in [
        set_fsync(t, false).context("turning PostgreSQL's fsync off again"),
        c.psql(DATABASE, &format!("DROP TABLE IF EXISTS {TABLE}")).map(drop),
        c.psql(DATABASE, "CHECKPOINT").map(drop),
    ] {
        if let Err(e) = step {
            eprintln!("bench: after the durable reference: {e:#}");
            undo.push(e);
        }
    }
    let runs = runs?;
    match undo.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(runs),
    }
}

fn run_pair(t: &Targets, protocol: Protocol, seconds: u32, script: &Path, log_dir: &Path) -> Result<DurableRun> {
    let w = Workload {
        protocol,
        clients: CLIENTS,
        connect_per_tx: false,
        seconds,
    };
    let run = |commit: &str| {
        let env = [("PGOPTIONS", commit)];
        pgbench::run_script(&t.direct, &w, Script::File(script, &env), log_dir)
            .with_context(|| format!("the durable reference ({}, {commit})", protocol.name()))
    };
    let durable = run("-c synchronous_commit=on")?;
    let not_durable = run("-c synchronous_commit=off")?;
    eprintln!(
        "bench: PostgreSQL, an INSERT per transaction, {} c={CLIENTS}: tps {:.0} durable (p99 {:.3} ms), {:.0} not durable (p99 {:.3} ms)",
        protocol.name(),
        durable.tps,
        durable.p99_ms.unwrap_or(f64::NAN),
        not_durable.tps,
        not_durable.p99_ms.unwrap_or(f64::NAN)
    );
    Ok(DurableRun {
        protocol: protocol.name(),
        clients: CLIENTS,
        durable: (&durable).into(),
        not_durable: (&not_durable).into(),
    })
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

/// What the reference says about a target Warden missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// PostgreSQL misses it when durable and meets it when not: durability alone likely misses it.
    MissedByPostgresqlDurableToo,
    /// PostgreSQL meets it even when durable: the disk does not rule it out.
    ReachedByPostgresqlDurable,
    /// PostgreSQL's INSERT misses it even when not durable: the reference says nothing.
    Inconclusive,
}

impl Verdict {
    fn of(durable_meets: bool, not_durable_meets: bool) -> Verdict {
        match (durable_meets, not_durable_meets) {
            (true, _) => Verdict::ReachedByPostgresqlDurable,
            (false, true) => Verdict::MissedByPostgresqlDurableToo,
            (false, false) => Verdict::Inconclusive,
        }
    }

    pub fn says(self) -> &'static str {
        match self {
            Verdict::MissedByPostgresqlDurableToo => {
                "missed by PostgreSQL's own durable commit too: making each statement durable first likely \
                 puts it out of reach on this disk (an indication, not a proof)"
            }
            Verdict::ReachedByPostgresqlDurable => {
                "reached by PostgreSQL's durable commit: the disk does not rule it out"
            }
            Verdict::Inconclusive => "inconclusive: PostgreSQL's INSERT misses it even when not durable",
        }
    }
}

/// The reference against a 16-client target Warden did not meet.
#[derive(Clone, Debug, Serialize)]
pub struct DurableBound {
    pub target: String,
    /// The target's figure: TPS for the TPS targets, milliseconds for the p99 ones.
    pub allowed: f64,
    /// PostgreSQL's own figure, durable and not.
    pub durable: f64,
    pub not_durable: f64,
    /// Warden's figure.
    pub warden: f64,
    pub verdict: Verdict,
}

/// For each 16-client target Warden missed: does PostgreSQL, answering each statement only once it is
/// durable, miss it too, while meeting it when not durable?
pub fn bounds(runs: &[Run], reference: &[DurableRun]) -> Vec<DurableBound> {
    let find = |target: &str, p: Protocol| find_run(runs, target, p, CLIENTS, false);
    let mut out = Vec::new();
    for p in [Protocol::Simple, Protocol::Extended] {
        let Some(d) = reference.iter().find(|d| d.protocol == p.name()) else {
            continue;
        };
        let (Some(w), Some(direct)) = (find("warden", p), find("direct", p)) else {
            continue;
        };
        let mut tps = |target: String, allowed: f64| {
            out.push(DurableBound {
                target,
                allowed,
                durable: d.durable.tps,
                not_durable: d.not_durable.tps,
                warden: w.tps,
                verdict: Verdict::of(d.durable.tps >= allowed, d.not_durable.tps >= allowed),
            });
        };
        if let Some(b) = find("pgbouncer", p).filter(|_| w.vs_pgbouncer.is_some_and(|r| r < 1.0)) {
            tps(tps_vs_pgbouncer(p), b.tps);
        }
        if w.vs_direct.is_some_and(|r| r < 0.8) {
            tps(tps_vs_direct(p), 0.8 * direct.tps);
        }
        if let (Some(wp), Some(dp), Some(durable), Some(not_durable)) =
            (w.p99_ms, direct.p99_ms, d.durable.p99_ms, d.not_durable.p99_ms)
        {
            let allowed = 1.3 * dp;
            if wp > allowed {
                out.push(DurableBound {
                    target: p99_vs_direct(p),
                    allowed,
                    durable,
                    not_durable,
                    warden: wp,
                    verdict: Verdict::of(durable <= allowed, not_durable <= allowed),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{self, aggregate, Sample};

    fn sample(target: &'static str, tps: f64, p99_ms: f64) -> Sample {
        Sample {
            p99_ms: Some(p99_ms),
            ..report::sample(0, target, tps)
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
    fn a_target_missed_by_postgresql_durable_and_met_not_durable_is_likely_out_of_reach() {
        let runs = aggregate(&[
            sample("direct", 45_000.0, 0.8),
            sample("pgbouncer", 29_000.0, 1.2),
            sample("warden", 11_000.0, 3.0),
        ]);
        let b = bounds(&runs, &reference(20_000.0, 1.5));
        let of = |b: &[DurableBound], t: &str| b.iter().find(|b| b.target.contains(t)).unwrap().clone();
        assert_eq!(b.len(), 3, "{b:?}");
        let vs_bouncer = of(&b, "pgbouncer >= 1.0");
        assert_eq!(vs_bouncer.verdict, Verdict::MissedByPostgresqlDurableToo);
        assert!(vs_bouncer.allowed == 29_000.0 && vs_bouncer.warden == 11_000.0);
        let vs_direct = of(&b, "direct >= 0.8");
        assert!(vs_direct.allowed == 36_000.0 && vs_direct.verdict == Verdict::MissedByPostgresqlDurableToo);
        // p99: 1.3 x 0.8 ms allowed; 1.5 durable, 0.9 not durable.
        let p99 = of(&b, "p99");
        assert!((p99.allowed - 1.04).abs() < 1e-9 && p99.durable == 1.5 && p99.not_durable == 0.9);
        assert_eq!(p99.verdict, Verdict::MissedByPostgresqlDurableToo);

        // A disk on which PostgreSQL durable keeps up does not rule the targets out.
        let fast = bounds(&runs, &reference(40_000.0, 0.95));
        assert!(
            fast.iter().all(|b| b.verdict == Verdict::ReachedByPostgresqlDurable),
            "{fast:?}"
        );

        // An INSERT that misses a target even when not durable says nothing about it.
        let mut slow_insert = reference(20_000.0, 1.5);
        slow_insert[0].not_durable.tps = 33_000.0;
        slow_insert[0].not_durable.p99_ms = Some(1.1);
        let b = bounds(&runs, &slow_insert);
        assert_eq!(
            of(&b, "pgbouncer >= 1.0").verdict,
            Verdict::MissedByPostgresqlDurableToo
        );
        assert_eq!(of(&b, "direct >= 0.8").verdict, Verdict::Inconclusive);
        assert_eq!(of(&b, "p99").verdict, Verdict::Inconclusive);

        // No p99 from the reference: only the TPS targets.
        let mut no_p99 = reference(20_000.0, 1.5);
        no_p99[0].durable.p99_ms = None;
        assert_eq!(bounds(&runs, &no_p99).len(), 2);

        // Targets met have no entry; pgbouncer's met while 0.8 x direct is not.
        let between = aggregate(&[
            sample("direct", 45_000.0, 0.8),
            sample("pgbouncer", 29_000.0, 1.2),
            sample("warden", 30_000.0, 1.0),
        ]);
        let b = bounds(&between, &reference(20_000.0, 1.5));
        assert_eq!(b.len(), 1, "{b:?}");
        assert!(b[0].target.contains("direct >= 0.8"));
        // Nor does a protocol the reference did not run.
        let mut extended = reference(20_000.0, 1.5);
        extended[0].protocol = "extended";
        assert!(bounds(&runs, &extended).is_empty());
    }
}
