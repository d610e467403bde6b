//! SIEM export: each `[[audit.sink]]` is a shipper task that follows the audit log and delivers its
//! records, as stored, in order.
//!
//! The log itself is the disk buffer. A shipper reads the records after its cursor
//! (`AUDIT_DIR/sinks/NAME.cursor`, the last seq it delivered), delivers them as one batch, and only then
//! moves the cursor. A failed delivery is retried, the same batch, with exponential backoff, so an
//! outage delays records but never drops or reorders them; a crash between delivery and the cursor
//! write sends that batch again (at least once). Shippers wake when this process writes a record and
//! poll for records other processes (CLI commands) append.

mod cursor;
mod output;
mod syslog;
mod webhook;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use warden_audit::{AuditHandle, StoredRecord};
use warden_policy::{Config, SinkConfig, SinkKind};

use cursor::Cursor;
use output::Output;

/// How often a shipper looks for records appended by other processes.
const POLL: Duration = Duration::from_millis(200);
/// Records per read for the sinks without a `batch_size`.
const LINE_BATCH: usize = 500;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Just after a record: its seq and, when known, where its line ends in the file that holds it (to
/// resume there instead of rereading the file up to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub seq: u64,
    pub end: Option<u64>,
}

impl Position {
    /// Before the log's first record.
    pub(crate) const START: Position = Position { seq: 0, end: None };

    pub(crate) fn after(r: &StoredRecord) -> Position {
        Position {
            seq: r.event.seq,
            end: Some(r.offset + r.line.len() as u64 + 1),
        }
    }
}

/// The configured sinks, built (connections are made lazily) but not yet shipping.
pub struct Sinks {
    shippers: Vec<Shipper>,
}

/// The running shippers.
pub struct RunningSinks {
    tasks: Vec<(String, JoinHandle<()>)>,
    stop: watch::Sender<bool>,
}

impl Sinks {
    /// Builds every sink of the config; fails on what can be checked before any record is sent (an
    /// unreadable `ca_file`, an https URL without any CA to trust).
    pub fn prepare(config: &Config, audit: &AuditHandle) -> Result<Sinks> {
        let log = config.audit.path.clone();
        let mut shippers = Vec::new();
        for sink in &config.audit.sinks {
            let shipper = Shipper::new(sink, &log, audit).with_context(|| format!("audit sink \"{}\"", sink.name))?;
            shippers.push(shipper);
        }
        Ok(Sinks { shippers })
    }

    pub fn spawn(self) -> RunningSinks {
        let (stop, stop_rx) = watch::channel(false);
        let tasks = self
            .shippers
            .into_iter()
            .map(|s| (s.name.clone(), tokio::spawn(s.run(stop_rx.clone()))))
            .collect();
        RunningSinks { tasks, stop }
    }
}

impl RunningSinks {
    /// Asks every shipper to deliver what is left and stop; waits at most `grace`. What a stopped
    /// shipper did not deliver is sent at the next start (its cursor says where it stopped).
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(sink = %name, "audit sink did not finish within {grace:?}; it resumes from its cursor at the next start");
            }
        }
    }
}

struct Shipper {
    name: String,
    log: PathBuf,
    cursor: Cursor,
    output: Output,
    batch_size: usize,
    batch_interval: Duration,
    written: watch::Receiver<u64>,
}

impl Shipper {
    fn new(sink: &SinkConfig, log: &Path, audit: &AuditHandle) -> Result<Self> {
        let (batch_size, batch_interval) = match &sink.kind {
            SinkKind::Webhook(w) => (w.batch_size, w.batch_interval),
            _ => (LINE_BATCH, Duration::ZERO),
        };
        Ok(Shipper {
            name: sink.name.clone(),
            log: log.to_path_buf(),
            cursor: Cursor::new(cursor::path(log, &sink.name)),
            output: Output::new(&sink.kind)?,
            batch_size,
            batch_interval,
            written: audit.written(),
        })
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut at = self.load_cursor().await;
        tracing::info!(sink = %self.name, kind = self.output.kind(), after_seq = at.seq, "shipping the audit log");
        let mut backoff = Backoff::default();
        // When the oldest record of a batch that is not full yet was first seen.
        let mut waiting_since: Option<Instant> = None;
        loop {
            // A dropped sender counts as a stop: the process is going away.
            let stopping = *stop.borrow() || stop.has_changed().is_err();
            let batch = match read_batch(&self.name, &self.log, at, self.batch_size).await {
                Ok(mut b) => {
                    // Only what is on disk leaves: in `batch` mode a record is readable before its
                    // fsync, and one lost in a crash must not exist in the SIEM alone. Durable is
                    // what this process wrote and acknowledged, or what a checkpoint covers (signed
                    // after the records' fsync, by whichever process wrote them).
                    let durable = (*self.written.borrow()).max(signed_seq(&self.log));
                    b.retain(|r| r.event.seq <= durable);
                    b
                }
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, "cannot read the audit log; retrying");
                    if stopping || !backoff.wait(&mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                if stopping {
                    return;
                }
                wait_for_records(&mut self.written, &mut stop, POLL).await;
                continue;
            }
            if batch.len() < self.batch_size && !stopping && !self.batch_interval.is_zero() {
                let since = *waiting_since.get_or_insert_with(Instant::now);
                let due = since + self.batch_interval;
                if Instant::now() < due {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }
            waiting_since = None;
            if !self.deliver(&batch, &mut backoff, &mut stop).await {
                return;
            }
            let last = batch.last().expect("the batch is not empty");
            at = Position::after(last);
            if let Err(e) = self.cursor.save(last).await {
                // Not fatal: at worst these records are sent again after a restart.
                tracing::warn!(sink = %self.name, error = %e, "cannot save the sink's cursor");
            }
        }
    }

    /// Delivers the batch, retrying with backoff until it is accepted. `false` when asked to stop
    /// before it was.
    async fn deliver(
        &mut self,
        batch: &[StoredRecord],
        backoff: &mut Backoff,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let first = batch[0].event.seq;
        let last = batch[batch.len() - 1].event.seq;
        loop {
            match self.output.deliver(batch).await {
                Ok(()) => {
                    if backoff.failures > 0 {
                        tracing::info!(sink = %self.name, failures = backoff.failures, first_seq = first, last_seq = last, "audit sink delivers again");
                    }
                    backoff.reset();
                    return true;
                }
                Err(e) => {
                    tracing::warn!(
                        sink = %self.name,
                        error = %e,
                        first_seq = first,
                        last_seq = last,
                        retry_in_ms = backoff.next.as_millis() as u64,
                        "audit sink cannot deliver; retrying the same records"
                    );
                    if *stop.borrow() || !backoff.wait(stop).await {
                        return false;
                    }
                }
            }
        }
    }

    /// The position after the last delivered record; the start of the log for a new sink, or when
    /// the cursor does not match this log (it was replaced).
    async fn load_cursor(&mut self) -> Position {
        let start = Position::START;
        match self.cursor.load(&self.log).await {
            Ok(Some(at)) => at,
            Ok(None) => start,
            Err(e) => {
                tracing::warn!(sink = %self.name, error = %e, "the sink's cursor does not fit this audit log; shipping from its first record");
                start
            }
        }
    }
}

/// Up to `max` records after `at`, contiguous. A file rotated between listing the log's files and
/// opening them makes the reader skip it: a batch that does not start right after `at` is read
/// again, and one with a hole is cut before it. A gap that stays is real (rotated files deleted):
/// it is said, and shipping goes on after it.
async fn read_batch(name: &str, log: &Path, at: Position, max: usize) -> Result<Vec<StoredRecord>> {
    let mut batch = read_records(log, at, max).await?;
    for _ in 0..3 {
        if batch.first().is_none_or(|r| r.event.seq == at.seq + 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        batch = read_records(log, at, max).await?;
    }
    if let Some(first) = batch.first().filter(|r| r.event.seq != at.seq + 1) {
        tracing::warn!(sink = %name, after_seq = at.seq, next_seq = first.event.seq, "records are missing from the audit log (deleted files?); shipping what follows");
    }
    let contiguous = batch
        .windows(2)
        .position(|w| w[1].event.seq != w[0].event.seq + 1)
        .map_or(batch.len(), |i| i + 1);
    batch.truncate(contiguous);
    Ok(batch)
}

async fn read_records(log: &Path, at: Position, max: usize) -> Result<Vec<StoredRecord>> {
    let log = log.to_path_buf();
    tokio::task::spawn_blocking(move || read_blocking(&log, at, max)).await?
}

/// Up to `max` records after `at`: from `at.end` when that still fits (the first record read
/// follows `at`), else by seq from the log's first file that may hold them.
pub(crate) fn read_blocking(log: &Path, at: Position, max: usize) -> Result<Vec<StoredRecord>> {
    if let Some(end) = at.end {
        let resumed: Result<Vec<StoredRecord>, _> =
            warden_audit::read_after_from(log, at.seq, end)?.take(max).collect();
        if let Ok(batch) = resumed {
            if batch.first().is_none_or(|r| r.event.seq == at.seq + 1) {
                return Ok(batch);
            }
        }
    }
    Ok(warden_audit::read_after(log, at.seq)?
        .take(max)
        .collect::<Result<Vec<_>, _>>()?)
}

/// The newest seq a checkpoint covers (0 when none can be read).
fn signed_seq(log: &Path) -> u64 {
    warden_audit::checkpoint::last_checkpoint(&warden_audit::files::checkpoints_path(log))
        .ok()
        .flatten()
        .map_or(0, |c| c.seq)
}

/// Until this process writes a record, `poll` passes (another process may have), or stop.
async fn wait_for_records(written: &mut watch::Receiver<u64>, stop: &mut watch::Receiver<bool>, poll: Duration) {
    tokio::select! {
        changed = written.changed() => {
            if changed.is_err() {
                // The writer is gone: only polling is left.
                tokio::time::sleep(poll).await;
            }
        }
        _ = tokio::time::sleep(poll) => {}
        _ = stop.changed() => {}
    }
}

struct Backoff {
    next: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
            failures: 0,
        }
    }
}

impl Backoff {
    /// Sleeps the current delay and doubles it (up to the cap); `false` if asked to stop meanwhile.
    async fn wait(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        self.failures += 1;
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// `bodies` written to a fresh log, signed, and read back as the sinks read them.
#[cfg(test)]
pub(crate) async fn stored(bodies: Vec<warden_audit::EventBody>) -> (tempfile::TempDir, Vec<StoredRecord>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = warden_audit::AuditLog::open(&path, warden_audit::FsyncMode::Off).unwrap();
    for body in bodies {
        log.append(body).await.unwrap();
    }
    log.checkpoint_now().await.unwrap();
    let records = warden_audit::read_after(&path, 0)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (dir, records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_audit::{AuditLog, AuditOptions, EventBody, FsyncMode};

    #[tokio::test]
    async fn batches_follow_rotation_and_go_on_after_deleted_files() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("audit.jsonl");
        let opts = AuditOptions {
            fsync: FsyncMode::Off,
            rotate_bytes: Some(600),
            ..AuditOptions::default()
        };
        let log = AuditLog::open_with(&log_path, opts).unwrap();
        for _ in 0..12 {
            let body = EventBody {
                event: "query".into(),
                statement: Some("SELECT 'some text to fill the file'".into()),
                ..Default::default()
            };
            log.append(body).await.unwrap();
        }
        log.checkpoint_now().await.unwrap();
        let start = Position::START;
        let mut at = start;
        let mut seqs = Vec::new();
        loop {
            let batch = read_batch("t", &log_path, at, 5).await.unwrap();
            let Some(last) = batch.last() else { break };
            at = Position::after(last);
            seqs.extend(batch.iter().map(|r| r.event.seq));
        }
        assert_eq!(seqs, (1..=12).collect::<Vec<u64>>());

        // The oldest rotated file is deleted (retention): a new sink starts after the hole.
        let segments = warden_audit::segments(&log_path).unwrap();
        assert!(segments.len() > 2, "{segments:?}");
        std::fs::remove_file(&segments[0].path).unwrap();
        let gone = segments[0].last_seq.unwrap();
        let batch = read_batch("t", &log_path, start, 100).await.unwrap();
        let seqs: Vec<u64> = batch.iter().map(|r| r.event.seq).collect();
        assert_eq!(seqs, (gone + 1..=12).collect::<Vec<u64>>());
    }
}
