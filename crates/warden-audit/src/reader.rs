//! Reading records in chain order across rotated files, from a known position: what the SIEM
//! shippers and the search index use to follow the log.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::files::{segments, Segment};
use crate::{AuditError, Event};

/// A record as stored, and where.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub event: Event,
    /// The stored line without its `\n`: exactly the bytes the hash chain covers.
    pub line: Vec<u8>,
    pub file: PathBuf,
    /// Byte offset of the line in `file`.
    pub offset: u64,
}

/// Iterator over the records after a seq; see [`read_after`].
pub struct Reader {
    segments: std::vec::IntoIter<Segment>,
    current: Option<(PathBuf, BufReader<File>, u64, usize)>,
    after: u64,
    /// Where to start in the first file: just past record `after` (see [`read_after_from`]).
    resume: Option<(PathBuf, u64)>,
    line: Vec<u8>,
    done: bool,
}

/// The records with `seq > after`, in order, across rotated files and then the active file. Stops
/// at the end, or at a last line still being written. Rotated files that end at or before `after`
/// are not opened.
pub fn read_after(active: &Path, after: u64) -> Result<Reader, AuditError> {
    let all = segments(active).map_err(|e| AuditError::Open {
        path: active.to_path_buf(),
        reason: e.to_string(),
    })?;
    let wanted: Vec<Segment> = all
        .into_iter()
        .filter(|s| s.last_seq.is_none_or(|last| last > after))
        .collect();
    Ok(Reader {
        segments: wanted.into_iter(),
        current: None,
        after,
        resume: None,
        line: Vec::new(),
        done: false,
    })
}

/// As [`read_after`], for a follower that knows where record `after` ends: `resume` is the byte just
/// past its line in the file that holds it (the first rotated file whose last seq is at least
/// `after`, else the active file). That file is read from there instead of from its start, so
/// following a large active file costs only the new records. A wrong `resume` (the log was
/// replaced) shows as a record that does not parse or a seq that does not follow.
pub fn read_after_from(active: &Path, after: u64, resume: u64) -> Result<Reader, AuditError> {
    let all = segments(active).map_err(|e| AuditError::Open {
        path: active.to_path_buf(),
        reason: e.to_string(),
    })?;
    let wanted: Vec<Segment> = all
        .into_iter()
        .filter(|s| s.last_seq.is_none_or(|last| last >= after))
        .collect();
    let resume = wanted.first().map(|s| (s.path.clone(), resume));
    Ok(Reader {
        segments: wanted.into_iter(),
        current: None,
        after,
        resume,
        line: Vec::new(),
        done: false,
    })
}

impl Iterator for Reader {
    type Item = Result<StoredRecord, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if self.current.is_none() {
                let segment = self.segments.next()?;
                let start = match self.resume.take() {
                    Some((path, at)) if path == segment.path => at,
                    _ => 0,
                };
                match File::open(&segment.path).and_then(|mut f| f.seek(SeekFrom::Start(start)).map(|_| f)) {
                    // Line numbers count from the resume point (errors then name the seq instead).
                    Ok(f) => self.current = Some((segment.path, BufReader::new(f), start, 0)),
                    // The active file before the first record, or a file rotated while we listed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(AuditError::Open {
                            path: segment.path,
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            let (path, reader, offset, line_no) = self.current.as_mut()?;
            self.line.clear();
            let n = match reader.read_until(b'\n', &mut self.line) {
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    return Some(Err(AuditError::Read {
                        path: path.clone(),
                        line: *line_no + 1,
                        reason: e.to_string(),
                    }));
                }
            };
            let at = *offset;
            *offset += n as u64;
            *line_no += 1;
            let Some(text) = self.line.strip_suffix(b"\n") else {
                // End of this file (or a record still being written): on to the next file, if any.
                self.current = None;
                continue;
            };
            let event: Event = match serde_json::from_slice(text) {
                Ok(e) => e,
                Err(e) => {
                    self.done = true;
                    return Some(Err(AuditError::Read {
                        path: path.clone(),
                        line: *line_no,
                        reason: format!("not a valid audit record: {e}"),
                    }));
                }
            };
            if event.seq <= self.after {
                continue;
            }
            return Some(Ok(StoredRecord {
                event,
                line: text.to_vec(),
                file: path.clone(),
                offset: at,
            }));
        }
        None
    }
}
