//! Warden's audit log: one JSON object per line, each chained to the one before by SHA-256.
//!
//! # The chain, for independent verification
//!
//! A record is first serialised without its `hash` field (fields in the order of [`Event`]); call those
//! bytes S. `hash` is the lowercase hex SHA-256 of S. The stored line is S with its final `}` replaced
//! by `,"hash":"<hex>"}`, then `\n`. The first record's `prev_hash` is 64 zeros; every later record's
//! `prev_hash` is the previous record's `hash`; `seq` starts at 1 and grows by one. So
//! `sha256(line_without_hash_field) == hash` and `prev_hash == previous hash` must hold on every line.
//!
//! The writer is one thread that owns the file: callers enqueue events and are answered once their
//! record is written (and, per [`FsyncMode`], on disk). Batching happens naturally: whatever is queued
//! when the thread wakes is written with one write and made durable with one fsync.

mod event;
mod search;
mod verify;
mod writer;

pub use event::{format_ts, Event, EventBody, IdentityRecord};
pub use search::{search, SearchFilter};
pub use verify::{verify, VerifyReport};
pub use writer::{AuditHandle, AuditLog, FsyncMode, Pending};

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path} cannot be written: {reason}")]
    Unavailable { path: PathBuf, reason: String },
    #[error("audit log {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("audit log {path}, line {line}: {reason}")]
    Read {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("audit log {path}: line {line}{}: {reason}\n  {record}", seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
    Tampered {
        path: PathBuf,
        line: usize,
        seq: Option<u64>,
        reason: String,
        record: String,
    },
}

pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[cfg(test)]
mod tests;
