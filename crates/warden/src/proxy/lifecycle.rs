//! What ends a live session from outside it: locks, revocations, configuration reloads (and, in the
//! relay, credential expiry). Every live session is registered here with a kill switch; a watcher
//! re-reads the state store whenever its generation moves (another process wrote a lock) or when told
//! to (the API wrote one), and the configuration file whenever its bytes change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use warden_policy::Refusal;
use warden_state::{Block, Blocklist};

use super::error::{fmt_ts, ProxyError};
use super::{Session, Shared};
use crate::deployment;

/// How often the watcher looks at the state store's generation; bounds lock-to-disconnect from
/// another process (the API's own writes are applied at once).
const STATE_POLL: Duration = Duration::from_millis(100);
/// How often the configuration file is compared with what was last loaded.
const CONFIG_POLL: Duration = Duration::from_millis(500);
/// How long live sessions outlast a state store that cannot be read (a lock must end them within 1 s).
const STATE_UNREADABLE_MAX: Duration = Duration::from_millis(800);

/// Why Warden ended a session, for the client (57P01) and for `session.end`.
#[derive(Debug, Clone)]
pub struct Kill {
    pub cause: KillCause,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillCause {
    Lock,
    Revocation,
    Expiry,
    Reload,
    /// The state store (locks, revocations) could not be read: no lock can be seen to apply.
    StateUnreadable,
    /// Warden was told twice to stop: the drain is cut short.
    Stop,
}

impl KillCause {
    pub fn as_str(self) -> &'static str {
        match self {
            KillCause::Lock => "lock",
            KillCause::Revocation => "revocation",
            KillCause::Expiry => "expiry",
            KillCause::Reload => "reload",
            KillCause::StateUnreadable => "state-unreadable",
            KillCause::Stop => "shutdown",
        }
    }
}

impl Kill {
    pub fn for_block(block: &Block) -> Self {
        match block {
            Block::Locked(l) => Kill {
                cause: KillCause::Lock,
                message: lock_message(l),
            },
            Block::Revoked(c) => Kill {
                cause: KillCause::Revocation,
                message: revoked_message(c),
            },
        }
    }

    /// A session whose locks cannot be checked (fail closed).
    /// The cause goes to Warden's log only, as with other internal errors.
    pub fn state_unreadable() -> Self {
        Kill {
            cause: KillCause::StateUnreadable,
            message: "Warden cannot read its locks and revocations, so it cannot tell whether this session may go on; reconnect once it can (an administrator sees the cause in Warden's log)".into(),
        }
    }

    pub fn stop() -> Self {
        Kill {
            cause: KillCause::Stop,
            message: "Warden is shutting down now; reconnect in a moment".into(),
        }
    }

    pub fn expiry(session: &Session) -> Self {
        Kill {
            cause: KillCause::Expiry,
            message: format!(
                "credential {} expired at {}; get a new one to reconnect",
                session.claims.credential_id,
                fmt_ts(session.claims.not_after)
            ),
        }
    }
}

pub fn lock_message(l: &warden_state::Lock) -> String {
    let reason = if l.reason.is_empty() {
        "no reason given"
    } else {
        &l.reason
    };
    format!(
        "locked by {} ({}) by {}: {reason}; it lasts until an administrator lifts it (`warden unlock {}`){}",
        l.id,
        l.target,
        l.created_by,
        l.id,
        l.expires_at
            .map(|t| format!(" or until {}", fmt_ts(t)))
            .unwrap_or_default()
    )
}

pub fn revoked_message(c: &warden_state::CredentialRecord) -> String {
    format!(
        "credential {} was revoked by {}: {}; get a new credential to reconnect",
        c.id,
        c.revoked_by.as_deref().unwrap_or("an administrator"),
        c.revoke_reason.as_deref().unwrap_or("no reason given")
    )
}

impl From<Block> for ProxyError {
    fn from(block: Block) -> Self {
        match block {
            Block::Locked(l) => ProxyError::Locked {
                message: lock_message(&l),
            },
            Block::Revoked(c) => ProxyError::Revoked {
                message: revoked_message(&c),
            },
        }
    }
}

struct Live {
    session: Arc<Session>,
    kill: watch::Sender<Option<Kill>>,
    started_at: OffsetDateTime,
}

/// The live sessions of this Warden process.
#[derive(Default)]
pub struct SessionRegistry {
    live: Mutex<HashMap<String, Live>>,
    /// Wakes the watcher at once (after the API changed the state store).
    pub changed: Notify,
}

/// A live session as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub identity: String,
    pub requester: Option<String>,
    pub task: Option<String>,
    pub credential_id: String,
    pub database: String,
    pub db_user: String,
    pub roles: Vec<String>,
    pub client_addr: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl SessionRegistry {
    /// Registers a session; the receiver yields `Some(kill)` when Warden ends it.
    pub fn register(&self, session: Arc<Session>) -> watch::Receiver<Option<Kill>> {
        let (tx, rx) = watch::channel(None);
        let live = Live {
            session: session.clone(),
            kill: tx,
            started_at: OffsetDateTime::now_utc(),
        };
        self.lock().insert(session.id.clone(), live);
        rx
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .lock()
            .values()
            .map(|l| {
                let s = &l.session;
                SessionInfo {
                    session_id: s.id.clone(),
                    identity: s.claims.identity().to_string(),
                    requester: s.claims.requester.as_ref().map(|r| r.to_string()),
                    task: s.claims.task.clone(),
                    credential_id: s.claims.credential_id.clone(),
                    database: s.database.clone(),
                    db_user: s.db_role.clone(),
                    roles: s.roles.load().to_vec(),
                    client_addr: s.client_addr.to_string(),
                    started_at: l.started_at,
                    expires_at: s.claims.not_after,
                }
            })
            .collect();
        out.sort_by_key(|i| i.started_at);
        out
    }

    /// Ends every session for which `judge` returns a kill; returns how many.
    pub fn end_where(&self, judge: impl Fn(&Session) -> Option<Kill>) -> usize {
        let live = self.lock();
        let mut n = 0;
        for l in live.values() {
            if l.kill.borrow().is_some() {
                continue;
            }
            if let Some(kill) = judge(&l.session) {
                tracing::info!(session = %l.session.id, cause = kill.cause.as_str(), reason = %kill.message, "ending session");
                let _ = l.kill.send(Some(kill));
                n += 1;
            }
        }
        n
    }

    /// The live sessions.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.lock().values().map(|l| l.session.clone()).collect()
    }

    /// Applies a new configuration to live sessions: their roles are recomputed; a session whose identity
    /// no longer holds any role for its database is ended.
    pub fn reevaluate(&self, config: &warden_policy::Config) {
        let ended = self.end_where(|s| {
            follow(s, config).err().map(|refusal| Kill {
                cause: KillCause::Reload,
                message: format!("the configuration was reloaded and this session may no longer run: {refusal}"),
            })
        });
        if ended > 0 {
            tracing::info!(ended, "configuration reload ended sessions");
        }
    }

    /// For a session just registered: a reload that swapped the configuration after the session's
    /// roles were computed, but before it was registered, did not reach it. Its roles are computed
    /// again under the configuration now in force (a refusal: it may not run).
    pub fn follow_current(&self, s: &Session, config: &warden_policy::Config) -> Result<(), Refusal> {
        follow(s, config)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().expect("session registry lock poisoned")
    }
}

/// Puts a session's roles in line with `config`.
fn follow(s: &Session, config: &warden_policy::Config) -> Result<(), Refusal> {
    let roles = config.effective_roles(
        &s.claims.identity(),
        s.claims.requester.as_ref(),
        &s.claims.roles,
        &s.database,
    )?;
    let names: Vec<String> = roles.iter().map(|r| r.name.clone()).collect();
    if **s.roles.load() != names {
        tracing::info!(session = %s.id, roles = %names.join(","), "roles changed by reload");
        s.roles.store(Arc::new(names));
    }
    Ok(())
}

impl Shared {
    /// The block that applies to `subject` now, read fresh if the store changed since the last read.
    pub fn block_for(&self, subject: &warden_state::Subject) -> Result<Option<Block>, warden_state::StateError> {
        let now = OffsetDateTime::now_utc();
        Ok(self.refresh_blocks(now)?.block_for(subject, now))
    }

    /// Re-reads locks and revocations when the store's generation moved or a lock expired since.
    fn refresh_blocks(&self, now: OffsetDateTime) -> Result<Arc<Blocklist>, warden_state::StateError> {
        let current = self.blocks.load_full();
        let generation = self.state.generation()?;
        if current.generation == generation && current.next_expiry(now).is_none_or(|t| t > now) {
            return Ok(current);
        }
        let fresh = Arc::new(self.state.blocklist(now)?);
        self.blocks.store(fresh.clone());
        Ok(fresh)
    }

    /// Ends live sessions that a lock or revocation covers, if the store changed since the generation
    /// `swept` (sessions are checked when they register, and an expiring lock only ever unblocks).
    pub fn enforce_blocks(&self, swept: &mut u64) -> Result<usize, warden_state::StateError> {
        let now = OffsetDateTime::now_utc();
        let list = self.refresh_blocks(now)?;
        if list.generation == *swept {
            return Ok(0);
        }
        *swept = list.generation;
        Ok(self
            .sessions
            .end_where(|s| list.block_for(&s.subject(), now).map(|b| Kill::for_block(&b))))
    }
}

/// Loads the configuration at `path`, swaps it in and applies it to live sessions; a bad file keeps the
/// running configuration and says why.
///
/// Statements after the swap are decided under the new roles at once. Then, in the background (so that
/// a slow PostgreSQL never holds up locks and revocations), the PostgreSQL role of every live session is
/// provisioned again: grants and row filters follow role, filter and trait changes (nothing is done
/// where they are unchanged). A session whose role cannot be brought in line is ended (fail closed).
pub async fn reload(shared: &Arc<Shared>, path: &Path, why: &str) -> bool {
    match deployment::load_config(path) {
        Ok(new) => {
            let new = Arc::new(new);
            let old = shared.config.swap(new.clone());
            tracing::info!(config = %path.display(), trigger = why, "configuration reloaded");
            warn_unconfigured_admins(&new);
            if old.audit_differs(&new) {
                tracing::warn!(config = %path.display(), "[audit] changed (log, redact or sinks): it takes effect at the next start");
            }
            shared.sessions.reevaluate(&new);
            tokio::spawn(reprovision(shared.clone()));
            true
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), trigger = why, "reload refused; keeping the running configuration");
            false
        }
    }
}

/// An admin no `[[human]]` defines cannot log in: said at start and at each reload.
pub fn warn_unconfigured_admins(config: &warden_policy::Config) {
    for admin in config.unconfigured_admins() {
        tracing::warn!(
            config = %config.path.display(),
            %admin,
            "server.admins names {admin}, which no [[human]] defines: it administers nothing (a typo, or a removed human's line left behind)"
        );
    }
}

/// Provisions the PostgreSQL role of each live session again, once per distinct role.
async fn reprovision(shared: Arc<Shared>) {
    let mut done: Vec<(String, String)> = Vec::new();
    for s in shared.sessions.sessions() {
        let key = (s.database.clone(), s.db_role.clone());
        if done.contains(&key) {
            continue;
        }
        done.push(key);
        if let Err(e) = super::backend::provision(&shared, &s).await {
            tracing::error!(session = %s.id, db_role = %s.db_role, error = %e, "cannot apply reloaded grants in PostgreSQL");
            let message = format!("the configuration was reloaded and PostgreSQL could not be brought in line: {e}");
            shared.sessions.end_where(|x| {
                (x.db_role == s.db_role && x.database == s.database).then(|| Kill {
                    cause: KillCause::Reload,
                    message: message.clone(),
                })
            });
        }
    }
}

/// Runs for the life of the process: applies store changes and configuration file changes to live sessions.
pub async fn watch(shared: Arc<Shared>, config_path: PathBuf) {
    let mut last_config = std::fs::read(&config_path).ok();
    let mut config_tick = tokio::time::interval(CONFIG_POLL);
    config_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut state_tick = tokio::time::interval(STATE_POLL);
    state_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Since when the store cannot be read: past STATE_UNREADABLE_MAX, live sessions end, since a lock
    // written meanwhile could not end them within the second `warden lock` promises.
    let mut failing: Option<std::time::Instant> = None;
    let mut swept = u64::MAX;
    loop {
        tokio::select! {
            _ = state_tick.tick() => {}
            _ = shared.sessions.changed.notified() => {}
            _ = config_tick.tick() => {
                let now = std::fs::read(&config_path).ok();
                if now.is_some() && now != last_config {
                    last_config = now;
                    reload(&shared, &config_path, "file changed").await;
                }
                continue;
            }
        }
        match shared.enforce_blocks(&mut swept) {
            Ok(_) => failing = None,
            Err(e) => {
                let since = *failing.get_or_insert_with(|| {
                    tracing::error!(error = %e, "cannot read the state store: new connections are refused until it is readable");
                    std::time::Instant::now()
                });
                if since.elapsed() >= STATE_UNREADABLE_MAX {
                    let ended = shared.sessions.end_where(|_| Some(Kill::state_unreadable()));
                    if ended > 0 {
                        tracing::error!(error = %e, sessions = ended, "the state store is still unreadable: live sessions ended (a lock could not reach them)");
                    }
                }
            }
        }
    }
}
