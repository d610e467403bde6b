//! `warden lock`, `warden locks list`, `warden unlock`, `warden revoke`: offline admin commands on the
//! deployment's state store. A running Warden notices within a tenth of a second and ends the live
//! sessions a new lock or revocation covers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use time::OffsetDateTime;
use warden_identity::{parse_duration, IdentityName};
use warden_state::{LockTarget, StateStore};

use crate::cli::issue::human_duration;
use crate::control;
use crate::deployment;
use crate::proxy::error::fmt_ts;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["identity", "requester", "task", "credential", "session"])))]
pub struct LockArgs {
    #[arg(long, env = "WARDEN_CONFIG")]
    pub config: PathBuf,
    /// Lock one identity, e.g. agent:report-bot (every requester it acts for).
    #[arg(long)]
    pub identity: Option<IdentityName>,
    /// Lock a human or workload and every agent acting for it, e.g. human:alice.
    #[arg(long)]
    pub requester: Option<IdentityName>,
    /// Lock every credential issued for this task id.
    #[arg(long)]
    pub task: Option<String>,
    /// Lock one credential, by id (`warden issue` prints it; profile.toml has it).
    #[arg(long)]
    pub credential: Option<String>,
    /// Lock one live session, by id (`warden audit search` shows session ids).
    #[arg(long)]
    pub session: Option<String>,
    /// Why: shown to the locked client and recorded in the audit log.
    #[arg(long)]
    pub reason: Option<String>,
    /// Lift the lock by itself after this long, e.g. 30m, 2h. Default: until `warden unlock`.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Print the lock as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum LocksCommand {
    /// The active locks (with --all, also expired and lifted ones).
    List {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        all: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct UnlockArgs {
    /// The lock's id (lk_...), as `warden locks list` shows it.
    pub lock_id: String,
    #[arg(long, env = "WARDEN_CONFIG")]
    pub config: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct RevokeArgs {
    /// The credential's id, as `warden issue` printed it.
    pub credential_id: String,
    #[arg(long, env = "WARDEN_CONFIG")]
    pub config: PathBuf,
    #[arg(long)]
    pub reason: Option<String>,
}

pub fn lock(args: &LockArgs) -> Result<ExitCode> {
    let target = if let Some(i) = &args.identity {
        LockTarget::Identity(i.to_string())
    } else if let Some(r) = &args.requester {
        LockTarget::Requester(r.to_string())
    } else if let Some(t) = &args.task {
        LockTarget::Task(t.clone())
    } else if let Some(c) = &args.credential {
        LockTarget::Credential(c.clone())
    } else if let Some(s) = &args.session {
        LockTarget::Session(s.clone())
    } else {
        bail!("name what to lock: --identity, --requester, --task, --credential or --session");
    };
    if target.value().trim().is_empty() {
        bail!("the {} to lock is empty", target.kind());
    }
    control::check_text(target.kind(), target.value(), 256).map_err(anyhow::Error::msg)?;
    if let Some(r) = &args.reason {
        control::check_text("--reason", r, 1000).map_err(anyhow::Error::msg)?;
    }
    let ttl = args.ttl.as_deref().map(parse_duration).transpose()?;
    if ttl.is_some_and(|d| !d.is_positive()) {
        bail!("--ttl must be longer than zero");
    }
    let config = deployment::load_config(&args.config)?;
    let state = deployment::open_state(&config)?;
    // A lock that matches nothing would leave the operator believing something is cut off.
    let target = resolve(target, &config, &state)?;
    let now = OffsetDateTime::now_utc();
    let already: Vec<String> = state
        .locks(now, false)?
        .into_iter()
        .filter(|l| l.target == target)
        .map(|l| l.id)
        .collect();
    if !already.is_empty() {
        // Another lock (another reason or ttl) is added: each is lifted on its own.
        eprintln!(
            "warning: {target} is already locked by {}; this adds another lock, and access comes back only once all are lifted or expired",
            already.join(", ")
        );
    }
    // The audit log first: a command that cannot record what it does changes nothing.
    let audit = deployment::open_audit(&config)?;
    let actor = control::local_admin();
    let lock = state.create_lock(control::new_lock(target, args.reason.clone(), ttl, &actor))?;
    if let Err(e) = audit.append_blocking(control::lock_event("lock.created", &lock, &actor)) {
        bail!(
            "locked {} as {}, but its lock.created record could not be written ({e}); the lock is in force (`warden unlock {}` lifts it once the audit log can be written)",
            lock.target,
            lock.id,
            lock.id
        );
    }
    if args.json {
        // As `warden locks list --json` shows it.
        let mut v = serde_json::to_value(&lock)?;
        v["state"] = lock.state(now).into();
        println!("{v}");
    } else {
        println!("Locked {} as {}.", lock.target, lock.id);
        println!("A running Warden ends matching live sessions within a second and refuses new ones");
        match (lock.expires_at, ttl) {
            (Some(t), Some(d)) => println!(
                "for {} (until {}), or until `warden unlock {}`.",
                human_duration(d),
                fmt_ts(t),
                lock.id
            ),
            _ => println!("until `warden unlock {}`.", lock.id),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The target as a lock must name it: a credential or session by its whole id (a unique prefix is
/// expanded, as `warden sessions play` does), one that exists; an identity or task that nothing
/// configured or issued matches is locked with a warning (it may be added later).
fn resolve(target: LockTarget, config: &warden_policy::Config, state: &dyn StateStore) -> Result<LockTarget> {
    let now = OffsetDateTime::now_utc();
    match target {
        LockTarget::Credential(prefix) => {
            if let Some(c) = state.credential(&prefix)? {
                if c.not_after <= now {
                    bail!(
                        "credential {} expired at {}: it cannot connect, so a lock on it would stop nothing",
                        c.id,
                        fmt_ts(c.not_after)
                    );
                }
                return Ok(LockTarget::Credential(prefix));
            }
            let matches: Vec<String> = state
                .credentials(now)?
                .into_iter()
                .map(|c| c.id)
                .filter(|id| id.starts_with(&prefix))
                .collect();
            match matches.as_slice() {
                [] => bail!(
                    "no unexpired credential {prefix:?} in this deployment (an expired one cannot connect); give its id as `warden issue` printed it, or lock its identity or task"
                ),
                [one] => Ok(LockTarget::Credential(one.clone())),
                more => bail!(
                    "{prefix:?} is ambiguous: it starts {} credentials; give more characters",
                    more.len()
                ),
            }
        }
        LockTarget::Session(prefix) => {
            // Session ids are UUIDs. A whole one can be locked even when the audit index cannot
            // be read (an incident is no time to wait on it); a prefix needs the index.
            // Written as Warden writes them (lower case, hyphens): a lock matches the id exactly.
            let whole = uuid::Uuid::parse_str(&prefix).ok();
            let prefix = whole.map_or(prefix, |u| u.hyphenated().to_string());
            let whole = whole.is_some();
            let log = &config.audit.path;
            let found = crate::cli::audit::open_index(log).and_then(|index| {
                let Some(mut index) = index else {
                    return Ok(None);
                };
                let live: Vec<String> = index
                    .sessions(true, None)?
                    .into_iter()
                    .map(|s| s.session_id)
                    .filter(|id| id.starts_with(&prefix))
                    .collect();
                let seen = !index.sessions_with_prefix(&prefix, 1)?.is_empty();
                Ok(Some((live, seen)))
            });
            let (live, seen) = match found {
                Ok(Some(f)) => f,
                Ok(None) if whole => (Vec::new(), false),
                Ok(None) => bail!("no audit log at {}, so no session {prefix:?}", log.display()),
                Err(e) if whole => {
                    eprintln!("warning: cannot check that session {prefix} is live ({e:#}); locking it as given");
                    return Ok(LockTarget::Session(prefix));
                }
                Err(e) => bail!("{e:#}; give the whole session id to lock it without the audit index"),
            };
            match live.as_slice() {
                [one] => Ok(LockTarget::Session(one.clone())),
                [] if seen => bail!(
                    "session {prefix} has ended (sessions are not resumed, so a lock on it would stop nothing); lock its credential, identity or task instead"
                ),
                [] => bail!(
                    "no live session {prefix:?} in the audit log {}; `warden sessions list --active` shows them",
                    log.display()
                ),
                more => bail!(
                    "{prefix:?} is ambiguous: it starts {} live sessions ({}); give more characters",
                    more.len(),
                    more.iter().take(5).map(String::as_str).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        LockTarget::Identity(ref name) | LockTarget::Requester(ref name) => {
            let known = name
                .parse::<IdentityName>()
                .ok()
                .is_some_and(|id| config.identity(&id).is_some());
            if !known {
                eprintln!(
                    "warning: {name} is not in the configuration, so it cannot connect now; the lock applies if it is added"
                );
            }
            Ok(target)
        }
        LockTarget::Task(ref task) => {
            if !state
                .credentials(now)?
                .iter()
                .any(|c| c.task.as_deref() == Some(task.as_str()))
            {
                eprintln!(
                    "warning: no unexpired credential was issued for task {task:?}; the lock applies to credentials issued for it later"
                );
            }
            Ok(target)
        }
    }
}

pub fn list(command: LocksCommand) -> Result<ExitCode> {
    let LocksCommand::List { config, all, json } = command;
    let config = deployment::load_config(&config)?;
    let state = deployment::open_state(&config)?;
    let now = OffsetDateTime::now_utc();
    let locks = state.locks(now, all)?;
    if json {
        for l in &locks {
            let mut v = serde_json::to_value(l)?;
            v["state"] = l.state(now).into();
            println!("{v}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if locks.is_empty() {
        println!("No {}locks.", if all { "" } else { "active " });
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<19}  {:<8}  {:<10}  {:<28}  {:<20}  {:<20}  REASON",
        "ID", "STATE", "TARGET", "VALUE", "CREATED", "EXPIRES"
    );
    for l in &locks {
        println!(
            "{:<19}  {:<8}  {:<10}  {:<28}  {:<20}  {:<20}  {} (by {})",
            l.id,
            l.state(now),
            l.target.kind(),
            l.target.value(),
            fmt_ts(l.created_at),
            l.expires_at.map(fmt_ts).unwrap_or_else(|| "never".into()),
            l.reason,
            l.created_by
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn unlock(args: &UnlockArgs) -> Result<ExitCode> {
    let config = deployment::load_config(&args.config)?;
    let state = deployment::open_state(&config)?;
    let actor = control::local_admin();
    let Some(before) = state.lock(&args.lock_id)? else {
        bail!("no lock {}; `warden locks list --all` shows them", args.lock_id);
    };
    if before.removed_at.is_some() {
        println!("{} was already lifted.", before.id);
        return Ok(ExitCode::SUCCESS);
    }
    // Lifting gives access back: recorded first, and not done if it cannot be.
    let now = OffsetDateTime::now_utc();
    let mut lifted = before.clone();
    lifted.removed_at = Some(now);
    lifted.removed_by = Some(actor.clone());
    deployment::open_audit(&config)?.append_blocking(control::lock_event("lock.removed", &lifted, &actor))?;
    let lock = state.remove_lock(&args.lock_id, &actor, now)?;
    println!("Lifted {} ({}).", lock.id, lock.target);
    Ok(ExitCode::SUCCESS)
}

pub fn revoke(args: &RevokeArgs) -> Result<ExitCode> {
    let config = deployment::load_config(&args.config)?;
    let state = deployment::open_state(&config)?;
    let actor = control::local_admin();
    let reason = args
        .reason
        .clone()
        .unwrap_or_else(|| "revoked by an administrator".into());
    control::check_text("--reason", &reason, 1000).map_err(anyhow::Error::msg)?;
    // The audit log first: a command that cannot record what it does changes nothing.
    let audit = deployment::open_audit(&config)?;
    let revoked = state.revoke_credential(&args.credential_id, &actor, &reason, OffsetDateTime::now_utc())?;
    let c = &revoked.credential;
    let already = !revoked.revoked_now;
    if already && revoked.with_it.is_empty() {
        println!("{} was already revoked.", c.id);
        return Ok(ExitCode::SUCCESS);
    }
    // A record for each credential this revocation changed, and only those.
    let changed = (!already).then_some(c).into_iter().chain(&revoked.with_it);
    for r in changed {
        if let Err(e) = audit.append_blocking(control::revoked_event(r)) {
            bail!(
                "credential {} was revoked ({} obtained through it with it), but the record of {} could not be written: {e}; the revocation is in force",
                c.id,
                revoked.with_it.len(),
                r.id
            );
        }
    }
    if already {
        println!("{} was already revoked.", c.id);
    } else {
        println!(
            "Revoked credential {} of {}; its live sessions end within a second.",
            c.id, c.identity
        );
    }
    for r in &revoked.with_it {
        println!(
            "Revoked with it: credential {} of {}, obtained through it.",
            r.id, r.identity
        );
    }
    Ok(ExitCode::SUCCESS)
}
