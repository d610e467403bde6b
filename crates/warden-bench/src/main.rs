//! `bench/run`: pgbench select-only through Warden, against direct PostgreSQL over TLS and pgbouncer
//! (session mode, TLS), interleaved in one run on one machine; Warden's CPU per statement and memory
//! per idle session; the statement-analysis cost from `cargo bench -p warden-policy --bench decide`.
//! Prints a table and writes a JSON report. A measurement, not a test: it asserts nothing about speed.

mod analysis;
mod durable;
mod fsync;
mod idle;
mod pgbench;
mod procstat;
mod report;
mod setup;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;

use pgbench::{Protocol, Workload};
use report::Sample;
use setup::{Endpoint, SetupOptions, Targets};

#[derive(Parser)]
#[command(about = "pgbench through Warden vs direct PostgreSQL and pgbouncer, in one run")]
struct Args {
    /// The release `warden` binary.
    #[arg(long)]
    warden: PathBuf,
    /// The pgbouncer binary.
    #[arg(long, default_value = "pgbouncer")]
    pgbouncer: PathBuf,
    /// Only 16 clients, short runs, fewer idle sessions.
    #[arg(long)]
    quick: bool,
    /// Seconds per pgbench run (default 10, --quick 5).
    #[arg(long)]
    seconds: Option<u32>,
    /// Rounds of the whole interleaved matrix; the table shows the median (default 2, --quick 1).
    #[arg(long)]
    rounds: Option<u32>,
    /// Idle sessions opened through Warden for the memory figure (default 2000, --quick 500).
    #[arg(long)]
    idle_sessions: Option<usize>,
    /// pgbench scale factor (`pgbench -i -s`).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// criterion's output of `cargo bench -p warden-policy --bench decide`, to include.
    #[arg(long)]
    analysis: Option<PathBuf>,
    /// Record `perf record -g` of Warden during one extra 16-client run into this directory.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/report.json")]
    out: PathBuf,
    /// Where the clusters and logs live while running (removed at the end unless --keep).
    #[arg(long, default_value = "target/bench/work")]
    work_dir: PathBuf,
    #[arg(long)]
    keep: bool,
    /// Leave out the fourth target, Warden with `[audit] fsync = "off"` (shows what the audit fsync costs).
    #[arg(long)]
    no_fsync_off: bool,
    /// Leave out the durable reference: PostgreSQL itself (with `fsync` turned on for it) answering an
    /// INSERT per transaction only once its commit is fdatasynced, and not (4 more runs).
    #[arg(long)]
    no_durable_reference: bool,
    /// Start the targets, print each one's libpq environment, and keep them running (measuring
    /// nothing) until this process is stopped: for profiling and trying changes by hand.
    #[arg(long)]
    serve: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let seconds = args.seconds.unwrap_or(if args.quick { 5 } else { 10 });
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 2 });
    let idle_sessions = args.idle_sessions.unwrap_or(if args.quick { 500 } else { 2000 });
    let client_counts: &[u32] = if args.quick { &[16] } else { &[1, 16, 64] };
    let load_start = procstat::load_average();
    eprintln!("bench: load average {load_start}; {rounds} round(s) of {seconds} s runs");

    let mut targets = Targets::start(&SetupOptions {
        warden_bin: &args.warden,
        pgbouncer_bin: &args.pgbouncer,
        work_dir: &args.work_dir,
        scale: args.scale,
        max_connections: (idle_sessions as u32 + 200).max(300),
        with_fsync_off: !args.no_fsync_off,
    })?;
    watchdog(&targets.shell_stop_command(!args.keep));
    if args.serve {
        return serve(&targets);
    }
    let result = measure(
        &args,
        &targets,
        seconds,
        rounds,
        idle_sessions,
        client_counts,
        &load_start,
    );
    targets.stop();
    if !args.keep {
        let _ = std::fs::remove_dir_all(&targets.root);
    } else {
        eprintln!("bench: kept {}", targets.root.display());
    }
    result
}

fn measure(
    args: &Args,
    t: &Targets,
    seconds: u32,
    rounds: u32,
    idle_sessions: usize,
    client_counts: &[u32],
    load_start: &str,
) -> Result<()> {
    let warden_pid = t.warden_child.id();
    let bouncer_pid = pgbouncer_pid(t)?;
    let logs = t.root.join("pgbench-logs");

    eprintln!("bench: opening {idle_sessions} idle sessions through Warden");
    let idle = idle::measure(&t.warden, warden_pid, idle_sessions)?;
    eprintln!(
        "bench: Warden RSS {:.1} MiB -> {:.1} MiB with {} idle sessions ({:.0} bytes each; opened in {:.1} s)",
        mib(idle.rss_before),
        mib(idle.rss_after),
        idle.sessions,
        idle.bytes_per_session(),
        idle.open_seconds
    );
    // Let PostgreSQL's backends of the idle sessions exit before measuring throughput.
    std::thread::sleep(std::time::Duration::from_secs(3));

    let mut endpoints: Vec<(&'static str, &Endpoint, Option<u32>)> = vec![
        ("direct", &t.direct, None),
        ("pgbouncer", &t.pgbouncer, Some(bouncer_pid)),
        ("warden", &t.warden, Some(warden_pid)),
    ];
    if let Some((child, e)) = &t.warden_nofsync {
        endpoints.push((report::WARDEN_FSYNC_OFF, e, Some(child.id())));
    }
    for (name, e, _) in &endpoints {
        let warm = Workload {
            protocol: Protocol::Simple,
            clients: 16,
            connect_per_tx: false,
            seconds: 2,
        };
        pgbench::run(e, &warm, &logs).with_context(|| format!("warming up {name}"))?;
    }

    let fsyncs = probe_fsync(t, seconds)?;
    let durable_reference = if args.no_durable_reference {
        Vec::new()
    } else {
        durable::measure(t, seconds, &logs)?
    };

    let mut workloads = Vec::new();
    for protocol in [Protocol::Simple, Protocol::Extended] {
        for &clients in client_counts {
            workloads.push(Workload {
                protocol,
                clients,
                connect_per_tx: false,
                seconds,
            });
        }
    }
    workloads.push(Workload {
        protocol: Protocol::Simple,
        clients: 16,
        connect_per_tx: true,
        seconds,
    });

    let mut samples = Vec::new();
    let mut turn = 0usize;
    for round in 0..rounds {
        for w in &workloads {
            // Rotate who goes first, so that no target always runs on a cooler (or hotter) machine.
            for k in 0..endpoints.len() {
                let (name, e, pid) = endpoints[(turn + k) % endpoints.len()];
                let cpu_before = pid.map(procstat::cpu_seconds).transpose()?;
                let o = pgbench::run(e, w, &logs).with_context(|| format!("pgbench against {name}"))?;
                let cpu = match (pid, cpu_before) {
                    (Some(pid), Some(b)) => {
                        Some((procstat::cpu_seconds(pid)? - b) * 1e6 / o.transactions.max(1) as f64)
                    }
                    _ => None,
                };
                let s = Sample {
                    round,
                    target: name,
                    protocol: w.protocol.name(),
                    clients: w.clients,
                    connect_per_tx: w.connect_per_tx,
                    tps: o.tps,
                    latency_ms: o.latency_ms,
                    p99_ms: o.p99_ms,
                    transactions: o.transactions,
                    proxy_cpu_us_per_tx: cpu,
                    load_average: procstat::load_average(),
                };
                eprintln!(
                    "bench: round {round} {:<9} {:<8} c={:<2}{} tps {:>8.0} lat {:>7.3} ms p99 {:>7.3} ms (load {})",
                    name,
                    s.protocol,
                    s.clients,
                    if s.connect_per_tx { " -C" } else { "   " },
                    s.tps,
                    s.latency_ms,
                    s.p99_ms.unwrap_or(f64::NAN),
                    s.load_average
                );
                samples.push(s);
            }
            turn += 1;
        }
    }

    let mut profiles = Vec::new();
    if let Some(dir) = &args.perf {
        for (name, e, pid) in endpoints.iter().filter(|(n, _, _)| n.starts_with("warden")) {
            let pid = pid.context("a Warden target without a pid")?;
            profiles.push(perf_profile(&dir.join(name), e, pid, seconds)?);
        }
    }

    let runs = report::aggregate(&samples);
    let checks = report::checks(&runs, Some(idle.bytes_per_session()));
    let bounds = report::fsync_bounds(&runs, &fsyncs.under_load);
    let durable_bounds = durable::bounds(&runs, &durable_reference);
    let analysis = match &args.analysis {
        Some(p) => {
            analysis::parse_criterion(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => Vec::new(),
    };
    let load_end = procstat::load_average();

    println!();
    println!(
        "pgbench -S, scale {}, {} s per run, median of {} round(s); {} cores; load average {} at start, {} at end",
        args.scale,
        seconds,
        rounds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load_start,
        load_end
    );
    println!("TLS with client certificates everywhere; warden: statement checks on, audit fsync = \"batch\"; pgbouncer: session mode");
    if t.warden_nofsync.is_some() {
        println!("{}: the same Warden with audit fsync = \"off\" (not a product setting to run: shows what the audit fsync costs)", report::WARDEN_FSYNC_OFF);
    }
    println!();
    print!("{}", report::table(&runs));
    println!();
    println!(
        "Warden memory: {} idle TLS sessions, RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes ({:.1} KiB) per session",
        idle.sessions,
        mib(idle.rss_before),
        mib(idle.rss_after),
        idle.bytes_per_session(),
        idle.bytes_per_session() / 1024.0
    );
    if !analysis.is_empty() {
        println!("Statement analysis (parse + decide, criterion mean):");
        for a in &analysis {
            println!("  {:<28} {:>9.2} µs", a.name, a.micros);
        }
    }
    println!("Targets:");
    for c in &checks {
        println!(
            "  [{}] {}: {:.2}",
            if c.met { "met" } else { "NOT met" },
            c.target,
            c.measured
        );
    }
    if args.quick {
        println!(
            "(--quick has no 1-client runs: the TPS targets' fsync floor needs them; only the p99 ones are compared)"
        );
    }
    if !bounds.is_empty() {
        println!("Bound by the audit fsync (with fsync = \"batch\" a statement reaches PostgreSQL only after its record's fdatasync):");
        let (q, l) = (&fsyncs.quiet, &fsyncs.under_load);
        println!(
            "  fdatasync of a 512-byte append beside the audit log: {:.3} ms median when quiet; during 16 clients direct: mean {:.3} ms, p10 {:.3}, p50 {:.3}, p90 {:.3}, p99 {:.3} ({} appends)",
            q.p50_ms, l.mean_ms, l.p10_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.appends
        );
        for b in &bounds {
            println!(
                "  {}: {}: {}",
                b.target,
                b.why,
                match (b.out_of_reach, b.fdatasync) {
                    (true, "mean") => "out of reach with fsync = \"batch\" on this disk",
                    (true, _) => "the fdatasync alone is over it (one probe, not Warden's own writer)",
                    (false, _) => "not bound by the fsync alone (Warden's CPU, in the table, is what is left)",
                }
            );
        }
    }
    if !durable_reference.is_empty() {
        println!(
            "Reference, not a bound: PostgreSQL itself answering a one-row INSERT only once its commit is fdatasynced (its group commit, same disk, {} clients, one run each):",
            durable::CLIENTS
        );
        for d in &durable_reference {
            println!(
                "  {}: {:.0} TPS durable, {:.0} not durable ({:.2} x); p99 {:.3} ms durable, {:.3} not durable",
                d.protocol,
                d.durable.tps,
                d.not_durable.tps,
                d.durable.tps / d.not_durable.tps.max(f64::MIN_POSITIVE),
                d.durable.p99_ms.unwrap_or(f64::NAN),
                d.not_durable.p99_ms.unwrap_or(f64::NAN)
            );
        }
        for b in &durable_bounds {
            let tps = !b.target.contains("p99");
            println!(
                "  {}: target {}, PostgreSQL durable {}, not durable {}, warden {} ({:.2} x PostgreSQL durable): {}",
                b.target,
                figure(b.allowed, tps),
                figure(b.durable, tps),
                figure(b.not_durable, tps),
                figure(b.warden, tps),
                b.warden / b.durable.max(f64::MIN_POSITIVE),
                b.verdict.says()
            );
        }
    }
    for p in &profiles {
        println!(
            "perf profile of Warden (pgbench -S, 16 clients, simple): {}",
            p.display()
        );
    }

    // `runs` holds the contract's three targets; the fsync-off Warden is a reference beside them.
    let (contract_runs, fsync_off_runs): (Vec<&report::Run>, Vec<&report::Run>) =
        runs.iter().partition(|r| r.target != report::WARDEN_FSYNC_OFF);
    let report = json!({
        "runs": contract_runs,
        "warden_fsync_off_runs": fsync_off_runs,
        "samples": samples,
        "warden": {
            "idle_sessions": {
                "sessions": idle.sessions,
                "rss_before_bytes": idle.rss_before,
                "rss_after_bytes": idle.rss_after,
                "bytes_per_session": idle.bytes_per_session(),
                "open_seconds": idle.open_seconds,
            },
            "analysis": analysis,
        },
        "targets": checks,
        "fsync": {
            "quiet": fsyncs.quiet,
            "during_direct_16_clients": fsyncs.under_load,
            "bounds": bounds,
            "durable_reference": durable_reference,
            "durable_bounds": durable_bounds,
        },
        "settings": {
            "quick": args.quick,
            "seconds": seconds,
            "rounds": rounds,
            "scale": args.scale,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "load_average_start": load_start,
            "load_average_end": load_end,
            "pgbouncer": "session mode; client TLS verify-full with auth_type = cert; server TLS verify-full with a client certificate",
            "warden": "TLS on both hops (client certificate; upstream_auth = cert), statement checks on, audit fsync = batch",
            "direct": "TLS verify-full, cert authentication",
        },
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nreport: {}", args.out.display());
    Ok(())
}

fn figure(v: f64, tps: bool) -> String {
    if tps {
        format!("{v:.0} TPS")
    } else {
        format!("p99 {v:.3} ms")
    }
}

struct FsyncProbes {
    quiet: fsync::FsyncProbe,
    under_load: fsync::FsyncProbe,
}

/// The fdatasync latency on the audit log's disk: quiet, then during one more 16-client run against
/// direct PostgreSQL (the CPU load of the measured runs, without Warden's own fsyncs). Not counted
/// among the runs.
fn probe_fsync(t: &Targets, seconds: u32) -> Result<FsyncProbes> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = t.root.join("deploy/audit");
    let quiet = fsync::probe(&dir, 500, &AtomicBool::new(false))?;
    let stop = AtomicBool::new(false);
    let w = Workload {
        protocol: Protocol::Simple,
        clients: 16,
        connect_per_tx: false,
        seconds,
    };
    // Stops the probe however pgbench's run ends, a panic included.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let (under_load, run) = std::thread::scope(|s| {
        let probing = s.spawn(|| fsync::probe(&dir, usize::MAX, &stop));
        let run = {
            let _stop = Stop(&stop);
            pgbench::run(&t.direct, &w, &t.root.join("pgbench-logs"))
        };
        (probing.join().expect("the fsync probe panicked"), run)
    });
    run.context("pgbench against direct while probing fdatasync")?;
    let under_load = under_load?;
    eprintln!(
        "bench: fdatasync beside the audit log: median {:.3} ms quiet; mean {:.3} ms during 16 clients direct",
        quiet.p50_ms, under_load.mean_ms
    );
    Ok(FsyncProbes { quiet, under_load })
}

/// `perf record -g` on Warden during one more 16-client simple-protocol run; writes perf.data and the
/// top of `perf report` (perf.txt) into `dir`.
fn perf_profile(dir: &Path, warden: &Endpoint, pid: u32, seconds: u32) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-g", "-F", "999", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running perf (apt-get install -y linux-perf)")?;
    let w = Workload {
        protocol: Protocol::Simple,
        clients: 16,
        connect_per_tx: false,
        seconds,
    };
    let r = pgbench::run(warden, &w, &dir.join("pgbench-logs"));
    let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
    perf.wait()?;
    r?;
    // Self time by symbol, then inclusive time of user-space frames (which code path costs what).
    let mut text = Vec::new();
    for (title, mode) in [("self", "--no-children"), ("inclusive (children)", "--children")] {
        let report = Command::new("perf")
            .args([
                "report",
                mode,
                "--percent-limit",
                "1",
                "--stdio",
                "-g",
                "none",
                "--sort",
                "comm,dso,symbol",
                "-i",
            ])
            .arg(&data)
            .output()?;
        text.extend_from_slice(format!("==== {title} ====\n").as_bytes());
        text.extend_from_slice(&report.stdout);
    }
    let txt = dir.join("perf.txt");
    std::fs::write(&txt, text)?;
    Ok(txt)
}

fn pgbouncer_pid(t: &Targets) -> Result<u32> {
    let file = t.root.join("pgbouncer/pgbouncer.pid");
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} holds no pid", file.display()))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// A shell that waits for this process to exit, however it exits, then runs `then`.
// The watchdog must outlive this process, so it is deliberately never waited for.
#[allow(clippy::zombie_processes)]
/// Writes `<target>.env` (libpq's variables, for `. file`) beside the clusters, prints them, and waits
/// to be stopped; the watchdog then stops the targets.
fn serve(t: &Targets) -> Result<()> {
    let mut endpoints = vec![
        ("direct", &t.direct, t.cluster.port as u32),
        ("pgbouncer", &t.pgbouncer, pgbouncer_pid(t)?),
        ("warden", &t.warden, t.warden_child.id()),
    ];
    if let Some((child, e)) = &t.warden_nofsync {
        endpoints.push((report::WARDEN_FSYNC_OFF, e, child.id()));
    }
    for (name, e, pid) in endpoints {
        let file = t.root.join(format!("{name}.env"));
        let vars: String = e.env().iter().map(|(k, v)| format!("export {k}='{v}'\n")).collect();
        std::fs::write(&file, vars)?;
        let what = if name == "direct" { "port" } else { "pid" };
        eprintln!("bench: {name:<17} . {}   ({what} {pid})", file.display());
    }
    eprintln!(
        "bench: serving until this process (pid {}) is stopped",
        std::process::id()
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn watchdog(then: &str) {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; {then}",
        std::process::id()
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}
