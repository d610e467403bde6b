//! Where a log's records live: rotated files, the active file, the writers' lock file and the
//! signed checkpoints beside them.
//!
//! For an active file `DIR/audit.jsonl`:
//! - `DIR/audit.00000000000000012345.jsonl`: a rotated file whose last record has seq 12345 (20
//!   digits, so names sort in chain order);
//! - `DIR/audit.jsonl.lock`: the advisory lock every writer holds while it appends or rotates;
//! - `DIR/audit.index.db` (0600): the search index, a cache rebuilt from the log ([`crate::Index`]);
//! - `DIR/audit.checkpoints.jsonl`: signed checkpoints of the chain head ([`crate::checkpoint`]);
//! - `DIR/checkpoint.key` (0600) and `DIR/checkpoint.pub`: the Ed25519 key that signs them.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// One file of the log, in chain order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    /// The seq of the file's last record; `None` for the active file.
    pub last_seq: Option<u64>,
}

fn split(active: &Path) -> (PathBuf, String, String) {
    let dir = match active.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = active
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = active
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, stem, ext)
}

/// The name a rotated file gets: its last record's seq, zero-padded.
pub(crate) fn rotated_path(active: &Path, last_seq: u64) -> PathBuf {
    let (dir, stem, ext) = split(active);
    let name = if ext.is_empty() {
        format!("{stem}.{last_seq:020}")
    } else {
        format!("{stem}.{last_seq:020}.{ext}")
    };
    dir.join(name)
}

/// The lock file all of a log's writers share. A separate file, because rotation replaces the active
/// one while other processes may hold it open.
pub(crate) fn lock_path(active: &Path) -> PathBuf {
    let mut name = active.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    active.with_file_name(name)
}

/// Signed checkpoints of the chain head.
pub fn checkpoints_path(active: &Path) -> PathBuf {
    let (dir, stem, ext) = split(active);
    let ext = if ext.is_empty() { "jsonl".to_string() } else { ext };
    dir.join(format!("{stem}.checkpoints.{ext}"))
}

/// The search index ([`crate::Index`]): `DIR/audit.index.db` for `DIR/audit.jsonl`.
pub fn index_path(active: &Path) -> PathBuf {
    let (dir, stem, _) = split(active);
    dir.join(format!("{stem}.index.db"))
}

/// The checkpoint signing key (PKCS#8, 0600) and its public half (hex).
pub fn key_paths(active: &Path) -> (PathBuf, PathBuf) {
    let (dir, _, _) = split(active);
    (dir.join("checkpoint.key"), dir.join("checkpoint.pub"))
}

/// Every file of the log in chain order: rotated files by their last seq, then the active file
/// (listed even when it does not exist yet).
pub fn segments(active: &Path) -> io::Result<Vec<Segment>> {
    let (dir, stem, ext) = split(active);
    let prefix = format!("{stem}.");
    let suffix = if ext.is_empty() {
        String::new()
    } else {
        format!(".{ext}")
    };
    let mut rotated = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(vec![Segment {
                path: active.to_path_buf(),
                last_seq: None,
            }])
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(middle) = name.strip_prefix(&prefix).and_then(|n| n.strip_suffix(&suffix)) else {
            continue;
        };
        if middle.len() == 20 && middle.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(seq) = middle.parse::<u64>() {
                rotated.push(Segment {
                    path: entry.path(),
                    last_seq: Some(seq),
                });
            }
        }
    }
    rotated.sort_by_key(|s| s.last_seq);
    rotated.push(Segment {
        path: active.to_path_buf(),
        last_seq: None,
    });
    Ok(rotated)
}

/// Opens (creating, 0600) the lock file.
pub(crate) fn open_lock(active: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock_path(active))
}

/// fsyncs a directory, so a file created or renamed in it survives a crash.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    let (dir, _, _) = split(path);
    File::open(dir)?.sync_all()
}
