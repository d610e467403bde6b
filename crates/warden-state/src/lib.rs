//! Warden's state: the credentials it issued, the ones it revoked, and locks.
//!
//! Everything here must survive a restart and be shared by every process of one deployment (the proxy,
//! and the admin commands that write while it runs), so it lives in a store rather than in memory. The
//! [`StateStore`] trait is the boundary: [`SqliteStore`] (a file in the data dir) is the default, and a
//! shared PostgreSQL store for several Warden instances can implement the same trait later.
//!
//! Readers notice changes made by other processes through [`StateStore::generation`], a counter every
//! write transaction bumps, so a running proxy can poll it cheaply and act on a new lock at once.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

mod sqlite;

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("no lock with id {0}; `warden locks list` shows the active ones")]
    NoSuchLock(String),
    #[error("no credential with id {0} is recorded in this deployment")]
    NoSuchCredential(String),
    #[error("no access request with id {0}; `warden requests list` shows them")]
    NoSuchRequest(String),
}

pub type Result<T> = std::result::Result<T, StateError>;

/// What a lock cuts off.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum LockTarget {
    /// One identity (`agent:report-bot`), under any requester.
    Identity(String),
    /// Every agent acting for this human or workload (and the requester itself).
    Requester(String),
    /// Every credential issued for this task id.
    Task(String),
    /// One credential, by id.
    Credential(String),
    /// One live session, by id.
    Session(String),
}

impl LockTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            LockTarget::Identity(_) => "identity",
            LockTarget::Requester(_) => "requester",
            LockTarget::Task(_) => "task",
            LockTarget::Credential(_) => "credential",
            LockTarget::Session(_) => "session",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            LockTarget::Identity(v)
            | LockTarget::Requester(v)
            | LockTarget::Task(v)
            | LockTarget::Credential(v)
            | LockTarget::Session(v) => v,
        }
    }

    pub fn from_parts(kind: &str, value: String) -> Option<Self> {
        Some(match kind {
            "identity" => LockTarget::Identity(value),
            "requester" => LockTarget::Requester(value),
            "task" => LockTarget::Task(value),
            "credential" => LockTarget::Credential(value),
            "session" => LockTarget::Session(value),
            _ => return None,
        })
    }

    /// Whether a session or connection of `subject` falls under this target.
    pub fn matches(&self, subject: &Subject) -> bool {
        match self {
            LockTarget::Identity(v) => subject.identity == *v,
            // A requester's lock stops its agents and the requester's own sessions.
            LockTarget::Requester(v) => subject.requester.as_deref() == Some(v) || subject.identity == *v,
            LockTarget::Task(v) => subject.task.as_deref() == Some(v),
            LockTarget::Credential(v) => subject.credential_id == *v,
            LockTarget::Session(v) => subject.session_id.as_deref() == Some(v),
        }
    }
}

impl fmt::Display for LockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.value())
    }
}

/// Who a connection or session is, in the terms locks are written in.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// `kind:name`
    pub identity: String,
    pub requester: Option<String>,
    pub task: Option<String>,
    pub credential_id: String,
    /// None for a connection that has no session yet.
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub id: String,
    pub target: LockTarget,
    pub reason: String,
    /// The identity or admin that created it (`human:alice`, `admin (warden lock)`).
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub removed_at: Option<OffsetDateTime>,
    pub removed_by: Option<String>,
}

impl Lock {
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.removed_at.is_none() && self.expires_at.is_none_or(|t| now < t)
    }

    pub fn state(&self, now: OffsetDateTime) -> &'static str {
        if self.removed_at.is_some() {
            "removed"
        } else if self.is_active(now) {
            "active"
        } else {
            "expired"
        }
    }
}

/// A lock to create; the store assigns its id.
#[derive(Debug, Clone)]
pub struct NewLock {
    pub target: LockTarget,
    pub reason: String,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

/// A credential Warden issued, as recorded at issuance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub id: String,
    /// `kind:name`
    pub identity: String,
    pub requester: Option<String>,
    pub task: Option<String>,
    pub roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Who asked for it: an identity (through the API) or `admin (warden issue)`.
    pub issued_by: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
    /// The credential this one was obtained with (an agent's, from its requester's; an assumed
    /// request's, from the asker's): revoking that one revokes this one too.
    #[serde(default)]
    pub parent: Option<String>,
}

/// A revocation as it now stands: the credential, and the credentials obtained with it (directly or
/// further down) that it revoked now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub credential: CredentialRecord,
    /// Whether this call revoked `credential` (false: it was revoked already, by this or another
    /// process, and keeps that first revocation).
    pub revoked_now: bool,
    pub with_it: Vec<CredentialRecord>,
}

/// Why a subject may not connect or go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    Locked(Lock),
    Revoked(CredentialRecord),
}

/// What stops sessions right now: active locks and revoked credentials, as of one generation.
#[derive(Debug, Clone, Default)]
pub struct Blocklist {
    pub generation: u64,
    pub locks: Vec<Lock>,
    pub revoked: Vec<CredentialRecord>,
    revoked_ids: HashSet<String>,
}

impl Blocklist {
    pub fn new(generation: u64, locks: Vec<Lock>, revoked: Vec<CredentialRecord>) -> Self {
        let revoked_ids = revoked.iter().map(|c| c.id.clone()).collect();
        Blocklist {
            generation,
            locks,
            revoked,
            revoked_ids,
        }
    }

    /// The first block that applies to `subject` at `now`, revocation first.
    pub fn block_for(&self, subject: &Subject, now: OffsetDateTime) -> Option<Block> {
        if self.revoked_ids.contains(&subject.credential_id) {
            if let Some(c) = self.revoked.iter().find(|c| c.id == subject.credential_id) {
                return Some(Block::Revoked(c.clone()));
            }
        }
        self.locks
            .iter()
            .find(|l| l.is_active(now) && l.target.matches(subject))
            .map(|l| Block::Locked(l.clone()))
    }

    /// The earliest time a lock in this list expires (after which the list should be re-read).
    pub fn next_expiry(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.locks
            .iter()
            .filter_map(|l| l.expires_at)
            .filter(|t| *t > now)
            .min()
    }
}

/// The store behind Warden's state. Every write is one transaction: a crash leaves it before or after.
pub trait StateStore: Send + Sync {
    /// A counter that changes whenever any process commits a change.
    fn generation(&self) -> Result<u64>;
    /// Records a credential, and returns it as recorded: one whose parent is already revoked is
    /// recorded revoked (the caller must not hand it out).
    fn record_credential(&self, credential: &CredentialRecord) -> Result<CredentialRecord>;
    fn credential(&self, id: &str) -> Result<Option<CredentialRecord>>;
    /// Credentials still valid at `now` (not expired; revoked ones included), newest first.
    fn credentials(&self, now: OffsetDateTime) -> Result<Vec<CredentialRecord>>;
    /// Marks a credential revoked, and every credential obtained with it (children, their children):
    /// one transaction. Revoking twice keeps the first reason.
    fn revoke_credential(&self, id: &str, by: &str, reason: &str, at: OffsetDateTime) -> Result<Revocation>;
    fn create_lock(&self, lock: NewLock) -> Result<Lock>;
    /// Lifts a lock; returns it as it now stands.
    fn remove_lock(&self, id: &str, by: &str, at: OffsetDateTime) -> Result<Lock>;
    fn lock(&self, id: &str) -> Result<Option<Lock>>;
    /// Locks, newest first: only the active ones at `now`, or all.
    fn locks(&self, now: OffsetDateTime, include_inactive: bool) -> Result<Vec<Lock>>;
    /// Active locks and revoked, unexpired credentials, with the generation they were read at.
    fn blocklist(&self, now: OffsetDateTime) -> Result<Blocklist>;
}

/// Short, typeable ids: `lk_` and 16 hex digits.
pub fn new_lock_id() -> String {
    let u = uuid::Uuid::new_v4();
    format!("lk_{}", &u.simple().to_string()[..16])
}

impl FromStr for LockTarget {
    type Err = String;

    /// `kind:value`, e.g. `task:T-42`, `identity:agent:report-bot`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, value) = s.split_once(':').ok_or_else(|| format!("{s:?} is not KIND:VALUE"))?;
        LockTarget::from_parts(kind, value.to_string()).ok_or_else(|| {
            format!("{kind:?} is not a lock target; use identity, requester, task, credential or session")
        })
    }
}

#[cfg(test)]
mod tests;

/// An access request: an identity asks for roles that need a human's approval (`approval = "session"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub id: String,
    /// Who asks (`agent:report-bot`, `human:alice`).
    pub identity: String,
    /// For an agent: the human or workload it acts for.
    pub requester: Option<String>,
    pub task: Option<String>,
    /// The credential the request was made with: the elevated one continues it.
    pub credential_id: String,
    pub roles: Vec<String>,
    pub reason: String,
    /// How long the elevated credential may last once approved, in seconds.
    pub ttl_seconds: i64,
    pub state: RequestState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// A pending request that nobody decided by then expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub decided_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    pub decision_reason: Option<String>,
    /// The elevated credential, once assumed.
    pub assumed_credential: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Expired,
    Assumed,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
            RequestState::Assumed => "assumed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RequestState::Pending,
            "approved" => RequestState::Approved,
            "denied" => RequestState::Denied,
            "expired" => RequestState::Expired,
            "assumed" => RequestState::Assumed,
            _ => return None,
        })
    }
}

/// Short, typeable request ids: `rq_` and 16 hex digits.
pub fn new_request_id() -> String {
    let u = uuid::Uuid::new_v4();
    format!("rq_{}", &u.simple().to_string()[..16])
}

/// Access requests, stored with the rest of the state. Separate from [`StateStore`] so that stores
/// that only keep locks stay small; the SQLite store implements both.
pub trait RequestStore: Send + Sync {
    fn create_request(&self, request: &AccessRequest) -> Result<()>;
    fn request(&self, id: &str) -> Result<Option<AccessRequest>>;
    /// Requests created after `since`, newest first.
    fn requests(&self, since: OffsetDateTime) -> Result<Vec<AccessRequest>>;
    /// Approves or denies a pending, unexpired request in one transaction; returns it as it now stands,
    /// or the reason it could not be decided.
    fn decide_request(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<std::result::Result<AccessRequest, AccessRequest>>;
    /// Marks an approved request assumed by `credential_id`; fails (returns it) unless it was approved.
    fn assume_request(
        &self,
        id: &str,
        credential_id: &str,
    ) -> Result<std::result::Result<AccessRequest, AccessRequest>>;
    /// Moves pending requests past their `expires_at` to expired; returns them.
    fn expire_requests(&self, now: OffsetDateTime) -> Result<Vec<AccessRequest>>;
}
