//! Secrets cut out of records before they are written: the log on disk, and every sink that ships
//! it, only ever see the redacted text.

use regex::Regex;

use crate::EventBody;

/// What a match is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// The configured patterns (`[audit] redact`), compiled once at config load.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    patterns: Vec<Regex>,
}

impl Redactor {
    pub fn new(patterns: Vec<Regex>) -> Self {
        Redactor { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Replaces every match in the free text of a record: the statement, its parameters, the error
    /// (PostgreSQL quotes bad input back), the reason (a parse error quotes the statement; lock and
    /// request reasons are typed by people) and sample rows. Names and ids are left alone.
    pub fn apply(&self, body: &mut EventBody) {
        if self.patterns.is_empty() {
            return;
        }
        if let Some(statement) = &mut body.statement {
            // Shared with the prepared statement it ran: searched where it is, and replaced (never
            // changed in place) only when a pattern matched.
            let mut text = std::borrow::Cow::Borrowed(&**statement);
            for p in &self.patterns {
                if let std::borrow::Cow::Owned(replaced) = p.replace_all(&text, REDACTED) {
                    text = std::borrow::Cow::Owned(replaced);
                }
            }
            if let std::borrow::Cow::Owned(text) = text {
                *statement = text.into();
            }
        }
        if let Some(parameters) = &mut body.parameters {
            // Shared with the portal, like the statement: copied only when a pattern matches.
            let matches = |t: &String| self.patterns.iter().any(|p| p.is_match(t));
            if parameters.iter().flatten().any(matches) {
                let mut copy = parameters.to_vec();
                copy.iter_mut().flatten().for_each(|t| self.redact(t));
                *parameters = copy.into();
            }
        }
        let fields = body
            .error
            .iter_mut()
            .chain(body.reason.iter_mut())
            .chain(body.sample_rows.iter_mut().flatten().flatten().flatten());
        for text in fields {
            self.redact(text);
        }
    }

    fn redact(&self, text: &mut String) {
        for p in &self.patterns {
            // `replace_all` borrows `text`; it returns Owned only when something matched.
            if let std::borrow::Cow::Owned(replaced) = p.replace_all(text, REDACTED) {
                *text = replaced;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(patterns: &[&str]) -> Redactor {
        Redactor::new(patterns.iter().map(|p| Regex::new(p).unwrap()).collect())
    }

    #[test]
    fn statement_parameters_error_and_rows_are_redacted() {
        let r = redactor(&[r"sk_live_[A-Za-z0-9]+", r"(?i)password\s*=\s*'[^']*'"]);
        let mut body = EventBody {
            event: "query".into(),
            statement: Some("UPDATE keys SET k = 'sk_live_abc123' WHERE password = 'hunter2'".into()),
            parameters: Some(vec![Some("sk_live_XYZ".into()), None, Some("plain".into())].into()),
            error: Some("invalid input: \"sk_live_9\"".into()),
            reason: Some("cannot parse the statement: unterminated quoted string at or near \"'sk_live_77".into()),
            sample_rows: Some(vec![vec![Some("x sk_live_q y".into()), None]]),
            session_id: Some("sk_live_not_free_text".into()),
            ..Default::default()
        };
        r.apply(&mut body);
        assert_eq!(
            body.statement.as_deref(),
            Some("UPDATE keys SET k = '[REDACTED]' WHERE [REDACTED]")
        );
        assert_eq!(
            body.parameters.as_deref(),
            Some(&[Some("[REDACTED]".into()), None, Some("plain".into())][..])
        );
        assert_eq!(body.error.as_deref(), Some("invalid input: \"[REDACTED]\""));
        assert!(body
            .reason
            .as_deref()
            .is_some_and(|r| !r.contains("sk_live") && r.contains("[REDACTED]")));
        assert_eq!(body.sample_rows, Some(vec![vec![Some("x [REDACTED] y".into()), None]]));
        assert_eq!(body.session_id.as_deref(), Some("sk_live_not_free_text"));
    }

    #[test]
    fn no_patterns_change_nothing() {
        let mut body = EventBody {
            event: "query".into(),
            statement: Some("SELECT 'sk_live_abc'".into()),
            ..Default::default()
        };
        let before = body.clone();
        Redactor::default().apply(&mut body);
        redactor(&["nomatch"]).apply(&mut body);
        assert_eq!(body, before);
    }
}
