use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::event::{chain_hash, split_hash};
use crate::recover::lock_shared;
use crate::{AuditError, Event, GENESIS};

/// An intact chain: how many records, and the last one's hash (to anchor elsewhere, since a chain
/// alone cannot show that records were cut off its end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub last_hash: String,
}

/// Recomputes every hash and link; the first problem is returned with its line and the record.
/// A missing log is an empty chain.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(VerifyReport {
                records: 0,
                last_hash: GENESIS.into(),
            })
        }
        Err(e) => {
            return Err(AuditError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    let mut reader = BufReader::new(file);
    let mut chain = Chain {
        prev: GENESIS.to_string(),
        next_seq: 1,
    };
    let mut line = Vec::new();
    let mut n = 0usize;
    let mut locked = false;
    loop {
        line.clear();
        let read_err = |e: std::io::Error| AuditError::Read {
            path: path.to_path_buf(),
            line: n + 1,
            reason: e.to_string(),
        };
        if reader.read_until(b'\n', &mut line).map_err(read_err)? == 0 {
            break;
        }
        if !line.ends_with(b"\n") && !locked {
            // A live writer may be halfway through this record: once its lock is free, the rest is
            // there. Kept until the end, so no later record can be caught halfway either.
            lock_shared(reader.get_ref()).map_err(read_err)?;
            locked = true;
            reader.read_until(b'\n', &mut line).map_err(read_err)?;
        }
        n += 1;
        chain.check(&line, n).map_err(|(seq, reason)| AuditError::Tampered {
            path: path.to_path_buf(),
            line: n,
            seq,
            reason,
            record: String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line))
                .chars()
                .take(500)
                .collect(),
        })?;
    }
    Ok(VerifyReport {
        records: chain.next_seq - 1,
        last_hash: chain.prev,
    })
}

struct Chain {
    prev: String,
    next_seq: u64,
}

impl Chain {
    /// Checks one stored line (with its `\n`) against the chain so far, then advances the chain.
    fn check(&mut self, line: &[u8], n: usize) -> Result<(), (Option<u64>, String)> {
        let Some(text) = line.strip_suffix(b"\n") else {
            return Err((None, "incomplete last record (no newline)".into()));
        };
        let event: Event = serde_json::from_slice(text).map_err(|_| (None, "not valid JSON".to_string()))?;
        let seq = Some(event.seq);
        // The stored bytes are hashed as they are; re-serialising could hide an edit.
        let hash_ok = split_hash(text)
            .is_some_and(|(head, stored)| stored == event.hash.as_bytes() && chain_hash(head) == event.hash);
        if !hash_ok {
            return Err((seq, "hash mismatch".into()));
        }
        if event.seq != self.next_seq {
            let reason = format!("seq gap: expected {} found {}", self.next_seq, event.seq);
            return Err((seq, reason));
        }
        if event.prev_hash != self.prev {
            let reason = if n == 1 {
                "prev_hash does not link to the start of the log (64 zeros)".to_string()
            } else {
                format!("prev_hash does not link to line {}", n - 1)
            };
            return Err((seq, reason));
        }
        self.prev = event.hash;
        self.next_seq += 1;
        Ok(())
    }
}
