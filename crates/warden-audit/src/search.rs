use std::io::{BufRead, BufReader};
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{AuditError, Event};

#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    /// `kind:name` or a bare name; also matches events of agents acting for that identity.
    pub identity: Option<String>,
    /// `kind:name` of the human or workload agents acted for.
    pub requester: Option<String>,
    pub session: Option<String>,
    pub task: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub decision: Option<String>,
    pub event: Option<String>,
    /// At most this many, the first ones in log order.
    pub limit: Option<usize>,
}

impl SearchFilter {
    pub fn matches(&self, e: &Event) -> bool {
        let b = &e.body;
        let id = b.identity.as_ref();
        if let Some(want) = &self.identity {
            let hit = id.is_some_and(|i| {
                let full = format!("{}:{}", i.kind, i.name);
                &full == want || &i.name == want || i.requester.as_ref() == Some(want)
            });
            if !hit {
                return false;
            }
        }
        if self.requester.is_some()
            && id.and_then(|i| i.requester.as_ref()) != self.requester.as_ref()
        {
            return false;
        }
        if self.task.is_some() && id.and_then(|i| i.task.as_ref()) != self.task.as_ref() {
            return false;
        }
        if self.session.is_some() && b.session_id.as_ref() != self.session.as_ref() {
            return false;
        }
        if self.decision.is_some() && b.decision.as_ref() != self.decision.as_ref() {
            return false;
        }
        if self.event.as_ref().is_some_and(|ev| ev != &b.event) {
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

/// Scans the log line by line and returns the matching events in log order. A missing log is empty.
/// An incomplete last line (a record being written right now) is skipped.
pub fn search(path: &Path, filter: &SearchFilter) -> Result<Vec<Event>, AuditError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(AuditError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|e| AuditError::Read {
            path: path.to_path_buf(),
            line: n + 1,
            reason: e.to_string(),
        })?;
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        n += 1;
        let event: Event = serde_json::from_str(line.trim_end()).map_err(|e| AuditError::Read {
            path: path.to_path_buf(),
            line: n,
            reason: e.to_string(),
        })?;
        if filter.matches(&event) {
            out.push(event);
            if filter.limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
    }
    Ok(out)
}
