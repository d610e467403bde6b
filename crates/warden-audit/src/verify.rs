use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::checkpoint::{last_checkpoint, Checkpoint, PublicKey};
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
    // Read along with the log, not held in memory: a busy log has hundreds of thousands a day.
    let mut signed = Signed::open(&ckpt_path, key.as_ref(), opts.chain_only)?;

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
            signed
                .check(&event)?
                .map_err(|reason| tampered(Some(event.seq), reason, &line))?;
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
    if let Some((ckpt_line, c)) = signed.rest()? {
        return Err(AuditError::Tampered {
            path: active_or_last(&files),
            line: 0,
            seq: Some(c.seq),
            reason: format!(
                "the log ends at seq {records}, but checkpoint line {ckpt_line} signed seq {} at {}: records were removed from the end",
                c.seq, c.ts
            ),
            record: String::new(),
        });
    }
    if records > 0 && !opts.chain_only {
        let missing = if key.is_none() {
            Some("no checkpoint public key (checkpoint.pub is missing; pin the deployment's key with --public-key)")
        } else if signed.count == 0 {
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
            let now = last_checkpoint(&ckpt_path).ok().flatten();
            drop(lock);
            if now.is_some() {
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
    let last_checkpoint = signed.last;
    Ok(VerifyReport {
        records,
        last_hash: chain.prev,
        files: files_seen,
        checkpoints: signed.count,
        unsigned_tail: records - last_checkpoint.as_ref().map_or(0, |c| c.0.min(records)),
        last_checkpoint,
    })
}

/// The signed checkpoints, read in step with the log: the file as it was when verify started (a live
/// writer appends more, which the log read so far may not reach), each signature checked as it is
/// read. Checkpoints are written in chain order under the writers' lock, so each is met when its
/// record is; one out of that order was edited in.
struct Signed<'k> {
    path: PathBuf,
    reader: Option<BufReader<std::io::Take<File>>>,
    key: Option<&'k PublicKey>,
    line: usize,
    next: Option<(usize, Checkpoint)>,
    count: usize,
    /// The newest checkpoint read: its seq and when it was signed.
    last: Option<(u64, String)>,
}

impl<'k> Signed<'k> {
    fn open(path: &Path, key: Option<&'k PublicKey>, chain_only: bool) -> Result<Self, AuditError> {
        let reader = if chain_only {
            None
        } else {
            match File::open(path) {
                Ok(f) => {
                    let len = f.metadata().map_err(|e| open_error(path, e))?.len();
                    Some(BufReader::new(f.take(len)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(open_error(path, e)),
            }
        };
        let mut signed = Signed {
            path: path.to_path_buf(),
            reader,
            key,
            line: 0,
            next: None,
            count: 0,
            last: None,
        };
        signed.advance()?;
        Ok(signed)
    }

    fn bad(&self, c: Option<&Checkpoint>, reason: String) -> AuditError {
        AuditError::Tampered {
            path: self.path.clone(),
            line: self.line,
            seq: c.map(|c| c.seq),
            reason,
            record: c
                .map(|c| serde_json::to_string(c).unwrap_or_default())
                .unwrap_or_default(),
        }
    }

    /// Reads the next checkpoint, its signature checked, into `next`. A torn last line (a crash
    /// mid-append, or one being appended now) ends the file.
    fn advance(&mut self) -> Result<(), AuditError> {
        self.next = None;
        let Some(reader) = self.reader.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        let got = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| self.bad(None, e.to_string()))?;
        if got == 0 {
            return Ok(());
        }
        self.line += 1;
        let Some(text) = buf.strip_suffix(b"\n") else {
            return Ok(());
        };
        let c: Checkpoint =
            serde_json::from_slice(text).map_err(|e| self.bad(None, format!("not a checkpoint: {e}")))?;
        let Some(key) = self.key else {
            return Err(self.bad(
                Some(&c),
                "a checkpoint exists but no public key to check it (checkpoint.pub is missing)".into(),
            ));
        };
        if !key.verifies(&c) {
            return Err(self.bad(
                Some(&c),
                "checkpoint signature does not verify with the checkpoint key".into(),
            ));
        }
        if let Some((before, _)) = &self.last {
            if c.seq < *before {
                let reason = format!(
                    "signs seq {} after a checkpoint of seq {before}: checkpoints are written in chain order, so this one was put there",
                    c.seq
                );
                return Err(self.bad(Some(&c), reason));
            }
        }
        self.count += 1;
        self.last = Some((c.seq, c.ts.clone()));
        self.next = Some((self.line, c));
        Ok(())
    }

    /// Every checkpoint of `event`'s seq must hold its hash (outer error: the checkpoints file
    /// itself is bad; inner: the reason this record was rewritten).
    fn check(&mut self, event: &Event) -> Result<Result<(), String>, AuditError> {
        while let Some((line, c)) = &self.next {
            if c.seq > event.seq {
                break;
            }
            if c.seq < event.seq {
                return Ok(Err(format!(
                    "checkpoint line {line} signed seq {} at {}, which is not where the log holds it: the log was rewritten",
                    c.seq, c.ts
                )));
            }
            if c.hash != event.hash {
                return Ok(Err(format!(
                    "differs from the record signed at {} (checkpoint line {line}): the log was rewritten",
                    c.ts
                )));
            }
            self.advance()?;
        }
        Ok(Ok(()))
    }

    /// After the log's last record: the newest checkpoint left unmatched (its seq is past the end),
    /// every signature still checked.
    fn rest(&mut self) -> Result<Option<(usize, Checkpoint)>, AuditError> {
        let mut newest = None;
        while let Some(next) = self.next.take() {
            newest = Some(next);
            self.advance()?;
        }
        Ok(newest)
    }
}

fn open_error(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
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
