//! Sessions as the index sees them: `warden sessions list` and the id prefixes of `warden sessions play`.

use std::collections::HashMap;
use std::sync::LazyLock;

use rusqlite::params;

use super::lines::LineReader;
use super::{note_rebuild, Index, Mismatch, Row, RARE_EVENT};
use crate::{AuditError, Event};

/// One session as the index sees it: its first and last records and what happened in between.
#[derive(Debug, Clone)]
pub struct SessionSummary {
    pub session_id: String,
    /// `session.start`; `None` when the log holds only later events of the session.
    pub start: Option<Event>,
    /// `session.end`; `None` while the session is open (or when the Warden that ran it crashed).
    pub end: Option<Event>,
    /// `query` events.
    pub statements: u64,
    /// `query` events with `decision = deny`.
    pub denials: u64,
}

impl SessionSummary {
    /// Started and not ended.
    pub fn active(&self) -> bool {
        self.start.is_some() && self.end.is_none()
    }
}

/// A session's first seq seen, its `session.start` row and its `session.end` row.
type Bounds = (u64, Option<Row>, Option<Row>);

/// Statements and denials by session id.
type Counts = HashMap<String, (u64, u64)>;

/// The `session.start` and `session.end` rows with their session, in log order (with RARE_EVENT, so
/// that the partial index on events.event serves).
pub(super) static BOUNDS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT s.session_id, e.seq, e.off, e.len, e.event FROM events e JOIN subjects s ON s.id = e.subject \
         WHERE e.event IN ('session.start', 'session.end') AND {RARE_EVENT} \
         AND s.session_id IS NOT NULL ORDER BY e.seq"
    )
});

/// The statements and denials of one session.
pub(super) const COUNT_ONE_SQL: &str = "SELECT COUNT(*), COALESCE(SUM(decision = 'deny'), 0) FROM events \
     WHERE event = 'query' AND subject IN (SELECT id FROM subjects WHERE session_id = ?1)";

impl Index {
    /// The session ids that start with `prefix` (at most `max`), in order.
    pub fn sessions_with_prefix(&self, prefix: &str, max: usize) -> Result<Vec<String>, AuditError> {
        // Every string that starts with `prefix` sorts between it and prefix + U+10FFFF (BINARY collation).
        let upper = format!("{prefix}\u{10FFFF}");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT DISTINCT session_id FROM subjects WHERE session_id >= ?1 AND session_id < ?2 \
                 ORDER BY session_id LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let ids = stmt
            .query_map(params![prefix, upper, max as i64], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(ids)
    }

    /// The sessions with a `session.start` or `session.end`, oldest first: all of them, or only the
    /// active ones (started, not ended), and of those only the newest `newest`. Sessions are chosen
    /// from the index alone; only the chosen ones' first and last records are read from the log.
    pub fn sessions(&mut self, active_only: bool, newest: Option<usize>) -> Result<Vec<SessionSummary>, AuditError> {
        match self.try_sessions(active_only, newest)? {
            Ok(found) => Ok(found),
            Err(m) => {
                note_rebuild(&self.path, &m);
                self.reset()?;
                self.catch_up()?;
                self.try_sessions(active_only, newest)?.map_err(|m| self.mismatch(m))
            }
        }
    }

    fn try_sessions(
        &self,
        active_only: bool,
        newest: Option<usize>,
    ) -> Result<Result<Vec<SessionSummary>, Mismatch>, AuditError> {
        let mut bounds: HashMap<String, Bounds> = HashMap::new();
        let mut stmt = self.conn.prepare_cached(&BOUNDS_SQL).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Row {
                        seq: r.get::<_, i64>(1)? as u64,
                        off: r.get::<_, i64>(2)? as u64,
                        len: r.get::<_, i64>(3)? as u64,
                    },
                    r.get::<_, String>(4)? == "session.start",
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        for (id, row, is_start) in rows {
            let b = bounds.entry(id).or_insert((row.seq, None, None));
            if is_start {
                b.1.get_or_insert(row);
            } else {
                b.2 = Some(row);
            }
        }
        let mut chosen: Vec<(String, Bounds)> = bounds
            .into_iter()
            .filter(|(_, (_, start, end))| !active_only || (start.is_some() && end.is_none()))
            .collect();
        chosen.sort_by_key(|(_, (first, _, _))| *first);
        if let Some(n) = newest {
            let skip = chosen.len().saturating_sub(n);
            chosen.drain(..skip);
        }
        let counts = self.query_counts(chosen.len() > 1000)?;
        let mut lines = LineReader::new(&self.log)?;
        let mut out = Vec::with_capacity(chosen.len());
        for (id, (_, start, end)) in chosen {
            let mut read = |row: Option<Row>| -> Result<Result<Option<Event>, Mismatch>, AuditError> {
                let Some(row) = row else { return Ok(Ok(None)) };
                Ok(lines.read(row)?.and_then(|r| {
                    if r.event.body.session_id.as_deref() == Some(id.as_str()) {
                        Ok(Some(r.event))
                    } else {
                        Err(Mismatch(format!(
                            "the record with seq {} is not of session {id}",
                            row.seq
                        )))
                    }
                }))
            };
            let start = match read(start)? {
                Ok(e) => e,
                Err(m) => return Ok(Err(m)),
            };
            let end = match read(end)? {
                Ok(e) => e,
                Err(m) => return Ok(Err(m)),
            };
            let (statements, denials) = match &counts {
                Some(all) => all.get(&id).copied().unwrap_or((0, 0)),
                None => self.count_one(&id)?,
            };
            out.push(SessionSummary {
                session_id: id,
                start,
                end,
                statements,
                denials,
            });
        }
        Ok(Ok(out))
    }

    /// Statements and denials of every session at once (`all`), or `None` to count them one by one.
    pub(super) fn query_counts(&self, all: bool) -> Result<Option<Counts>, AuditError> {
        if !all {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT s.session_id, c.statements, c.denials FROM subjects s JOIN \
                 (SELECT subject, COUNT(*) AS statements, SUM(decision = 'deny') AS denials FROM events \
                  WHERE event = 'query' AND subject IS NOT NULL GROUP BY subject) c ON c.subject = s.id \
                 WHERE s.session_id IS NOT NULL",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                ))
            })
            .map_err(|e| self.err(e))?;
        // A session is usually one subject, but its records may name more than one.
        let mut counts = Counts::new();
        for row in rows {
            let (id, statements, denials) = row.map_err(|e| self.err(e))?;
            let c = counts.entry(id).or_insert((0, 0));
            c.0 += statements;
            c.1 += denials;
        }
        Ok(Some(counts))
    }

    pub(super) fn count_one(&self, id: &str) -> Result<(u64, u64), AuditError> {
        self.conn
            .prepare_cached(COUNT_ONE_SQL)
            .and_then(|mut stmt| {
                stmt.query_row(params![id], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
            })
            .map_err(|e| self.err(e))
    }
}
