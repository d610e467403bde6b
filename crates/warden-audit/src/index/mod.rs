//! The search index: a SQLite file beside the log (`DIR/audit.index.db` for `DIR/audit.jsonl`, 0600)
//! with one row per record: its seq, time, event, subject (session, identity, requester and task,
//! stored once per distinct combination), decision, and where its line is. It is a cache derived from the log, never the source of truth: every answer is
//! read back from the log itself (the stored line, checked to be the record the row names), and a row
//! that does not match makes the whole index rebuild from the log.
//!
//! Rows hold no file names: rotation renames the active file, so a seq is resolved to its file from
//! the segment list (the first rotated file whose last seq is at least that seq, else the active file)
//! and the line is read at the stored offset.
//!
//! Followers (the running proxy, each CLI command) catch up from the last indexed record, reading only
//! the new lines, in one IMMEDIATE transaction per batch; several may share the file. Catching up is
//! what a busy proxy pays for the index on every record, so it is kept lean: only the indexed fields
//! are parsed, a row carries one integer for who and where, and few indexes are kept (see SCHEMA;
//! `cargo bench -p warden-audit --bench catchup` measures it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use crate::files::index_path;
use crate::reader::Lines;
use crate::{AuditError, SearchFilter, StoredRecord};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

mod lines;
mod record;
mod sessions;

use lines::LineReader;
use record::{micros, Fields, Str};
pub use sessions::SessionSummary;

/// Bumped when the table changes: an index of another version is rebuilt.
const VERSION: &str = "4";

/// Records per transaction while catching up.
const BATCH: usize = 20_000;

const META: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

const SCHEMA: &str = r#"
-- Who and where, once per distinct combination (about once per session): the records point here.
CREATE TABLE IF NOT EXISTS subjects (
    id             INTEGER PRIMARY KEY,
    session_id     TEXT,
    identity       TEXT,               -- kind:name
    identity_name  TEXT,
    requester      TEXT,               -- as stored, usually kind:name
    requester_name TEXT,
    task           TEXT
);
-- The full `identity` and `requester` are found through their names.
CREATE INDEX IF NOT EXISTS subjects_session ON subjects (session_id, identity_name, task);
CREATE INDEX IF NOT EXISTS subjects_identity_name ON subjects (identity_name) WHERE identity_name IS NOT NULL;
CREATE INDEX IF NOT EXISTS subjects_requester_name ON subjects (requester_name) WHERE requester_name IS NOT NULL;
CREATE INDEX IF NOT EXISTS subjects_task ON subjects (task) WHERE task IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY,
    ts       INTEGER,                  -- microseconds since the epoch; NULL if `ts` does not parse
    event    TEXT NOT NULL,
    subject  INTEGER,                  -- subjects.id; NULL without session and identity
    decision TEXT,
    off      INTEGER NOT NULL,         -- byte offset of the line in its file
    len      INTEGER NOT NULL          -- bytes of the line, without its newline
);
-- Each index costs about as much to maintain as the row itself: few, with keys that grow with seq
-- (subjects are numbered as they appear, so a record's key is near the last ones). The records of
-- every statement (`query`, `query.result`, `allow`) are left out of the event and decision indexes:
-- a search for those reads much of the log anyway. A partial index serves only queries that repeat
-- its condition word for word (RARE_EVENT, RARE_DECISION).
CREATE INDEX IF NOT EXISTS events_subject ON events (subject) WHERE subject IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_event ON events (event) WHERE event NOT IN ('query', 'query.result');
CREATE INDEX IF NOT EXISTS events_decision ON events (decision, ts) WHERE decision <> 'allow';
-- Instead of an index on ts: the earliest and latest ts of each block of 4096 seqs. Records are
-- written in time order, so the records of a time range lie in a range of seqs, read in order; a
-- clock set back only widens that range (see `query`).
CREATE TABLE IF NOT EXISTS ts_blocks (
    block  INTEGER PRIMARY KEY,        -- seq >> 12
    min_ts INTEGER NOT NULL,
    max_ts INTEGER NOT NULL
);
"#;

/// Seqs per row of `ts_blocks`: 1 << TS_BLOCK.
const TS_BLOCK: u32 = 12;

/// The condition of the partial index `events_event`, and the events it leaves out.
const RARE_EVENT: &str = "event NOT IN ('query', 'query.result')";
const FREQUENT_EVENTS: [&str; 2] = ["query", "query.result"];
/// The condition of the partial index `events_decision`, and the decision it leaves out.
const RARE_DECISION: &str = "decision <> 'allow'";
const FREQUENT_DECISION: &str = "allow";

/// An open index over one log.
pub struct Index {
    conn: Connection,
    log: PathBuf,
    path: PathBuf,
}

/// What a row says about where its record is.
#[derive(Debug, Clone, Copy)]
struct Row {
    seq: u64,
    off: u64,
    len: u64,
}

/// Why a row could not be read back as its record.
#[derive(Debug)]
struct Mismatch(String);

impl Index {
    /// Opens (creating, 0600) the index beside `log` and checks that its last row is still the
    /// log's record (same seq, same hash); an index that does not match, or of another version, is
    /// emptied and rebuilt by the next [`Index::catch_up`].
    pub fn open(log: &Path) -> Result<Index, AuditError> {
        // Several processes opening a new index at once race to set it up (WAL mode, schema, a
        // reset), and SQLite answers some of those races with "locked" at once, past the busy
        // timeout: try again for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match Index::open_once(log) {
                Err(AuditError::Index { reason, .. })
                    if (reason.contains("locked") || reason.contains("busy"))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_once(log: &Path) -> Result<Index, AuditError> {
        let path = index_path(log);
        let err = |e: &dyn std::fmt::Display| AuditError::Index {
            path: path.clone(),
            reason: e.to_string(),
        };
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| err(&e))?;
        }
        let conn = Connection::open(&path).map_err(|e| err(&e))?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(|e| err(&e))?;
        // A cache: losing the last commits in a crash only means indexing them again.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| err(&e))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| err(&e))?;
        // A larger page cache keeps the subjects' text indexes and the searched pages in memory.
        conn.pragma_update(None, "cache_size", -64 * 1024)
            .map_err(|e| err(&e))?;
        // Temporary files (statement journals, sorts) in memory, not written to disk.
        conn.pragma_update(None, "temp_store", "MEMORY").map_err(|e| err(&e))?;
        // Checkpoints every 16 MiB of WAL rather than 4: a page written by several commits in
        // between (the last page of each index) is copied into the database once.
        conn.pragma_update(None, "wal_autocheckpoint", 4000)
            .map_err(|e| err(&e))?;
        conn.execute_batch(META).map_err(|e| err(&e))?;
        let mut index = Index {
            conn,
            log: log.to_path_buf(),
            path,
        };
        // The tables are made by `reset`, with the version: an index of another version may have
        // tables of the same names and other columns.
        let version = index.meta("version")?;
        if version.as_deref() != Some(VERSION) {
            index.reset()?;
        } else if let Err(e) = index.conn.execute_batch(SCHEMA) {
            return Err(index.err(e));
        } else if let Err(m) = index.check_head() {
            note_rebuild(&index.path, &m);
            index.reset()?;
        }
        Ok(index)
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest indexed seq (0 when empty).
    pub fn last_seq(&self) -> Result<u64, AuditError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get::<_, i64>(0))
            .map(|s| s as u64)
            .map_err(|e| self.err(e))
    }

    /// Indexes the records written since the last indexed one; returns how many were added. A log
    /// that no longer continues the indexed records (replaced, or cut) makes the index rebuild.
    pub fn catch_up(&mut self) -> Result<u64, AuditError> {
        let mut added = 0;
        // A record that does not follow is first read again (a rotation may have raced the
        // listing of files), then the index is rebuilt once; a log that still does not follow
        // (a record really missing) is indexed as it is.
        let (mut retried, mut rebuilt, mut strict) = (false, false, true);
        loop {
            match self.catch_up_batch(strict)? {
                Batch::Added(n) => {
                    added += n;
                    retried = false;
                }
                Batch::Done(n) => return Ok(added + n),
                Batch::Diverged(_) if !retried => retried = true,
                Batch::Diverged(m) if !rebuilt => {
                    note_rebuild(&self.path, &m);
                    self.reset()?;
                    added = 0;
                    rebuilt = true;
                }
                Batch::Diverged(_) if strict => strict = false,
                // Rebuilt, and read leniently, and still not following: an error to report, not
                // a loop (a record that cannot be read right where a batch starts).
                Batch::Diverged(m) => {
                    return Err(AuditError::Index {
                        path: self.path.clone(),
                        reason: format!(
                            "cannot follow the log {} even after a rebuild: {}; run `warden audit verify`",
                            self.log.display(),
                            m.0
                        ),
                    })
                }
            }
        }
    }

    /// Events matching `filter`, in log order, read back from the log. The index is used as it is:
    /// call [`Index::catch_up`] first for the newest records. A row that does not match its record
    /// rebuilds the index and the search runs again.
    pub fn search(&mut self, filter: &SearchFilter) -> Result<Vec<StoredRecord>, AuditError> {
        match self.try_search(filter)? {
            Ok(found) => Ok(found),
            Err(m) => {
                note_rebuild(&self.path, &m);
                self.reset()?;
                self.catch_up()?;
                self.try_search(filter)?.map_err(|m| self.mismatch(m))
            }
        }
    }

    fn try_search(&self, filter: &SearchFilter) -> Result<Result<Vec<StoredRecord>, Mismatch>, AuditError> {
        let (sql, values) = query(filter);
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query_map(rusqlite::params_from_iter(values), |r| {
                Ok(Row {
                    seq: r.get::<_, i64>(0)? as u64,
                    off: r.get::<_, i64>(1)? as u64,
                    len: r.get::<_, i64>(2)? as u64,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        if filter.newest && filter.limit.is_some() {
            rows.reverse();
        }
        let mut lines = LineReader::new(&self.log)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match lines.read(row)? {
                Ok(record) => {
                    // The index narrows; the record itself decides (a cheap guard against a stale row).
                    if !filter.matches(&record.event) {
                        return Ok(Err(Mismatch(format!(
                            "the record with seq {} does not match its index row",
                            row.seq
                        ))));
                    }
                    out.push(record)
                }
                Err(m) => return Ok(Err(m)),
            }
        }
        Ok(Ok(out))
    }

    /// The newest row must still be the log's record: same seq, same hash.
    fn check_head(&self) -> Result<(), Mismatch> {
        let head = self.head().map_err(|e| Mismatch(e.to_string()))?;
        let Some((row, hash)) = head else {
            return Ok(());
        };
        let mut lines = LineReader::new(&self.log).map_err(|e| Mismatch(e.to_string()))?;
        let record = lines.read(row).map_err(|e| Mismatch(e.to_string()))??;
        if record.event.hash != hash {
            return Err(Mismatch(format!(
                "the record with seq {} is not the one indexed (hash differs)",
                row.seq
            )));
        }
        Ok(())
    }

    /// The newest row and the hash of its record.
    fn head(&self) -> Result<Option<(Row, String)>, AuditError> {
        let row = self
            .conn
            .query_row("SELECT seq, off, len FROM events ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok(Row {
                    seq: r.get::<_, i64>(0)? as u64,
                    off: r.get::<_, i64>(1)? as u64,
                    len: r.get::<_, i64>(2)? as u64,
                })
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let hash = self.meta("last_hash")?;
        Ok(row.zip(hash))
    }

    fn catch_up_batch(&mut self, strict: bool) -> Result<Batch, AuditError> {
        let log = self.log.clone();
        let path = self.path.clone();
        let err = |e: rusqlite::Error| AuditError::Index {
            path: path.clone(),
            reason: e.to_string(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        // Read inside the transaction: another follower may have indexed these records meanwhile.
        let head: Option<(Row, String)> = {
            let row = tx
                .query_row("SELECT seq, off, len FROM events ORDER BY seq DESC LIMIT 1", [], |r| {
                    Ok(Row {
                        seq: r.get::<_, i64>(0)? as u64,
                        off: r.get::<_, i64>(1)? as u64,
                        len: r.get::<_, i64>(2)? as u64,
                    })
                })
                .optional()
                .map_err(err)?;
            let hash: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = 'last_hash'", [], |r| r.get(0))
                .optional()
                .map_err(err)?;
            row.zip(hash)
        };
        // Lines, parsed here only for the fields indexed (a whole record costs several times more).
        let mut lines = match &head {
            Some((row, _)) => Lines::new(&log, row.seq, Some(row.off + row.len + 1)),
            None => Lines::new(&log, 0, None),
        };
        // The last record indexed (seq and hash), the head's before the first.
        let mut prev_seq = head.as_ref().map(|(row, _)| row.seq);
        let mut last_hash = String::new();
        let mut n = 0usize;
        // Stopped before the end: a full batch, or a record that did not follow.
        let mut more = false;
        // The time span of each block of seqs met, for `ts_blocks`.
        let mut blocks = TsBlocks::default();
        {
            let mut subjects = Subjects::new(&tx).map_err(err)?;
            let mut insert = tx
                .prepare_cached(
                    // OR IGNORE: nothing to undo half-way, so SQLite needs no statement journal (with
                    // REPLACE or the default ABORT, that journal's writes were half of indexing's cost).
                    "INSERT OR IGNORE INTO events (seq, ts, event, subject, decision, off, len) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(err)?;
            loop {
                let after = lines.last();
                let parsed = match lines.next_line() {
                    None => break,
                    // UTF-8 checked once for the whole line, rather than string by string.
                    Some(Ok(line)) => std::str::from_utf8(line.text)
                        .map_err(|e| Lines::not_a_record(&line, &e))
                        .and_then(|text| {
                            serde_json::from_str::<Fields>(text).map_err(|e| Lines::not_a_record(&line, &e))
                        })
                        .map(|f| (f, line.offset, line.text.len())),
                    Some(Err(e)) => Err(e),
                };
                let (f, offset, len) = match parsed {
                    Ok(p) => p,
                    // Resumed in the middle of something else: the log is not the one indexed.
                    Err(e) if head.is_some() && n == 0 => {
                        return Ok(Batch::Diverged(Mismatch(format!("reading on from the index: {e}"))))
                    }
                    Err(e) => return Err(e),
                };
                // Already returned from this file under its earlier name (see `Reader`).
                if f.seq <= after {
                    continue;
                }
                // Each record must follow the one before. The first that does not ends the batch
                // (the next one lists the files again); if it is the batch's first, see `catch_up`.
                // Search is not verification: the hashes themselves are `warden audit verify`'s job.
                if let (true, Some(seq)) = (strict, prev_seq) {
                    let head_hash = head.as_ref().map(|(_, hash)| hash.as_str());
                    if f.seq != seq + 1 || (n == 0 && Some(f.prev_hash.as_str()) != head_hash) {
                        if n == 0 {
                            return Ok(Batch::Diverged(Mismatch(format!(
                                "record {} does not follow the indexed record {seq}",
                                f.seq
                            ))));
                        }
                        more = true;
                        break;
                    }
                }
                let subject = subjects.id(&f).map_err(err)?;
                let ts = micros(f.ts.as_str());
                blocks.add(f.seq, ts);
                insert
                    .execute(params![
                        f.seq as i64,
                        ts,
                        f.event.as_str(),
                        subject,
                        f.decision.as_ref().map(Str::as_str),
                        offset as i64,
                        len as i64,
                    ])
                    .map_err(err)?;
                let seq = f.seq;
                last_hash.clear();
                last_hash.push_str(f.hash.as_str());
                lines.returned(seq);
                prev_seq = Some(seq);
                n += 1;
                if n >= BATCH {
                    more = true;
                    break;
                }
            }
        }
        if n > 0 {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_hash', ?1)",
                params![last_hash],
            )
            .map_err(err)?;
            blocks.save(&tx).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(if more {
            Batch::Added(n as u64)
        } else {
            Batch::Done(n as u64)
        })
    }

    /// Empties the index (the next catch-up rebuilds it from the whole log).
    fn reset(&mut self) -> Result<(), AuditError> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| AuditError::Index {
            path: path.clone(),
            reason: e.to_string(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute_batch(
            "DROP TABLE IF EXISTS events; DROP TABLE IF EXISTS subjects; DROP TABLE IF EXISTS ts_blocks; \
             DELETE FROM meta;",
        )
        .map_err(err)?;
        tx.execute_batch(SCHEMA).map_err(err)?;
        tx.execute("INSERT INTO meta (key, value) VALUES ('version', ?1)", params![VERSION])
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    fn meta(&self, key: &str) -> Result<Option<String>, AuditError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: rusqlite::Error) -> AuditError {
        AuditError::Index {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn mismatch(&self, m: Mismatch) -> AuditError {
        AuditError::Index {
            path: self.path.clone(),
            reason: format!("still does not match the log after a rebuild: {}", m.0),
        }
    }
}

enum Batch {
    /// Stopped before the end of the log: there is more.
    Added(u64),
    /// Caught up.
    Done(u64),
    /// The log does not continue what was indexed.
    Diverged(Mismatch),
}

/// The index is rebuilt silently in the library; the reason is kept for whoever debugs it.
fn note_rebuild(path: &Path, m: &Mismatch) {
    if std::env::var_os("WARDEN_INDEX_DEBUG").is_some() {
        eprintln!("audit index {}: rebuilding: {}", path.display(), m.0);
    }
}

/// The SQL and its parameters for a filter: rows (seq, off, len) in the order to read them.
fn query(filter: &SearchFilter) -> (String, Vec<Value>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    // Who and where: the records of the subjects that match.
    let mut of_subject: Vec<String> = Vec::new();
    if let Some(want) = &filter.identity {
        let own = names(&mut values, "identity", want);
        let acted_for = names(&mut values, "requester", want);
        of_subject.push(format!("({own} OR {acted_for})"));
    }
    if let Some(want) = &filter.requester {
        of_subject.push(names(&mut values, "requester", want));
    }
    for (column, value) in [("task", &filter.task), ("session_id", &filter.session)] {
        if let Some(v) = value {
            let p = bind(&mut values, v);
            of_subject.push(format!("{column} = {p}"));
        }
    }
    if !of_subject.is_empty() {
        clauses.push(format!(
            "subject IN (SELECT id FROM subjects WHERE {})",
            of_subject.join(" AND ")
        ));
    }
    // The partial indexes' conditions, where they hold, so that the indexes can serve.
    if let Some(v) = &filter.decision {
        let p = bind(&mut values, v);
        clauses.push(format!("decision = {p}"));
        if v != FREQUENT_DECISION {
            clauses.push(RARE_DECISION.to_string());
        }
    }
    if let Some(v) = &filter.event {
        let p = bind(&mut values, v);
        clauses.push(format!("event = {p}"));
        if !FREQUENT_EVENTS.contains(&v.as_str()) {
            clauses.push(RARE_EVENT.to_string());
        }
    }
    // `ts` is whole microseconds: ts >= since and ts <= until, with the bounds' nanoseconds. The
    // records in range lie between the first block of seqs that ends at or after `since` and the
    // last that starts at or before `until` (`ts_blocks`): that range of seqs is read, and each
    // record's own `ts` decides. With a subject, its records are found through it instead
    // (`+ts`: SQLite, without statistics, might otherwise walk a long range of seqs).
    let by_subject = !of_subject.is_empty();
    let ts = if by_subject { "+ts" } else { "ts" };
    if let Some(since) = filter.since {
        let ns = since.unix_timestamp_nanos();
        values.push(Value::Integer(ceil_div(ns, 1000)));
        let p = values.len();
        clauses.push(format!("{ts} >= ?{p}"));
        if !by_subject {
            clauses.push(format!(
                "seq >= COALESCE((SELECT MIN(block) FROM ts_blocks WHERE max_ts >= ?{p}) << {TS_BLOCK}, {})",
                i64::MAX
            ));
        }
    }
    if let Some(until) = filter.until {
        let ns = until.unix_timestamp_nanos();
        values.push(Value::Integer(ns.div_euclid(1000) as i64));
        let p = values.len();
        clauses.push(format!("{ts} <= ?{p}"));
        if !by_subject {
            clauses.push(format!(
                "seq < COALESCE(((SELECT MAX(block) FROM ts_blocks WHERE min_ts <= ?{p}) + 1) << {TS_BLOCK}, 0)"
            ));
        }
    }
    let mut sql = String::from("SELECT seq, off, len FROM events");
    if !clauses.is_empty() {
        sql += " WHERE ";
        sql += &clauses.join(" AND ");
    }
    let newest = filter.newest && filter.limit.is_some();
    sql += if newest { " ORDER BY seq DESC" } else { " ORDER BY seq" };
    if let Some(limit) = filter.limit {
        values.push(Value::Integer(limit.min(i64::MAX as usize) as i64));
        sql += &format!(" LIMIT ?{}", values.len());
    }
    (sql, values)
}

/// Whether `column` of a subject (`identity` or `requester`, stored as `kind:name`) is named by
/// `want`, a bare name or `kind:name`; through the `<column>_name` index either way.
fn names(values: &mut Vec<Value>, column: &str, want: &str) -> String {
    let whole = bind(values, want);
    match want.split_once(':') {
        Some((_, name)) => {
            let name = bind(values, name);
            format!("(({column}_name = {name} AND {column} = {whole}) OR {column}_name = {whole})")
        }
        None => format!("{column}_name = {whole}"),
    }
}

/// Adds a text parameter; returns its placeholder.
fn bind(values: &mut Vec<Value>, v: &str) -> String {
    values.push(Value::Text(v.to_string()));
    format!("?{}", values.len())
}

fn ceil_div(n: i128, d: i128) -> i64 {
    (-((-n).div_euclid(d))) as i64
}

/// The earliest and latest `ts` of each block of seqs a batch met (records come in seq order).
#[derive(Default)]
struct TsBlocks(Vec<(i64, i64, i64)>);

impl TsBlocks {
    fn add(&mut self, seq: u64, ts: Option<i64>) {
        let Some(ts) = ts else { return };
        let block = (seq >> TS_BLOCK) as i64;
        match self.0.last_mut() {
            Some((b, min, max)) if *b == block => {
                *min = (*min).min(ts);
                *max = (*max).max(ts);
            }
            _ => self.0.push((block, ts, ts)),
        }
    }

    /// Widens the blocks' rows to take in this batch's records.
    fn save(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO ts_blocks (block, min_ts, max_ts) VALUES (?1, ?2, ?3) ON CONFLICT (block) \
             DO UPDATE SET min_ts = MIN(min_ts, excluded.min_ts), max_ts = MAX(max_ts, excluded.max_ts)",
        )?;
        for (block, min, max) in &self.0 {
            upsert.execute(params![block, min, max])?;
        }
        Ok(())
    }
}

/// The subjects' ids met in one batch (a batch is one transaction: ids found or added in it stay
/// valid until it commits, whatever other followers do before or after).
struct Subjects<'t> {
    find: rusqlite::CachedStatement<'t>,
    add: rusqlite::CachedStatement<'t>,
    /// By hash of the key: the keys with that hash and their ids.
    known: HashMap<u64, Vec<(SubjectKey, i64)>>,
    hasher: RandomState,
}

/// What tells subjects apart: session, identity (kind, name), requester, task.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SubjectKey<S = String> {
    session: Option<S>,
    identity: Option<(S, S)>,
    requester: Option<S>,
    task: Option<S>,
}

impl SubjectKey {
    fn is(&self, k: &SubjectKey<&str>) -> bool {
        self.session.as_deref() == k.session
            && self.identity.as_ref().map(|(a, b)| (a.as_str(), b.as_str())) == k.identity
            && self.requester.as_deref() == k.requester
            && self.task.as_deref() == k.task
    }
}

impl<'t> Subjects<'t> {
    fn new(tx: &'t rusqlite::Transaction<'_>) -> rusqlite::Result<Self> {
        Ok(Subjects {
            find: tx.prepare_cached(
                "SELECT id FROM subjects WHERE session_id IS ?1 AND identity IS ?2 AND identity_name IS ?3 \
                 AND requester IS ?4 AND task IS ?5",
            )?,
            add: tx.prepare_cached(
                "INSERT INTO subjects (session_id, identity, identity_name, requester, requester_name, task) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
            known: HashMap::new(),
            hasher: RandomState::new(),
        })
    }

    /// The id of the record's subject, added if new; `None` for a record without session and identity.
    fn id(&mut self, f: &Fields<'_>) -> rusqlite::Result<Option<i64>> {
        let id = f.identity.as_ref();
        let key = SubjectKey {
            session: f.session_id.as_ref().map(Str::as_str),
            identity: id.map(|i| (i.kind.as_str(), i.name.as_str())),
            requester: id.and_then(|i| i.requester.as_ref()).map(Str::as_str),
            task: id.and_then(|i| i.task.as_ref()).map(Str::as_str),
        };
        if key.session.is_none() && key.identity.is_none() {
            return Ok(None);
        }
        let hash = self.hasher.hash_one(&key);
        if let Some(found) = self.known.get(&hash).and_then(|v| v.iter().find(|(k, _)| k.is(&key))) {
            return Ok(Some(found.1));
        }
        let identity = key.identity.map(|(kind, name)| format!("{kind}:{name}"));
        let identity_name = key.identity.map(|(_, name)| name);
        let found = self
            .find
            .query_row(
                params![key.session, identity, identity_name, key.requester, key.task],
                |r| r.get::<_, i64>(0),
            )
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                let requester_name = key.requester.map(|r| r.split_once(':').map_or(r, |(_, name)| name));
                self.add.insert(params![
                    key.session,
                    identity,
                    identity_name,
                    key.requester,
                    requester_name,
                    key.task
                ])?
            }
        };
        let owned = SubjectKey {
            session: key.session.map(str::to_string),
            identity: key.identity.map(|(a, b)| (a.to_string(), b.to_string())),
            requester: key.requester.map(str::to_string),
            task: key.task.map(str::to_string),
        };
        self.known.entry(hash).or_default().push((owned, id));
        Ok(Some(id))
    }
}

#[cfg(test)]
mod tests;
