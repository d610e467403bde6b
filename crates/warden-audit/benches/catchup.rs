//! What keeping the search index current costs per record: a pgbench-like log (16 clients, each a
//! session of many statements, `query` then `query.result`), indexed in one go (a rebuild) and then
//! once per round of 2,000 new records (the running proxy indexes once a second). Figures are the
//! indexing thread's CPU time (Linux, /proc/thread-self/schedstat) and wall time.
//!
//! `cargo bench -p warden-audit --bench catchup` (release); `WARDEN_BENCH_EVENTS` (default 200,000)
//! records for the rebuild, `WARDEN_BENCH_ROUNDS` (default 100) rounds after it.

use std::time::{Duration, Instant};

use warden_audit::{AuditHandle, AuditLog, AuditOptions, EventBody, FsyncMode, IdentityRecord, Index};

const CLIENTS: usize = 16;
const PER_ROUND: usize = 2_000;

fn main() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let n = env("WARDEN_BENCH_EVENTS", 200_000);
    let rounds = env("WARDEN_BENCH_ROUNDS", 100);
    let tmp = tempfile::tempdir().expect("temp dir");
    let log = tmp.path().join("audit/audit.jsonl");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = AuditLog::open_with(
        &log,
        AuditOptions {
            fsync: FsyncMode::Off,
            checkpoint_every: None,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    let mut gen = Load::new();
    write(&runtime, &handle, &mut gen, n);

    let (cpu, wall) = timed(|| {
        let mut index = Index::open(&log).unwrap();
        assert_eq!(index.catch_up().unwrap(), n as u64);
    });
    report("rebuild", n, cpu, wall);
    println!(
        "index file: {:.1} MiB",
        std::fs::metadata(tmp.path().join("audit/audit.index.db"))
            .map(|m| m.len())
            .unwrap_or(0) as f64
            / 1048576.0
    );

    let mut index = Index::open(&log).unwrap();
    let (mut cpu, mut wall) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        write(&runtime, &handle, &mut gen, PER_ROUND);
        let (c, w) = timed(|| {
            assert_eq!(index.catch_up().unwrap(), PER_ROUND as u64);
        });
        cpu += c;
        wall += w;
    }
    report(
        &format!("{rounds} rounds of {PER_ROUND}"),
        rounds * PER_ROUND,
        cpu,
        wall,
    );
}

fn report(what: &str, n: usize, cpu: Duration, wall: Duration) {
    println!(
        "{what:<24} {n:>9} records  cpu {:>8.1} ms ({:>5.2} us/record)  wall {:>8.1} ms ({:>5.2} us/record)",
        cpu.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e6 / n as f64,
        wall.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e6 / n as f64,
    );
}

/// This thread's CPU time and the wall time of `f`.
fn timed(f: impl FnOnce()) -> (Duration, Duration) {
    let cpu0 = thread_cpu();
    let started = Instant::now();
    f();
    (thread_cpu() - cpu0, started.elapsed())
}

fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(s.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0))
}

fn write(runtime: &tokio::runtime::Runtime, handle: &AuditHandle, gen: &mut Load, n: usize) {
    runtime.block_on(async {
        let mut pending = Vec::with_capacity(4096);
        for _ in 0..n {
            pending.push(handle.submit(gen.next_body()));
            if pending.len() == 4096 {
                for p in pending.drain(..) {
                    p.await.unwrap();
                }
            }
        }
        for p in pending.drain(..) {
            p.await.unwrap();
        }
    });
}

/// Sixteen clients, each in a session of a few hundred statements; records interleaved.
struct Load {
    rng: u64,
    sessions: usize,
    clients: Vec<Client>,
    turn: usize,
}

struct Client {
    base: EventBody,
    left: usize,
    result_due: bool,
    started: bool,
}

impl Load {
    fn new() -> Self {
        Load {
            rng: 0x2545_f491_4f6c_dd1d,
            sessions: 0,
            clients: Vec::new(),
            turn: 0,
        }
    }

    fn rand(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as usize
    }

    fn client(&mut self) -> Client {
        self.sessions += 1;
        let session = self.sessions;
        let identity = IdentityRecord {
            kind: "agent".into(),
            name: format!("bot-{}", self.rand() % 200),
            requester: Some(format!("human:h-{}", self.rand() % 50)),
            task: Some(format!("T-{}", self.rand() % 1000)),
            roles: vec!["analyst".into()],
        };
        Client {
            base: EventBody {
                event: Default::default(),
                session_id: Some(format!("{:016x}{:016x}", self.rand(), self.rand()).into()),
                identity: Some(identity.into()),
                credential_id: Some(format!("cr_{:016x}", self.rand()).into()),
                database: Some("bench".into()),
                db_user: Some(format!("w_{session:x}").into()),
                client_addr: Some(format!("10.0.0.{}:{}", session % 250, 40000 + self.rand() % 20000).into()),
                ..EventBody::default()
            },
            left: 100 + self.rand() % 400,
            result_due: false,
            started: false,
        }
    }

    fn next_body(&mut self) -> EventBody {
        while self.clients.len() < CLIENTS {
            let c = self.client();
            self.clients.push(c);
        }
        self.turn = (self.turn + 1) % CLIENTS;
        let aid = self.rand() % 100_000;
        let c = &mut self.clients[self.turn];
        if !c.started {
            c.started = true;
            return EventBody {
                event: "session.start".into(),
                ..c.base.clone()
            };
        }
        if c.result_due {
            c.result_due = false;
            return EventBody {
                event: "query.result".into(),
                rows: Some(1),
                duration_us: Some(150 + (aid % 300) as u64),
                ..c.base.clone()
            };
        }
        if c.left == 0 {
            let end = EventBody {
                event: "session.end".into(),
                reason: Some("client".into()),
                ..c.base.clone()
            };
            self.clients[self.turn] = self.client();
            return end;
        }
        c.left -= 1;
        c.result_due = true;
        EventBody {
            event: "query".into(),
            statement: Some(format!("UPDATE pgbench_accounts SET abalance = abalance + -1 WHERE aid = {aid};").into()),
            decision: Some("allow".into()),
            ..c.base.clone()
        }
    }
}
