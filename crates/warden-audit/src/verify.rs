use std::io::{BufRead, BufReader};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::event::split_hash;
use crate::{AuditError, Event, GENESIS};

pub struct VerifyReport {
    pub records: u64,
    pub last_hash: String,
}

/// Recomputes every hash and link; the first problem is returned with its line and the record.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let file = match std::fs::File::open(path) {
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
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1u64;
    let mut line = String::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|e| AuditError::Read {
            path: path.to_path_buf(),
            line: n + 1,
            reason: e.to_string(),
        })?;
        if read == 0 {
            break;
        }
        n += 1;
        let text = line.strip_suffix('\n').unwrap_or(&line);
        let tampered = |seq: Option<u64>, reason: String| AuditError::Tampered {
            path: path.to_path_buf(),
            line: n,
            seq,
            reason,
            record: text.chars().take(500).collect(),
        };
        if !line.ends_with('\n') {
            return Err(tampered(None, "incomplete last record (no newline)".into()));
        }
        let event: Event =
            serde_json::from_str(text).map_err(|_| tampered(None, "not valid JSON".into()))?;
        let (hashed, stored) = split_hash(text)
            .ok_or_else(|| tampered(Some(event.seq), "hash field missing or not last".into()))?;
        let actual = hex::encode(Sha256::digest(hashed.as_bytes()));
        if actual != stored || stored != event.hash {
            return Err(tampered(
                Some(event.seq),
                "hash mismatch: the record was changed".into(),
            ));
        }
        if event.seq != expected_seq {
            return Err(tampered(
                Some(event.seq),
                format!(
                    "seq gap: expected {expected_seq}, found {} (records removed or reordered)",
                    event.seq
                ),
            ));
        }
        if event.prev_hash != prev {
            let link = if n == 1 {
                "the start of the log".to_string()
            } else {
                format!("line {}", n - 1)
            };
            return Err(tampered(
                Some(event.seq),
                format!("prev_hash does not link to {link}"),
            ));
        }
        prev = event.hash;
        expected_seq += 1;
    }
    Ok(VerifyReport {
        records: expected_seq - 1,
        last_hash: prev,
    })
}
