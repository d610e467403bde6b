//! Finding the head of the chain (last `seq` and `hash`) at the end of an existing log, and the
//! advisory lock every writer holds while it appends.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::{Event, GENESIS};

/// Where the chain continues.
pub(crate) struct Head {
    pub seq: u64,
    pub prev: String,
    /// The file's length once a torn tail is cut.
    pub len: u64,
    /// Bytes of a torn final line that were cut.
    pub torn: Option<usize>,
}

/// Reads the last complete record of the active file (or, when it is empty, of the newest rotated
/// file); cuts a torn tail first. Call with the writers' lock held, so the bytes after the last `\n`
/// cannot be another writer's record in progress: only a crash leaves them.
pub(crate) fn recover_head(file: &mut File, active: &Path) -> io::Result<Head> {
    let mut head = recover_file(file)?;
    if head.seq == 0 && head.len == 0 {
        let segments = crate::files::segments(active)?;
        if let Some(last) = segments.iter().rev().find(|s| s.last_seq.is_some()) {
            let mut rotated = File::open(&last.path)?;
            let before = recover_file_readonly(&mut rotated)?;
            head.seq = before.seq;
            head.prev = before.prev;
        }
    }
    Ok(head)
}

/// The last record of a rotated file, which is complete by construction (rotation follows a write).
fn recover_file_readonly(file: &mut File) -> io::Result<Head> {
    let len = file.metadata()?.len();
    let tail = read_tail(file, len)?;
    last_record(&tail, len, None)
}

fn recover_file(file: &mut File) -> io::Result<Head> {
    let len = file.metadata()?.len();
    let tail = read_tail(file, len)?;
    let mut complete = &tail[..];
    let mut torn = None;
    if !tail.is_empty() && !tail.ends_with(b"\n") {
        let cut = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        torn = Some(tail.len() - cut);
        complete = &tail[..cut];
    }
    let new_len = len - torn.unwrap_or(0) as u64;
    if torn.is_some() {
        file.set_len(new_len)?;
        file.sync_data()?;
    }
    last_record(complete, new_len, torn)
}

/// The head from the bytes at the end of a file, which end with a complete line (or are empty).
fn last_record(complete: &[u8], new_len: u64, torn: Option<usize>) -> io::Result<Head> {
    let Some(body) = complete.strip_suffix(b"\n") else {
        return Ok(Head {
            seq: 0,
            prev: GENESIS.to_string(),
            len: new_len,
            torn,
        });
    };
    let last = body.iter().rposition(|&b| b == b'\n').map_or(body, |i| &body[i + 1..]);
    let event: Event = serde_json::from_slice(last).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("its last record is not a valid audit record ({e}); run `warden audit verify`"),
        )
    })?;
    Ok(Head {
        seq: event.seq,
        prev: event.hash,
        len: new_len,
        torn,
    })
}

/// The end of the file, back far enough to hold the whole last complete line: reads backwards until
/// two newlines are seen (the last line's own and the one before it), or the start of the file.
fn read_tail(file: &mut File, len: u64) -> io::Result<Vec<u8>> {
    const CHUNK: u64 = 64 * 1024;
    let mut tail: Vec<u8> = Vec::new();
    let mut newlines = 0;
    let mut pos = len;
    while pos > 0 && newlines < 2 {
        let start = pos.saturating_sub(CHUNK);
        let mut part = vec![0u8; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut part)?;
        newlines += part.iter().filter(|&&b| b == b'\n').count();
        part.extend_from_slice(&tail);
        tail = part;
        pos = start;
    }
    Ok(tail)
}

/// Where the record at `seq` is, looked for from the end of the active file backwards (a newest
/// checkpoint is close to the end): `Found`, `Missing` (the file holds records around it but not
/// it), or `Before` (every record of the file comes after it: it is in a rotated file).
pub(crate) enum Near {
    Found(Box<Event>),
    Missing,
    Before,
}

pub(crate) fn record_near_end(active: &Path, seq: u64) -> io::Result<Near> {
    const CHUNK: u64 = 64 * 1024;
    let mut file = File::open(active)?;
    let mut pos = file.metadata()?.len();
    // Bytes from `pos` up to the lines already looked at.
    let mut rest: Vec<u8> = Vec::new();
    loop {
        // The lines wholly inside `rest`, newest first.
        loop {
            let body = rest.strip_suffix(b"\n").unwrap_or(&rest);
            let line_start = match body.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if pos == 0 => 0,
                None => break,
            };
            if line_start == body.len() && pos == 0 && body.is_empty() {
                return Ok(Near::Before);
            }
            let event: Event = serde_json::from_slice(&body[line_start..]).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a record near the end is not a valid audit record ({e}); run `warden audit verify`"),
                )
            })?;
            if event.seq == seq {
                return Ok(Near::Found(Box::new(event)));
            }
            if event.seq < seq {
                return Ok(Near::Missing);
            }
            rest.truncate(line_start);
            if line_start == 0 {
                return Ok(Near::Before);
            }
        }
        let start = pos.saturating_sub(CHUNK);
        let mut part = vec![0u8; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut part)?;
        part.extend_from_slice(&rest);
        rest = part;
        pos = start;
    }
}

/// Blocks until this process holds the log's exclusive lock. The lock is advisory: it orders
/// Warden's own writers (the proxy and CLI commands), not other programs.
pub(crate) fn lock_exclusive(file: &File) -> io::Result<()> {
    retry_interrupted(|| file.lock())
}

/// Blocks until no writer holds the lock; readers use it to wait out a record in progress.
pub(crate) fn lock_shared(file: &File) -> io::Result<()> {
    retry_interrupted(|| file.lock_shared())
}

// flock(2) returns EINTR when a signal arrives while it waits.
fn retry_interrupted(mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
