//! Warden's audit log: one JSON object per line, each chained to the one before by SHA-256.
//!
//! This crate owns the record format, the writer that makes records durable before the proxy acts on
//! them, and the readers (`search` with its SQLite index, `verify`). It knows nothing about sessions, policy or the wire:
//! callers fill in an [`EventBody`] and get back the record's `seq`.
//!
//! # The chain, for independent verification
//!
//! A record is first serialised by `serde_json` (compact, no spaces) without its `hash` field, fields
//! in this order, absent optional fields left out: `ts`, `seq`, `event`, `session_id`, `identity`,
//! `credential_id`, `database`, `db_user`, `client_addr`, `statement`, `parameters`, `decision`,
//! `reason`, `rows`, `duration_us`, `error`, `query_id`, `actor`, `lock`, `request_id`, `review_id`,
//! `columns`, `sample_rows`, `prev_hash`. Call those bytes S. (A verifier need not know the fields:
//! it hashes the stored bytes, below.)
//!
//! - `hash` is the lowercase hex SHA-256 of S.
//! - The stored line is S with its final `}` replaced by `,"hash":"<hash>"}`, then `\n`.
//! - The first record's `prev_hash` is 64 zeros; every later record's `prev_hash` is the previous
//!   record's `hash`. `seq` starts at 1 and grows by one per line.
//! - `ts` is RFC 3339 in UTC with microseconds: `2026-11-23T06:44:19.123456Z`.
//!
//! A verifier never re-serialises: it cuts `,"hash":"<64 hex>"}` off the stored bytes, appends `}`, and
//! hashes that. In Python:
//!
//! ```text
//! import hashlib, json
//! prev, seq = "0" * 64, 1
//! for n, line in enumerate(open("audit.jsonl", "rb"), 1):
//!     head, stored = line[:-76], line[-76:]            # 76 = len(',"hash":"') + 64 + len('"}\n')
//!     assert stored[:9] == b',"hash":"' and stored[-3:] == b'"}\n', n
//!     rec = json.loads(line)
//!     assert hashlib.sha256(head + b"}").hexdigest() == rec["hash"], n
//!     assert rec["seq"] == seq and rec["prev_hash"] == prev, n
//!     prev, seq = rec["hash"], seq + 1
//! ```
//!
//! Records are redacted ([`Redactor`], `[audit] redact`) before they are enqueued, so secrets never
//! reach the disk nor any sink that ships the log.
//!
//! # Writing
//!
//! One thread owns the file: callers enqueue events and are answered once their record is written
//! and, per [`FsyncMode`], on disk. Whatever is queued when the thread wakes is written with one write
//! and made durable with one fsync (group commit). Each batch is written under an exclusive `flock`,
//! and a writer that finds the file grown by someone else (a CLI command beside the running proxy)
//! continues the chain from the last record on disk, so several processes can share one log.

pub mod checkpoint;
mod event;
pub mod files;
mod index;
mod reader;
mod recover;
mod redact;
mod search;
mod verify;
mod writer;

pub use event::{format_ts, Event, EventBody, IdentityRecord, LockRecord, Parameters};
pub use files::{segments, Segment};
pub use index::{Index, SessionSummary};
pub use reader::{read_after, read_after_from, Reader, StoredRecord};
pub use redact::{Redactor, REDACTED};
pub use search::{search, search_records, SearchFilter};
pub use verify::{verify, verify_with, VerifyOptions, VerifyReport};
pub use writer::{
    Acks, AuditHandle, AuditLog, AuditOptions, FsyncMode, Pending, DEFAULT_CHECKPOINT_EVERY, DEFAULT_ROTATE_BYTES,
};

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// A write or fsync failed (now or earlier): no record is accepted any more, so the proxy refuses
    /// statements instead of running them unrecorded.
    #[error("audit log {path} cannot be written: {reason}")]
    Unavailable { path: PathBuf, reason: String },
    /// The log could not be opened or its last record could not be read back.
    #[error("audit log {path} cannot be opened: {reason}")]
    Open { path: PathBuf, reason: String },
    /// A reader could not read or parse a line.
    #[error("audit log {path}, line {line}: {reason}")]
    Read { path: PathBuf, line: usize, reason: String },
    /// The search index beside the log could not be opened, read or written. It is a cache: the
    /// log itself is intact, and a linear search does not need it.
    #[error("audit index {path}: {reason}")]
    Index { path: PathBuf, reason: String },
    /// `verify` found a record that is not what the writer wrote.
    #[error("audit log {path}: {}{reason}{}", tampered_at(*line, *seq), if record.is_empty() { String::new() } else { format!("\n  {record}") })]
    Tampered {
        path: PathBuf,
        line: usize,
        seq: Option<u64>,
        reason: String,
        record: String,
    },
}

/// Where `verify` found a problem: a line of the log (0: the problem is not on one line, such as
/// records missing from the end), and the seq concerned.
fn tampered_at(line: usize, seq: Option<u64>) -> String {
    match (line, seq) {
        (0, Some(s)) => format!("seq {s}: "),
        (0, None) => String::new(),
        (l, Some(s)) => format!("line {l} (seq {s}): "),
        (l, None) => format!("line {l}: "),
    }
}

/// `prev_hash` of the first record.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[cfg(test)]
mod tests;
