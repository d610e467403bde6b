//! Analyses cached by statement shape: drivers send the same statements again and again, and parsing
//! is the expensive part of a decision. The shape is the text with numeric literals replaced (see
//! `shape`), so a simple-protocol client that inlines its numbers (`WHERE id = 17`) hits too. An entry
//! answers for every text of its shape only when its statements have no session effects (the one use
//! of a statement's `text`); otherwise, and for texts that do not parse, only for the same text. The
//! catalog generation and the session's search_path and role, the other inputs of an analysis, are
//! part of the key.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::shape::shape;
use crate::{analyze, Catalog, SessionContext, SqlError, StatementAccess};

/// Entries kept before the cache starts over (a bound on memory, not an LRU: simple and enough for
/// the working set of statements an application sends).
const CAPACITY: usize = 10_000;

/// Longer statements are analysed each time, not kept: an entry holds its text and shape, and a
/// client sending distinct statements of up to the maximum message size (64 MiB by default) must not
/// make every session's process hold thousands of them. Statements an application repeats are short.
const CACHED_TEXT_MAX: usize = 16 * 1024;

/// One analysis, shared by every session that sends the same text.
pub type Analysis = Arc<Result<Vec<StatementAccess>, SqlError>>;

struct Entry {
    generation: u64,
    search_path: Vec<String>,
    user: String,
    shape: Box<str>,
    /// The text analysed.
    text: Box<str>,
    /// Whether the analysis holds for every text of this shape.
    any_numbers: bool,
    analysis: Analysis,
}

impl Entry {
    fn answers(&self, generation: u64, session: &SessionContext, shape: &str, sql: &str) -> bool {
        self.generation == generation
            && self.shape.as_ref() == shape
            && (self.any_numbers || self.text.as_ref() == sql)
            && self.user == session.user
            && self.search_path == session.search_path
    }
}

#[derive(Default)]
pub struct AnalysisCache {
    /// By a hash of the whole key; the entry itself is compared in full (a collision is a miss).
    entries: Mutex<HashMap<u64, Entry>>,
    hasher: RandomState,
}

/// Beyond this, the per-thread shape buffer is given back rather than kept.
const SHAPE_RETAINED_MAX: usize = 64 * 1024;

thread_local! {
    /// The shape of the statement being looked up: no allocation per lookup.
    static SHAPE: RefCell<String> = RefCell::new(String::with_capacity(256));
}

impl AnalysisCache {
    pub fn analyze(&self, sql: &str, catalog: &Catalog, session: &SessionContext) -> Analysis {
        SHAPE.with_borrow_mut(|shaped| {
            // One very long statement should not pin its size in every thread.
            if shaped.capacity() > SHAPE_RETAINED_MAX {
                *shaped = String::with_capacity(256);
            }
            let shareable = shape(sql, shaped);
            let key = self
                .hasher
                .hash_one((catalog.generation, &session.search_path, &session.user, shaped.as_str()));
            if let Some(hit) = self
                .entries
                .lock()
                .expect("analysis cache lock poisoned")
                .get(&key)
                .filter(|e| e.answers(catalog.generation, session, shaped, sql))
            {
                return hit.analysis.clone();
            }
            let analysis = Arc::new(analyze(sql, catalog, session));
            if sql.len() > CACHED_TEXT_MAX {
                return analysis;
            }
            // Session effects carry their statement's text; a SET's values are strings that matter
            // (client_encoding): neither is shared, out of caution.
            let any_numbers = shareable
                && analysis.as_ref().as_ref().is_ok_and(|statements| {
                    statements
                        .iter()
                        .all(|s| s.effects.is_empty() && s.class() != crate::Class::Session)
                });
            let entry = Entry {
                generation: catalog.generation,
                search_path: session.search_path.clone(),
                user: session.user.clone(),
                shape: shaped.as_str().into(),
                text: sql.into(),
                any_numbers,
                analysis: analysis.clone(),
            };
            let mut entries = self.entries.lock().expect("analysis cache lock poisoned");
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(key, entry);
            analysis
        })
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("analysis cache lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_statements_are_not_kept() {
        let cache = AnalysisCache::default();
        let catalog = crate::tests::shop();
        let ctx = SessionContext::default();
        let long = format!("SELECT id FROM orders /* {} */", "x".repeat(CACHED_TEXT_MAX));
        let a = cache.analyze(&long, &catalog, &ctx);
        assert!(a.as_ref().is_ok());
        assert!(cache.is_empty());
        cache.analyze("SELECT id FROM orders", &catalog, &ctx);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn hits_by_text_path_and_generation() {
        let cache = AnalysisCache::default();
        let mut catalog = crate::tests::shop();
        let ctx = SessionContext::default();
        let a = cache.analyze("SELECT id FROM orders", &catalog, &ctx);
        let b = cache.analyze("SELECT id FROM orders", &catalog, &ctx);
        assert!(Arc::ptr_eq(&a, &b));
        let hr = ctx.with_path(&["hr".into()]);
        let c = cache.analyze("SELECT id FROM orders", &catalog, &hr);
        assert!(!Arc::ptr_eq(&a, &c));
        catalog.generation += 1;
        let d = cache.analyze("SELECT id FROM orders", &catalog, &ctx);
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn texts_that_differ_only_in_numbers_share_an_analysis() {
        let cache = AnalysisCache::default();
        let catalog = crate::tests::shop();
        let ctx = SessionContext::default();
        let a = cache.analyze("SELECT id FROM orders WHERE id = 17", &catalog, &ctx);
        let b = cache.analyze("SELECT id FROM orders WHERE id = 4.2e1", &catalog, &ctx);
        assert!(Arc::ptr_eq(&a, &b));
        // A string, a name or a parameter is not a number: another analysis.
        let c = cache.analyze("SELECT id FROM orders WHERE id = '17'", &catalog, &ctx);
        assert!(!Arc::ptr_eq(&a, &c));
        let d = cache.analyze("SELECT id FROM orders WHERE id = $1", &catalog, &ctx);
        assert!(!Arc::ptr_eq(&a, &d));
    }

    #[test]
    fn statements_with_session_effects_are_cached_by_their_exact_text() {
        let cache = AnalysisCache::default();
        let catalog = crate::tests::shop();
        let ctx = SessionContext::default();
        let a = cache.analyze("PREPARE p AS SELECT id FROM orders WHERE id = 1", &catalog, &ctx);
        let b = cache.analyze("PREPARE p AS SELECT id FROM orders WHERE id = 2", &catalog, &ctx);
        assert!(!Arc::ptr_eq(&a, &b));
        // The text the effect carries is the statement's own.
        let text = |x: &Analysis| x.as_ref().as_ref().unwrap()[0].text.clone();
        assert_eq!(text(&b), "PREPARE p AS SELECT id FROM orders WHERE id = 2");
        let again = cache.analyze("PREPARE p AS SELECT id FROM orders WHERE id = 2", &catalog, &ctx);
        assert!(Arc::ptr_eq(&b, &again));
        // A SET is not shared either (its values are strings that matter), nor a text with a backslash.
        let a = cache.analyze("SET statement_timeout = 1000", &catalog, &ctx);
        let b = cache.analyze("SET statement_timeout = 2000", &catalog, &ctx);
        assert!(!Arc::ptr_eq(&a, &b));
        let a = cache.analyze("SET client_encoding TO E'WIN'\n'\\' 1'", &catalog, &ctx);
        let b = cache.analyze("SET client_encoding TO E'WIN'\n'\\' 932'", &catalog, &ctx);
        assert!(!Arc::ptr_eq(&a, &b));
        let forbidden = |x: &Analysis| x.as_ref().as_ref().unwrap()[0].forbidden.clone();
        // (Both are refused now that the client encoding stays UTF8; they are still told apart.)
        assert!(!forbidden(&a).is_empty() && !forbidden(&b).is_empty());
        let a = cache.analyze("SELECT id FROM orders WHERE id = 1 AND status = E'\\x'", &catalog, &ctx);
        let b = cache.analyze("SELECT id FROM orders WHERE id = 2 AND status = E'\\x'", &catalog, &ctx);
        assert!(!Arc::ptr_eq(&a, &b));
        // A text that does not parse is not answered for another of its shape either.
        let bad = cache.analyze("SELEC 1", &catalog, &ctx);
        let other = cache.analyze("SELEC 2", &catalog, &ctx);
        assert!(!Arc::ptr_eq(&bad, &other));
        assert!(other.as_ref().as_ref().unwrap_err().to_string().contains("SELEC"));
    }

    #[test]
    fn a_different_role_or_path_misses() {
        let cache = AnalysisCache::default();
        let catalog = crate::tests::shop();
        let ctx = SessionContext::default();
        let a = cache.analyze("SELECT id FROM orders", &catalog, &ctx);
        let other = SessionContext {
            user: "agent:x".into(),
            ..SessionContext::default()
        };
        let b = cache.analyze("SELECT id FROM orders", &catalog, &other);
        assert!(!Arc::ptr_eq(&a, &b));
    }
}
