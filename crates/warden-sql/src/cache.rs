//! Analyses cached by statement text: drivers send the same statements again and again, and parsing
//! is the expensive part of a decision. The key includes the catalog generation and the session's
//! search_path, the two other inputs of an analysis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{analyze, Catalog, SessionContext, SqlError, StatementAccess};

/// Entries kept before the cache starts over (a bound on memory, not an LRU: simple and enough for
/// the working set of statements an application sends).
const CAPACITY: usize = 10_000;

type Key = (u64, Vec<String>, String, String);

/// One analysis, shared by every session that sends the same text.
pub type Analysis = Arc<Result<Vec<StatementAccess>, SqlError>>;

#[derive(Default)]
pub struct AnalysisCache {
    entries: Mutex<HashMap<Key, Analysis>>,
}

impl AnalysisCache {
    pub fn analyze(&self, sql: &str, catalog: &Catalog, session: &SessionContext) -> Analysis {
        let key = (
            catalog.generation,
            session.search_path.clone(),
            session.user.clone(),
            sql.to_string(),
        );
        if let Some(hit) = self.entries.lock().expect("analysis cache lock poisoned").get(&key) {
            return hit.clone();
        }
        let result = Arc::new(analyze(sql, catalog, session));
        let mut entries = self.entries.lock().expect("analysis cache lock poisoned");
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(key, result.clone());
        result
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
}
