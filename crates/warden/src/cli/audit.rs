use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use time::OffsetDateTime;
use warden_audit::{Event, Index, SearchFilter};
use warden_identity::parse_duration;

use crate::deployment;

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Find events: by identity, requester, session, task, time and decision.
    Search {
        /// The deployment's warden.toml.
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// KIND:NAME or NAME; also matches agents acting for it.
        #[arg(long)]
        identity: Option<String>,
        /// KIND:NAME of the human or workload agents acted for.
        #[arg(long)]
        requester: Option<String>,
        /// A session id, or a unique prefix of one (the text output shows the first 8 characters).
        #[arg(long)]
        session: Option<String>,
        /// An agent credential's task id (`warden exec --task`).
        #[arg(long)]
        task: Option<String>,
        /// Only events at or after this: a duration ago (10m, 2h, 7d) or an RFC 3339 time
        /// (2026-11-23T06:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only events at or before this: a duration ago or an RFC 3339 time, like --since.
        #[arg(long)]
        until: Option<String>,
        /// allow or deny.
        #[arg(long)]
        decision: Option<String>,
        /// Event type, e.g. query, auth.failed, session.start.
        #[arg(long)]
        event: Option<String>,
        /// At most this many events (the newest).
        #[arg(long)]
        limit: Option<usize>,
        /// Print the events as stored (the exact line bytes, so they can be checked against the
        /// chain), one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Scan the whole log instead of using the index beside it (slower; the reference).
        #[arg(long)]
        no_index: bool,
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
        /// Check the hash chain only, not the signed checkpoints (for a copy taken without them, or a
        /// log from before checkpoints): a cut or rewritten end goes unseen.
        #[arg(long)]
        chain_only: bool,
    },
    /// Sign the head of a log that has records but no signed checkpoint (written before checkpoints
    /// existed, or a crash before a new log's first one), after checking its chain. Warden refuses
    /// to write to such a log until then.
    Sign {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
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
            until,
            decision,
            event,
            limit,
            json,
            no_index,
        } => {
            let config = deployment::load_config(&config)?;
            let now = OffsetDateTime::now_utc();
            let since = since.map(|s| parse_time(&s, now, "--since")).transpose()?;
            let until = until.map(|s| parse_time(&s, now, "--until")).transpose()?;
            if let Some(d) = &decision {
                if d != "allow" && d != "deny" {
                    bail!("--decision must be allow or deny, not {d:?}");
                }
            }
            let log = &config.audit.path;
            // The text view shows sessions by their first 8 characters: a prefix finds its session.
            let session = match session {
                Some(prefix) if prefix.len() < 36 && !prefix.is_empty() && !no_index => match open_index(log) {
                    Ok(Some(index)) => match index.sessions_with_prefix(&prefix, 5)?.as_slice() {
                        [] => bail!("no session {prefix:?} in the audit log {}", log.display()),
                        [one] => Some(one.clone()),
                        more => bail!(
                            "{prefix:?} is ambiguous: it starts {}{}; give more characters",
                            more.join(", "),
                            if more.len() >= 5 { ", ..." } else { "" }
                        ),
                    },
                    // No index to resolve it with: searched as given.
                    _ => Some(prefix),
                },
                other => other,
            };
            let filter = SearchFilter {
                identity,
                requester,
                session,
                task,
                since,
                until,
                decision,
                event,
                limit,
                newest: true,
            };
            let records = if no_index {
                warden_audit::search_records(log, &filter)?
            } else {
                match open_index(log) {
                    Ok(Some(mut index)) => index.search(&filter)?,
                    Ok(None) => Vec::new(),
                    Err(e) => {
                        eprintln!("warden: {e:#}; scanning the log instead");
                        warden_audit::search_records(log, &filter)?
                    }
                }
            };
            let mut out = std::io::stdout().lock();
            for r in &records {
                if json {
                    out.write_all(&r.line)?;
                    out.write_all(b"\n")?;
                } else {
                    writeln!(out, "{}", one_line(&r.event))?;
                }
            }
            out.flush()?;
            if !json {
                eprintln!("{} event(s) in {}", records.len(), log.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Sign { config } => {
            let config = deployment::load_config(&config)?;
            let chain = warden_audit::verify_with(
                &config.audit.path,
                warden_audit::VerifyOptions {
                    chain_only: true,
                    ..Default::default()
                },
            );
            let report = match chain {
                Ok(r) => r,
                Err(e) => {
                    println!("FAILED: {e}\nnot signed: the chain itself is broken");
                    return Ok(ExitCode::from(1));
                }
            };
            let log = warden_audit::AuditLog::open_signing_unsigned_head(
                &config.audit.path,
                deployment::audit_options(&config),
            )?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(log.checkpoint_now())?;
            println!(
                "signed: the chain of {} records is intact; its head (seq {}, {}) is now signed",
                report.records, report.records, report.last_hash
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            config,
            public_key,
            chain_only,
        } => {
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
                    chain_only,
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

/// The index beside the log, caught up with it; `None` when there is no log yet (nothing to find).
pub(crate) fn open_index(log: &Path) -> Result<Option<Index>> {
    if !log.parent().is_some_and(|d| d.as_os_str().is_empty() || d.exists()) {
        return Ok(None);
    }
    let mut index = Index::open(log)?;
    index.catch_up()?;
    Ok(Some(index))
}

/// `10m` (that long ago) or an RFC 3339 time.
pub(crate) fn parse_time(s: &str, now: OffsetDateTime, flag: &str) -> Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    parse_duration(s)
        .map(|d| now - d)
        .map_err(|e| anyhow::anyhow!("{flag} {s:?}: neither a duration (10m, 2h, 7d) nor an RFC 3339 time: {e}"))
}

/// A human-readable line: time, event, who (and for whom, which task), what. On one line for a
/// terminal: control characters from the log (a reason can quote what an unauthenticated client sent)
/// are shown escaped, so no field can start a forged line or send an escape sequence.
pub(crate) fn one_line(e: &Event) -> String {
    let s = unescaped_line(e);
    if !s.chars().any(char::is_control) {
        return s;
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn unescaped_line(e: &Event) -> String {
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
        s += &format!(" session={}", sess.chars().take(8).collect::<String>());
    }
    if let Some(l) = &b.lock {
        s += &format!(
            " lock={} {}={}",
            l.id.chars().take(8).collect::<String>(),
            l.target,
            l.value
        );
        if let Some(until) = &l.expires_at {
            s += &format!(" until={until}");
        }
    }
    if let Some(a) = &b.actor {
        s += &format!(" by={a}");
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
