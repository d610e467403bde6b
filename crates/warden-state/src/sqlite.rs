//! The default store: one SQLite file in the data dir (WAL, synchronous=FULL), shared by the proxy and
//! the admin commands. Each write is an IMMEDIATE transaction that also bumps `meta.generation`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use time::OffsetDateTime;

use crate::{
    new_lock_id, AccessRequest, Blocklist, CredentialRecord, Lock, LockTarget, NewLock, RequestState, RequestStore,
    Result, Revocation, StateError, StateStore,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, generation) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS credentials (
    id            TEXT PRIMARY KEY,
    identity      TEXT NOT NULL,
    requester     TEXT,
    task          TEXT,
    roles         TEXT NOT NULL,
    issued_at     INTEGER NOT NULL,
    not_after     INTEGER NOT NULL,
    issued_by     TEXT NOT NULL,
    revoked_at    INTEGER,
    revoked_by    TEXT,
    revoke_reason TEXT
);
CREATE INDEX IF NOT EXISTS credentials_not_after ON credentials (not_after);
CREATE TABLE IF NOT EXISTS requests (
    id                 TEXT PRIMARY KEY,
    identity           TEXT NOT NULL,
    requester          TEXT,
    task               TEXT,
    credential_id      TEXT NOT NULL,
    roles              TEXT NOT NULL,
    reason             TEXT NOT NULL,
    ttl_seconds        INTEGER NOT NULL,
    state              TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    decided_by         TEXT,
    decided_at         INTEGER,
    decision_reason    TEXT,
    assumed_credential TEXT
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created_at);
CREATE TABLE IF NOT EXISTS locks (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    removed_at  INTEGER,
    removed_by  TEXT
);
"#;

pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |source| StateError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Corrupt {
                path: path.display().to_string(),
                reason: format!("creating {}: {e}", dir.display()),
            })?;
        }
        let new = !path.exists();
        let conn = Connection::open(path).map_err(err)?;
        if new {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        // WAL lets the proxy read while an admin command writes; FULL makes each commit durable.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        // Stores made before credentials knew their parent gain the column (NULL: no parent known).
        // Checked and added in one IMMEDIATE transaction: two processes opening an old store at
        // once (a start and a command) must not both add it.
        let mut conn = conn;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let has_parent: bool = tx
            .query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('credentials') WHERE name = 'parent'",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if !has_parent {
            tx.execute_batch("ALTER TABLE credentials ADD COLUMN parent TEXT")
                .map_err(err)?;
        }
        tx.execute_batch("CREATE INDEX IF NOT EXISTS credentials_parent ON credentials (parent)")
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SQLite's own consistency check: "ok" when the file is sound.
    pub fn integrity_check(&self) -> Result<String> {
        self.with(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().expect("state store lock poisoned");
        f(&conn).map_err(|e| self.err(e))
    }

    /// Runs `f` in an IMMEDIATE transaction that also bumps the generation; commits only if `f` succeeds.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().expect("state store lock poisoned");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let out = f(&tx)?;
        tx.execute("UPDATE meta SET generation = generation + 1 WHERE id = 1", [])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }
}

/// The reason a credential revoked with the one it was obtained with carries.
fn with_parent_reason(parent: &str, reason: &str) -> String {
    format!("credential {parent}, which it was obtained through, was revoked: {reason}")
}

fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn from_ts(v: i64) -> rusqlite::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(v)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Integer, Box::new(e)))
}

fn opt_ts(v: Option<i64>) -> rusqlite::Result<Option<OffsetDateTime>> {
    v.map(from_ts).transpose()
}

const CREDENTIAL_COLUMNS: &str =
    "id, identity, requester, task, roles, issued_at, not_after, issued_by, revoked_at, revoked_by, revoke_reason, parent";

fn credential_row(r: &Row) -> rusqlite::Result<CredentialRecord> {
    let roles: String = r.get(4)?;
    Ok(CredentialRecord {
        id: r.get(0)?,
        identity: r.get(1)?,
        requester: r.get(2)?,
        task: r.get(3)?,
        roles: roles.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        issued_at: from_ts(r.get(5)?)?,
        not_after: from_ts(r.get(6)?)?,
        issued_by: r.get(7)?,
        revoked_at: opt_ts(r.get(8)?)?,
        revoked_by: r.get(9)?,
        revoke_reason: r.get(10)?,
        parent: r.get(11)?,
    })
}

const LOCK_COLUMNS: &str = "id, kind, value, reason, created_by, created_at, expires_at, removed_at, removed_by";

fn lock_row(r: &Row) -> rusqlite::Result<Lock> {
    let kind: String = r.get(1)?;
    let target = LockTarget::from_parts(&kind, r.get(2)?).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, format!("lock kind {kind:?}").into())
    })?;
    Ok(Lock {
        id: r.get(0)?,
        target,
        reason: r.get(3)?,
        created_by: r.get(4)?,
        created_at: from_ts(r.get(5)?)?,
        expires_at: opt_ts(r.get(6)?)?,
        removed_at: opt_ts(r.get(7)?)?,
        removed_by: r.get(8)?,
    })
}

impl StateStore for SqliteStore {
    fn generation(&self) -> Result<u64> {
        self.with(|c| c.query_row("SELECT generation FROM meta WHERE id = 1", [], |r| r.get::<_, i64>(0)))
            .map(|g| g as u64)
    }

    fn record_credential(&self, c: &CredentialRecord) -> Result<CredentialRecord> {
        self.write(|tx| {
            // A parent revoked meanwhile (between the caller's authentication and now): the new
            // credential is born revoked, with its parent's revocation.
            let mut c = c.clone();
            if let (Some(parent), None) = (&c.parent, c.revoked_at) {
                let revoked = tx
                    .query_row(
                        &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1 AND revoked_at IS NOT NULL"),
                        [parent],
                        credential_row,
                    )
                    .optional()
                    .map_err(|e| self.err(e))?;
                if let Some(p) = revoked {
                    c.revoked_at = p.revoked_at;
                    c.revoked_by = p.revoked_by;
                    c.revoke_reason = Some(with_parent_reason(&p.id, p.revoke_reason.as_deref().unwrap_or("")));
                }
            }
            tx.execute(
                &format!("INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    c.id,
                    c.identity,
                    c.requester,
                    c.task,
                    c.roles.join(","),
                    ts(c.issued_at),
                    ts(c.not_after),
                    c.issued_by,
                    c.revoked_at.map(ts),
                    c.revoked_by,
                    c.revoke_reason,
                    c.parent
                ],
            )
            .map_err(|e| self.err(e))?;
            Ok(c)
        })
    }

    fn credential(&self, id: &str) -> Result<Option<CredentialRecord>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1"),
                [id],
                credential_row,
            )
            .optional()
        })
    }

    fn credentials(&self, now: OffsetDateTime) -> Result<Vec<CredentialRecord>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE not_after > ?1 ORDER BY issued_at DESC, id"
            ))?;
            let rows = st.query_map([ts(now)], credential_row)?;
            rows.collect()
        })
    }

    fn revoke_credential(&self, id: &str, by: &str, reason: &str, at: OffsetDateTime) -> Result<Revocation> {
        self.write(|tx| {
            let revoked_now = tx
                .execute(
                    "UPDATE credentials SET revoked_at = ?2, revoked_by = ?3, revoke_reason = ?4 \
                         WHERE id = ?1 AND revoked_at IS NULL",
                    params![id, ts(at), by, reason],
                )
                .map_err(|e| self.err(e))?
                > 0;
            let credential = tx
                .query_row(
                    &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1"),
                    [id],
                    credential_row,
                )
                .optional()
                .map_err(|e| self.err(e))?
                .ok_or_else(|| StateError::NoSuchCredential(id.to_string()))?;
            // Everything obtained with it, however far down, that still stands.
            let descendants = "WITH RECURSIVE d(id) AS (\
                     SELECT id FROM credentials WHERE parent = ?1 \
                     UNION SELECT c.id FROM credentials c JOIN d ON c.parent = d.id) \
                 SELECT id FROM d";
            let ids: Vec<String> = {
                let mut st = tx.prepare(descendants).map_err(|e| self.err(e))?;
                let rows = st.query_map([id], |r| r.get(0)).map_err(|e| self.err(e))?;
                rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))?
            };
            let why = with_parent_reason(id, credential.revoke_reason.as_deref().unwrap_or(reason));
            let mut with_it = Vec::new();
            for child in ids {
                // An expired one stops nothing: left as it is (the chain below it is still followed).
                let changed = tx
                    .execute(
                        "UPDATE credentials SET revoked_at = ?2, revoked_by = ?3, revoke_reason = ?4 \
                             WHERE id = ?1 AND revoked_at IS NULL AND not_after > ?2",
                        params![child, ts(at), by, why],
                    )
                    .map_err(|e| self.err(e))?;
                if changed > 0 {
                    let c = tx
                        .query_row(
                            &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1"),
                            [&child],
                            credential_row,
                        )
                        .map_err(|e| self.err(e))?;
                    with_it.push(c);
                }
            }
            Ok(Revocation {
                credential,
                revoked_now,
                with_it,
            })
        })
    }

    fn create_lock(&self, new: NewLock) -> Result<Lock> {
        let lock = Lock {
            id: new_lock_id(),
            target: new.target,
            reason: new.reason,
            created_by: new.created_by,
            created_at: new.created_at,
            expires_at: new.expires_at,
            removed_at: None,
            removed_by: None,
        };
        self.write(|tx| {
            tx.execute(
                &format!("INSERT INTO locks ({LOCK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)"),
                params![
                    lock.id,
                    lock.target.kind(),
                    lock.target.value(),
                    lock.reason,
                    lock.created_by,
                    ts(lock.created_at),
                    lock.expires_at.map(ts)
                ],
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })?;
        Ok(lock)
    }

    fn remove_lock(&self, id: &str, by: &str, at: OffsetDateTime) -> Result<Lock> {
        self.write(|tx| {
            tx.execute(
                "UPDATE locks SET removed_at = ?2, removed_by = ?3 WHERE id = ?1 AND removed_at IS NULL",
                params![id, ts(at), by],
            )
            .map_err(|e| self.err(e))?;
            tx.query_row(
                &format!("SELECT {LOCK_COLUMNS} FROM locks WHERE id = ?1"),
                [id],
                lock_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| StateError::NoSuchLock(id.to_string()))
        })
    }

    fn lock(&self, id: &str) -> Result<Option<Lock>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {LOCK_COLUMNS} FROM locks WHERE id = ?1"),
                [id],
                lock_row,
            )
            .optional()
        })
    }

    fn locks(&self, now: OffsetDateTime, include_inactive: bool) -> Result<Vec<Lock>> {
        let all: Vec<Lock> = self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {LOCK_COLUMNS} FROM locks ORDER BY created_at DESC, id"
            ))?;
            let rows = st.query_map([], lock_row)?;
            rows.collect()
        })?;
        Ok(all
            .into_iter()
            .filter(|l| include_inactive || l.is_active(now))
            .collect())
    }

    fn blocklist(&self, now: OffsetDateTime) -> Result<Blocklist> {
        // One read transaction, so the generation matches what was read.
        let mut conn = self.conn.lock().expect("state store lock poisoned");
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let read = |tx: &rusqlite::Transaction| -> rusqlite::Result<Blocklist> {
            let generation: i64 = tx.query_row("SELECT generation FROM meta WHERE id = 1", [], |r| r.get(0))?;
            let mut st = tx.prepare(&format!(
                "SELECT {LOCK_COLUMNS} FROM locks WHERE removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?1)"
            ))?;
            let locks = st
                .query_map([ts(now)], lock_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut st = tx.prepare(&format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE revoked_at IS NOT NULL AND not_after > ?1"
            ))?;
            let revoked = st
                .query_map([ts(now)], credential_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Blocklist::new(generation as u64, locks, revoked))
        };
        let list = read(&tx).map_err(|e| self.err(e))?;
        tx.finish().map_err(|e| self.err(e))?;
        Ok(list)
    }
}

const REQUEST_COLUMNS: &str = "id, identity, requester, task, credential_id, roles, reason, ttl_seconds, state, \
     created_at, expires_at, decided_by, decided_at, decision_reason, assumed_credential";

fn request_row(r: &Row) -> rusqlite::Result<AccessRequest> {
    let roles: String = r.get(5)?;
    let state: String = r.get(8)?;
    Ok(AccessRequest {
        id: r.get(0)?,
        identity: r.get(1)?,
        requester: r.get(2)?,
        task: r.get(3)?,
        credential_id: r.get(4)?,
        roles: roles.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        reason: r.get(6)?,
        ttl_seconds: r.get(7)?,
        state: RequestState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                8,
                rusqlite::types::Type::Text,
                format!("request state {state:?}").into(),
            )
        })?,
        created_at: from_ts(r.get(9)?)?,
        expires_at: from_ts(r.get(10)?)?,
        decided_by: r.get(11)?,
        decided_at: opt_ts(r.get(12)?)?,
        decision_reason: r.get(13)?,
        assumed_credential: r.get(14)?,
    })
}

impl SqliteStore {
    fn request_in(&self, tx: &rusqlite::Transaction, id: &str) -> Result<AccessRequest> {
        tx.query_row(
            &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"),
            [id],
            request_row,
        )
        .optional()
        .map_err(|e| self.err(e))?
        .ok_or_else(|| StateError::NoSuchRequest(id.to_string()))
    }
}

impl RequestStore for SqliteStore {
    fn create_request(&self, q: &AccessRequest) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                &format!("INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
                params![
                    q.id,
                    q.identity,
                    q.requester,
                    q.task,
                    q.credential_id,
                    q.roles.join(","),
                    q.reason,
                    q.ttl_seconds,
                    q.state.as_str(),
                    ts(q.created_at),
                    ts(q.expires_at),
                    q.decided_by,
                    q.decided_at.map(ts),
                    q.decision_reason,
                    q.assumed_credential
                ],
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn request(&self, id: &str) -> Result<Option<AccessRequest>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"),
                [id],
                request_row,
            )
            .optional()
        })
    }

    fn requests(&self, since: OffsetDateTime) -> Result<Vec<AccessRequest>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests WHERE created_at >= ?1 ORDER BY created_at DESC, id"
            ))?;
            let rows = st.query_map([ts(since)], request_row)?;
            rows.collect()
        })
    }

    fn decide_request(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<std::result::Result<AccessRequest, AccessRequest>> {
        self.write(|tx| {
            let current = self.request_in(tx, id)?;
            if current.state != RequestState::Pending || at >= current.expires_at {
                return Ok(Err(current));
            }
            let state = if approve {
                RequestState::Approved
            } else {
                RequestState::Denied
            };
            tx.execute(
                "UPDATE requests SET state = ?2, decided_by = ?3, decided_at = ?4, decision_reason = ?5 WHERE id = ?1",
                params![id, state.as_str(), by, ts(at), reason],
            )
            .map_err(|e| self.err(e))?;
            Ok(Ok(self.request_in(tx, id)?))
        })
    }

    fn assume_request(
        &self,
        id: &str,
        credential_id: &str,
    ) -> Result<std::result::Result<AccessRequest, AccessRequest>> {
        self.write(|tx| {
            let current = self.request_in(tx, id)?;
            if current.state != RequestState::Approved {
                return Ok(Err(current));
            }
            tx.execute(
                "UPDATE requests SET state = 'assumed', assumed_credential = ?2 WHERE id = ?1",
                params![id, credential_id],
            )
            .map_err(|e| self.err(e))?;
            Ok(Ok(self.request_in(tx, id)?))
        })
    }

    fn expire_requests(&self, now: OffsetDateTime) -> Result<Vec<AccessRequest>> {
        // Read-only first: most polls find nothing, and then nothing is written (no generation bump).
        let due: i64 = self.with(|c| {
            c.query_row(
                "SELECT count(*) FROM requests WHERE state = 'pending' AND expires_at <= ?1",
                [ts(now)],
                |r| r.get(0),
            )
        })?;
        if due == 0 {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            let mut st = tx
                .prepare(&format!(
                    "SELECT {REQUEST_COLUMNS} FROM requests WHERE state = 'pending' AND expires_at <= ?1"
                ))
                .map_err(|e| self.err(e))?;
            let expired = st
                .query_map([ts(now)], request_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| self.err(e))?;
            tx.execute(
                "UPDATE requests SET state = 'expired' WHERE state = 'pending' AND expires_at <= ?1",
                [ts(now)],
            )
            .map_err(|e| self.err(e))?;
            Ok(expired
                .into_iter()
                .map(|mut q| {
                    q.state = RequestState::Expired;
                    q
                })
                .collect())
        })
    }
}
