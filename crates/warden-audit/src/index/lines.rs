//! Reading a record back from the log by the place its index row names.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Mismatch, Row};
use crate::files::{segments, Segment};
use crate::{AuditError, Event, StoredRecord};

/// Reads records back by (seq, offset, length), keeping files open across rows.
pub(super) struct LineReader {
    log: PathBuf,
    segments: Vec<Segment>,
    /// Listed again once when a row does not match: the active file may have just been rotated.
    relisted: bool,
    files: HashMap<PathBuf, File>,
}

impl LineReader {
    pub(super) fn new(log: &Path) -> Result<Self, AuditError> {
        Ok(LineReader {
            log: log.to_path_buf(),
            segments: list(log)?,
            relisted: false,
            files: HashMap::new(),
        })
    }

    pub(super) fn read(&mut self, row: Row) -> Result<Result<StoredRecord, Mismatch>, AuditError> {
        match self.try_read(row) {
            Ok(r) => Ok(Ok(r)),
            Err(_) if !self.relisted => {
                self.relisted = true;
                self.segments = list(&self.log)?;
                self.files.clear();
                Ok(self.try_read(row))
            }
            Err(m) => Ok(Err(m)),
        }
    }

    fn try_read(&mut self, row: Row) -> Result<StoredRecord, Mismatch> {
        let segment = self
            .segments
            .iter()
            .find(|s| s.last_seq.is_none_or(|last| last >= row.seq))
            .ok_or_else(|| Mismatch(format!("no file holds seq {}", row.seq)))?;
        let path = segment.path.clone();
        let file = match self.files.entry(path.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(File::open(&path).map_err(|e| Mismatch(format!("{}: {e}", path.display())))?)
            }
        };
        let mut line = vec![0u8; row.len as usize + 1];
        file.read_exact_at(&mut line, row.off)
            .map_err(|e| Mismatch(format!("{} at byte {}: {e}", path.display(), row.off)))?;
        if line.pop() != Some(b'\n') {
            return Err(Mismatch(format!(
                "seq {}: not a whole line at byte {}",
                row.seq, row.off
            )));
        }
        let event: Event = serde_json::from_slice(&line)
            .map_err(|e| Mismatch(format!("seq {}: not a record at byte {}: {e}", row.seq, row.off)))?;
        if event.seq != row.seq {
            return Err(Mismatch(format!(
                "seq {} expected at byte {} of {}, found {}",
                row.seq,
                row.off,
                path.display(),
                event.seq
            )));
        }
        Ok(StoredRecord {
            event,
            line,
            file: path,
            offset: row.off,
        })
    }
}

fn list(log: &Path) -> Result<Vec<Segment>, AuditError> {
    segments(log).map_err(|e| AuditError::Open {
        path: log.to_path_buf(),
        reason: e.to_string(),
    })
}
