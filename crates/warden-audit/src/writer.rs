//! The writer: one thread owns the file; callers talk to it through a channel and wait on a oneshot.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::event::{encode_line, format_ts, EventBody};
use crate::recover::{lock_exclusive, recover_head};
use crate::AuditError;

/// When a record counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// fsync after each record, before it is acknowledged.
    Always,
    /// One fsync for whatever was queued together (group commit), before any of it is acknowledged.
    #[default]
    Batch,
    /// No fsync: a crash can lose records of statements that ran.
    Off,
}

pub struct AuditLog;

/// A handle to the writer thread; cheap to clone. The thread stops when the last handle is dropped.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Request>,
    path: Arc<Path>,
    /// Bytes of a torn final line (a crash mid-write) cut when the log was opened.
    pub recovered_tail: Option<usize>,
    #[cfg(test)]
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

struct Request {
    body: EventBody,
    ack: oneshot::Sender<Result<u64, AuditError>>,
}

/// An enqueued record; resolves to its `seq` once it is written (and durable, per the mode).
pub struct Pending {
    rx: Option<oneshot::Receiver<Result<u64, AuditError>>>,
    path: Arc<Path>,
}

impl Future for Pending {
    type Output = Result<u64, AuditError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(rx) = this.rx.as_mut() else {
            return Poll::Ready(Err(stopped(&this.path)));
        };
        Pin::new(rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(stopped(&this.path))))
    }
}

/// The thread is gone (it panicked): nothing can be recorded any more.
fn stopped(path: &Path) -> AuditError {
    AuditError::Unavailable {
        path: path.to_path_buf(),
        reason: "the audit writer has stopped".into(),
    }
}

/// Most records one write and one fsync cover, so one batch cannot hold acks back for long.
const MAX_BATCH: usize = 4096;
/// The write buffer is reused; one very large batch should not pin its memory forever.
const BUF_INITIAL: usize = 64 * 1024;
const BUF_RETAINED_MAX: usize = 8 * 1024 * 1024;

impl AuditLog {
    /// Opens (or creates, 0600, in a 0700 directory) the log, cuts a torn tail, finds the chain head,
    /// and starts the writer thread.
    pub fn open(path: &Path, mode: FsyncMode) -> Result<AuditHandle, AuditError> {
        let open_err = |e: io::Error| AuditError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut file = create(path).map_err(open_err)?;
        // Another process may be appending right now: only under its lock is a tail without '\n'
        // known to be torn rather than in progress.
        lock_exclusive(&file).map_err(open_err)?;
        let head = recover_head(&mut file);
        let unlocked = file.unlock();
        let head = head.map_err(open_err)?;
        unlocked.map_err(open_err)?;

        let path: Arc<Path> = Arc::from(path);
        #[cfg(test)]
        let fail_writes = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = Writer {
            file,
            path: path.clone(),
            mode,
            seq: head.seq,
            prev: head.prev,
            len: head.len,
            failed: None,
            buf: Vec::with_capacity(BUF_INITIAL),
            #[cfg(test)]
            fail_writes: fail_writes.clone(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("warden-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(open_err)?;
        Ok(AuditHandle {
            tx,
            path,
            recovered_tail: head.torn,
            #[cfg(test)]
            fail_writes,
        })
    }
}

/// Opens the log for appending, creating it and its directory private to this user.
fn create(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    if !existed {
        // A new file's name is only durable once its directory is: otherwise a crash could lose the
        // whole log, fsynced records and all.
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

impl AuditHandle {
    /// Enqueues now, so records keep the order of the calls, and resolves when the record is written.
    /// For callers that must not wait but must keep order (a `query.result` awaited in the background).
    pub fn submit(&self, body: EventBody) -> Pending {
        let (ack, rx) = oneshot::channel();
        let rx = self.tx.send(Request { body, ack }).ok().map(|_| rx);
        Pending {
            rx,
            path: self.path.clone(),
        }
    }

    /// Resolves to the record's `seq` once it is written and, per the mode, durable. After any write
    /// or fsync failure this and every later call fail with [`AuditError::Unavailable`].
    pub async fn append(&self, body: EventBody) -> Result<u64, AuditError> {
        self.submit(body).await
    }

    /// For command-line tools. Panics inside a tokio runtime (use [`AuditHandle::append`] there).
    pub fn append_blocking(&self, body: EventBody) -> Result<u64, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx.send(Request { body, ack }).map_err(|_| stopped(&self.path))?;
        rx.blocking_recv().unwrap_or_else(|_| Err(stopped(&self.path)))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every later write fail as a full disk would, through the same error path.
    #[cfg(test)]
    pub(crate) fn fail_writes(&self) {
        self.fail_writes.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

struct Writer {
    file: File,
    path: Arc<Path>,
    mode: FsyncMode,
    /// The last record's seq and hash: where the next record links.
    seq: u64,
    prev: String,
    /// The file's length after our last write; any other length means another writer appended.
    len: u64,
    /// Once a write or fsync fails, what reached the disk is unknown: every later record is refused.
    failed: Option<String>,
    buf: Vec<u8>,
    #[cfg(test)]
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut batch = VecDeque::new();
        while let Ok(first) = rx.recv() {
            batch.push_back(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push_back(r),
                    Err(_) => break,
                }
            }
            self.write_batch(&mut batch);
            if self.buf.capacity() > BUF_RETAINED_MAX {
                self.buf = Vec::with_capacity(BUF_INITIAL);
            }
        }
    }

    /// Writes and acknowledges the batch; on failure, refuses what was not made durable.
    fn write_batch(&mut self, batch: &mut VecDeque<Request>) {
        if self.failed.is_none() {
            if let Err(e) = self.commit(batch) {
                self.failed = Some(e.to_string());
            }
        }
        // `commit` removes what it acknowledged; anything left was not (durably) written.
        if let Some(reason) = &self.failed {
            for r in batch.drain(..) {
                let _ = r.ack.send(Err(AuditError::Unavailable {
                    path: self.path.to_path_buf(),
                    reason: reason.clone(),
                }));
            }
        }
    }

    fn commit(&mut self, batch: &mut VecDeque<Request>) -> io::Result<()> {
        lock_exclusive(&self.file)?;
        let written = self.commit_locked(batch);
        let unlocked = self.file.unlock();
        written.and(unlocked)
    }

    fn commit_locked(&mut self, batch: &mut VecDeque<Request>) -> io::Result<()> {
        self.follow_other_writers()?;
        if self.mode == FsyncMode::Always {
            // Each record is acknowledged as soon as its own fsync returns.
            while let Some(r) = batch.pop_front() {
                self.buf.clear();
                let seq = self.encode(&r.body);
                if let Err(e) = self.flush() {
                    batch.push_front(r);
                    return Err(e);
                }
                let _ = r.ack.send(Ok(seq));
            }
            return Ok(());
        }
        self.buf.clear();
        let first = self.seq + 1;
        for r in batch.iter() {
            self.encode(&r.body);
        }
        self.flush()?;
        for (seq, r) in (first..).zip(batch.drain(..)) {
            let _ = r.ack.send(Ok(seq));
        }
        Ok(())
    }

    /// A CLI command beside the proxy may have appended since our last write: continue after its
    /// last record instead of forking the chain.
    fn follow_other_writers(&mut self) -> io::Result<()> {
        if self.file.metadata()?.len() != self.len {
            let head = recover_head(&mut self.file)?;
            self.seq = head.seq;
            self.prev = head.prev;
            self.len = head.len;
        }
        Ok(())
    }

    /// Appends one record to `buf`; returns its seq.
    fn encode(&mut self, body: &EventBody) -> u64 {
        self.seq += 1;
        let ts = format_ts(OffsetDateTime::now_utc());
        self.prev = encode_line(&ts, self.seq, body, &self.prev, &mut self.buf);
        self.seq
    }

    fn flush(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.file.write_all(&self.buf)?;
        self.len += self.buf.len() as u64;
        if self.mode != FsyncMode::Off {
            self.file.sync_data()?;
        }
        Ok(())
    }
}
