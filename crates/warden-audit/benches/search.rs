//! Search over a large log: writes N realistic events (default 1,000,000; `WARDEN_BENCH_EVENTS`),
//! builds the index, then times searches through it (open, catch up, query, read the lines back: what
//! `warden audit search` does) and one linear scan for comparison.
//!
//! `cargo bench -p warden-audit --bench search` (release). `WARDEN_BENCH_DIR=DIR` keeps the log and
//! index in DIR and reuses them on the next run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use warden_audit::{AuditLog, AuditOptions, EventBody, FsyncMode, IdentityRecord, Index, SearchFilter};

const HUMANS: usize = 200;
const AGENTS: usize = 2_000;
const TASKS: usize = 10_000;
/// Events per session: start, 9 statements with their results, end (20 on average).
const STATEMENTS_PER_SESSION: usize = 9;

fn main() {
    let n: usize = std::env::var("WARDEN_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (_tmp, dir) = match std::env::var_os("WARDEN_BENCH_DIR") {
        Some(d) => (None, PathBuf::from(d)),
        None => {
            let t = tempfile::tempdir().expect("temp dir");
            let d = t.path().to_path_buf();
            (Some(t), d)
        }
    };
    let log = dir.join("audit/audit.jsonl");
    if !log.exists() {
        let started = Instant::now();
        write_log(&log, n);
        println!("wrote {n} events in {:.1}s", started.elapsed().as_secs_f64());
    }
    let bytes: u64 = warden_audit::segments(&log)
        .unwrap()
        .iter()
        .filter_map(|s| std::fs::metadata(&s.path).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "log: {:.0} MiB in {}",
        bytes as f64 / 1048576.0,
        log.parent().unwrap().display()
    );

    let started = Instant::now();
    let mut index = Index::open(&log).unwrap();
    let added = index.catch_up().unwrap();
    println!(
        "index: {added} events indexed in {:.1}s ({:.0} MiB)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(index.path()).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0
    );
    drop(index);

    let last = Index::open(&log).unwrap().last_seq().unwrap();
    let t_from = ts_of(&log, last * 9 / 10);
    let t_to = ts_of(&log, last * 19 / 20);
    let f = SearchFilter::default;
    let cases: Vec<(&str, SearchFilter)> = vec![
        (
            "identity agent:bot-17",
            SearchFilter {
                identity: Some("agent:bot-17".into()),
                ..f()
            },
        ),
        (
            "identity human:h-7 (its agents too)",
            SearchFilter {
                identity: Some("human:h-7".into()),
                ..f()
            },
        ),
        (
            "requester human:h-7, newest 50",
            SearchFilter {
                requester: Some("human:h-7".into()),
                limit: Some(50),
                newest: true,
                ..f()
            },
        ),
        (
            "task T-1234",
            SearchFilter {
                task: Some("T-1234".into()),
                ..f()
            },
        ),
        (
            "session s-0012345",
            SearchFilter {
                session: Some(format!("s-{:07}", 12345)),
                ..f()
            },
        ),
        (
            "decision deny, 5% time range",
            SearchFilter {
                decision: Some("deny".into()),
                since: Some(t_from),
                until: Some(t_to),
                ..f()
            },
        ),
        (
            "event auth.failed, newest 100",
            SearchFilter {
                event: Some("auth.failed".into()),
                limit: Some(100),
                newest: true,
                ..f()
            },
        ),
    ];
    println!(
        "{:<40} {:>9} {:>11} {:>11}",
        "search (open + catch up + query + read)", "events", "median", "max"
    );
    for (name, filter) in &cases {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..7 {
            let started = Instant::now();
            let mut index = Index::open(&log).unwrap();
            index.catch_up().unwrap();
            found = index.search(filter).unwrap().len();
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "{name:<40} {found:>9} {:>11} {:>11}",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    }
    let started = Instant::now();
    let mut index = Index::open(&log).unwrap();
    index.catch_up().unwrap();
    let sessions = index.sessions(false, None).unwrap();
    println!(
        "{:<40} {:>9} {:>11}",
        "sessions list (all, with counts)",
        sessions.len(),
        ms(started.elapsed())
    );
    let started = Instant::now();
    let mut index = Index::open(&log).unwrap();
    index.catch_up().unwrap();
    let sessions = index.sessions(false, Some(20)).unwrap();
    println!(
        "{:<40} {:>9} {:>11}",
        "sessions list --limit 20",
        sessions.len(),
        ms(started.elapsed())
    );
    let started = Instant::now();
    let scanned = warden_audit::search_records(&log, &cases[3].1).unwrap().len();
    println!(
        "{:<40} {scanned:>9} {:>11}",
        "linear scan, task T-1234 (reference)",
        ms(started.elapsed())
    );
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ts_of(log: &Path, seq: u64) -> OffsetDateTime {
    let r = warden_audit::read_after(log, seq - 1).unwrap().next().unwrap().unwrap();
    OffsetDateTime::parse(&r.event.ts, &Rfc3339).unwrap()
}

fn write_log(log: &Path, n: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = AuditLog::open_with(
        log,
        AuditOptions {
            fsync: FsyncMode::Off,
            checkpoint_every: None,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    runtime.block_on(async {
        let mut pending = Vec::with_capacity(4096);
        let mut session = 0usize;
        let mut written = 0usize;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        while written < n {
            let events = session_events(session, &mut rng);
            for body in events.into_iter().take(n - written) {
                pending.push(handle.submit(body));
                written += 1;
                if pending.len() == 4096 {
                    for p in pending.drain(..) {
                        p.await.unwrap();
                    }
                }
            }
            session += 1;
        }
        for p in pending.drain(..) {
            p.await.unwrap();
        }
    });
}

fn next(rng: &mut u64) -> usize {
    // xorshift64: deterministic, no dependency.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng >> 11) as usize
}

/// One session: humans alone, agents acting for a human on a task; 2% of statements denied, 1% failing;
/// one failed login in fifty sessions.
fn session_events(session: usize, rng: &mut u64) -> Vec<EventBody> {
    let id = format!("s-{session:07}");
    let human = next(rng) % HUMANS;
    let identity = if next(rng).is_multiple_of(4) {
        IdentityRecord {
            kind: "human".into(),
            name: format!("h-{human}"),
            requester: None,
            task: None,
            roles: vec!["analyst".into()],
        }
    } else {
        IdentityRecord {
            kind: "agent".into(),
            name: format!("bot-{}", next(rng) % AGENTS),
            requester: Some(format!("human:h-{human}")),
            task: Some(format!("T-{}", next(rng) % TASKS)),
            roles: vec!["analyst".into(), "reader".into()],
        }
    };
    let base = EventBody {
        event: Default::default(),
        session_id: Some(id.into()),
        identity: Some(identity.into()),
        credential_id: Some(format!("cr_{:016x}", next(rng)).into()),
        database: Some("shop".into()),
        db_user: Some(format!("w_{session:x}").into()),
        client_addr: Some(
            format!(
                "10.0.{}.{}:{}",
                session % 250,
                next(rng) % 250,
                40000 + next(rng) % 20000
            )
            .into(),
        ),
        ..EventBody::default()
    };
    let mut out = Vec::new();
    if session.is_multiple_of(50) {
        out.push(EventBody {
            event: "auth.failed".into(),
            client_addr: base.client_addr.clone(),
            reason: Some("certificate expired".into()),
            ..EventBody::default()
        });
    }
    out.push(EventBody {
        event: "session.start".into(),
        reason: Some(format!("backend pid {}", 1000 + session % 30000)),
        ..base.clone()
    });
    for q in 0..STATEMENTS_PER_SESSION {
        let roll = next(rng) % 100;
        let denied = roll < 2;
        let statement = match q % 3 {
            0 => format!(
                "SELECT id, total, status FROM orders WHERE customer_id = {} ORDER BY id DESC LIMIT 20",
                next(rng) % 100_000
            ),
            1 => format!(
                "SELECT count(*) FROM line_items li JOIN products p ON p.id = li.product_id WHERE li.order_id = {}",
                next(rng) % 1_000_000
            ),
            _ if denied => "DELETE FROM customers WHERE created_at < now() - interval '1 year'".into(),
            _ => "SELECT name, email FROM customers WHERE id = $1".into(),
        };
        out.push(EventBody {
            event: "query".into(),
            statement: Some(statement.into()),
            parameters: (q % 3 == 2 && !denied).then(|| vec![Some((next(rng) % 100_000).to_string())].into()),
            decision: Some(if denied { "deny" } else { "allow" }.into()),
            reason: denied.then(|| "DELETE on customers not granted to roles analyst, reader".into()),
            ..base.clone()
        });
        if !denied {
            out.push(EventBody {
                event: "query.result".into(),
                rows: Some((next(rng) % 20) as u64),
                duration_us: Some((200 + next(rng) % 5000) as u64),
                error: (roll == 2).then(|| "57014: canceling statement due to statement timeout".into()),
                ..base.clone()
            });
        }
    }
    out.push(EventBody {
        event: "session.end".into(),
        reason: Some("client".into()),
        duration_us: Some((10_000 + next(rng) % 10_000_000) as u64),
        ..base
    });
    out
}
