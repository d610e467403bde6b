//! Statement review (`approval = "statement"`): a write from a session holding such a role is held
//! before it reaches PostgreSQL until a human approver decides, or until `server.review_timeout`.
//!
//! The held statement waits in the session's own relay task, so other sessions go on. Pending reviews
//! live in this process (the API of the Warden the session runs on decides them); a review that is not
//! decided in time, or whose session ends, is gone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::oneshot;

/// Why a statement must be reviewed: the statement-approval roles the session holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewNeed {
    pub roles: Vec<String>,
}

/// What an approver decided, or that nobody did in time.
#[derive(Debug, Clone)]
pub enum ReviewOutcome {
    Approved { by: String, reason: Option<String> },
    Denied { by: String, reason: Option<String> },
    TimedOut { after: Duration },
}

/// A held statement as approvers see it.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewInfo {
    pub id: String,
    pub session_id: String,
    pub identity: String,
    pub requester: Option<String>,
    pub task: Option<String>,
    pub credential_id: String,
    pub database: String,
    pub statement: String,
    pub parameters: Option<Vec<Option<String>>>,
    /// The statement-approval roles that called for the review.
    pub roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

struct Pending {
    info: ReviewInfo,
    decide: oneshot::Sender<ReviewOutcome>,
}

#[derive(Default)]
pub struct ReviewRegistry {
    pending: Mutex<HashMap<String, Pending>>,
}

/// `rv_` and 16 hex digits.
pub fn new_review_id() -> String {
    format!("rv_{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

impl ReviewRegistry {
    /// Lists `info` for approvers; the ticket waits for the decision and withdraws the review when dropped.
    pub fn open(&self, info: ReviewInfo) -> Ticket<'_> {
        let (tx, rx) = oneshot::channel();
        let id = info.id.clone();
        self.lock().insert(id.clone(), Pending { info, decide: tx });
        Ticket {
            registry: self,
            id,
            rx: Some(rx),
        }
    }

    pub fn list(&self) -> Vec<ReviewInfo> {
        let mut all: Vec<ReviewInfo> = self.lock().values().map(|p| p.info.clone()).collect();
        all.sort_by_key(|i| i.created_at);
        all
    }

    pub fn get(&self, id: &str) -> Option<ReviewInfo> {
        self.lock().get(id).map(|p| p.info.clone())
    }

    /// Delivers a decision; `None` if the review is no longer pending (decided, timed out, session gone).
    pub fn decide(&self, id: &str, outcome: ReviewOutcome) -> Option<ReviewInfo> {
        let pending = self.lock().remove(id)?;
        let info = pending.info.clone();
        pending.decide.send(outcome).ok()?;
        Some(info)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().expect("review registry lock poisoned")
    }
}

pub struct Ticket<'a> {
    registry: &'a ReviewRegistry,
    id: String,
    rx: Option<oneshot::Receiver<ReviewOutcome>>,
}

impl Ticket<'_> {
    /// Waits for the decision, at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> ReviewOutcome {
        let Some(rx) = self.rx.take() else {
            return ReviewOutcome::TimedOut { after: Duration::ZERO };
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            _ => ReviewOutcome::TimedOut { after: timeout },
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> ReviewInfo {
        ReviewInfo {
            id: id.into(),
            session_id: "s".into(),
            identity: "agent:bot".into(),
            requester: Some("human:alice".into()),
            task: Some("T".into()),
            credential_id: "c".into(),
            database: "shop".into(),
            statement: "UPDATE t SET x = 1".into(),
            parameters: None,
            roles: vec!["reviewed".into()],
            created_at: OffsetDateTime::now_utc(),
            expires_at: OffsetDateTime::now_utc(),
        }
    }

    #[tokio::test]
    async fn a_decision_reaches_the_waiting_statement_once() {
        let r = ReviewRegistry::default();
        let mut t = r.open(info("rv_1"));
        assert_eq!(r.list().len(), 1);
        assert!(r
            .decide(
                "rv_1",
                ReviewOutcome::Approved {
                    by: "human:carol".into(),
                    reason: None
                }
            )
            .is_some());
        assert!(
            r.decide(
                "rv_1",
                ReviewOutcome::Denied {
                    by: "x".into(),
                    reason: None
                }
            )
            .is_none(),
            "decided once"
        );
        assert!(
            matches!(t.wait(Duration::from_secs(5)).await, ReviewOutcome::Approved { by, .. } if by == "human:carol")
        );
    }

    #[tokio::test]
    async fn nobody_deciding_times_out_and_a_dropped_ticket_withdraws_the_review() {
        let r = ReviewRegistry::default();
        let mut t = r.open(info("rv_2"));
        assert!(matches!(
            t.wait(Duration::from_millis(20)).await,
            ReviewOutcome::TimedOut { .. }
        ));
        drop(t);
        assert!(r.list().is_empty());
        assert!(r
            .decide(
                "rv_2",
                ReviewOutcome::Approved {
                    by: "x".into(),
                    reason: None
                }
            )
            .is_none());
    }
}
