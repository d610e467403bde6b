//! Reading records in chain order across rotated files, from a known position: what the SIEM
//! shippers and the search index use to follow the log.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
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
    /// Just after this record: where a follower continues ([`read_from`]).
    pub next: Position,
}

/// A place just after a record. The file is named by its inode, not its path: rotation renames the
/// active file (and keeps the inode), so a follower's position survives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The seq of the record just before this place.
    pub seq: u64,
    pub ino: u64,
    pub offset: u64,
}

/// Iterator over the records after a seq; see [`read_after`].
pub struct Reader {
    segments: std::vec::IntoIter<Segment>,
    /// path, reader, inode, byte offset, line number.
    current: Option<(PathBuf, BufReader<File>, u64, u64, usize)>,
    after: u64,
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
        line: Vec::new(),
        done: false,
    })
}

/// As [`read_after`]`(active, at.seq)`, but starting at `at` without rereading the file up to it,
/// when `at` still names a file of the log and the record there follows `at.seq`. Otherwise (the
/// file is gone, or its inode was reused) it falls back to [`read_after`], so it is never wrong, at
/// worst slower.
pub fn read_from(active: &Path, at: Position) -> Result<std::iter::Peekable<Reader>, AuditError> {
    if let Some(mut resumed) = resume(active, at) {
        match resumed.peek() {
            None => return Ok(resumed),
            Some(Ok(r)) if r.event.seq == at.seq + 1 => return Ok(resumed),
            Some(_) => {}
        }
    }
    Ok(read_after(active, at.seq)?.peekable())
}

fn resume(active: &Path, at: Position) -> Option<std::iter::Peekable<Reader>> {
    let all = segments(active).ok()?;
    let mut wanted: Vec<Segment> = all
        .into_iter()
        .filter(|s| s.last_seq.is_none_or(|last| last > at.seq))
        .collect();
    let index = wanted
        .iter()
        .position(|s| std::fs::metadata(&s.path).is_ok_and(|m| m.ino() == at.ino && m.len() >= at.offset))?;
    let rest = wanted.split_off(index + 1);
    let segment = wanted.pop()?;
    let mut file = File::open(&segment.path).ok()?;
    if file.metadata().ok()?.ino() != at.ino {
        return None;
    }
    file.seek(SeekFrom::Start(at.offset)).ok()?;
    Some(
        Reader {
            segments: rest.into_iter(),
            current: Some((segment.path, BufReader::new(file), at.ino, at.offset, 0)),
            after: at.seq,
            line: Vec::new(),
            done: false,
        }
        .peekable(),
    )
}

impl Iterator for Reader {
    type Item = Result<StoredRecord, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if self.current.is_none() {
                let segment = self.segments.next()?;
                match File::open(&segment.path).and_then(|f| Ok((f.metadata()?.ino(), f))) {
                    Ok((ino, f)) => self.current = Some((segment.path, BufReader::new(f), ino, 0, 0)),
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
            let (path, reader, ino, offset, line_no) = self.current.as_mut()?;
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
            let seq = event.seq;
            return Some(Ok(StoredRecord {
                event,
                line: text.to_vec(),
                file: path.clone(),
                offset: at,
                next: Position {
                    seq,
                    ino: *ino,
                    offset: *offset,
                },
            }));
        }
        None
    }
}
