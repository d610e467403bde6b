//! A sink's cursor: the last record it delivered, in `AUDIT_DIR/sinks/NAME.cursor` (0600), replaced
//! atomically (write a temporary file, then rename) after every delivered batch.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use warden_audit::StoredRecord;

use super::{read_blocking, Position};

pub(super) struct Cursor {
    path: PathBuf,
}

/// The file's content. The hash ties it to one log: a cursor left over from a log that was
/// replaced is noticed instead of silently skipping the new log's first records.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    seq: u64,
    hash: String,
    /// Where the record's line starts in the file that holds it, to find it again without rereading
    /// the file (left out of a hand-written cursor: the log is then read by seq).
    #[serde(default)]
    offset: Option<u64>,
}

/// Beside the log: `DIR/sinks/NAME.cursor` for the log `DIR/audit.jsonl`; for a log of another name,
/// `DIR/sinks/STEM.NAME.cursor`, so two logs in one directory keep their cursors apart.
pub(super) fn path(log: &Path, sink: &str) -> PathBuf {
    let dir = log.parent().unwrap_or(Path::new(".")).join("sinks");
    match log.file_stem().and_then(|s| s.to_str()) {
        Some("audit") | None => dir.join(format!("{sink}.cursor")),
        Some(stem) => dir.join(format!("{stem}.{sink}.cursor")),
    }
}

impl Cursor {
    pub(super) fn new(path: PathBuf) -> Self {
        Cursor { path }
    }

    /// The position after the last delivered record, `None` for a sink that has delivered nothing.
    /// An error when the cursor does not describe a record of this log.
    pub(super) async fn load(&self, log: &Path) -> Result<Option<Position>> {
        let (path, log) = (self.path.clone(), log.to_path_buf());
        tokio::task::spawn_blocking(move || load(&path, &log)).await?
    }

    pub(super) async fn save(&self, last: &StoredRecord) -> Result<()> {
        let saved = Saved {
            seq: last.event.seq,
            hash: last.event.hash.clone(),
            offset: Some(last.offset),
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || save(&path, &saved)).await?
    }
}

fn load(path: &Path, log: &Path) -> Result<Option<Position>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let saved: Saved = serde_json::from_str(&text).with_context(|| format!("{} is not a cursor", path.display()))?;
    // Reread the delivered record itself: from its own line when the file is still there.
    let before = Position {
        seq: saved.seq.saturating_sub(1),
        end: saved.offset,
    };
    let found = read_blocking(log, before, 1)?.pop();
    match found {
        Some(r) if r.event.seq == saved.seq && r.event.hash != saved.hash => bail!(
            "{} names seq {} with hash {}, but the log's record {} has hash {}",
            path.display(),
            saved.seq,
            saved.hash,
            saved.seq,
            r.event.hash
        ),
        Some(r) if r.event.seq == saved.seq => Ok(Some(Position::after(&r))),
        // Records up to there were removed (old rotated files deleted): carry on after the cursor.
        Some(_) => Ok(Some(Position {
            seq: saved.seq,
            end: None,
        })),
        None => bail!("{} names seq {}, but the log ends before it", path.display(), saved.seq),
    }
}

fn save(path: &Path, saved: &Saved) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = path.with_extension("cursor.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(serde_json::to_string(saved)?.as_bytes())?;
    file.write_all(b"\n")?;
    // Without the fsync a crash could leave an empty cursor behind the rename.
    file.sync_data()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_audit::{AuditLog, EventBody, FsyncMode};

    #[tokio::test]
    async fn a_cursor_resumes_after_its_record_and_refuses_another_log() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&log_path, FsyncMode::Off).unwrap();
        for _ in 0..4 {
            log.append(EventBody {
                event: "query".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        log.checkpoint_now().await.unwrap();
        let records: Vec<StoredRecord> = warden_audit::read_after(&log_path, 0)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let cursor = Cursor::new(path(&log_path, "siem"));
        assert_eq!(cursor.path, dir.path().join("sinks/siem.cursor"));
        assert_eq!(
            cursor.load(&log_path).await.unwrap(),
            None,
            "a new sink starts at the beginning"
        );

        cursor.save(&records[1]).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cursor.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let at = cursor.load(&log_path).await.unwrap().unwrap();
        assert_eq!(at, Position::after(&records[1]));
        let next: Vec<u64> = read_blocking(&log_path, at, 10)
            .unwrap()
            .iter()
            .map(|r| r.event.seq)
            .collect();
        assert_eq!(next, vec![3, 4]);

        // Written by hand: seq and hash only.
        let hand = format!("{{\"seq\":3,\"hash\":\"{}\"}}", records[2].event.hash);
        std::fs::write(&cursor.path, hand).unwrap();
        assert_eq!(cursor.load(&log_path).await.unwrap().unwrap().seq, 3);

        // Another log's cursor: same seq, another hash; or a seq the log never reached.
        std::fs::write(&cursor.path, format!("{{\"seq\":3,\"hash\":\"{}\"}}", "0".repeat(64))).unwrap();
        let e = cursor.load(&log_path).await.unwrap_err().to_string();
        assert!(e.contains("names seq 3 with hash"), "{e}");
        std::fs::write(&cursor.path, format!("{{\"seq\":9,\"hash\":\"{}\"}}", "0".repeat(64))).unwrap();
        let e = cursor.load(&log_path).await.unwrap_err().to_string();
        assert!(e.contains("the log ends before it"), "{e}");

        assert_eq!(
            path(&dir.path().join("other.jsonl"), "siem"),
            dir.path().join("sinks/other.siem.cursor")
        );
    }
}
