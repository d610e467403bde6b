use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::catalog::Volatility;

/// What kind of statement, for the rules a role implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Read,
    Write,
    Ddl,
    Privilege,
    Session,
    Transaction,
    Utility,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Ddl => "DDL",
            Class::Privilege => "privilege",
            Class::Session => "session",
            Class::Transaction => "transaction",
            Class::Utility => "utility",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WriteKind {
    Insert,
    Update,
    Delete,
    Truncate,
    Lock,
}

impl fmt::Display for WriteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteKind::Insert => "insert into",
            WriteKind::Update => "update",
            WriteKind::Delete => "delete from",
            WriteKind::Truncate => "truncate",
            WriteKind::Lock => "lock",
        })
    }
}

/// Never allowed, whatever the roles say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forbidden {
    CopyProgram,
    CopyFile,
    UnknownRelation(String),
    /// A column no relation in scope has: perhaps added since the catalog was read.
    UnknownColumn(String),
    Unsupported(String),
    /// A setting only Warden may set: role, session_authorization, warden.*.
    ProtectedSetting(String),
    DynamicSetConfig,
    PreparedTransaction,
    /// A SECURITY DEFINER function: it runs with its owner's privileges, past the session's grants
    /// and Warden's view of what it touches.
    SecurityDefiner(String),
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Forbidden::CopyProgram => write!(
                f,
                "COPY ... PROGRAM runs a program on the database server and is never allowed"
            ),
            Forbidden::CopyFile => write!(
                f,
                "COPY to or from a server file is never allowed; use COPY ... FROM STDIN / TO STDOUT"
            ),
            Forbidden::UnknownRelation(r) => write!(
                f,
                "relation {r} is not in the catalog; Warden denies what it cannot identify"
            ),
            Forbidden::UnknownColumn(c) => {
                write!(
                    f,
                    "column {c} is not in any relation in scope; Warden denies what it cannot identify"
                )
            }
            Forbidden::Unsupported(what) => write!(f, "{what} is not supported through Warden"),
            Forbidden::ProtectedSetting(s) => write!(f, "setting {s} is managed by Warden and cannot be changed"),
            Forbidden::DynamicSetConfig => write!(f, "set_config with a computed setting name cannot be checked"),
            Forbidden::PreparedTransaction => write!(
                f,
                "two-phase commit (PREPARE TRANSACTION) is not supported through Warden"
            ),
            Forbidden::SecurityDefiner(name) => write!(
                f,
                "function {name} is SECURITY DEFINER: it runs with its owner's privileges, past this session's grants, and Warden cannot see what it reads or changes"
            ),
        }
    }
}

/// Effects on the session that some roles may not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    DoBlock,
    ResetAll,
    Notify,
    /// `SET search_path`: the new path, for the caller to track.
    SearchPath(Vec<String>),
    /// `PREPARE name AS ...`: the name (the inner statement is analysed in this access).
    Prepare(String),
    /// `EXECUTE name`: decided by what `name` was prepared as.
    Execute(String),
    /// `DEALLOCATE name` (None = ALL).
    Deallocate(Option<String>),
    /// `DECLARE name CURSOR FOR ...`: the name, and whether it is `WITH HOLD` (it outlives its
    /// transaction). The query is analysed in this access.
    Declare {
        name: String,
        hold: bool,
    },
    /// `FETCH ... FROM name` or `MOVE ... IN name`: decided by what `name` was declared as.
    Fetch(String),
    /// `CLOSE name` (None = ALL).
    CloseCursor(Option<String>),
    /// `COPY ... FROM STDIN`: the client sends the data next, and PostgreSQL takes any other message
    /// it sends meanwhile as the COPY's error.
    CopyFromClient,
}

/// What one statement touches.
#[derive(Debug, Clone, Default)]
pub struct StatementAccess {
    /// The statement's own text within the string. Only statements with session `effects` are sure
    /// to carry their own: for others, `AnalysisCache` answers with the first text of the same shape
    /// (numeric literals may differ).
    pub text: String,
    pub class: Option<Class>,
    /// Relation -> columns read (expanded: `*` and whole-row references list every column).
    pub reads: BTreeMap<QualifiedName, BTreeSet<String>>,
    /// Relation -> kinds of write and the columns written (insert/update).
    pub writes: BTreeMap<QualifiedName, (BTreeSet<WriteKind>, BTreeSet<String>)>,
    /// Functions called, by name as resolved, with their volatility.
    pub functions: BTreeMap<String, Volatility>,
    pub forbidden: Vec<Forbidden>,
    pub effects: Vec<SessionEffect>,
    /// For `EXPLAIN ANALYZE`: the inner statement runs.
    pub explain_analyze: bool,
    /// Of the relations read or written, those that show other tables' rows (`Catalog::sources`),
    /// with those tables: a row filter on one of them does not apply there.
    pub sources: BTreeMap<QualifiedName, Vec<QualifiedName>>,
    /// Of the relations read or written, those whose rows other relations show too
    /// (`Catalog::shown_by`), with those: a row filter on a partition does not apply through its parent.
    pub shown_by: BTreeMap<QualifiedName, Vec<QualifiedName>>,
}

impl StatementAccess {
    pub fn class(&self) -> Class {
        self.class.unwrap_or(Class::Utility)
    }

    pub(crate) fn read(&mut self, rel: &QualifiedName, columns: impl IntoIterator<Item = String>) {
        self.reads.entry(rel.clone()).or_default().extend(columns);
    }

    pub(crate) fn write(&mut self, rel: &QualifiedName, kind: WriteKind, columns: impl IntoIterator<Item = String>) {
        let e = self.writes.entry(rel.clone()).or_default();
        e.0.insert(kind);
        e.1.extend(columns);
    }

    /// Raises the class: a statement that writes anywhere is a write, and so on.
    pub(crate) fn raise(&mut self, class: Class) {
        self.class = Some(match self.class {
            None => class,
            Some(c) => c.max(class),
        });
    }
}
