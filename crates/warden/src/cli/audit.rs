use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use time::OffsetDateTime;
use warden_audit::{Event, SearchFilter};
use warden_identity::parse_duration;

use crate::deployment;

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Find events: by identity, requester, session, task, time and decision.
    Search {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// KIND:NAME or NAME; also matches agents acting for it.
        #[arg(long)]
        identity: Option<String>,
        /// KIND:NAME of the human or workload agents acted for.
        #[arg(long)]
        requester: Option<String>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        task: Option<String>,
        /// Only events newer than this, e.g. 10m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// allow or deny.
        #[arg(long)]
        decision: Option<String>,
        /// Event type, e.g. query, auth.failed, session.start.
        #[arg(long)]
        event: Option<String>,
        /// At most this many events (the newest).
        #[arg(long)]
        limit: Option<usize>,
        /// Print the events as stored, one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Check the whole hash chain across rotated files and every signed checkpoint; exit 1 and
    /// print the first bad record if it does not hold. Shows progress on a terminal.
    Verify {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// The checkpoint public key (64 hex characters) to trust, instead of the checkpoint.pub
        /// beside the log: pin the key you recorded when the deployment was set up.
        #[arg(long)]
        public_key: Option<String>,
    },
}

pub fn run(command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Search {
            config,
            identity,
            requester,
            session,
            task,
            since,
            decision,
            event,
            limit,
            json,
        } => {
            let config = deployment::load_config(&config)?;
            let since = since
                .map(|s| parse_duration(&s).map(|d| OffsetDateTime::now_utc() - d))
                .transpose()?;
            let filter = SearchFilter {
                identity,
                requester,
                session,
                task,
                since,
                decision,
                event,
                ..SearchFilter::default()
            };
            let mut events = warden_audit::search(&config.audit.path, &filter)?;
            if let Some(limit) = limit {
                let skip = events.len().saturating_sub(limit);
                events.drain(..skip);
            }
            for e in &events {
                if json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!("{}", one_line(e));
                }
            }
            if !json {
                eprintln!("{} event(s) in {}", events.len(), config.audit.path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { config, public_key } => {
            let config = deployment::load_config(&config)?;
            let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                indicatif::ProgressStyle::with_template("verifying {bar:40} {bytes}/{total_bytes} ({eta} left)")
                    .expect("static template"),
            );
            let mut progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let result = warden_audit::verify_with(
                &config.audit.path,
                warden_audit::VerifyOptions {
                    public_key,
                    progress: Some(&mut progress),
                },
            );
            bar.finish_and_clear();
            match result {
                Ok(r) => {
                    println!(
                        "ok: {} records in {} file(s), chain intact, head {}",
                        r.records, r.files, r.last_hash
                    );
                    match &r.last_checkpoint {
                        Some((seq, ts)) => println!(
                            "signed: {} checkpoint(s), the newest at seq {seq} ({ts}); {} record(s) after it are chained but not yet signed",
                            r.checkpoints, r.unsigned_tail
                        ),
                        None => println!("signed: no checkpoints (empty log or no key)"),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("FAILED: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// A human-readable line: time, event, who (and for whom, which task), what.
fn one_line(e: &Event) -> String {
    let b = &e.body;
    let mut s = format!("{} #{} {:<13}", e.ts, e.seq, b.event);
    if let Some(id) = &b.identity {
        s += &format!(" {}:{}", id.kind, id.name);
        if let Some(r) = &id.requester {
            s += &format!(" for {r}");
        }
        if let Some(t) = &id.task {
            s += &format!(" task={t}");
        }
    }
    if let Some(sess) = &b.session_id {
        s += &format!(" session={}", &sess[..sess.len().min(8)]);
    }
    if let Some(d) = &b.decision {
        s += &format!(" {d}");
    }
    if let Some(st) = &b.statement {
        s += &format!(" {st:?}");
    }
    if let Some(rows) = b.rows {
        s += &format!(" rows={rows}");
    }
    if let Some(err) = &b.error {
        s += &format!(" error={err:?}");
    }
    if let Some(r) = &b.reason {
        s += &format!(" ({r})");
    }
    s
}
