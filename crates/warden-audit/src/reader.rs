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
    lines: Lines,
}

/// The lines after a seq, unparsed: the part of [`Reader`] that lists, opens and reads the files.
/// Its user parses each line and says which seq it returned ([`Lines::returned`]), which decides the
/// files still to read.
pub(crate) struct Lines {
    active: PathBuf,
    /// Files opened so far: each is read once (the active file too, until the next reader).
    opened: Vec<PathBuf>,
    current: Option<(PathBuf, BufReader<File>, u64, usize)>,
    /// The seq of the last record returned, or `after`.
    last: u64,
    /// Where to start in the first file: just past record `after` (see [`read_after_from`]).
    resume: Option<u64>,
    line: Vec<u8>,
    done: bool,
}

/// One whole line, without its `\n`, and where it is.
pub(crate) struct Line<'a> {
    pub text: &'a [u8],
    pub path: &'a Path,
    /// Byte offset of the line in `path`.
    pub offset: u64,
    /// Counted from where reading began in that file.
    pub line_no: usize,
}

/// The records with `seq > after`, in order, across rotated files and then the active file. Stops
/// at the end, or at a last line still being written. Rotated files that end at or before `after`
/// are not opened. The files are listed again each time one is finished, so a rotation while
/// reading is followed (the active file renamed, a new one begun).
pub fn read_after(active: &Path, after: u64) -> Result<Reader, AuditError> {
    Ok(Reader {
        lines: Lines::new(active, after, None),
    })
}

/// As [`read_after`], for a follower that knows where record `after` ends: `resume` is the byte just
/// past its line in the file that holds it (the first rotated file whose last seq is at least
/// `after`, else the active file). That file is read from there instead of from its start, so
/// following a large active file costs only the new records. A wrong `resume` (the log was
/// replaced) shows as a record that does not parse or a seq that does not follow.
pub fn read_after_from(active: &Path, after: u64, resume: u64) -> Result<Reader, AuditError> {
    Ok(Reader {
        lines: Lines::new(active, after, Some(resume)),
    })
}

impl Lines {
    /// As [`read_after`] (`resume` `None`) or [`read_after_from`], without parsing the lines.
    pub(crate) fn new(active: &Path, after: u64, resume: Option<u64>) -> Self {
        Lines {
            active: active.to_path_buf(),
            opened: Vec::new(),
            current: None,
            last: after,
            resume,
            line: Vec::new(),
            done: false,
        }
    }

    /// The next file to read: the first not yet opened that may hold records after the last one
    /// returned (with a resume point, the first one is the file holding record `after` itself).
    fn next_segment(&mut self) -> Result<Option<Segment>, AuditError> {
        let all = segments(&self.active).map_err(|e| AuditError::Open {
            path: self.active.clone(),
            reason: e.to_string(),
        })?;
        let inclusive = self.resume.is_some() && self.opened.is_empty();
        Ok(all.into_iter().find(|s| {
            !self.opened.contains(&s.path)
                && s.last_seq
                    .is_none_or(|l| if inclusive { l >= self.last } else { l > self.last })
        }))
    }
}

impl Lines {
    /// The seq of the last record returned ([`Lines::returned`]), or `after`.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// The line just read held record `seq`, returned to the user: later files are chosen after it.
    pub(crate) fn returned(&mut self, seq: u64) {
        self.last = seq;
    }

    /// Stops: the next call to [`Lines::next_line`] returns `None`.
    pub(crate) fn stop(&mut self) {
        self.done = true;
    }

    /// The next whole line; `None` at the end (a last line still being written is left for later).
    pub(crate) fn next_line(&mut self) -> Option<Result<Line<'_>, AuditError>> {
        while !self.done {
            if self.current.is_none() {
                let segment = match self.next_segment() {
                    Ok(Some(s)) => s,
                    Ok(None) => return None,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                };
                let start = if self.opened.is_empty() {
                    self.resume.unwrap_or(0)
                } else {
                    0
                };
                self.opened.push(segment.path.clone());
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
            if self.line.last() != Some(&b'\n') {
                // End of this file (or a record still being written): on to the next file, if any.
                self.current = None;
                continue;
            }
            let (path, _, _, line_no) = self.current.as_ref()?;
            return Some(Ok(Line {
                text: &self.line[..self.line.len() - 1],
                path,
                offset: at,
                line_no: *line_no,
            }));
        }
        None
    }

    /// The error for a line that is not a record.
    pub(crate) fn not_a_record(line: &Line<'_>, e: &dyn std::fmt::Display) -> AuditError {
        AuditError::Read {
            path: line.path.to_path_buf(),
            line: line.line_no,
            reason: format!("not a valid audit record: {e}"),
        }
    }
}

impl Iterator for Reader {
    type Item = Result<StoredRecord, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let last = self.lines.last();
            let line = match self.lines.next_line()? {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            let event: Event = match serde_json::from_slice(line.text) {
                Ok(e) => e,
                Err(e) => {
                    let err = Lines::not_a_record(&line, &e);
                    self.lines.stop();
                    return Some(Err(err));
                }
            };
            // Also skips what was already returned from this file under its earlier name (the
            // active file, rotated after this reader reached its end).
            if event.seq <= last {
                continue;
            }
            let record = StoredRecord {
                line: line.text.to_vec(),
                file: line.path.to_path_buf(),
                offset: line.offset,
                event,
            };
            self.lines.returned(record.event.seq);
            return Some(Ok(record));
        }
    }
}
