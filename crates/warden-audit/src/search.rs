use std::collections::VecDeque;
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{AuditError, Event, StoredRecord};

/// Every field that is set must match; unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    /// `kind:name` or a bare name; also matches events of agents acting for that identity.
    pub identity: Option<String>,
    /// `kind:name` or bare name of the human or workload agents acted for.
    pub requester: Option<String>,
    pub session: Option<String>,
    pub task: Option<String>,
    /// Inclusive bounds on `ts`.
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub decision: Option<String>,
    pub event: Option<String>,
    /// At most this many: the first ones in log order, or the last ones with `newest`.
    pub limit: Option<usize>,
    /// With `limit`, keep the newest matching events (still returned in log order).
    pub newest: bool,
}

impl SearchFilter {
    pub fn matches(&self, e: &Event) -> bool {
        let b = &e.body;
        let id = b.identity.as_ref();
        let requester = id.and_then(|i| i.requester.as_deref());
        if let Some(want) = &self.identity {
            let hit =
                id.is_some_and(|i| names(want, &i.kind, &i.name) || requester.is_some_and(|r| names_full(want, r)));
            if !hit {
                return false;
            }
        }
        if let Some(want) = &self.requester {
            if !requester.is_some_and(|r| names_full(want, r)) {
                return false;
            }
        }
        if self.task.is_some() && id.and_then(|i| i.task.as_ref()) != self.task.as_ref() {
            return false;
        }
        if self.session.is_some() && b.session_id.as_deref() != self.session.as_deref() {
            return false;
        }
        if self.decision.is_some() && b.decision.as_deref() != self.decision.as_deref() {
            return false;
        }
        if self.event.as_ref().is_some_and(|ev| *ev != b.event) {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Ok(ts) = OffsetDateTime::parse(&e.ts, &Rfc3339) else {
                return false;
            };
            if self.since.is_some_and(|s| ts < s) || self.until.is_some_and(|u| ts > u) {
                return false;
            }
        }
        true
    }
}

/// Whether `want` (`kind:name` or a bare name) names the identity `kind`, `name`.
fn names(want: &str, kind: &str, name: &str) -> bool {
    want == name || want.split_once(':') == Some((kind, name))
}

/// Same, for an identity stored as one `kind:name` string (a requester).
fn names_full(want: &str, full: &str) -> bool {
    match full.split_once(':') {
        Some((kind, name)) => names(want, kind, name),
        None => want == full,
    }
}

/// Scans the log (rotated files, then the active one) and returns the matching events in log order.
/// A missing log is empty. An incomplete last line (a record being written right now) is skipped.
///
/// This reads every record: it is the reference that [`crate::Index::search`] must agree with, and
/// the fallback when the index cannot be used.
pub fn search(path: &Path, filter: &SearchFilter) -> Result<Vec<Event>, AuditError> {
    Ok(search_records(path, filter)?.into_iter().map(|r| r.event).collect())
}

/// As [`search`], with each record's stored line and place.
pub fn search_records(path: &Path, filter: &SearchFilter) -> Result<Vec<StoredRecord>, AuditError> {
    let mut out = VecDeque::new();
    for record in crate::read_after(path, 0)? {
        if !filter.newest && filter.limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let record = record?;
        if filter.matches(&record.event) {
            out.push_back(record);
            if filter.newest && filter.limit.is_some_and(|l| out.len() > l) {
                out.pop_front();
            }
        }
    }
    Ok(out.into())
}
