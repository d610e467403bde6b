//! One pgbench run (select-only, `-n`) against one endpoint: TPS, average latency from pgbench's
//! summary, p99 from its per-transaction log.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup::Endpoint;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Simple,
    Extended,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub protocol: Protocol,
    pub clients: u32,
    pub connect_per_tx: bool,
    pub seconds: u32,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub tps: f64,
    pub latency_ms: f64,
    pub p99_ms: Option<f64>,
    pub transactions: u64,
}

/// What each transaction runs.
#[derive(Clone, Copy, Debug)]
pub enum Script<'a> {
    /// pgbench's built-in select-only (`-S`).
    SelectOnly,
    /// A script file (`-f`), with extra libpq environment (such as `PGOPTIONS`).
    File(&'a Path, &'a [(&'a str, &'a str)]),
}

/// Select-only (`-S`).
pub fn run(endpoint: &Endpoint, w: &Workload, log_dir: &Path) -> Result<Outcome> {
    run_script(endpoint, w, Script::SelectOnly, log_dir)
}

pub fn run_script(endpoint: &Endpoint, w: &Workload, script: Script, log_dir: &Path) -> Result<Outcome> {
    if log_dir.exists() {
        std::fs::remove_dir_all(log_dir)?;
    }
    std::fs::create_dir_all(log_dir)?;
    let threads = w.clients.min(2);
    let mut cmd = Command::new("pgbench");
    cmd.envs(endpoint.env());
    match script {
        Script::SelectOnly => {
            cmd.arg("-S");
        }
        Script::File(path, env) => {
            cmd.arg("-f").arg(path).envs(env.iter().copied());
        }
    }
    cmd.args(["-n", "-M", w.protocol.name()])
        .args(["-c", &w.clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &w.seconds.to_string()])
        .arg("-l")
        .arg(format!("--log-prefix={}/tx", log_dir.display()))
        .current_dir(log_dir);
    if w.connect_per_tx {
        cmd.arg("-C");
    }
    let out = cmd
        .output()
        .context("running pgbench (is it installed? apt-get install -y postgresql-client)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "pgbench failed ({}) against port {}:\n{stdout}{stderr}",
            out.status,
            endpoint.port
        );
    }
    let mut outcome =
        parse_summary(&stdout).with_context(|| format!("reading pgbench's summary:\n{stdout}{stderr}"))?;
    outcome.p99_ms = p99_from_logs(log_dir)?;
    std::fs::remove_dir_all(log_dir)?;
    Ok(outcome)
}

/// Reads `tps = `, `latency average = ` and `number of transactions actually processed: `.
pub fn parse_summary(text: &str) -> Result<Outcome> {
    let mut tps = None;
    let mut latency = None;
    let mut transactions = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("tps = ") {
            tps = first_number(rest);
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            latency = first_number(rest);
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed: ") {
            transactions = first_number(rest).map(|n| n as u64);
        }
    }
    match (tps, latency, transactions) {
        (Some(tps), Some(latency_ms), Some(transactions)) => Ok(Outcome {
            tps,
            latency_ms,
            p99_ms: None,
            transactions,
        }),
        _ => bail!("no tps, latency average or transaction count in pgbench's output"),
    }
}

fn first_number(s: &str) -> Option<f64> {
    s.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|t| !t.is_empty())?
        .parse()
        .ok()
}

/// pgbench's `-l` lines: `client_id transaction_no time_us script_no epoch epoch_us`.
fn p99_from_logs(dir: &Path) -> Result<Option<f64>> {
    let mut latencies: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        latencies.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    if latencies.is_empty() {
        return Ok(None);
    }
    latencies.sort_unstable();
    let i = (latencies.len() * 99 / 100).min(latencies.len() - 1);
    Ok(Some(latencies[i] as f64 / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_15_summary() {
        let text = "transaction type: <builtin: select only>\n\
            number of transactions actually processed: 123456\n\
            latency average = 0.812 ms\n\
            initial connection time = 12.3 ms\n\
            tps = 19711.503 (without initial connection time)\n";
        let o = parse_summary(text).unwrap();
        assert_eq!(o.transactions, 123456);
        assert!((o.tps - 19711.503).abs() < 1e-9);
        assert!((o.latency_ms - 0.812).abs() < 1e-9);
        assert!(parse_summary("tps = 1\n").is_err());
    }
}
