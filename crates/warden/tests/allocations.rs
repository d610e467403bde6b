//! Allocations per statement on the paths every statement takes: deciding it, making its audit
//! records, writing them. Counted with a counting global allocator, so this binary holds one test:
//! nothing else may allocate while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use warden::proxy::Session;
use warden_audit::{Acks, AuditLog, AuditOptions, FsyncMode, Redactor};
use warden_identity::{Claims, IdentityKind};
use warden_policy::{decide, Config, Decision, Role};
use warden_sql::{analyze, Catalog, SessionContext};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations (and reallocations) while `f` runs, on any thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

const CONFIG: &str = r#"
[server]
postgres_listen = "127.0.0.1:6432"
[[database]]
name = "shop"
url = "postgres://warden_admin@127.0.0.1/shop?sslmode=require"
[[role]]
name = "analyst"
databases = ["shop"]
read  = ["public.orders(id, customer_id, status, total, region)"]
[[role]]
name = "support"
databases = ["shop"]
read  = ["public.customers(id, name)"]
"#;

fn session() -> Session {
    let claims = Claims {
        kind: IdentityKind::Agent,
        name: "report-bot".into(),
        requester: Some("human:alice".parse().unwrap()),
        task: Some("T-42".into()),
        roles: vec!["analyst".into(), "support".into()],
        credential_id: "cr_7d1f0c2a9b8e4f6a".into(),
        not_before: time::OffsetDateTime::UNIX_EPOCH,
        not_after: time::OffsetDateTime::UNIX_EPOCH,
    };
    Session::new(
        claims,
        "shop".into(),
        vec!["analyst".into(), "support".into()],
        "agent:report-bot@human:alice".into(),
        "127.0.0.1:51234".parse().unwrap(),
        Vec::new(),
    )
}

#[test]
fn a_statement_allocates_nothing_to_be_decided_or_to_have_its_records_made_and_written() {
    // Deciding an allowed statement (its analysis comes from the cache, made before).
    let config = Config::parse(Path::new("/x/warden.toml"), CONFIG).unwrap();
    let roles: Vec<&Role> = ["analyst", "support"].iter().map(|n| config.role(n).unwrap()).collect();
    let mut catalog = Catalog::default();
    catalog.add_relation(
        "public",
        "orders",
        ["id", "customer_id", "status", "total", "region"]
            .map(String::from)
            .to_vec(),
    );
    let statements = analyze(
        "SELECT id, status, total FROM orders WHERE region = 'eu' AND id = 42",
        &catalog,
        &SessionContext::default(),
    )
    .unwrap();
    let mut decision = None;
    let n = allocations(|| decision = Some(decide(&statements, &roles)));
    assert!(matches!(decision, Some(Decision::Allow)), "{decision:?}");
    assert_eq!(n, 0, "allocations to decide an allowed statement");

    // A session's records share its fields: making one allocates nothing (its own parts, the
    // statement text and the outcome, are the caller's).
    let session = session();
    // The first read of the roles on a thread registers the thread with arc-swap (once per thread).
    drop(session.event("query"));
    let mut made = Vec::with_capacity(2);
    let n = allocations(|| {
        made.push(session.event("query"));
        made.push(session.event("query.result"));
    });
    assert_eq!(n, 0, "allocations to make a session's two records");
    assert_eq!(made[0].identity.as_ref().unwrap().roles, ["analyst", "support"]);

    // Writing records (redacted first): nothing per record once the writer's buffers have grown (the channel
    // allocates a block per 31 messages, and the last call one acknowledgement).
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open_with(
        &dir.path().join("audit.jsonl"),
        AuditOptions {
            fsync: FsyncMode::Off,
            rotate_bytes: None,
            checkpoint_every: None,
        },
    )
    .unwrap()
    // As configured with `[audit] redact`: a statement it does not match is not copied.
    .with_redactor(std::sync::Arc::new(Redactor::new(vec![regex::Regex::new(
        r"sk_live_\w+",
    )
    .unwrap()])));
    let mut record = session.event("query");
    record.statement = Some("SELECT id, status, total FROM orders WHERE region = 'eu' AND id = 42".into());
    record.parameters = Some(vec![Some("42".to_string()), None].into());
    record.decision = Some("allow".into());
    const RECORDS: u64 = 10_000;
    // As many first, so the writer's buffers and queue have grown as far as such a burst takes them.
    let warm: Vec<_> = (0..RECORDS).map(|_| record.clone()).collect();
    warm.into_iter().for_each(|r| log.record(r));
    log.append_blocking(record.clone()).unwrap();
    let bodies: Vec<_> = (0..RECORDS).map(|_| record.clone()).collect();
    let n = allocations(|| {
        bodies.into_iter().for_each(|r| log.record(r));
        log.append_blocking(record.clone()).unwrap();
    });
    // The channel's blocks (323) and the last record's acknowledgement (its statement text and
    // parameters are shared, not copied): 324 here. The slack is for the queue growing further in a larger burst; one
    // allocation per record would be 10,000 more.
    assert!(n <= RECORDS / 31 + 64, "{n} allocations to write {RECORDS} records");

    // A session's `query` records, each awaited through the session's reused acknowledgement (as the
    // relay does before forwarding a statement): no channel per record either.
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let acks = std::sync::Arc::new(Acks::default());
    runtime.block_on(log.append_to(record.clone(), &acks)).unwrap();
    const AWAITED: u64 = 1_000;
    let bodies: Vec<_> = (0..AWAITED).map(|_| record.clone()).collect();
    let n = allocations(|| {
        for r in bodies {
            runtime.block_on(log.append_to(r, &acks)).unwrap();
        }
    });
    // The channel's blocks (32); a channel per record would be 1,000 more.
    assert!(
        n <= AWAITED / 31 + 16,
        "{n} allocations to write and await {AWAITED} records"
    );
}
