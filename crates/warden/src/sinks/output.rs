//! Where a sink's batches go. One enum rather than a trait object: the four transports are all
//! there is, and each keeps its own connection state between batches.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use warden_audit::StoredRecord;
use warden_policy::SinkKind;

use super::syslog::Syslog;
use super::webhook::Webhook;

pub(super) enum Output {
    Stdout,
    File(PathBuf),
    Syslog(Syslog),
    Webhook(Webhook),
}

impl Output {
    pub(super) fn new(kind: &SinkKind) -> Result<Self> {
        Ok(match kind {
            SinkKind::Stdout => Output::Stdout,
            SinkKind::File { path } => Output::File(path.clone()),
            SinkKind::Syslog(s) => Output::Syslog(Syslog::new(s)),
            SinkKind::Webhook(w) => Output::Webhook(Webhook::new(w)?),
        })
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Output::Stdout => "stdout",
            Output::File(_) => "file",
            Output::Syslog(_) => "syslog",
            Output::Webhook(_) => "webhook",
        }
    }

    /// Delivers the whole batch, in order, or fails (and the caller sends it all again).
    pub(super) async fn deliver(&mut self, batch: &[StoredRecord]) -> Result<()> {
        match self {
            Output::Stdout => {
                let mut out = tokio::io::stdout();
                out.write_all(&json_lines(batch)).await?;
                out.flush().await?;
                Ok(())
            }
            Output::File(path) => append(path, json_lines(batch)).await,
            Output::Syslog(s) => s.deliver(batch).await,
            Output::Webhook(w) => w.deliver(batch).await,
        }
    }
}

/// Each record's stored bytes and `\n`: the same lines as the log.
pub(super) fn json_lines(batch: &[StoredRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.iter().map(|r| r.line.len() + 1).sum());
    for r in batch {
        out.extend_from_slice(&r.line);
        out.push(b'\n');
    }
    out
}

/// Appends and fsyncs; opened per batch, so a file moved away by logrotate is recreated.
async fn append(path: &std::path::Path, bytes: Vec<u8>) -> Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // A batch written in part (a full disk) is cut back off, so that the retry appends whole
        // lines rather than after a torn one.
        let before = file.metadata()?.len();
        if let Err(e) = file.write_all(&bytes) {
            let _ = file.set_len(before);
            return Err(anyhow::Error::new(e).context(format!("writing {}", path.display())));
        }
        file.sync_data()
            .with_context(|| format!("syncing {}", path.display()))?;
        Ok(())
    })
    .await?
}
