//! The writer: one thread owns the file; callers talk to it through a channel and wait on a oneshot.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

use crate::checkpoint::{self, Signer};
use crate::event::{encode_line, format_ts, write_ts, EventBody};
use crate::files;
use crate::recover::{lock_exclusive, record_near_end, recover_head, Near};
use crate::redact::Redactor;
use crate::AuditError;

/// How a log is written. `Default` is what `warden.toml` defaults to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    pub fsync: FsyncMode,
    /// Rotate the active file once it holds at least this many bytes; `None` never rotates.
    pub rotate_bytes: Option<u64>,
    /// While records arrive, sign the chain head at most this often (and always on the first write
    /// of a process, when the log is opened, before rotating and when the last handle is dropped).
    /// `None` writes no checkpoints.
    pub checkpoint_every: Option<Duration>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            fsync: FsyncMode::Batch,
            rotate_bytes: Some(DEFAULT_ROTATE_BYTES),
            checkpoint_every: Some(DEFAULT_CHECKPOINT_EVERY),
        }
    }
}

pub const DEFAULT_ROTATE_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

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
    tx: mpsc::Sender<Msg>,
    path: Arc<Path>,
    /// Patterns cut out of every record's free text before it is enqueued (none by default).
    redactor: Arc<Redactor>,
    /// The seq of the last record this process wrote: shippers wake on it instead of polling.
    written: watch::Receiver<u64>,
    /// Bytes of a torn final line (a crash mid-write) cut when the log was opened.
    pub recovered_tail: Option<usize>,
    /// The seq of the last record in the log when it was opened: what earlier runs wrote.
    pub head_at_open: u64,
    #[cfg(test)]
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

// Records are nearly every message: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(Request),
    /// Sign the head now (a clean shutdown), answered when the checkpoint is on disk.
    Checkpoint(oneshot::Sender<Result<(), AuditError>>),
}

struct Request {
    body: EventBody,
    /// None for a record nobody waits on ([`AuditHandle::record`]).
    ack: Option<Ack>,
}

impl Request {
    fn answer(self, result: Result<u64, AuditError>) {
        match self.ack {
            Some(Ack::Once(ack)) => {
                let _ = ack.send(result);
            }
            Some(Ack::Reused(mut ack)) => ack.answer(Answer::Done(result)),
            None => {}
        }
    }
}

/// Where a record's answer goes.
enum Ack {
    Once(oneshot::Sender<Result<u64, AuditError>>),
    /// A caller's [`Acks`], for its record number `ticket`.
    Reused(Ticket),
}

/// Where the writer answers one caller's records, one at a time, reused for each: a session waits on
/// one record before it sends the next, and so needs no channel made per record
/// ([`AuditHandle::append_to`]).
#[derive(Default)]
pub struct Acks {
    state: Mutex<AckState>,
}

#[derive(Default)]
struct AckState {
    /// The ticket of the record awaited now: the answer to an earlier one (whose wait was given up)
    /// is dropped.
    awaited: u64,
    answer: Option<Answer>,
    waker: Option<Waker>,
}

enum Answer {
    Done(Result<u64, AuditError>),
    /// The writer dropped the record unanswered (it stopped).
    Stopped,
}

struct Ticket {
    acks: Arc<Acks>,
    ticket: u64,
    answered: bool,
}

impl Ticket {
    fn answer(&mut self, answer: Answer) {
        self.answered = true;
        let waker = {
            let mut state = self.acks.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.awaited != self.ticket {
                return;
            }
            state.answer = Some(answer);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.answered {
            self.answer(Answer::Stopped);
        }
    }
}

/// A record enqueued with [`AuditHandle::append_to`]; resolves to its `seq` once it is written (and
/// durable, per the mode).
struct Answered<'a> {
    acks: &'a Acks,
    ticket: u64,
    path: &'a Path,
}

impl Future for Answered<'_> {
    type Output = Result<u64, AuditError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.acks.state.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert_eq!(state.awaited, self.ticket, "one record at a time per Acks");
        match state.answer.take() {
            Some(Answer::Done(result)) => Poll::Ready(result),
            Some(Answer::Stopped) => Poll::Ready(Err(stopped(self.path))),
            None => {
                if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
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

/// With `batch`, how long records nobody waits on (query.result) may stay written but not fsynced.
pub(crate) const DETACHED_SYNC_WITHIN: Duration = Duration::from_millis(5);

/// Most records one write and one fsync cover, so one batch cannot hold acks back for long.
const MAX_BATCH: usize = 4096;
/// The write buffer is reused; one very large batch should not pin its memory forever.
const BUF_INITIAL: usize = 64 * 1024;
const BUF_RETAINED_MAX: usize = 8 * 1024 * 1024;

impl AuditLog {
    /// [`AuditLog::open_with`] with the default options and this fsync mode.
    pub fn open(path: &Path, mode: FsyncMode) -> Result<AuditHandle, AuditError> {
        AuditLog::open_with(
            path,
            AuditOptions {
                fsync: mode,
                ..AuditOptions::default()
            },
        )
    }

    /// Opens (or creates, 0600, in a 0700 directory) the log, cuts a torn tail, finds the chain head
    /// (in the last rotated file if the active one is empty), signs it, and starts the writer thread.
    pub fn open_with(path: &Path, opts: AuditOptions) -> Result<AuditHandle, AuditError> {
        AuditLog::open_inner(path, opts, false)
    }

    /// As [`AuditLog::open_with`], for `warden audit sign`: a log with records but no signed
    /// checkpoint (one written before checkpoints existed, or a crash before the first checkpoint of a
    /// new log) is opened and its head signed. Run only after the chain itself was verified.
    pub fn open_signing_unsigned_head(path: &Path, opts: AuditOptions) -> Result<AuditHandle, AuditError> {
        AuditLog::open_inner(path, opts, true)
    }

    fn open_inner(path: &Path, opts: AuditOptions, accept_unsigned: bool) -> Result<AuditHandle, AuditError> {
        let open_err = |e: io::Error| AuditError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let file = create(path).map_err(open_err)?;
        let lock = files::open_lock(path).map_err(open_err)?;
        let signer = match opts.checkpoint_every {
            Some(_) => {
                let (key, public) = files::key_paths(path);
                Some(Signer::load_or_create(&key, &public).map_err(open_err)?)
            }
            None => None,
        };
        let path: Arc<Path> = Arc::from(path);
        let (written_tx, written) = watch::channel(0);
        #[cfg(test)]
        let fail_writes = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ino = {
            use std::os::unix::fs::MetadataExt;
            file.metadata().map_err(open_err)?.ino()
        };
        let mut writer = Writer {
            file,
            ino,
            lock,
            path: path.clone(),
            opts,
            seq: 0,
            prev: crate::GENESIS.to_string(),
            len: u64::MAX,
            failed: None,
            buf: Vec::with_capacity(BUF_INITIAL),
            ts: String::new(),
            signer,
            signed_seq: 0,
            last_checkpoint: None,
            unsynced_since: None,
            accept_unsigned,
            written: written_tx,
            #[cfg(test)]
            fail_writes: fail_writes.clone(),
        };
        // Another process may be appending right now: only under the lock is a tail without '\n'
        // known to be torn rather than in progress.
        lock_exclusive(&writer.lock).map_err(open_err)?;
        let opened = writer.follow_other_writers().and_then(|torn| {
            if writer.seq > 0 {
                writer.checkpoint()?;
            }
            Ok(torn)
        });
        let unlocked = writer.lock.unlock();
        let torn = opened.map_err(open_err)?;
        unlocked.map_err(open_err)?;
        let head_at_open = writer.seq;

        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("warden-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(open_err)?;
        Ok(AuditHandle {
            tx,
            path,
            redactor: Arc::default(),
            written,
            recovered_tail: torn,
            head_at_open,
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
    pub fn submit(&self, mut body: EventBody) -> Pending {
        self.redactor.apply(&mut body);
        let (ack, rx) = oneshot::channel();
        let rx = self
            .tx
            .send(Msg::Record(Request {
                body,
                ack: Some(Ack::Once(ack)),
            }))
            .ok()
            .map(|_| rx);
        Pending {
            rx,
            path: self.path.clone(),
        }
    }

    /// Enqueues a record nobody waits on (a `query.result`: the statement already ran). If it cannot
    /// be written, the writer says so on stderr once and refuses every later record, so the next
    /// statement of any session fails closed.
    pub fn record(&self, mut body: EventBody) {
        self.redactor.apply(&mut body);
        let _ = self.tx.send(Msg::Record(Request { body, ack: None }));
    }

    /// Resolves to the record's `seq` once it is written and, per the mode, durable. After any write
    /// or fsync failure this and every later call fail with [`AuditError::Unavailable`].
    pub async fn append(&self, body: EventBody) -> Result<u64, AuditError> {
        self.submit(body).await
    }

    /// As [`AuditHandle::append`], answered through `acks` instead of a channel made for the record:
    /// for a caller that appends one record at a time (a session, per statement). Giving up the wait
    /// (dropping the future) is safe: that record's answer is then dropped.
    pub async fn append_to(&self, mut body: EventBody, acks: &Arc<Acks>) -> Result<u64, AuditError> {
        self.redactor.apply(&mut body);
        let ticket = {
            let mut state = acks.state.lock().unwrap_or_else(|e| e.into_inner());
            state.awaited += 1;
            state.answer = None;
            // A wait given up left its task's waker: that task is not to be woken for this record.
            state.waker = None;
            state.awaited
        };
        let ack = Ticket {
            acks: acks.clone(),
            ticket,
            answered: false,
        };
        // If the writer is gone, the returned request drops its ticket, which answers "stopped".
        let _ = self.tx.send(Msg::Record(Request {
            body,
            ack: Some(Ack::Reused(ack)),
        }));
        Answered {
            acks,
            ticket,
            path: &self.path,
        }
        .await
    }

    /// For command-line tools: the record is on disk and signed when this returns. Panics inside a
    /// tokio runtime (use [`AuditHandle::append`] there).
    pub fn append_blocking(&self, mut body: EventBody) -> Result<u64, AuditError> {
        self.redactor.apply(&mut body);
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record(Request {
                body,
                ack: Some(Ack::Once(ack)),
            }))
            .map_err(|_| stopped(&self.path))?;
        let seq = rx.blocking_recv().unwrap_or_else(|_| Err(stopped(&self.path)))?;
        // A command exits right after: its record is signed now. A running Warden signs only what it
        // wrote itself, so a record left unsigned here could be cut from the end unnoticed, and no
        // sink would ship it (they ship only what a checkpoint covers). A checkpoint that cannot be
        // written is said on stderr; the record stands.
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Msg::Checkpoint(ack)).is_ok() {
            let _ = rx.blocking_recv();
        }
        Ok(seq)
    }

    /// Cuts `redactor`'s matches out of every record this handle, and clones made from it afterwards,
    /// enqueue.
    pub fn with_redactor(mut self, redactor: Arc<Redactor>) -> Self {
        self.redactor = redactor;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes to the seq of the last record this process wrote (0 before the first). Records that
    /// other processes append are not announced: followers also poll.
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }

    /// Signs the chain head now, if anything is unsigned; for a clean shutdown, so the last records
    /// are covered without waiting for the interval.
    pub async fn checkpoint_now(&self) -> Result<(), AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx.send(Msg::Checkpoint(ack)).map_err(|_| stopped(&self.path))?;
        rx.await.unwrap_or_else(|_| Err(stopped(&self.path)))
    }

    /// Makes every later write fail as a full disk would, through the same error path.
    #[cfg(test)]
    pub(crate) fn fail_writes(&self) {
        self.fail_writes.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

struct Writer {
    /// The active file, as this writer last opened it (rotation by another process replaces it).
    file: File,
    /// `file`'s inode: another at the path means another process rotated it.
    ino: u64,
    /// The writers' lock: held while appending, checkpointing or rotating.
    lock: File,
    path: Arc<Path>,
    opts: AuditOptions,
    /// The last record's seq and hash: where the next record links.
    seq: u64,
    prev: String,
    /// The file's length after our last write; any other length means another writer appended.
    len: u64,
    /// Once a write or fsync fails, what reached the disk is unknown: every later record is refused.
    failed: Option<String>,
    buf: Vec<u8>,
    /// The timestamp of the record being encoded (reused, like `buf`).
    ts: String,
    signer: Option<Signer>,
    /// A head with no checkpoint at all is accepted (and signed): `warden audit sign` only.
    accept_unsigned: bool,
    /// The newest seq this writer has signed.
    signed_seq: u64,
    last_checkpoint: Option<Instant>,
    /// With `batch`: since when records nobody waits on have been written but not fsynced.
    unsynced_since: Option<Instant>,
    written: watch::Sender<u64>,
    #[cfg(test)]
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch = VecDeque::new();
        loop {
            // Records written since the last checkpoint are signed once the interval is up, and
            // records nobody waits on are fsynced within DETACHED_SYNC_WITHIN, even if nothing else
            // arrives.
            let checkpoint_due = match (self.opts.checkpoint_every, self.last_checkpoint) {
                (Some(every), Some(at)) if self.seq > self.signed_seq => Some(at + every),
                _ => None,
            };
            let sync_due = self.unsynced_since.map(|at| at + DETACHED_SYNC_WITHIN);
            // A failed log has nothing more to sync or sign: no timer (it would spin).
            let due = match self.failed {
                Some(_) => None,
                None => checkpoint_due.into_iter().chain(sync_due).min(),
            };
            let first = match due {
                Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Ok(r) => r,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.sync_pending();
                        if checkpoint_due.is_some_and(|d| d <= Instant::now()) {
                            let _ = self.checkpoint_locked();
                        }
                        self.announce();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            let mut asked = Vec::new();
            match first {
                Msg::Record(r) => batch.push_back(r),
                Msg::Checkpoint(ack) => asked.push(ack),
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Record(r)) => batch.push_back(r),
                    Ok(Msg::Checkpoint(ack)) => asked.push(ack),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.write_batch(&mut batch);
            }
            if !asked.is_empty() {
                let result = if self.seq > self.signed_seq || self.seq == 0 {
                    self.checkpoint_locked()
                } else {
                    Ok(())
                };
                for ack in asked {
                    let _ = ack.send(result.clone());
                }
            }
            // Records nobody waits on, arriving without pause, are still fsynced in time.
            if self
                .unsynced_since
                .is_some_and(|at| at.elapsed() >= DETACHED_SYNC_WITHIN)
            {
                self.sync_pending();
            }
            self.announce();
            if self.buf.capacity() > BUF_RETAINED_MAX {
                self.buf = Vec::with_capacity(BUF_INITIAL);
            }
        }
        // The last handle is gone: make durable and sign what this writer wrote.
        self.sync_pending();
        if self.seq > self.signed_seq {
            let _ = self.checkpoint_locked();
        }
        self.announce();
    }

    /// Tells followers (the sinks) how far the log is durable: only what is fsynced per the mode.
    fn announce(&self) {
        if self.failed.is_none() && self.unsynced_since.is_none() {
            self.written
                .send_if_modified(|w| std::mem::replace(w, self.seq) != self.seq);
        }
    }

    /// Fsyncs records nobody waited on (with `batch`). A failure fails the log as a failed write does.
    fn sync_pending(&mut self) {
        if self.unsynced_since.is_some() && self.failed.is_none() {
            let _ = self.sync_log();
        }
    }

    /// Fsyncs the active file (per the mode). A failure fails the log for good: what reached the disk
    /// is unknown, and a second fsync of the same descriptor could report success for lost pages.
    fn sync_log(&mut self) -> io::Result<()> {
        if self.opts.fsync == FsyncMode::Off {
            return Ok(());
        }
        if let Some(reason) = &self.failed {
            return Err(io::Error::other(reason.clone()));
        }
        #[cfg(test)]
        let synced = if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(5)) // EIO
        } else {
            self.file.sync_data()
        };
        #[cfg(not(test))]
        let synced = self.file.sync_data();
        match synced {
            Ok(()) => {
                self.unsynced_since = None;
                Ok(())
            }
            Err(e) => {
                eprintln!(
                    "warden-audit: cannot fsync {}: {e}; every later record is refused",
                    self.path.display()
                );
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Writes and acknowledges the batch; on failure, refuses what was not made durable.
    fn write_batch(&mut self, batch: &mut VecDeque<Request>) {
        if self.failed.is_none() {
            if let Err(e) = self.commit(batch) {
                eprintln!(
                    "warden-audit: cannot write {}: {e}; every later record is refused",
                    self.path.display()
                );
                self.failed = Some(e.to_string());
            }
        }
        // `commit` removes what it acknowledged; anything left was not (durably) written.
        if let Some(reason) = &self.failed {
            for r in batch.drain(..) {
                r.answer(Err(AuditError::Unavailable {
                    path: self.path.to_path_buf(),
                    reason: reason.clone(),
                }));
            }
        }
    }

    fn commit(&mut self, batch: &mut VecDeque<Request>) -> io::Result<()> {
        lock_exclusive(&self.lock)?;
        let written = self.commit_locked(batch);
        let unlocked = self.lock.unlock();
        written.and(unlocked)
    }

    fn commit_locked(&mut self, batch: &mut VecDeque<Request>) -> io::Result<()> {
        self.follow_other_writers()?;
        // A checkpoint that is due is written before the batch's last acknowledgement, so whoever
        // waits on a record also finds it signed when the interval says it should be.
        if self.opts.fsync == FsyncMode::Always {
            // Each record is acknowledged as soon as its own fsync returns.
            while let Some(r) = batch.pop_front() {
                self.buf.clear();
                let seq = self.encode(&r.body);
                if let Err(e) = self.flush(true) {
                    batch.push_front(r);
                    return Err(e);
                }
                if batch.is_empty() {
                    if let Err(e) = self.after_write() {
                        batch.push_front(r);
                        return Err(e);
                    }
                }
                r.answer(Ok(seq));
            }
        } else {
            self.buf.clear();
            let first = self.seq + 1;
            for r in batch.iter() {
                self.encode(&r.body);
            }
            // A batch of records nobody waits on (query.result) is fsynced with the next batch
            // someone waits on, or within DETACHED_SYNC_WITHIN: it does not hold up the next statement.
            self.flush(batch.iter().any(|r| r.ack.is_some()))?;
            self.after_write()?;
            for (seq, r) in (first..).zip(batch.drain(..)) {
                r.answer(Ok(seq));
            }
        }
        Ok(())
    }

    /// After a write: the checkpoint if one is due, and rotation if the file is full. A failure here
    /// refuses the batch's records (they are on disk, but the caller will not act on them).
    fn after_write(&mut self) -> io::Result<()> {
        let rotate = self.opts.rotate_bytes.is_some_and(|max| self.len >= max);
        let due = match (self.opts.checkpoint_every, self.last_checkpoint) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(every), Some(at)) => at.elapsed() >= every,
        };
        if rotate || due {
            self.checkpoint()?;
        }
        if rotate {
            self.rotate()?;
        }
        Ok(())
    }

    /// Another process (a CLI command beside the proxy) may have appended, or rotated the active
    /// file, since our last write: continue after the last record on disk instead of forking the
    /// chain. Returns the bytes of a torn tail that were cut.
    fn follow_other_writers(&mut self) -> io::Result<Option<usize>> {
        use std::os::unix::fs::MetadataExt;
        // One stat per batch: the file at the path, and its length.
        let on_disk = match std::fs::metadata(&*self.path) {
            Ok(m) => Some((m.ino(), m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let changed = match on_disk {
            Some((ino, len)) if ino == self.ino => len != self.len,
            _ => {
                // Our unsynced records are in the file another process rotated away.
                if self.unsynced_since.is_some() {
                    self.sync_log()?;
                }
                self.file = create(&self.path)?;
                self.ino = self.file.metadata()?.ino();
                true
            }
        };
        if changed {
            let head = recover_head(&mut self.file, &self.path)?;
            self.check_against_checkpoints(head.seq, &head.prev)?;
            self.seq = head.seq;
            self.prev = head.prev;
            self.len = head.len;
            return Ok(head.torn);
        }
        Ok(None)
    }

    /// Before continuing a chain that changed under us (at open, or after another writer), the head
    /// must not be behind or different from what was signed: otherwise signing it would launder a cut
    /// or rewritten end. Such a log is refused (fail closed) until someone looks at it.
    fn check_against_checkpoints(&self, seq: u64, hash: &str) -> io::Result<()> {
        if self.signer.is_none() {
            return Ok(());
        }
        let path = files::checkpoints_path(&self.path);
        let refuse = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{why}; run `warden audit verify` and keep the log as evidence"),
            )
        };
        match checkpoint::last_checkpoint(&path)? {
            Some(c) if c.seq > seq => Err(refuse(format!(
                "the log ends at seq {seq}, but seq {} was signed at {}: records were removed from the end",
                c.seq, c.ts
            ))),
            Some(c) if c.seq == seq && c.hash != hash => Err(refuse(format!(
                "the last record (seq {seq}) differs from the one signed at {}: the log was rewritten",
                c.ts
            ))),
            // Records after the signed one: the signed one must still be there as signed, or a tail
            // rewritten from before it (and extended) would be signed over.
            Some(c) if c.seq < seq && c.seq > 0 => {
                let hash = match record_near_end(&self.path, c.seq)? {
                    Near::Found(e) => Some(e.hash),
                    Near::Missing => None,
                    // In a rotated file (the active one was rotated since): read forward to it.
                    Near::Before => match crate::read_after(&self.path, c.seq - 1)
                        .map_err(|e| io::Error::other(e.to_string()))?
                        .next()
                    {
                        Some(Ok(r)) if r.event.seq == c.seq => Some(r.event.hash),
                        Some(Err(e)) => {
                            return Err(refuse(format!(
                                "the record signed at seq {} ({}) cannot be read: {e}",
                                c.seq, c.ts
                            )))
                        }
                        _ => None,
                    },
                };
                match hash {
                    Some(h) if h == c.hash => Ok(()),
                    Some(_) => Err(refuse(format!(
                        "the record at seq {} differs from the one signed at {}: the log was rewritten",
                        c.seq, c.ts
                    ))),
                    None => Err(refuse(format!(
                        "the record signed at seq {} ({}) is not in the log",
                        c.seq, c.ts
                    ))),
                }
            }
            None if seq > 0 && !self.accept_unsigned => Err(refuse(format!(
                "the log has {seq} records but {} holds no signed checkpoint, so its end cannot be vouched for (if `warden audit verify --chain-only` passes, `warden audit sign` signs its head)",
                path.display()
            ))),
            _ => Ok(()),
        }
    }

    /// Signs the head under the lock (for the timer and the last handle going away).
    fn checkpoint_locked(&mut self) -> Result<(), AuditError> {
        if let Some(reason) = &self.failed {
            return Err(AuditError::Unavailable {
                path: self.path.to_path_buf(),
                reason: reason.clone(),
            });
        }
        let done = lock_exclusive(&self.lock).and_then(|_| {
            let signed = self.follow_other_writers().and_then(|_| self.checkpoint());
            let unlocked = self.lock.unlock();
            signed.and(unlocked)
        });
        done.map_err(|e| {
            // Not a lost record, but a weaker anchor: said loudly, and the next interval retries.
            eprintln!(
                "warden-audit: cannot write a checkpoint of {}: {e}",
                self.path.display()
            );
            self.last_checkpoint = Some(Instant::now());
            AuditError::Unavailable {
                path: self.path.to_path_buf(),
                reason: format!("cannot write a checkpoint: {e}"),
            }
        })
    }

    /// Appends a signed checkpoint of the current head (the caller holds the lock).
    fn checkpoint(&mut self) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // Only a durable head is signed: an OS crash must not leave a log shorter than its checkpoint.
        // Always, not only for what this process left unsynced: another process (the proxy) may have
        // written records nobody waited on yet, and this one is about to sign them.
        self.sync_log()?;
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        self.last_checkpoint = Some(Instant::now());
        if self.seq == 0 {
            return Ok(());
        }
        let c = signer.sign(self.seq, &self.prev, &format_ts(OffsetDateTime::now_utc()));
        let path = files::checkpoints_path(&self.path);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        checkpoint::cut_torn_tail(&mut file)?;
        checkpoint::append(&mut file, &c)?;
        if self.opts.fsync != FsyncMode::Off {
            file.sync_data()?;
            if !existed {
                files::sync_dir(&path)?;
            }
        }
        self.signed_seq = self.seq;
        Ok(())
    }

    /// Renames the full active file after its last seq and starts an empty one (under the lock).
    fn rotate(&mut self) -> io::Result<()> {
        let rotated = files::rotated_path(&self.path, self.seq);
        std::fs::rename(&*self.path, &rotated)?;
        // `create` syncs the directory, so the rename and the new file are durable together.
        self.file = create(&self.path)?;
        self.ino = {
            use std::os::unix::fs::MetadataExt;
            self.file.metadata()?.ino()
        };
        self.len = 0;
        Ok(())
    }

    /// Appends one record to `buf`; returns its seq.
    fn encode(&mut self, body: &EventBody) -> u64 {
        self.seq += 1;
        self.ts.clear();
        write_ts(OffsetDateTime::now_utc(), &mut self.ts);
        encode_line(&self.ts, self.seq, body, &mut self.prev, &mut self.buf);
        self.seq
    }

    /// Writes `buf`; fsyncs it (and anything written before) when `sync`, per the mode.
    fn flush(&mut self, sync: bool) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.file.write_all(&self.buf)?;
        self.len += self.buf.len() as u64;
        if self.opts.fsync != FsyncMode::Off {
            if sync {
                self.file.sync_data()?;
                self.unsynced_since = None;
            } else {
                self.unsynced_since.get_or_insert_with(Instant::now);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ticket for the next record, as [`AuditHandle::append_to`] takes one.
    fn next_ticket(acks: &Arc<Acks>) -> Ticket {
        let mut state = acks.state.lock().unwrap();
        state.awaited += 1;
        state.answer = None;
        Ticket {
            acks: acks.clone(),
            ticket: state.awaited,
            answered: false,
        }
    }

    #[test]
    fn the_answer_to_a_record_no_longer_awaited_is_dropped() {
        let acks = Arc::new(Acks::default());
        let mut abandoned = next_ticket(&acks);
        let mut awaited = next_ticket(&acks);
        abandoned.answer(Answer::Done(Ok(51)));
        assert!(
            acks.state.lock().unwrap().answer.is_none(),
            "an abandoned record's answer was kept"
        );
        awaited.answer(Answer::Done(Ok(52)));
        assert!(matches!(acks.state.lock().unwrap().answer, Some(Answer::Done(Ok(52)))));
    }

    #[tokio::test]
    async fn a_record_dropped_unanswered_is_answered_stopped() {
        let acks = Arc::new(Acks::default());
        let ticket = next_ticket(&acks);
        let waiting = Answered {
            acks: &acks,
            ticket: ticket.ticket,
            path: Path::new("/x/audit.jsonl"),
        };
        // As when the writer thread is gone: the request, and its ticket, are dropped.
        drop(ticket);
        let err = waiting.await.unwrap_err();
        assert!(matches!(err, AuditError::Unavailable { .. }), "{err}");
    }
}
