use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::event::{encode_line, format_ts, EventBody};
use crate::{AuditError, GENESIS};

/// When a record counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// fsync after each record.
    Always,
    /// fsync once per batch of whatever was queued together (group commit).
    #[default]
    Batch,
    /// No fsync: a crash can lose records of statements that ran. Unsafe.
    Off,
}

pub struct AuditLog;

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Request>,
    path: PathBuf,
    /// Bytes of a torn final line removed when the log was opened (a crash mid-write).
    pub recovered_tail: usize,
}

struct Request {
    body: EventBody,
    ack: oneshot::Sender<Result<u64, AuditError>>,
}

/// An enqueued record; resolves to its `seq` once it is written (and durable, per the mode).
pub struct Pending {
    rx: Option<oneshot::Receiver<Result<u64, AuditError>>>,
    path: PathBuf,
}

impl Future for Pending {
    type Output = Result<u64, AuditError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let path = self.path.clone();
        match self.rx.as_mut() {
            None => Poll::Ready(Err(gone(&path))),
            Some(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(gone(&path)))),
        }
    }
}

fn gone(path: &Path) -> AuditError {
    AuditError::Unavailable {
        path: path.to_path_buf(),
        reason: "the audit writer has stopped".into(),
    }
}

/// Most records one write and one fsync cover.
const MAX_BATCH: usize = 4096;

impl AuditLog {
    /// Opens (or creates, 0600) the log, recovers the chain head, and starts the writer thread.
    pub fn open(path: &Path, mode: FsyncMode) -> Result<AuditHandle, AuditError> {
        let open_err = |reason: String| AuditError::Open {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| open_err(e.to_string()))?;
        }
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| open_err(e.to_string()))?
        };
        let (recovered_tail, last) = recover(&mut file).map_err(|e| open_err(e.to_string()))?;
        let (seq, prev) = match last {
            None => (0, GENESIS.to_string()),
            Some(line) => {
                let e: crate::Event = serde_json::from_str(&line)
                    .map_err(|e| open_err(format!("last record is not valid: {e}")))?;
                (e.seq, e.hash)
            }
        };
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer {
            file,
            path: path.to_path_buf(),
            mode,
            seq,
            prev,
            failed: None,
            buf: Vec::with_capacity(64 * 1024),
        };
        std::thread::Builder::new()
            .name("warden-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| open_err(e.to_string()))?;
        Ok(AuditHandle {
            tx,
            path: path.to_path_buf(),
            recovered_tail,
        })
    }
}

impl AuditHandle {
    /// Enqueues now (so records keep the order of the calls) and resolves when written.
    pub fn submit(&self, body: EventBody) -> Pending {
        let (ack, rx) = oneshot::channel();
        let rx = self.tx.send(Request { body, ack }).ok().map(|_| rx);
        Pending {
            rx,
            path: self.path.clone(),
        }
    }

    pub async fn append(&self, body: EventBody) -> Result<u64, AuditError> {
        self.submit(body).await
    }

    /// For command-line tools outside a tokio runtime.
    pub fn append_blocking(&self, body: EventBody) -> Result<u64, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Request { body, ack })
            .map_err(|_| gone(&self.path))?;
        rx.blocking_recv().unwrap_or_else(|_| Err(gone(&self.path)))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    pub(crate) fn test_fail_writes(&self) {
        let (ack, _rx) = oneshot::channel();
        let _ = self.tx.send(Request {
            body: EventBody {
                event: FAIL_FOR_TEST.into(),
                ..Default::default()
            },
            ack,
        });
    }
}

#[cfg(test)]
const FAIL_FOR_TEST: &str = "\u{0}test.fail";

struct Writer {
    file: File,
    path: PathBuf,
    mode: FsyncMode,
    seq: u64,
    prev: String,
    /// Once a write or fsync fails, the file's state is unknown: every later record is refused.
    failed: Option<String>,
    buf: Vec<u8>,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.write_batch(batch);
        }
    }

    fn write_batch(&mut self, batch: Vec<Request>) {
        #[cfg(test)]
        if batch.iter().any(|r| r.body.event == FAIL_FOR_TEST) {
            self.failed = Some("injected test failure".into());
        }
        if let Some(reason) = &self.failed {
            for r in batch {
                let _ = r.ack.send(Err(AuditError::Unavailable {
                    path: self.path.clone(),
                    reason: reason.clone(),
                }));
            }
            return;
        }
        let mut acks = Vec::with_capacity(batch.len());
        let result = if self.mode == FsyncMode::Always {
            batch.into_iter().try_for_each(|r| {
                self.buf.clear();
                let seq = self.encode(&r.body);
                acks.push((r.ack, seq));
                self.flush()
            })
        } else {
            self.buf.clear();
            for r in batch {
                let seq = self.encode(&r.body);
                acks.push((r.ack, seq));
            }
            self.flush()
        };
        if let Err(e) = result {
            self.failed = Some(e.to_string());
            for (ack, _) in acks {
                let _ = ack.send(Err(AuditError::Unavailable {
                    path: self.path.clone(),
                    reason: e.to_string(),
                }));
            }
            return;
        }
        for (ack, seq) in acks {
            let _ = ack.send(Ok(seq));
        }
    }

    fn encode(&mut self, body: &EventBody) -> u64 {
        self.seq += 1;
        let ts = format_ts(OffsetDateTime::now_utc());
        self.prev = encode_line(&ts, self.seq, body, &self.prev, &mut self.buf);
        self.seq
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buf)?;
        if self.mode != FsyncMode::Off {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// Finds the last complete line; truncates a torn tail (bytes after the last newline).
fn recover(file: &mut File) -> std::io::Result<(usize, Option<String>)> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((0, None));
    }
    // Read backwards in chunks until two newlines (or the start) bound the last complete line.
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    let chunk = 64 * 1024u64;
    loop {
        let start = pos.saturating_sub(chunk);
        let mut part = vec![0u8; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut part)?;
        part.extend_from_slice(&tail);
        tail = part;
        pos = start;
        // Two newlines bound the last complete line (a torn tail has none of its own).
        if pos == 0 || tail.iter().filter(|&&b| b == b'\n').count() >= 2 {
            break;
        }
    }
    let (mut recovered, mut complete) = (0usize, &tail[..]);
    if !tail.ends_with(b"\n") {
        let cut = tail
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        recovered = tail.len() - cut;
        complete = &tail[..cut];
        file.set_len(len - recovered as u64)?;
        file.sync_data()?;
    }
    let body = complete.strip_suffix(b"\n").unwrap_or(complete);
    let last = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None => body,
    };
    if last.is_empty() {
        return Ok((recovered, None));
    }
    Ok((recovered, Some(String::from_utf8_lossy(last).into_owned())))
}
