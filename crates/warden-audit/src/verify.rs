use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::checkpoint::{read_checkpoints, Checkpoint, PublicKey};
use crate::event::{chain_hash, split_hash};
use crate::files::{checkpoints_path, key_paths, open_lock, segments};
use crate::recover::lock_shared;
use crate::{AuditError, Event, GENESIS};

/// An intact chain: how many records, the last one's hash, and how far signed checkpoints reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub last_hash: String,
    pub files: usize,
    pub checkpoints: usize,
    /// The newest checkpoint: its seq and when it was signed.
    pub last_checkpoint: Option<(u64, String)>,
    /// Records after the newest checkpoint: chained, but not yet signed (a crash or the interval).
    pub unsigned_tail: u64,
}

#[derive(Default)]
pub struct VerifyOptions<'a> {
    /// The checkpoint public key (hex) to trust instead of the `checkpoint.pub` beside the log; an
    /// investigator pins the key they recorded elsewhere.
    pub public_key: Option<String>,
    /// Called as bytes are read: (bytes so far, total bytes of all files).
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
    /// Check the hash chain only, not the signed checkpoints: for a copy of a log taken without its
    /// checkpoints, or one written before checkpoints existed. A cut or rewritten end goes unseen.
    pub chain_only: bool,
}

/// [`verify_with`] with the key beside the log and no progress reports.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    verify_with(path, VerifyOptions::default())
}

/// Recomputes every hash and link across the rotated files and the active one, and checks every
/// signed checkpoint against the chain; the first problem is returned with its file, line and record.
/// A missing log is an empty chain.
pub fn verify_with(path: &Path, opts: VerifyOptions<'_>) -> Result<VerifyReport, AuditError> {
    verify_once(path, opts, true)
}

fn verify_once(path: &Path, mut opts: VerifyOptions<'_>, may_retry: bool) -> Result<VerifyReport, AuditError> {
    let open_err = |p: &Path, reason: String| AuditError::Open {
        path: p.to_path_buf(),
        reason,
    };
    let files = segments(path).map_err(|e| open_err(path, e.to_string()))?;
    let ckpt_path = checkpoints_path(path);
    let checkpoints = if opts.chain_only {
        Ok(Vec::new())
    } else {
        read_checkpoints(&ckpt_path)
    };
    let checkpoints = checkpoints.map_err(|(p, line, reason)| AuditError::Tampered {
        path: p,
        line,
        seq: None,
        reason,
        record: String::new(),
    })?;
    let key = match &opts.public_key {
        _ if opts.chain_only => None,
        Some(hex) => Some(PublicKey::from_hex(hex).map_err(|e| open_err(&ckpt_path, format!("--public-key: {e}")))?),
        None => {
            let (_, public) = key_paths(path);
            public
                .exists()
                .then(|| PublicKey::read(&public).map_err(|e| open_err(&public, e)))
                .transpose()?
        }
    };
    let mut by_seq: BTreeMap<u64, Vec<(usize, &Checkpoint)>> = BTreeMap::new();
    for (i, c) in checkpoints.iter().enumerate() {
        let bad = |reason: String| AuditError::Tampered {
            path: ckpt_path.clone(),
            line: i + 1,
            seq: Some(c.seq),
            reason,
            record: serde_json::to_string(c).unwrap_or_default(),
        };
        let Some(key) = &key else {
            return Err(bad(
                "a checkpoint exists but no public key to check it (checkpoint.pub is missing)".into(),
            ));
        };
        if !key.verifies(c) {
            return Err(bad(
                "checkpoint signature does not verify with the checkpoint key".into()
            ));
        }
        by_seq.entry(c.seq).or_default().push((i + 1, c));
    }

    let total: u64 = files
        .iter()
        .filter_map(|s| std::fs::metadata(&s.path).ok())
        .map(|m| m.len())
        .sum();
    let mut done = 0u64;
    let mut chain = Chain {
        prev: GENESIS.to_string(),
        next_seq: 1,
    };
    let mut line = Vec::new();
    let mut files_seen = 0;
    // The files are listed again before each one: the proxy may rotate while a long verify runs.
    loop {
        let done_seq = chain.next_seq - 1;
        let listed = segments(path).map_err(|e| open_err(path, e.to_string()))?;
        let Some(segment) = listed.into_iter().find(|s| s.last_seq.is_none_or(|l| l > done_seq)) else {
            break;
        };
        let is_active = segment.last_seq.is_none();
        let file = match File::open(&segment.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_active => break,
            // Renamed between listing and opening: list again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(open_err(&segment.path, e.to_string())),
        };
        if is_active {
            // Rotated just before it was opened: the records it held are in a file listed now.
            let again = segments(path).map_err(|e| open_err(path, e.to_string()))?;
            if again.iter().any(|s| s.last_seq.is_some_and(|l| l > done_seq)) {
                continue;
            }
        }
        files_seen += 1;
        let mut reader = BufReader::new(file);
        let mut n = 0usize;
        let mut lock = None;
        loop {
            line.clear();
            let read_err = |e: std::io::Error, n: usize| AuditError::Read {
                path: segment.path.clone(),
                line: n + 1,
                reason: e.to_string(),
            };
            let got = reader.read_until(b'\n', &mut line).map_err(|e| read_err(e, n))?;
            if got == 0 {
                break;
            }
            if !line.ends_with(b"\n") && is_active && lock.is_none() {
                // A live writer may be halfway through this record: once the writers' lock is free,
                // the rest is there. Kept until the end, so no later record is caught halfway either.
                let l = open_lock(path).map_err(|e| read_err(e, n))?;
                lock_shared(&l).map_err(|e| read_err(e, n))?;
                lock = Some(l);
                reader.read_until(b'\n', &mut line).map_err(|e| read_err(e, n))?;
            }
            n += 1;
            done += line.len() as u64;
            let tampered = |seq: Option<u64>, reason: String, line: &[u8]| AuditError::Tampered {
                path: segment.path.clone(),
                line: n,
                seq,
                reason,
                record: String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line))
                    .chars()
                    .take(500)
                    .collect(),
            };
            let first = chain.next_seq == 1;
            let event = chain.check(&line, first).map_err(|(seq, r)| tampered(seq, r, &line))?;
            if let Some(signed) = by_seq.get(&event.seq) {
                for (ckpt_line, c) in signed {
                    if c.hash != event.hash {
                        let reason = format!(
                            "differs from the record signed at {} (checkpoint line {ckpt_line}): the log was rewritten",
                            c.ts
                        );
                        return Err(tampered(Some(event.seq), reason, &line));
                    }
                }
            }
            if let Some(progress) = opts.progress.as_mut() {
                if n.is_multiple_of(4096) {
                    progress(done, total.max(done));
                }
            }
        }
        if let Some(last) = segment.last_seq {
            if chain.next_seq - 1 != last {
                return Err(AuditError::Tampered {
                    path: segment.path.clone(),
                    line: n,
                    seq: Some(chain.next_seq - 1),
                    reason: format!(
                        "the file is named for seq {last} but its last record is seq {}",
                        chain.next_seq - 1
                    ),
                    record: String::new(),
                });
            }
        }
        if is_active {
            break;
        }
    }
    if let Some(progress) = opts.progress.as_mut() {
        progress(done, total.max(done));
    }
    let records = chain.next_seq - 1;
    if let Some((&seq, signed)) = by_seq.iter().next_back() {
        if seq > records {
            let (ckpt_line, c) = signed[0];
            return Err(AuditError::Tampered {
                path: active_or_last(&files),
                line: 0,
                seq: Some(seq),
                reason: format!(
                    "the log ends at seq {records}, but checkpoint line {ckpt_line} signed seq {seq} at {}: records were removed from the end",
                    c.ts
                ),
                record: String::new(),
            });
        }
    }
    if records > 0 && !opts.chain_only {
        let missing = if key.is_none() {
            Some("no checkpoint public key (checkpoint.pub is missing; pin the deployment's key with --public-key)")
        } else if checkpoints.is_empty() {
            Some("no signed checkpoint")
        } else {
            None
        };
        if missing.is_some() && key.is_some() && may_retry {
            // The checkpoints were read before the log: a live writer may have written the first
            // records of a new log, and be writing their checkpoint, since. Once no writer is
            // mid-commit, a checkpoint for them exists, unless something is wrong: look once more.
            let lock = open_lock(path).map_err(|e| open_err(path, e.to_string()))?;
            lock_shared(&lock).map_err(|e| open_err(path, e.to_string()))?;
            let now = read_checkpoints(&ckpt_path).map(|c| c.len()).unwrap_or(0);
            drop(lock);
            if now > 0 {
                return verify_once(path, opts, false);
            }
        }
        if let Some(what) = missing {
            return Err(AuditError::Tampered {
                path: ckpt_path,
                line: 0,
                seq: None,
                reason: format!(
                    "{records} records but {what}: a cut or rewritten end cannot be ruled out (--chain-only checks the chain alone)"
                ),
                record: String::new(),
            });
        }
    }
    let last_checkpoint = checkpoints.iter().max_by_key(|c| c.seq).map(|c| (c.seq, c.ts.clone()));
    Ok(VerifyReport {
        records,
        last_hash: chain.prev,
        files: files_seen,
        checkpoints: checkpoints.len(),
        unsigned_tail: records - last_checkpoint.as_ref().map_or(0, |c| c.0.min(records)),
        last_checkpoint,
    })
}

fn active_or_last(files: &[crate::files::Segment]) -> PathBuf {
    files.last().map(|s| s.path.clone()).unwrap_or_default()
}

struct Chain {
    prev: String,
    next_seq: u64,
}

impl Chain {
    /// Checks one stored line (with its `\n`) against the chain so far, then advances the chain.
    fn check(&mut self, line: &[u8], first: bool) -> Result<Event, (Option<u64>, String)> {
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
            let reason = if first {
                "prev_hash does not link to the start of the log (64 zeros)".to_string()
            } else {
                format!("prev_hash does not link to seq {}", self.next_seq - 1)
            };
            return Err((seq, reason));
        }
        self.prev = event.hash.clone();
        self.next_seq += 1;
        Ok(event)
    }
}
