//! Deciding each statement before it is forwarded, and what the client sees when one is denied.
//!
//! A denied statement never reaches PostgreSQL. In its place Warden sends a `DO` block that raises the
//! denial as an error, so that PostgreSQL itself answers in order with the right SQLSTATE, aborts an
//! open transaction exactly as a failed statement would, and logs the refusal in its own log.

use std::collections::HashMap;

use smallvec::SmallVec;

use warden_policy::{decide, Decision, Role};
use warden_sql::{analyze, Forbidden, SessionContext, SessionEffect, StatementAccess};
use warden_wire::sqlstate;

use super::error::ProxyError;
use super::relay::Forget;
use super::{Session, Shared};

/// The outcome for one statement string.
pub enum Verdict {
    /// Each session effect with the text of the statement that has it; `review` when a human must
    /// approve the statement before it is forwarded (a write under a statement-approval role).
    Allow {
        effects: Vec<(String, SessionEffect)>,
        review: Option<super::review::ReviewNeed>,
        /// Whether it may change data (what review holds), kept so that a prepared statement is
        /// held, or not, by the session's roles when it is executed rather than when it was parsed.
        may_write: bool,
    },
    Deny {
        code: &'static str,
        reason: String,
        hint: String,
    },
}

/// Per-session state the decision depends on.
pub struct Enforcer {
    /// The session's search_path and role, as every analysis of this session needs them (kept, not
    /// rebuilt per statement).
    context: SessionContext,
    /// Prepared statements by name (SQL PREPARE, and the extended protocol's named ones, which share
    /// PostgreSQL's namespace): what an `EXECUTE name` may run, decided again at each EXECUTE.
    prepared: Named,
    /// Cursors (DECLARE name CURSOR FOR ...): what a `FETCH name` may read. Each FETCH is decided as
    /// its DECLARE, under the roles of that moment: PostgreSQL checks privileges only when a cursor
    /// opens, and a cursor declared before a reload must not go on returning what the roles no longer
    /// allow. A FETCH of a cursor not declared here is refused.
    cursors: Named,
    /// Counts changes to `prepared` and `cursors`: a decision about `EXECUTE name` or `FETCH name`
    /// holds only until it changes.
    named_changes: u64,
    /// Counts what gave a name a text (PREPARE, DECLARE, Parse, Bind): each text is stamped, and a
    /// drop PostgreSQL confirms forgets only texts given before the drop was sent.
    stamp: u64,
    /// When a call of a function the catalog did not know last made this session read it again.
    function_reload: Option<std::time::Instant>,
}

/// How often one session's calls of unknown functions may make Warden read the catalog again.
const FUNCTION_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Enforcer {
    pub fn new(search_path: Vec<String>, db_role: &str) -> Self {
        Enforcer {
            context: SessionContext {
                search_path,
                user: db_role.to_string(),
            },
            prepared: Named::default(),
            cursors: Named::default(),
            named_changes: 0,
            stamp: 0,
            function_reload: None,
        }
    }

    /// How many times the session's SQL-level prepared statements or cursors changed (PREPARE,
    /// DEALLOCATE, DECLARE, CLOSE).
    pub fn named_changes(&self) -> u64 {
        self.named_changes
    }

    /// `in_transaction`: PostgreSQL's last ReadyForQuery said a transaction block is open.
    pub async fn check(
        &mut self,
        shared: &Shared,
        session: &Session,
        sql: &str,
        in_transaction: bool,
    ) -> Result<Verdict, ProxyError> {
        let config = shared.config.load();
        if config.server.danger_disable_statement_checks {
            return Ok(Verdict::Allow {
                effects: Vec::new(),
                review: None,
                may_write: false,
            });
        }
        let current = session.roles.load();
        let roles = resolve(&current, &config);
        if roles.is_empty() {
            return Ok(deny(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("{} holds no role any more", session.claims.identity()),
                "reconnect with a current credential".into(),
            ));
        }
        let db = config.database(&session.database).ok_or_else(|| ProxyError::Upstream {
            database: session.database.clone(),
            reason: "no longer configured".into(),
        })?;
        let context = &self.context;
        let unknown_relation = |a: &warden_sql::Analysis| {
            a.as_ref().as_ref().is_ok_and(|statements| {
                statements.iter().any(|s| {
                    s.forbidden
                        .iter()
                        .any(|f| matches!(f, Forbidden::UnknownRelation(_) | Forbidden::UnknownColumn(_)))
                })
            })
        };
        let unknown_function = |a: &warden_sql::Analysis| -> Option<String> {
            let statements = a.as_ref().as_ref().ok()?;
            statements.iter().find_map(|s| {
                s.functions
                    .iter()
                    .find(|(_, v)| **v == warden_sql::Volatility::Unknown)
                    .map(|(name, _)| name.clone())
            })
        };
        let mut catalog = shared.provisioner.catalog(&shared.db_ca, db, None).await?;
        let mut analysed = shared.analyses.analyze(sql, &catalog, context);
        // A table or function created since the catalog was read (a new function may be SECURITY
        // DEFINER): read it again, once. For functions, at most once a second per session: a
        // function that does not exist would otherwise have every call reload the catalog.
        let function_miss = unknown_function(&analysed);
        let reload_for_function = function_miss.is_some()
            && self
                .function_reload
                .is_none_or(|at| at.elapsed() >= FUNCTION_RELOAD_EVERY);
        if unknown_relation(&analysed) || reload_for_function {
            if function_miss.is_some() {
                self.function_reload = Some(std::time::Instant::now());
            }
            catalog = shared
                .provisioner
                .catalog(&shared.db_ca, db, Some(catalog.generation))
                .await?;
            analysed = shared.analyses.analyze(sql, &catalog, context);
        } else if let Some(f) = function_miss {
            return Ok(deny(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("function {f} is not in the catalog Warden read, which this session had read again less than a second ago"),
                "try again in a second; a function that does not exist fails in PostgreSQL".into(),
            ));
        }
        let statements: &[StatementAccess] = match analysed.as_ref() {
            Ok(s) => s,
            Err(e) => {
                return Ok(deny(
                    sqlstate::SYNTAX_ERROR,
                    e.to_string(),
                    "check the statement's syntax".into(),
                ))
            }
        };
        // A search_path set with other statements could be rolled back with them (an error later in the
        // string aborts the implicit transaction), and inside a transaction block by ROLLBACK: both out
        // of Warden's sight. So SET search_path must stand alone, outside a transaction.
        let sets_path = |s: &StatementAccess| s.effects.iter().any(|e| matches!(e, SessionEffect::SearchPath(_)));
        if statements.len() > 1 && statements.iter().any(sets_path) {
            return Ok(deny(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "SET search_path must be sent on its own, not with other statements".into(),
                "send SET search_path as a statement of its own".into(),
            ));
        }
        let mut in_block = in_transaction;
        for s in statements {
            in_block |= s.class() == warden_sql::Class::Transaction;
            if in_block && s.effects.iter().any(|e| matches!(e, SessionEffect::SearchPath(_))) {
                return Ok(deny(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    "SET search_path inside a transaction block is not supported through Warden (a ROLLBACK would undo it unseen)".into(),
                    "set search_path outside a transaction, or qualify table names with their schema".into(),
                ));
            }
        }
        // Two COPYs from the client in one Query: Warden tells a Sync PostgreSQL ignores during a
        // COPY from one it answers by where the client's CopyDone falls, which it can do for one.
        let copies = statements
            .iter()
            .filter(|s| s.effects.contains(&SessionEffect::CopyFromClient))
            .count();
        if copies > 1 {
            return Ok(deny(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "more than one COPY ... FROM STDIN in one query string is not supported through Warden".into(),
                "send each COPY as a query of its own".into(),
            ));
        }
        // What EXECUTE runs is decided as the statement it prepared, and what FETCH reads as the
        // query its cursor was declared with (most strings have neither). A name may stand for more
        // than one text (see `Named`): all must be allowed.
        let mut executed: Vec<StatementAccess> = Vec::new();
        // Statements run in order: an EXECUTE may use a PREPARE earlier in the same string, a FETCH a
        // DECLARE (if such a PREPARE or DECLARE fails, the rest of the string does not run).
        let mut prepared_here: HashMap<&str, &str> = HashMap::new();
        let mut declared_here: HashMap<&str, &str> = HashMap::new();
        for s in statements {
            for e in &s.effects {
                let name = match e {
                    SessionEffect::Prepare(n)
                    | SessionEffect::Execute(n)
                    | SessionEffect::Declare { name: n, .. }
                    | SessionEffect::Fetch(n)
                    | SessionEffect::Deallocate(Some(n))
                    | SessionEffect::CloseCursor(Some(n)) => Some(n.as_str()),
                    _ => None,
                };
                if let Some(why) = name.and_then(name_too_long) {
                    return Ok(deny(sqlstate::NAME_TOO_LONG, why, "use a shorter name".into()));
                }
                let full = match e {
                    SessionEffect::Prepare(_) => self.prepared_full(),
                    SessionEffect::Declare { .. } => self.cursors_full(),
                    _ => false,
                };
                if full {
                    return Ok(too_many());
                }
                let (here, known, unknown) = match e {
                    SessionEffect::Prepare(name) => {
                        prepared_here.insert(name, &s.text);
                        continue;
                    }
                    SessionEffect::Declare { name, .. } => {
                        declared_here.insert(name, &s.text);
                        continue;
                    }
                    SessionEffect::Execute(name) => (
                        prepared_here.get(name.as_str()).copied(),
                        self.prepared.texts(name),
                        (
                            format!("prepared statement {name} was not prepared through Warden in this session"),
                            "PREPARE it first",
                        ),
                    ),
                    // What a cursor Warden did not see declared reads is unknown (one a function
                    // opened, a protocol-level portal): refused.
                    SessionEffect::Fetch(name) => (
                        declared_here.get(name.as_str()).copied(),
                        self.cursors.texts(name),
                        (
                            format!("cursor {name} was not declared through Warden in this session"),
                            "DECLARE it first; a cursor opened by a function cannot be fetched through Warden",
                        ),
                    ),
                    _ => continue,
                };
                let texts: Vec<&str> = match here {
                    Some(text) => vec![text],
                    None => known.collect(),
                };
                if texts.is_empty() {
                    let (reason, hint) = unknown;
                    return Ok(deny(sqlstate::INSUFFICIENT_PRIVILEGE, reason, hint.into()));
                }
                for text in texts {
                    match analyze(text, &catalog, context) {
                        Ok(inner) => executed.extend(inner),
                        Err(e) => return Ok(deny(sqlstate::SYNTAX_ERROR, e.to_string(), String::new())),
                    }
                }
            }
        }
        let all: std::borrow::Cow<[StatementAccess]> = if executed.is_empty() {
            statements.into()
        } else {
            executed.extend(statements.iter().cloned());
            executed.into()
        };
        let may_write = all.iter().any(warden_policy::may_write);
        Ok(match decide(&all, &roles) {
            Decision::Allow => Verdict::Allow {
                effects: statements
                    .iter()
                    .flat_map(|s| s.effects.iter().map(|e| (s.text.clone(), e.clone())))
                    .collect(),
                review: review_need(may_write, &roles),
                may_write,
            },
            Decision::Deny { reason, hint, .. } => deny(sqlstate::INSUFFICIENT_PRIVILEGE, reason, hint),
        })
    }

    /// Tracks what an allowed statement changed in the session.
    pub fn applied(&mut self, effects: &[(String, SessionEffect)], db_role: &str) {
        for (text, e) in effects {
            match e {
                SessionEffect::SearchPath(p) => self.context.search_path = resolve_path(p, db_role),
                SessionEffect::Prepare(name) => {
                    self.stamp += 1;
                    self.prepared.remember(name, text, self.stamp, true)
                }
                SessionEffect::Declare { name, hold } => {
                    self.stamp += 1;
                    self.cursors.remember(name, text, self.stamp, *hold)
                }
                // DEALLOCATE and CLOSE: forgotten only once PostgreSQL confirms (`forget`).
                _ => continue,
            }
            self.named_changes += 1;
        }
    }

    /// The stamp of the last text given to a name: a drop sent now forgets only texts up to it.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// A statement prepared under `name` through the extended protocol: SQL `EXECUTE name` runs it.
    /// Returns its stamp.
    pub fn parsed(&mut self, name: &str, sql: &str) -> u64 {
        self.protocol_name(name, sql, true)
    }

    /// A portal bound under `name` through the extended protocol: SQL `FETCH` and `MOVE` reach it like
    /// a cursor, and are decided as its statement. It ends with its transaction. Returns its stamp.
    pub fn bound(&mut self, name: &str, sql: &str) -> u64 {
        self.protocol_name(name, sql, false)
    }

    /// A name given through the protocol: a statement (`parsed`) or a portal (`bound`). The unnamed
    /// ones get a stamp but no entry (SQL cannot name them).
    fn protocol_name(&mut self, name: &str, sql: &str, statement: bool) -> u64 {
        self.stamp += 1;
        if !name.is_empty() {
            let store = if statement {
                &mut self.prepared
            } else {
                &mut self.cursors
            };
            // A statement stays until it is closed; a portal ends with its transaction.
            store.remember(name, sql, self.stamp, statement);
            self.named_changes += 1;
        }
        self.stamp
    }

    /// What PostgreSQL confirmed it dropped (a DEALLOCATE, CLOSE or protocol Close that succeeded).
    pub fn forget(&mut self, f: &Forget) {
        let before = (self.prepared.count, self.cursors.count);
        match f {
            Forget::Statement(name, upto) => self.prepared.forget(name, *upto),
            Forget::AllStatements(upto) => self.prepared.forget_all(*upto),
            Forget::Cursor(name, upto) => self.cursors.forget(name, *upto),
            Forget::AllCursors(upto) => self.cursors.forget_all(*upto),
            // Cursors without HOLD and protocol portals end with their transaction.
            Forget::TransactionEnded(upto) => self.cursors.transaction_ended(*upto),
            Forget::Unparsed(name, stamp) => self.prepared.forget_given(name, *stamp),
            Forget::Unbound(name, stamp) => self.cursors.forget_given(name, *stamp),
        }
        // Decisions about EXECUTE or FETCH of a name hold while its texts are the same.
        if (self.prepared.count, self.cursors.count) != before {
            self.named_changes += 1;
        }
    }

    /// Whether any cursor or named portal is kept.
    pub fn has_cursors(&self) -> bool {
        self.cursors.count > 0
    }

    /// Whether a new prepared statement can be kept: past MAX_NAMED, new PREPAREs and named Parse
    /// messages are refused until some are dropped (forgetting one PostgreSQL still holds would let a
    /// refused PREPARE give it another text).
    pub fn prepared_full(&self) -> bool {
        self.prepared.count >= MAX_NAMED
    }

    /// The same for cursors: new DECLAREs and named Bind messages.
    pub fn cursors_full(&self) -> bool {
        self.cursors.count >= MAX_NAMED
    }

    /// Whether the cursor or portal `name` was given another text after stamp `since` (a portal's
    /// Bind): a SQL DECLARE of the name succeeds only if PostgreSQL no longer held the portal (a
    /// ROLLBACK TO SAVEPOINT drops the portals opened after the savepoint), and then the name runs
    /// the declared query, not the portal's.
    pub fn cursor_given_since(&self, name: &str, since: u64) -> bool {
        self.cursors
            .texts
            .get(name)
            .is_some_and(|texts| texts.iter().any(|t| t.stamps.iter().any(|&s| s > since)))
    }

    /// Whether `name` may be a cursor declared WITH HOLD (it outlives its transaction).
    pub fn is_hold_cursor(&self, name: &str) -> bool {
        self.cursors
            .texts
            .get(name)
            .is_some_and(|texts| texts.iter().any(|t| t.outlives_transaction))
    }
}

/// What each name of a session's prepared statements or cursors may stand for in PostgreSQL.
///
/// Warden learns a PREPARE or DECLARE before PostgreSQL has run it, and does not learn whether it
/// failed. One that fails because the name is in use (PostgreSQL keeps the old one) must not make
/// Warden decide the name as the new text: so a name keeps every text it was given, and an EXECUTE or
/// FETCH is allowed only if all are. A name is forgotten once PostgreSQL confirms a DEALLOCATE or
/// CLOSE of it (everything at `ALL`), never before. An EXECUTE or FETCH of a name not known is
/// refused.
#[derive(Default)]
struct Named {
    /// Name -> its texts, each with its stamp and whether it outlives its transaction.
    texts: HashMap<String, Vec<Text>>,
    count: usize,
}

struct Text {
    sql: String,
    /// Each time the name was given this text (a refused PREPARE or Bind of the same text again
    /// must not forget the one PostgreSQL kept): it is forgotten once every one is.
    stamps: SmallVec<[u64; 2]>,
    /// Given more often than `stamps` keeps: no single refused giving forgets it (`forget_given`).
    pinned: bool,
    outlives_transaction: bool,
}

/// The stamps a text keeps; past that it is pinned.
const MAX_STAMPS: usize = 16;

impl Named {
    fn remember(&mut self, name: &str, sql: &str, stamp: u64, outlives_transaction: bool) {
        let texts = self.texts.entry(name.to_string()).or_default();
        if let Some(t) = texts.iter_mut().find(|t| t.sql == sql) {
            // Given again: a drop sent before now does not forget it.
            if t.stamps.len() == MAX_STAMPS {
                t.stamps.remove(0);
                t.pinned = true;
            }
            t.stamps.push(stamp);
            t.outlives_transaction |= outlives_transaction;
            return;
        }
        texts.push(Text {
            sql: sql.to_string(),
            stamps: smallvec::smallvec![stamp],
            pinned: false,
            outlives_transaction,
        });
        self.count += 1;
    }

    /// Forgets the texts `name` was given up to `upto` (a drop confirmed; what came after stays).
    fn forget(&mut self, name: &str, upto: u64) {
        self.forget_stamps(|n, _, s| n == name && s <= upto);
    }

    /// Forgets the giving of a text to `name` at `stamp` only (a Parse or Bind PostgreSQL did not do).
    fn forget_given(&mut self, name: &str, stamp: u64) {
        self.forget_stamps(|n, t, s| n == name && s == stamp && !t.pinned);
    }

    fn forget_all(&mut self, upto: u64) {
        self.forget_stamps(|_, _, s| s <= upto);
    }

    fn transaction_ended(&mut self, upto: u64) {
        self.forget_stamps(|_, t, s| !t.outlives_transaction && s <= upto);
    }

    /// Drops the stamps `gone` says (name, text, stamp), and the texts left without one.
    fn forget_stamps(&mut self, gone: impl Fn(&str, &Text, u64) -> bool) {
        let mut count = 0;
        self.texts.retain(|name, texts| {
            texts.retain_mut(|t| {
                let kept: SmallVec<[u64; 2]> = t.stamps.iter().copied().filter(|&s| !gone(name, t, s)).collect();
                t.stamps = kept;
                !t.stamps.is_empty()
            });
            count += texts.len();
            !texts.is_empty()
        });
        self.count = count;
    }

    fn texts(&self, name: &str) -> impl Iterator<Item = &str> {
        self.texts.get(name).into_iter().flatten().map(|t| t.sql.as_str())
    }

    fn contains(&self, name: &str) -> bool {
        self.texts.contains_key(name)
    }
}

/// Texts of prepared statements, and of cursors, a session may have that Warden keeps track of.
const MAX_NAMED: usize = 1024;

/// The session's roles that the config still defines. A session holds a few: they stay on the stack.
fn resolve<'c>(names: &[String], config: &'c warden_policy::Config) -> SmallVec<[&'c Role; 8]> {
    names.iter().filter_map(|r| config.role(r)).collect()
}

/// A statement that may change data, from a session holding a role with `approval = "statement"`,
/// waits for a human.
fn review_need(may_write: bool, roles: &[&Role]) -> Option<super::review::ReviewNeed> {
    if !may_write {
        return None;
    }
    let reviewed: Vec<String> = roles
        .iter()
        .filter(|r| r.approval == warden_policy::Approval::Statement)
        .map(|r| r.name.clone())
        .collect();
    (!reviewed.is_empty()).then_some(super::review::ReviewNeed { roles: reviewed })
}

impl Enforcer {
    /// For a prepared statement that may write, decided again at each Execute under the session's
    /// current roles (a reload may have put a role under review since the Parse).
    pub fn review_now(&self, shared: &Shared, session: &Session, may_write: bool) -> Option<super::review::ReviewNeed> {
        if !may_write {
            return None;
        }
        let config = shared.config.load();
        let current = session.roles.load();
        let roles = resolve(&current, &config);
        review_need(true, &roles)
    }

    /// Whether `name` was prepared with SQL PREPARE in this session (it shares PostgreSQL's namespace
    /// with protocol-level Parse).
    pub fn is_sql_prepared(&self, name: &str) -> bool {
        self.prepared.contains(name)
    }
}

/// The refusal of a new prepared statement, cursor or named portal past MAX_NAMED.
pub fn too_many() -> Verdict {
    deny(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!(
            "this session has {MAX_NAMED} prepared statements, cursors or named portals open as far as Warden knows"
        ),
        "DEALLOCATE or CLOSE some (or close them through the protocol) first".into(),
    )
}

/// The longest name of a prepared statement or portal PostgreSQL keeps whole (NAMEDATALEN - 1).
pub const MAX_NAME_BYTES: usize = 63;
/// The longest with a character outside ASCII: PostgreSQL compares names in the database's encoding,
/// where such a character may take half as many bytes again as in UTF-8 (or fewer), so a longer one
/// could be cut there where it is not here, or the other way round.
pub const MAX_NON_ASCII_NAME_BYTES: usize = 42;

/// Why the name of a prepared statement, cursor or portal is refused: PostgreSQL tells names apart by
/// their first 63 bytes in the database's encoding, so two longer names that begin alike are one name
/// there, and Warden, which keeps names whole, would decide one statement for what PostgreSQL runs as
/// another. (SQL names reach Warden already cut to 63 bytes of UTF-8 by the grammar.)
pub fn name_too_long(name: &str) -> Option<String> {
    let max = if name.is_ascii() {
        MAX_NAME_BYTES
    } else {
        MAX_NON_ASCII_NAME_BYTES
    };
    if name.len() <= max {
        return None;
    }
    let shown: String = name.chars().take(24).flat_map(char::escape_default).collect();
    Some(format!(
        "the name \"{shown}...\" is too long: PostgreSQL tells prepared statements, cursors and portals apart by their first {MAX_NAME_BYTES} bytes only, so names are at most {MAX_NAME_BYTES} bytes ({MAX_NON_ASCII_NAME_BYTES} with characters outside ASCII)"
    ))
}

fn deny(code: &'static str, reason: String, hint: String) -> Verdict {
    Verdict::Deny { code, reason, hint }
}

/// `"$user", public` as PostgreSQL reports it -> schema names, `$user` replaced by the role.
pub fn resolve_path(entries: &[String], db_role: &str) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.trim().trim_matches('"'))
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e == "$user" {
                db_role.to_string()
            } else {
                e.to_string()
            }
        })
        .collect()
}

/// Parses the text of `SHOW search_path` as PostgreSQL reads it (`SplitIdentifierString`): entries
/// separated by commas outside double quotes, unquoted names folded to lower case, `""` inside
/// quotes standing for one `"`. The setting is shown as it was given (a startup parameter
/// `search_path=HR,public` is shown so, and means `hr`).
pub fn parse_search_path(shown: &str, db_role: &str) -> Vec<String> {
    let mut entries = Vec::new();
    let mut chars = shown.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    Some('"') | None => break,
                    Some(c) => name.push(c),
                }
            }
            // Kept quoted: `resolve_path` takes `"$user"` as the role and other quotes off.
            name = format!("\"{name}\"");
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',' && !c.is_whitespace()) {
                name.extend(c.to_lowercase());
            }
        }
        while chars.next_if(|c| *c != ',').is_some() {}
        entries.push(name);
        if chars.next().is_none() {
            break;
        }
    }
    resolve_path(&entries, db_role)
}

/// The statement Warden runs instead of a denied one: PostgreSQL raises the denial itself.
pub fn denial_statement(code: &str, reason: &str, hint: &str) -> String {
    let lit = |s: &str| {
        // Taken out until none is left: `$war$warden$den$` without its middle is the tag again.
        let mut s = s.replace('\'', "''");
        while s.contains("$warden$") {
            s = s.replace("$warden$", "");
        }
        format!("'{s}'")
    };
    let mut body = format!(
        "RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}",
        lit(code),
        lit(&format!("warden: {reason}"))
    );
    if !hint.is_empty() {
        body += &format!(", HINT = {}", lit(hint));
    }
    format!("DO $warden$ BEGIN {body}; END $warden$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_statement_quotes_everything() {
        let s = denial_statement("42501", "role o'brien may not $warden$ read", "ask");
        assert_eq!(s, "DO $warden$ BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'warden: role o''brien may not  read', HINT = 'ask'; END $warden$");
        // It parses as exactly one DO statement.
        let parsed = warden_sql::analyze(&s, &Default::default(), &Default::default()).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].effects, [SessionEffect::DoBlock]);
        // A tag split by another tag is not one once that is taken out.
        let s = denial_statement(
            "42501",
            "column \"$war$warden$den$; select 1; select $war$warden$den$\"",
            "",
        );
        assert!(!s[12..s.len() - 9].contains("$warden$"), "{s}");
        let parsed = warden_sql::analyze(&s, &Default::default(), &Default::default()).unwrap();
        assert_eq!(parsed.len(), 1, "{s}");
    }

    #[test]
    fn a_name_keeps_every_text_until_postgres_confirms_it_dropped_and_none_is_evicted() {
        let mut e = Enforcer::new(vec!["public".into()], "r");
        let declare =
            |text: &str, hold: bool| vec![(text.to_string(), SessionEffect::Declare { name: "c".into(), hold })];
        e.applied(
            &declare("DECLARE c CURSOR WITH HOLD FOR SELECT secret FROM t", true),
            "r",
        );
        // A DECLARE PostgreSQL may have refused (the name is in use) adds to what c may be.
        e.applied(&declare("DECLARE c CURSOR FOR SELECT 1", false), "r");
        e.applied(&declare("DECLARE c CURSOR FOR SELECT 1", false), "r");
        assert_eq!(e.cursors.texts("c").count(), 2);
        // A CLOSE is not enough (PostgreSQL may skip it): only its confirmation forgets, and only
        // what c was given before the CLOSE was sent.
        let upto = e.stamp();
        e.applied(&[("CLOSE c".into(), SessionEffect::CloseCursor(Some("c".into())))], "r");
        e.applied(&declare("DECLARE c CURSOR FOR SELECT 2", false), "r");
        assert_eq!(e.cursors.texts("c").count(), 3);
        let before = e.named_changes();
        e.forget(&Forget::Cursor("c".into(), upto));
        assert_eq!(
            e.cursors.texts("c").collect::<Vec<_>>(),
            ["DECLARE c CURSOR FOR SELECT 2"]
        );
        assert!(e.named_changes() > before);
        // The end of a transaction forgets what does not outlive it; WITH HOLD stays.
        e.applied(&declare("DECLARE c CURSOR WITH HOLD FOR SELECT 3", true), "r");
        e.forget(&Forget::TransactionEnded(e.stamp()));
        assert_eq!(
            e.cursors.texts("c").collect::<Vec<_>>(),
            ["DECLARE c CURSOR WITH HOLD FOR SELECT 3"]
        );
        // Full: nothing is evicted; new names are refused instead, per store.
        for i in 0..MAX_NAMED {
            e.parsed(&format!("s{i}"), "SELECT 1");
        }
        assert!(e.prepared_full() && !e.cursors_full());
        assert!(e.is_sql_prepared("s0"));
        e.forget(&Forget::AllStatements(e.stamp()));
        assert!(!e.prepared_full() && !e.is_sql_prepared("s0"));
    }

    #[test]
    fn a_parse_or_bind_postgres_did_not_do_forgets_only_its_own_text() {
        let mut e = Enforcer::new(vec!["public".into()], "r");
        // Portal p bound twice: PostgreSQL refused the second Bind (42P03) and kept the first.
        e.bound("p", "INSERT INTO t VALUES (1) RETURNING id");
        let refused = e.bound("p", "SELECT 1");
        e.forget(&Forget::Unbound("p".into(), refused));
        assert_eq!(
            e.cursors.texts("p").collect::<Vec<_>>(),
            ["INSERT INTO t VALUES (1) RETURNING id"]
        );
        // The same for a statement name whose Parse PostgreSQL skipped.
        e.parsed("s", "DELETE FROM t");
        let skipped = e.parsed("s", "SELECT 2");
        e.forget(&Forget::Unparsed("s".into(), skipped));
        assert_eq!(e.prepared.texts("s").collect::<Vec<_>>(), ["DELETE FROM t"]);
        // A refused Bind of the same text again does not forget the kept one.
        let again = e.bound("p", "INSERT INTO t VALUES (1) RETURNING id");
        e.forget(&Forget::Unbound("p".into(), again));
        assert_eq!(
            e.cursors.texts("p").collect::<Vec<_>>(),
            ["INSERT INTO t VALUES (1) RETURNING id"]
        );
        // A CLOSE confirmed after both givings forgets it.
        e.forget(&Forget::Cursor("p".into(), e.stamp()));
        assert_eq!(e.cursors.texts("p").count(), 0);
    }

    #[test]
    fn search_path_parsing() {
        assert_eq!(parse_search_path("\"$user\", public", "agent:x"), ["agent:x", "public"]);
        assert_eq!(parse_search_path("hr,public", "a"), ["hr", "public"]);
        // As PostgreSQL reads a path given at connect: unquoted names folded, quoted ones kept.
        assert_eq!(parse_search_path("HR, Public", "a"), ["hr", "public"]);
        assert_eq!(parse_search_path("\"HR\",  public ", "a"), ["HR", "public"]);
        assert_eq!(parse_search_path("\"a,b\", \"x\"\"y\"", "a"), ["a,b", "x\"y"]);
        assert_eq!(parse_search_path("", "a"), Vec::<String>::new());
    }
}
