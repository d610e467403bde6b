//! The Ready phase: relay messages both ways, record each statement before it is forwarded and its
//! outcome after PostgreSQL answers.
//!
//! Two tasks, one per direction, so that neither side's backpressure can stall the other (a
//! single-task relay deadlocks when both socket buffers fill). They share a queue of statements in
//! flight: the client side pushes one entry per Query, Execute, Describe of a statement and Sync; the
//! server side pops them as CommandComplete, RowDescription or NoData, ErrorResponse and ReadyForQuery
//! come back. Result sets stream through message by message; nothing buffers more than one message.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use warden_audit::Parameters;
use warden_wire::backend::{command_rows, BackendMessage, ErrorResponse, ValueFormat};
use warden_wire::frontend::{self as fe, FrontendMessage};
use warden_wire::{split_frame, sqlstate, Frame};

use super::backend::Upstream;
use super::cancel::CancelTarget;
use super::enforce::{denial_statement, parse_search_path, Enforcer, Verdict};
use super::error::ProxyError;
use super::frontend::{greeting, ClientStream};
use super::io::Framed;
use super::lifecycle::Kill;
use super::review::{new_review_id, ReviewInfo, ReviewNeed, ReviewOutcome};
use super::{Session, Shared};
use warden_sql::SessionEffect;

use super::backend::UpstreamStream;

/// Why a session ended, as recorded in `session.end`.
#[derive(Debug, Clone)]
enum End {
    Client,
    Server,
    Shutdown,
    /// Ended from outside: a lock, a revocation, expiry or a reload.
    Killed(Kill),
    /// Ended by Warden: the SQLSTATE the client is told, and why.
    Failed {
        code: &'static str,
        reason: String,
    },
}

impl End {
    fn reason(&self) -> String {
        match self {
            End::Client => "client".into(),
            End::Server => "server closed the connection".into(),
            End::Shutdown => "warden shutdown".into(),
            End::Killed(k) => format!("{}: {}", k.cause.as_str(), k.message),
            End::Failed { reason, .. } => format!("error: {reason}"),
        }
    }

    fn protocol(reason: String) -> Self {
        End::Failed {
            code: sqlstate::PROTOCOL_VIOLATION,
            reason,
        }
    }

    fn io(reason: String) -> Self {
        End::Failed {
            code: sqlstate::CONNECTION_FAILURE,
            reason,
        }
    }
}

/// A statement (or sync point) waiting for PostgreSQL's answer.
#[derive(Debug)]
enum Pending {
    /// A simple-protocol Query: answered by zero or more results, then ReadyForQuery.
    Simple(Outcome),
    /// An extended-protocol Execute: answered by CommandComplete, EmptyQuery, PortalSuspended or an error.
    Execute(Outcome),
    /// A Describe of a prepared statement: answered by ParameterDescription, then RowDescription or
    /// NoData. The columns are kept for the statement's Executes, whose results come without a
    /// RowDescription when the portal is not described (tokio-postgres, JDBC: prepare once, then only
    /// bind and execute). `None` for a statement Warden does not track.
    Describe(Option<Described>),
    /// The ReadyForQuery that ends an extended-protocol batch (or answers a FunctionCall), with the
    /// enforcer's stamp when it was sent, and the `query` record of the statement sent just before
    /// it. PostgreSQL ignores a Sync that reaches it while that statement copies from the client
    /// (libpq sends one right after the Execute of a `COPY ... FROM STDIN`): no ReadyForQuery comes
    /// for it then (`ServerSide::copy_in`).
    Sync(u64, Option<u64>),
    /// A Close of a prepared statement or portal: forgotten once PostgreSQL answers CloseComplete (it
    /// skips a Close after an error earlier in the batch, and the name then stays what it was).
    Close(Forget),
    /// A client's Parse of this statement name, with its stamp: answered by ParseComplete. If
    /// PostgreSQL refuses or skips it, the name does not stand for its text (a skipped Parse of the
    /// unnamed statement leaves the old one), so Warden forgets what the Parse gave the name
    /// (`Forget::Unparsed`): a Bind of it is then refused rather than decided as a statement
    /// PostgreSQL does not have. Also tells the client's ParseComplete from a stand-in's.
    Parse(String, u64),
    /// A client's Bind of this portal, with its stamp: answered by BindComplete. If PostgreSQL refuses
    /// or skips it, the name keeps what it held before (a named portal in use, or the unnamed one when
    /// the parameters do not match), so Warden forgets what the Bind gave the name
    /// (`Forget::Unbound`): an Execute of it is then refused rather than decided as a statement
    /// PostgreSQL did not bind.
    Bind(String, u64),
}

/// A name PostgreSQL is asked to drop (CLOSE, DEALLOCATE, DISCARD ALL, a protocol Close). Warden
/// forgets it only once PostgreSQL confirms: a name Warden forgot while PostgreSQL kept it could be
/// given another text by a PREPARE or DECLARE that PostgreSQL refuses (the name is in use), and its
/// EXECUTE or FETCH would be decided as that text.
///
/// Each carries the enforcer's stamp when the drop was sent: only texts given up to then are
/// forgotten (a Parse or PREPARE of the name sent after the drop, before its answer, stays).
#[derive(Debug, Clone)]
pub enum Forget {
    Statement(String, u64),
    AllStatements(u64),
    /// A cursor, or a portal (they share PostgreSQL's namespace).
    Cursor(String, u64),
    AllCursors(u64),
    /// A ReadyForQuery outside a transaction: cursors without HOLD and portals are gone.
    TransactionEnded(u64),
    /// A Parse PostgreSQL refused or skipped: only the text that Parse (this stamp) gave the name.
    Unparsed(String, u64),
    /// A Bind PostgreSQL refused or skipped: only the text that Bind (this stamp) gave the name;
    /// what the name held before may still be there.
    Unbound(String, u64),
}

impl Forget {
    /// The names a statement's effects drop, if it succeeds; `upto` is the stamp before its own.
    fn of(effects: &[(String, SessionEffect)], upto: u64) -> Vec<Forget> {
        effects
            .iter()
            .filter_map(|(_, e)| match e {
                SessionEffect::Deallocate(Some(n)) => Some(Forget::Statement(n.clone(), upto)),
                SessionEffect::Deallocate(None) => Some(Forget::AllStatements(upto)),
                SessionEffect::CloseCursor(Some(n)) => Some(Forget::Cursor(n.clone(), upto)),
                SessionEffect::CloseCursor(None) => Some(Forget::AllCursors(upto)),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug)]
struct Outcome {
    query_seq: u64,
    started: Instant,
    rows: u64,
    data_rows: u64,
    error: Option<String>,
    /// The first result set's columns.
    columns: Option<Arc<Columns>>,
    /// An Execute's: its statement's columns, as described earlier, for a result without a
    /// RowDescription of its own.
    described: Option<Described>,
    /// An Execute's: the result formats its Bind asked for, which decide how sample rows are read
    /// (a statement's description says text for every column).
    formats: Option<ResultFormats>,
    /// Its first rows, when `[audit] result_rows` asks for them.
    sample: Vec<Vec<Option<String>>>,
    /// Warden's stand-in for a denied statement: its error is the denial (shown without PL/pgSQL context).
    denied: bool,
    /// An Execute's: the stamps of the Parse and the Bind its portal came from, so that an error at
    /// either is recorded as its own.
    from: Option<(u64, u64)>,
    /// Names it drops: forgotten by Warden if it succeeds.
    forgets: Vec<Forget>,
    /// A Query's: the enforcer's stamp once it was decided (for the ReadyForQuery that answers it).
    stamp: u64,
}

/// A prepared statement's columns, once PostgreSQL has described it.
type Described = Arc<OnceLock<Arc<Columns>>>;

/// The result format codes of a Bind: one for every column, or one each.
#[derive(Debug, Clone)]
enum ResultFormats {
    All(i16),
    Each(Arc<[i16]>),
}

impl ResultFormats {
    fn of(codes: &[i16]) -> Self {
        match codes {
            [] => ResultFormats::All(0),
            [code] => ResultFormats::All(*code),
            _ => ResultFormats::Each(codes.into()),
        }
    }

    fn get(&self, column: usize) -> Option<i16> {
        match self {
            ResultFormats::All(code) => Some(*code),
            ResultFormats::Each(codes) => codes.get(column).copied(),
        }
    }
}

/// A result's columns, from PostgreSQL's RowDescription.
#[derive(Debug)]
struct Columns {
    /// For the `query.result` record.
    names: Arc<Vec<String>>,
    /// To read sample rows: each column's format code and type.
    formats: Vec<i16>,
    types: Vec<u32>,
}

impl Outcome {
    fn new(query_seq: u64) -> Self {
        Outcome {
            query_seq,
            started: Instant::now(),
            rows: 0,
            data_rows: 0,
            error: None,
            columns: None,
            described: None,
            formats: None,
            sample: Vec::new(),
            denied: false,
            forgets: Vec::new(),
            stamp: 0,
            from: None,
        }
    }

    fn denied(query_seq: u64) -> Self {
        Outcome {
            denied: true,
            ..Outcome::new(query_seq)
        }
    }
}

/// What PostgreSQL has answered in the current batch, counted by the server side: a simple Query (or a
/// function call) sent before a batch's Sync runs only if no extended message before it failed
/// (PostgreSQL skips everything up to Sync after an error), so the client side waits for those
/// answers before deciding what to record.
#[derive(Default)]
struct Replies {
    /// ReadyForQuery messages seen: the batch the counts below belong to.
    batches: std::sync::atomic::AtomicU64,
    answered: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicBool,
    /// The client side waits (the server side wakes it only then).
    waiting: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
    /// Names PostgreSQL confirmed dropped, for the client side to forget before its next decision.
    forgotten: Mutex<Vec<Forget>>,
    /// Whether `forgotten` has any (read before taking its lock, once per client message).
    any_forgotten: std::sync::atomic::AtomicBool,
    /// The stamp of the last ReadyForQuery outside a transaction: cursors without HOLD and portals
    /// given up to it are gone (kept as a number: most statements end so, and need no message).
    transaction_ended: std::sync::atomic::AtomicU64,
}

impl Replies {
    fn answered(&self, failed: bool) {
        if failed {
            self.failed.store(true, Ordering::SeqCst);
        } else {
            self.answered.fetch_add(1, Ordering::SeqCst);
        }
        self.wake();
    }

    fn batch_ended(&self) {
        self.answered.store(0, Ordering::SeqCst);
        self.failed.store(false, Ordering::SeqCst);
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.wake();
    }

    fn confirm(&self, forgets: impl IntoIterator<Item = Forget>) {
        self.forgotten.lock().expect("forgotten lock poisoned").extend(forgets);
        self.any_forgotten.store(true, Ordering::SeqCst);
    }

    fn take_forgotten(&self) -> Vec<Forget> {
        if !self.any_forgotten.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        std::mem::take(&mut *self.forgotten.lock().expect("forgotten lock poisoned"))
    }

    fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            self.changed.notify_waiters();
        }
    }

    /// Waits until batch number `batch` has `due` answers (`Some(true)`) or an error
    /// (`Some(false)`). `None` if PostgreSQL has answered more batches than were sent: Warden has
    /// lost count, and the session must end.
    async fn settled(&self, batch: u64, due: u64) -> Option<bool> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            let seen = self.batches.load(Ordering::SeqCst);
            if seen > batch {
                self.waiting.store(false, Ordering::SeqCst);
                return None;
            }
            if seen == batch {
                if self.failed.load(Ordering::SeqCst) {
                    self.waiting.store(false, Ordering::SeqCst);
                    return Some(false);
                }
                if self.answered.load(Ordering::SeqCst) >= due {
                    self.waiting.store(false, Ordering::SeqCst);
                    return Some(true);
                }
            }
            changed.await;
        }
    }
}

type Queue = Arc<Mutex<VecDeque<Pending>>>;

/// Takes the Syncs at the front of the queue that PostgreSQL ignored because they came during the
/// COPY from the client of statement `copy_in`, as if their ReadyForQuery had come (the client side
/// counted one for each). They reach the front once the COPY's statement has its answer. Whether any
/// was taken.
fn ignored_syncs(q: &mut VecDeque<Pending>, copy_in: Option<u64>, rfq_seen: &mut u64, replies: &Replies) -> bool {
    let mut any = false;
    while let Some(Pending::Sync(_, during @ Some(_))) = q.front() {
        if *during != copy_in {
            break;
        }
        q.pop_front();
        *rfq_seen += 1;
        replies.batch_ended();
        any = true;
    }
    any
}

pub async fn run(
    shared: Arc<Shared>,
    session: Arc<Session>,
    mut kill: watch::Receiver<Option<Kill>>,
    client: Framed<ClientStream>,
    upstream: Upstream,
    mut shutdown: watch::Receiver<bool>,
) {
    let held = Arc::new(tokio::sync::Notify::new());
    let cancel_key = shared.cancels.register(CancelTarget {
        host: upstream.host.clone(),
        port: upstream.port,
        process_id: upstream.backend_key.0,
        secret_key: upstream.backend_key.1,
        held: held.clone(),
    });
    let started = Instant::now();
    let (client_stream, client_buf) = client.into_parts();
    let max = shared.config.load().server.max_message_size;
    let (upstream_stream, upstream_buf) = upstream.conn.into_parts();
    let (client_rd, mut client_wr) = tokio::io::split(client_stream);
    let (server_rd, server_wr) = tokio::io::split(upstream_stream);

    let mut body = session.event("session.start");
    body.reason = Some(format!("backend pid {}", upstream.backend_key.0));
    if let Err(e) = shared.audit.append(body).await {
        tracing::error!(session = %session.id, error = %e, "audit unavailable: session refused");
        let e = ProxyError::AuditUnavailable { reason: e.to_string() };
        let mut buf = BytesMut::new();
        fatal(&e, &mut buf);
        let _ = write_flush(&mut client_wr, &buf).await;
        shared.cancels.remove(cancel_key);
        shared.sessions.remove(&session.id);
        return;
    }
    let mut hello = BytesMut::new();
    greeting(&upstream.params, cancel_key, &mut hello);
    if write_flush(&mut client_wr, &hello).await.is_err() {
        shared.cancels.remove(cancel_key);
        shared.sessions.remove(&session.id);
        return;
    }
    tracing::info!(session = %session.id, identity = %session.claims.identity(), db_role = %session.db_role, database = %session.database, "session started");

    let queue: Queue = Arc::default();
    // Messages Warden itself sends the client mid-session (the NOTICE of a held statement) go through
    // the task that owns the client's write half.
    let (notice_tx, notice_rx) = tokio::sync::mpsc::unbounded_channel();
    let tx_status = Arc::new(AtomicU8::new(b'I'));
    let replies = Arc::new(Replies::default());
    let db_role = session.db_role.clone();
    let mut to_server = ClientSide {
        shared: &shared,
        session: &session,
        queue: queue.clone(),
        tx_status: tx_status.clone(),
        rd: client_rd,
        buf: client_buf,
        wr: server_wr,
        max,
        statements: HashMap::new(),
        portals: HashMap::new(),
        no_effects: Arc::default(),
        enforcer: Enforcer::new(parse_search_path(&upstream.search_path, &db_role), &db_role),
        notices: notice_tx,
        // Grown by the first message that needs it, then kept: an idle session holds no write buffer.
        out: BytesMut::new(),
        rfq: 0,
        batch_denied: false,
        replies_due: 0,
        replies: replies.clone(),
        ended_applied: 0,
        held,
        acks: None,
        copy_ended: None,
        copy_open: None,
        stopping: shutdown.clone(),
    };
    let mut to_client = ServerSide {
        shared: &shared,
        session: &session,
        queue,
        tx_status,
        rd: server_rd,
        buf: upstream_buf,
        wr: client_wr,
        max,
        notices: notice_rx,
        rfq_seen: 0,
        result_rows: shared.config.load().audit.result_rows,
        last_columns: None,
        describing: false,
        replies,
        copy_in: None,
        out_of_step: None,
    };
    let draining = drain(&mut shutdown, to_client.queue.clone());
    let expiry = expires(&session);
    // A lock written between authentication and registration would otherwise be missed.
    let early = match shared.block_for(&session.subject()) {
        Ok(block) => block.map(|b| Kill::for_block(&b)),
        Err(e) => {
            tracing::error!(session = %session.id, error = %e, "cannot read the state store: ending the session");
            Some(Kill::state_unreadable())
        }
    };
    let end = if let Some(k) = early {
        End::Killed(k)
    } else {
        // Ends from outside first: a kill sent while the session was being set up (a reload, an
        // expiry) must not lose to client messages already buffered.
        tokio::select! {
        biased;
        k = killed(&mut kill) => End::Killed(k),
        _ = expiry => End::Killed(Kill::expiry(&session)),
        _ = draining => End::Shutdown,
        e = to_server.run() => e,
        e = to_client.run() => e,
        }
    };
    shared.sessions.remove(&session.id);
    // Statements sent but not answered when the session ended: PostgreSQL may have run them, so
    // each gets its query.result, saying the answer never came.
    let unanswered: Vec<Outcome> = to_client
        .queue
        .lock()
        .expect("relay queue lock poisoned")
        .iter_mut()
        .filter_map(|p| match p {
            Pending::Simple(o) | Pending::Execute(o) => Some(std::mem::replace(o, Outcome::new(o.query_seq))),
            Pending::Describe(_) | Pending::Sync(..) | Pending::Close(_) | Pending::Parse(..) | Pending::Bind(..) => {
                None
            }
        })
        .collect();
    if matches!(end, End::Killed(_) | End::Shutdown) && !unanswered.is_empty() {
        // A statement is running (at shutdown: still, after the drain's grace): stop it in
        // PostgreSQL too, not only the client's view of it.
        let _ = tokio::time::timeout(KILL_IO_TIMEOUT, shared.cancels.cancel(cancel_key.0, cancel_key.1)).await;
    }
    let farewell = match &end {
        End::Shutdown => Some((
            sqlstate::ADMIN_SHUTDOWN,
            "warden: Warden is shutting down; reconnect in a moment".to_string(),
        )),
        End::Killed(k) => Some((
            sqlstate::ADMIN_SHUTDOWN,
            format!("warden: session ended: {}", k.message),
        )),
        End::Failed { code, reason } => Some((*code, format!("warden: session ended: {reason}"))),
        End::Client | End::Server => None,
    };
    if let Some((code, message)) = farewell {
        let mut buf = BytesMut::new();
        ErrorResponse {
            severity: "FATAL",
            code,
            message: &message,
            detail: None,
            hint: None,
        }
        .encode(&mut buf);
        // A client that stops reading must not hold the session open.
        let _ = tokio::time::timeout(KILL_IO_TIMEOUT, write_flush(&mut to_client.wr, &buf)).await;
    }
    let _ = tokio::time::timeout(KILL_IO_TIMEOUT, to_client.wr.shutdown()).await;
    // PostgreSQL's end too, before anything waits on the audit writer: a stuck writer must not keep
    // the backend (and what the session holds in it) alive.
    let _ = tokio::time::timeout(KILL_IO_TIMEOUT, to_server.wr.shutdown()).await;
    shared.cancels.remove(cancel_key);
    for mut o in unanswered {
        o.error.get_or_insert_with(|| {
            format!(
                "session ended before PostgreSQL's answer was relayed ({})",
                end.reason()
            )
        });
        to_client.record_result(o);
    }
    let mut body = session.event("session.end");
    body.reason = Some(end.reason());
    body.duration_us = Some(started.elapsed().as_micros() as u64);
    if let Err(e) = shared.audit.append(body).await {
        tracing::error!(session = %session.id, error = %e, "cannot record session.end");
    }
    tracing::info!(session = %session.id, reason = %end.reason(), "session ended");
}

/// Resolves with the reason once Warden ends this session from outside (lock, revocation, reload).
async fn killed(rx: &mut watch::Receiver<Option<Kill>>) -> Kill {
    let kill = match rx.wait_for(|k| k.is_some()).await {
        Ok(k) => k.clone(),
        Err(_) => None,
    };
    match kill {
        Some(k) => k,
        // The registry dropped the sender: nothing will end this session from outside.
        None => std::future::pending().await,
    }
}

/// Resolves when the session's credential passes its `not_after`.
async fn expires(session: &Session) {
    let left = session.claims.not_after - time::OffsetDateTime::now_utc();
    let left = std::time::Duration::try_from(left).unwrap_or_default();
    tokio::time::sleep(left).await;
}

/// Resolves once Warden is stopping and this session has nothing in flight (or after a grace period):
/// SIGTERM lets running statements finish and ends idle sessions at once.
async fn drain(shutdown: &mut watch::Receiver<bool>, queue: Queue) {
    let _ = shutdown.wait_for(|s| *s).await;
    let deadline = Instant::now() + DRAIN_GRACE;
    // A statement or a Sync sent and not answered; a Parse, Bind, Describe or Close sent without a
    // Sync or Flush by a client that then went idle is not waited for.
    let in_flight = |q: &VecDeque<Pending>| {
        q.iter()
            .any(|p| matches!(p, Pending::Simple(_) | Pending::Execute(_) | Pending::Sync(..)))
    };
    while Instant::now() < deadline && in_flight(&queue.lock().expect("relay queue lock poisoned")) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Longest value (bytes) of a recorded result row; longer ones are cut.
const MAX_SAMPLE_VALUE: usize = 256;

/// A result row for the record, its columns read as `column` says (unknown: guessed per value).
fn data_row(body: &[u8], column: impl Fn(usize) -> ValueFormat) -> Option<Vec<Option<String>>> {
    warden_wire::backend::data_row(body, column, MAX_SAMPLE_VALUE)
}

/// How long the farewell, the shutdown and the cancel of an ended session may take.
const KILL_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The `error` of a statement PostgreSQL skipped.
const NOT_RUN: &str = "not run: an earlier message of the batch failed";

fn copies_from_client(effects: &[(String, SessionEffect)]) -> bool {
    effects.iter().any(|(_, e)| *e == SessionEffect::CopyFromClient)
}

/// How long a stopping Warden waits for a session's statements in flight.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

fn fatal(e: &ProxyError, buf: &mut BytesMut) {
    let message = e.client_message();
    ErrorResponse {
        severity: "FATAL",
        code: e.sqlstate(),
        message: &message,
        detail: None,
        hint: None,
    }
    .encode(buf);
}

/// Client -> PostgreSQL.
struct ClientSide<'a> {
    shared: &'a Shared,
    session: &'a Session,
    queue: Queue,
    rd: ReadHalf<ClientStream>,
    buf: BytesMut,
    wr: WriteHalf<UpstreamStream>,
    max: usize,
    /// The transaction status of PostgreSQL's last ReadyForQuery (`I`, `T` or `E`).
    tx_status: Arc<AtomicU8>,
    /// Prepared statement name -> what it is, so an Execute is recorded with what it runs.
    statements: HashMap<String, Prepared>,

    /// Portal name -> (statement text, parameters as bound, denied).
    portals: HashMap<String, Portal>,
    /// The effects of statements that have none, shared.
    no_effects: Arc<Vec<(String, SessionEffect)>>,
    enforcer: Enforcer,
    notices: tokio::sync::mpsc::UnboundedSender<BytesMut>,
    /// Messages decided and waiting to be written to PostgreSQL.
    out: BytesMut,
    /// How many ReadyForQuery messages PostgreSQL sends before the one that ends the current batch
    /// (one per Query and per Sync sent so far).
    rfq: u64,
    /// A stand-in has been sent in the current extended-protocol batch: PostgreSQL is certain to skip
    /// everything after it up to Sync.
    batch_denied: bool,
    /// Answers PostgreSQL owes for the extended messages of the current batch (one each for Parse,
    /// Bind, Close, Describe and Execute). With `batch_denied`, whether an extended batch is open.
    replies_due: u64,
    /// The server side's count of those answers, to learn whether the batch failed.
    replies: Arc<Replies>,
    /// The last end of a transaction applied (`Replies::transaction_ended`).
    ended_applied: u64,
    /// Woken by the client's CancelRequest.
    held: Arc<tokio::sync::Notify>,
    /// Where the audit writer answers this session's `query` records, one at a time (made by the
    /// first: an idle session holds none).
    acks: Option<Arc<warden_audit::Acks>>,
    /// The `query` record of the statement whose COPY data the client last ended (CopyDone or
    /// CopyFail): a Sync after that is not one PostgreSQL ignores.
    copy_ended: Option<u64>,
    /// The `query` record of a `COPY ... FROM STDIN` sent and not yet ended by the client.
    copy_open: Option<u64>,
    /// Warden is draining: no new statement starts; the session ends once what runs has answered.
    stopping: watch::Receiver<bool>,
}

/// The end of a statement review.
enum Reviewed {
    Approved(String),
    Refused {
        id: String,
        code: &'static str,
        reason: String,
    },
    /// The client went away while its statement was held: the review is withdrawn.
    ClientGone,
}

/// What Warden knows of a prepared statement PostgreSQL holds under a name.
#[derive(Clone)]
struct Prepared {
    sql: Arc<str>,
    /// Session effects to apply when it runs.
    effects: Arc<Vec<(String, SessionEffect)>>,
    /// May change data: held for review at Execute if the session then holds a reviewed role.
    may_write: bool,
    /// Its columns, made when the client first describes it.
    described: Option<Described>,
    /// Its Parse's stamp (the enforcer's), so its portals are known.
    parse: u64,
    /// The batch its Parse was sent in (Syncs and Queries sent before it).
    batch: u64,
    /// What its decision was made under.
    decided: Decided,
}

/// What a statement's decision at Parse was made under. An Execute under another configuration or
/// other roles (a reload since), or after the session's SQL-level prepared statements or cursors
/// changed (what an `EXECUTE name` runs, what a `FETCH name` reads), decides the statement again.
#[derive(Clone)]
struct Decided {
    config: Arc<warden_policy::Config>,
    roles: Arc<Vec<String>>,
    named_changes: u64,
}

impl Decided {
    fn now(shared: &Shared, session: &Session, enforcer: &Enforcer) -> Decided {
        Decided {
            config: shared.config.load_full(),
            roles: session.roles.load_full(),
            named_changes: enforcer.named_changes(),
        }
    }

    fn current(&self, shared: &Shared, session: &Session, enforcer: &Enforcer) -> bool {
        Arc::ptr_eq(&self.config, &shared.config.load())
            && Arc::ptr_eq(&self.roles, &session.roles.load())
            && self.named_changes == enforcer.named_changes()
    }
}

#[derive(Clone)]
struct Portal {
    sql: Arc<str>,
    /// Shared with the records of its Executes.
    params: Parameters,
    /// Why running it is refused (a portal Warden did not let PostgreSQL bind as the client asked).
    denied: Option<String>,
    effects: Arc<Vec<(String, SessionEffect)>>,
    may_write: bool,
    /// Its statement's columns, once the statement is described (before or after the Bind).
    described: Option<Described>,
    formats: ResultFormats,
    /// The Parse of the statement it was bound from.
    parse: u64,
    /// Its Bind's stamp.
    bound: u64,
    /// The batch its Bind was sent in (Syncs and Queries sent before it).
    batch: u64,
    decided: Option<Decided>,
}

impl ClientSide<'_> {
    async fn run(&mut self) -> End {
        loop {
            loop {
                let frame = match split_frame(&mut self.buf, self.max) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return End::protocol(format!("client sent a bad message: {e}")),
                };
                if matches!(frame.tag, b'Q' | b'P' | b'B' | b'E' | b'F') && *self.stopping.borrow() {
                    // Not sent, not recorded: the drain ends the session once the queue is empty.
                    // A Flush, so that an Execute sent before without a Sync is answered.
                    self.out.extend_from_slice(b"H\0\0\0\x04");
                    if let Err(e) = self.flush_out().await {
                        return e;
                    }
                    return std::future::pending().await;
                }
                if matches!(frame.tag, b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'F') && self.copying() {
                    // PostgreSQL would take it as the COPY's error and answer nothing else for it:
                    // Warden's count of answers would no longer match.
                    let _ = self.flush_out().await;
                    return End::protocol(format!(
                        "a message of type '{}' was sent during COPY FROM STDIN; send CopyDone or CopyFail first",
                        frame.tag as char
                    ));
                }
                let mut ends_batch = matches!(frame.tag, b'Q' | b'S' | b'F');
                let denied_before = self.batch_denied;
                match self.inspect(&frame).await {
                    Ok(Step::Forward) => {
                        self.out.extend_from_slice(&frame.raw);
                        // An extended message PostgreSQL will answer (not one it skips).
                        if matches!(frame.tag, b'P' | b'B' | b'D' | b'E' | b'C') && !denied_before {
                            self.replies_due += 1;
                        }
                    }
                    // Not sent, so no ReadyForQuery comes for it.
                    Ok(Step::Skip) => ends_batch = false,
                    Ok(Step::Replace(instead)) => self.out.extend_from_slice(&instead),
                    Ok(Step::Terminate) => {
                        self.out.extend_from_slice(&frame.raw);
                        let _ = write_flush(&mut self.wr, &self.out).await;
                        return End::Client;
                    }
                    Ok(Step::ClientGone) => return End::Client,
                    Err(e) => {
                        let _ = write_flush(&mut self.wr, &self.out).await;
                        return End::Failed {
                            code: e.sqlstate(),
                            reason: e.to_string(),
                        };
                    }
                }
                if ends_batch {
                    self.rfq += 1;
                    self.batch_denied = false;
                    self.replies_due = 0;
                }
            }
            if let Err(e) = self.flush_out().await {
                return e;
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8 * 1024);
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) => return End::Client,
                Ok(_) => {}
                Err(e) => return End::io(format!("reading from client: {e}")),
            }
        }
    }

    async fn flush_out(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            if let Err(e) = write_flush(&mut self.wr, &self.out).await {
                return Err(End::io(format!("writing to PostgreSQL: {e}")));
            }
            self.out.clear();
        }
        Ok(())
    }

    /// Decides and records what must be decided and recorded before `frame` goes on.
    async fn inspect(&mut self, frame: &Frame) -> Result<Step, ProxyError> {
        self.apply_forgotten();
        let batch_open = self.replies_due > 0 || self.batch_denied;
        if matches!(frame.tag, b'Q' | b'F') && batch_open && !self.batch_ran().await? {
            // Inside an extended batch (drivers send BEGIN after Close, or after a prepare answered
            // under Flush): it runs only if nothing before it in the batch failed.
            return Ok(Step::Skip);
        }
        match FrontendMessage::parse(frame)? {
            FrontendMessage::Query { sql } => {
                let verdict = self
                    .enforcer
                    .check(self.shared, self.session, sql, self.in_transaction())
                    .await?;
                let (verdict, review) = match verdict {
                    Verdict::Allow {
                        effects,
                        review: Some(need),
                        may_write,
                    } => match self.review(sql, None, &need).await? {
                        Reviewed::Approved(id) => (
                            Verdict::Allow {
                                effects,
                                review: None,
                                may_write,
                            },
                            Some(id),
                        ),
                        Reviewed::Refused { id, code, reason } => (review_denial(code, reason), Some(id)),
                        Reviewed::ClientGone => return Ok(Step::ClientGone),
                    },
                    v => (v, None),
                };
                return self.simple(sql, verdict, review.as_deref()).await;
            }
            FrontendMessage::Parse { name, sql, .. } => {
                if self.batch_denied {
                    // PostgreSQL skips it (an earlier stand-in in this batch failed): it creates nothing.
                    return Ok(Step::Forward);
                }
                if let Some(refused) = self.refuse_long_name(sql, &[name]).await? {
                    return Ok(refused);
                }
                // A driver reusing a name it closes in this same batch (Npgsql's auto-prepare): once
                // PostgreSQL has done the Close, the name is free. Waited for here (the batch so far
                // is sent with a Flush); if something in it failed, PostgreSQL skips this Parse too.
                if !name.is_empty() && self.statements.contains_key(name) && self.close_pending(name) {
                    if !self.batch_ran().await? {
                        return Ok(Step::Forward);
                    }
                    self.apply_forgotten();
                }
                // PostgreSQL refuses a name in use; deciding here keeps Warden's view of what each
                // name runs the same as PostgreSQL's (SQL PREPARE shares the namespace).
                if !name.is_empty() && (self.statements.contains_key(name) || self.enforcer.is_sql_prepared(name)) {
                    let reason = format!("prepared statement \"{name}\" already exists");
                    return self
                        .deny_extended(
                            sql,
                            None,
                            sqlstate::DUPLICATE_PREPARED_STATEMENT,
                            reason,
                            "close it first, or use another name".into(),
                            None,
                        )
                        .await;
                }
                // Taken before deciding: a reload meanwhile makes the Execute decide again.
                let decided = Decided::now(self.shared, self.session, &self.enforcer);
                let verdict = if !name.is_empty() && self.enforcer.prepared_full() {
                    super::enforce::too_many()
                } else {
                    self.enforcer
                        .check(self.shared, self.session, sql, self.in_transaction())
                        .await?
                };
                match verdict {
                    Verdict::Allow { effects, may_write, .. } => {
                        // Its effects on the session count when it runs (Execute), not when parsed;
                        // whether it is held is decided then too, under the roles of that moment.
                        // Most statements have no effects: they share one empty list.
                        let effects = if effects.is_empty() {
                            self.no_effects.clone()
                        } else {
                            Arc::new(effects)
                        };
                        // Drivers that parse the unnamed statement before each run (libpq's
                        // PQexecParams) send the same text again: it is shared, not copied again.
                        let sql = match self.statements.get(name) {
                            Some(p) if *p.sql == *sql => p.sql.clone(),
                            _ => Arc::from(sql),
                        };
                        // SQL `EXECUTE name` runs it too.
                        let stamp = self.enforcer.parsed(name, &sql);
                        self.push(Pending::Parse(name.to_string(), stamp));
                        self.statements.insert(
                            name.to_string(),
                            Prepared {
                                sql,
                                effects,
                                may_write,
                                described: None,
                                parse: stamp,
                                batch: self.rfq,
                                decided,
                            },
                        );
                    }
                    Verdict::Deny { code, reason, hint } => {
                        // The stand-in becomes PostgreSQL's unnamed statement; a name the client asked
                        // for is not created. PostgreSQL then skips the client's Bind/Execute up to Sync.
                        return self.deny_extended(sql, None, code, reason, hint, None).await;
                    }
                }
            }
            FrontendMessage::Bind(bind) => {
                if self.batch_denied {
                    return Ok(Step::Forward);
                }
                if let Some(refused) = self.refuse_long_name("", &[bind.statement, bind.portal]).await? {
                    return Ok(refused);
                }
                if let Some((batch, parse)) = self.statements.get(bind.statement).map(|p| (p.batch, p.parse)) {
                    if !self.settle(batch, parse).await? {
                        return Ok(Step::Forward);
                    }
                }
                let params: Parameters = (0..bind.params.len()).map(|i| bind.param_display(i)).collect();
                let Some(p) = self.statements.get(bind.statement).cloned() else {
                    // Never forwarded: a name Warden did not see parsed (or one made by SQL PREPARE)
                    // could run anything.
                    let reason = if self.enforcer.is_sql_prepared(bind.statement) {
                        format!(
                            "prepared statement \"{}\" was made with SQL PREPARE; binding it through the extended protocol is not supported",
                            bind.statement
                        )
                    } else {
                        format!("prepared statement \"{}\" does not exist", bind.statement)
                    };
                    self.portals.remove(bind.portal);
                    return self
                        .deny_extended(
                            &format!("<Bind of prepared statement \"{}\">", bind.statement),
                            Some(params),
                            sqlstate::INVALID_SQL_STATEMENT_NAME,
                            reason,
                            "Parse it first through Warden, or use EXECUTE".into(),
                            None,
                        )
                        .await;
                };
                if !bind.portal.is_empty() {
                    // PostgreSQL refuses a name in use (42P03) and keeps what it holds under it. Only
                    // a cursor WITH HOLD outlives the failed transaction that refusal aborts; a
                    // portal's name may be reused once its transaction ended, which Warden may learn
                    // only after a pipelined Bind.
                    let refusal = if self.enforcer.is_hold_cursor(bind.portal) {
                        Some(Verdict::Deny {
                            code: sqlstate::DUPLICATE_CURSOR,
                            reason: format!("cursor \"{}\" already exists", bind.portal),
                            hint: "close it first, or use another name".into(),
                        })
                    } else if self.enforcer.cursors_full() {
                        Some(super::enforce::too_many())
                    } else {
                        None
                    };
                    if let Some(Verdict::Deny { code, reason, hint }) = refusal {
                        return self.deny_extended(&p.sql, Some(params), code, reason, hint, None).await;
                    }
                }
                // SQL FETCH and MOVE reach a named portal too.
                let bound = self.enforcer.bound(bind.portal, &p.sql);
                self.push(Pending::Bind(bind.portal.to_string(), bound));
                self.portals.insert(
                    bind.portal.to_string(),
                    Portal {
                        sql: p.sql,
                        params,
                        denied: None,
                        effects: p.effects,
                        may_write: p.may_write,
                        described: p.described,
                        formats: ResultFormats::of(&bind.result_formats),
                        parse: p.parse,
                        bound,
                        batch: self.rfq,
                        decided: Some(p.decided),
                    },
                );
            }
            FrontendMessage::Execute { portal, .. } => {
                if self.batch_denied {
                    // Skipped by PostgreSQL, which is failing this batch up to Sync.
                    return Ok(Step::Forward);
                }
                if let Some(refused) = self.refuse_long_name("", &[portal]).await? {
                    return Ok(refused);
                }
                if let Some((batch, bound)) = self.portals.get(portal).map(|p| (p.batch, p.bound)) {
                    if !self.settle(batch, bound).await? {
                        return Ok(Step::Forward);
                    }
                }
                let Some(mut p) = self.portals.get(portal).cloned() else {
                    let reason = format!("portal \"{portal}\" does not exist");
                    return self
                        .deny_extended(
                            &format!("<Execute of portal \"{portal}\">"),
                            None,
                            sqlstate::INVALID_CURSOR_NAME,
                            reason,
                            "Bind it first".into(),
                            None,
                        )
                        .await;
                };
                // Refused as bound, or because what PostgreSQL runs under the name is not known to
                // be the portal's statement any more.
                let refusal = match p.denied.take() {
                    Some(reason) => Some((reason, String::new())),
                    None if self.enforcer.cursor_given_since(portal, p.bound) => Some((
                        format!("portal \"{portal}\" was declared again as a cursor after it was bound, so Warden cannot tell which query it would run"),
                        "close the portal and bind it again, or FETCH from the cursor with SQL".to_string(),
                    )),
                    None => None,
                };
                if let Some((reason, hint)) = refusal {
                    return self
                        .deny_extended(
                            &p.sql,
                            Some(p.params),
                            sqlstate::INSUFFICIENT_PRIVILEGE,
                            reason,
                            hint,
                            None,
                        )
                        .await;
                }
                if p.decided
                    .as_ref()
                    .is_some_and(|d| !d.current(self.shared, self.session, &self.enforcer))
                {
                    // A reload, or a change of the session's PREPAREs or cursors, since the Parse:
                    // decided again, under the session's current roles.
                    let decided = Decided::now(self.shared, self.session, &self.enforcer);
                    match self
                        .enforcer
                        .check(self.shared, self.session, &p.sql, self.in_transaction())
                        .await?
                    {
                        Verdict::Allow { effects, may_write, .. } => {
                            p.effects = if effects.is_empty() {
                                self.no_effects.clone()
                            } else {
                                Arc::new(effects)
                            };
                            p.may_write = may_write;
                            // Its next Executes, and the next Binds of its statement, need not
                            // decide it again.
                            if let Some(st) = self.statements.values_mut().find(|st| st.parse == p.parse) {
                                st.effects = p.effects.clone();
                                st.may_write = may_write;
                                st.decided = decided.clone();
                            }
                            p.decided = Some(decided);
                            self.portals.insert(portal.to_string(), p.clone());
                        }
                        Verdict::Deny { code, reason, hint } => {
                            return self
                                .deny_extended(&p.sql, Some(p.params), code, reason, hint, None)
                                .await;
                        }
                    }
                }
                let mut review_id = None;
                if let Some(need) = self.enforcer.review_now(self.shared, self.session, p.may_write) {
                    // No one is asked about a statement PostgreSQL will skip: what came before it in
                    // the batch is answered first.
                    if self.replies_due > 0 && !self.batch_ran().await? {
                        return Ok(Step::Forward);
                    }
                    match self.review(&p.sql, Some(p.params.clone()), &need).await? {
                        Reviewed::Approved(id) => review_id = Some(id),
                        Reviewed::Refused { id, code, reason } => {
                            // The client's Parse and Bind ran; the stand-in takes its Execute's place.
                            return self
                                .deny_extended(&p.sql, Some(p.params), code, reason, review_hint(), Some(&id))
                                .await;
                        }
                        Reviewed::ClientGone => return Ok(Step::ClientGone),
                    }
                }
                let seq = self
                    .record_query(p.sql.clone(), Some(p.params), None, review_id.as_deref())
                    .await?;
                if copies_from_client(&p.effects) {
                    self.copy_open = Some(seq);
                }
                self.push(Pending::Execute(Outcome {
                    described: p.described,
                    formats: Some(p.formats),
                    forgets: Forget::of(&p.effects, self.enforcer.stamp()),
                    from: Some((p.parse, p.bound)),
                    ..Outcome::new(seq)
                }));
                self.enforcer.applied(&p.effects, &self.session.db_role);
            }
            FrontendMessage::Close { kind, name } => {
                if self.batch_denied {
                    // Skipped by PostgreSQL: the statement or portal stays.
                    return Ok(Step::Forward);
                }
                if let Some(refused) = self.refuse_long_name("", &[name]).await? {
                    return Ok(refused);
                }
                // Forgotten once PostgreSQL confirms (CloseComplete).
                let upto = self.enforcer.stamp();
                self.push(Pending::Close(if kind == b'S' {
                    Forget::Statement(name.to_string(), upto)
                } else {
                    Forget::Cursor(name.to_string(), upto)
                }));
            }
            FrontendMessage::Describe { kind: b'S', name } => {
                if self.batch_denied {
                    return Ok(Step::Forward);
                }
                if let Some(refused) = self.refuse_long_name("", &[name]).await? {
                    return Ok(refused);
                }
                let described = self.statements.get_mut(name).map(|p| {
                    let slot = p.described.get_or_insert_with(Described::default).clone();
                    // Portals bound before this Describe get the columns too.
                    for portal in self.portals.values_mut() {
                        if portal.parse == p.parse && portal.described.is_none() {
                            portal.described = Some(slot.clone());
                        }
                    }
                    slot
                });
                self.push(Pending::Describe(described));
            }
            FrontendMessage::Sync => {
                let mut q = self.queue.lock().expect("relay queue lock poisoned");
                // A Sync after a statement's CopyDone or CopyFail is not one sent during its COPY.
                // Syncs already sent after the statement are looked past (a second Sync during the
                // COPY is ignored as well).
                let during = match q.iter().rev().find(|p| !matches!(p, Pending::Sync(..))) {
                    Some(Pending::Simple(o) | Pending::Execute(o)) if self.copy_ended != Some(o.query_seq) => {
                        Some(o.query_seq)
                    }
                    _ => None,
                };
                q.push_back(Pending::Sync(self.enforcer.stamp(), during));
            }
            FrontendMessage::CopyDone | FrontendMessage::CopyFail { .. } => {
                // The statement copying: the last one sent (drivers send a Sync after its Execute).
                self.copy_ended = match self
                    .queue
                    .lock()
                    .expect("relay queue lock poisoned")
                    .iter()
                    .rev()
                    .find(|p| !matches!(p, Pending::Sync(..)))
                {
                    Some(Pending::Simple(o) | Pending::Execute(o)) => Some(o.query_seq),
                    _ => None,
                };
                self.copy_open = None;
            }
            FrontendMessage::FunctionCall => {
                // The fast-path call names a function by OID, past any statement analysis: refused.
                return self
                    .simple(
                        "<fast-path function call>",
                        Verdict::Deny {
                            code: sqlstate::INSUFFICIENT_PRIVILEGE,
                            reason: "fast-path function calls are not supported through Warden".into(),
                            hint: "call the function in a SELECT".into(),
                        },
                        None,
                    )
                    .await;
            }
            FrontendMessage::Terminate => return Ok(Step::Terminate),
            _ => {}
        }
        Ok(Step::Forward)
    }

    /// Holds a write for statement review: lists it for approvers, tells the client, waits for the
    /// decision or the timeout. Every step is recorded; nothing reaches PostgreSQL while it waits.
    async fn review(
        &mut self,
        sql: &str,
        parameters: Option<Parameters>,
        need: &ReviewNeed,
    ) -> Result<Reviewed, ProxyError> {
        let timeout = self.shared.config.load().server.review_timeout;
        let wait = std::time::Duration::try_from(timeout).unwrap_or(std::time::Duration::from_secs(300));
        let c = &self.session.claims;
        let now = time::OffsetDateTime::now_utc();
        let info = ReviewInfo {
            id: new_review_id(),
            session_id: self.session.id.clone(),
            identity: c.identity().to_string(),
            requester: c.requester.as_ref().map(|r| r.to_string()),
            task: c.task.clone(),
            credential_id: c.credential_id.clone(),
            database: self.session.database.clone(),
            statement: sql.to_string(),
            parameters: parameters.as_deref().map(<[_]>::to_vec),
            roles: need.roles.clone(),
            created_at: now,
            expires_at: now + timeout,
        };
        let id = info.id.clone();
        let audit_failed = |e: warden_audit::AuditError| ProxyError::AuditUnavailable { reason: e.to_string() };
        let mut ticket = self.shared.reviews.open(info);
        let mut body = self.session.event("review.pending");
        body.statement = Some(sql.into());
        body.parameters = parameters;
        body.review_id = Some(id.clone());
        body.reason = Some(format!("held for review under role {}", need.roles.join(", ")));
        self.shared.audit.append(body).await.map_err(audit_failed)?;
        // What came before the held message goes on now: only the held statement waits.
        if let Err(e) = write_flush(&mut self.wr, &self.out).await {
            return Err(ProxyError::Upstream {
                database: self.session.database.clone(),
                reason: format!("writing to PostgreSQL: {e}"),
            });
        }
        self.out.clear();
        let mut notice = BytesMut::new();
        let message = format!(
            "warden: waiting for approval, review id {id}: role {} has each write approved by a person; an approver runs `warden requests approve {id}` (this waits up to {})",
            need.roles.join(", "),
            crate::cli::issue::human_duration(timeout)
        );
        ErrorResponse {
            severity: "NOTICE",
            code: "00000",
            message: &message,
            detail: None,
            hint: None,
        }
        .encode_notice(&mut notice);
        let _ = self.notices.send(notice);
        tracing::info!(session = %self.session.id, review = %id, "statement held for review");
        // While it waits, the client may hang up or cancel: either withdraws the review. Whatever
        // else it sends meanwhile is kept for after the decision.
        let held = self.held.clone();
        let outcome = {
            let waiting = ticket.wait(wait);
            tokio::pin!(waiting);
            // A client pipelining a lot behind the held statement is not read further (backpressure).
            let limit = self.max.saturating_mul(4);
            loop {
                if self.buf.capacity() - self.buf.len() < 4096 {
                    self.buf.reserve(8 * 1024);
                }
                tokio::select! {
                    o = &mut waiting => break Some(Some(o)),
                    _ = held.notified() => break Some(None),
                    read = self.rd.read_buf(&mut self.buf), if self.buf.len() < limit => match read {
                        Ok(0) | Err(_) => break None,
                        Ok(_) => {}
                    },
                }
            }
        };
        drop(ticket);
        let Some(outcome) = outcome else {
            let mut body = self.session.event("review.withdrawn");
            body.review_id = Some(id.clone());
            body.reason = Some("the client disconnected while the statement was held".into());
            self.shared.audit.append(body).await.map_err(audit_failed)?;
            return Ok(Reviewed::ClientGone);
        };
        let mut body = self.session.event("review.pending");
        body.review_id = Some(id.clone());
        let result = match outcome {
            None => {
                body.event = "review.cancelled".into();
                body.reason = Some("the client cancelled the statement while it was held".into());
                Reviewed::Refused {
                    id: id.clone(),
                    code: sqlstate::QUERY_CANCELED,
                    reason: format!("canceling statement due to user request (review {id} withdrawn)"),
                }
            }
            Some(ReviewOutcome::Approved { by, reason }) => {
                body.event = "review.approved".into();
                body.actor = Some(by);
                body.reason = reason;
                Reviewed::Approved(id.clone())
            }
            Some(ReviewOutcome::Denied { by, reason }) => {
                body.event = "review.denied".into();
                let why = format!(
                    "review {id} was denied by {by}{}",
                    reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                );
                body.actor = Some(by);
                body.reason = reason;
                Reviewed::Refused {
                    id: id.clone(),
                    code: sqlstate::INSUFFICIENT_PRIVILEGE,
                    reason: why,
                }
            }
            Some(ReviewOutcome::TimedOut { .. }) => {
                body.event = "review.timeout".into();
                let why = format!(
                    "review {id} was not decided within {}; ask an approver to watch `warden requests list`, then send the statement again",
                    crate::cli::issue::human_duration(timeout)
                );
                body.reason = Some(why.clone());
                Reviewed::Refused {
                    id: id.clone(),
                    code: sqlstate::INSUFFICIENT_PRIVILEGE,
                    reason: why,
                }
            }
        };
        self.shared.audit.append(body).await.map_err(audit_failed)?;
        Ok(result)
    }

    /// Records a refused extended-protocol message and answers it with a stand-in (Parse, Bind and
    /// Execute of a statement that fails with the denial) in its place. The stand-in becomes
    /// PostgreSQL's unnamed statement and portal; PostgreSQL then skips the rest of the batch.
    async fn deny_extended(
        &mut self,
        sql: &str,
        params: Option<Parameters>,
        code: &str,
        reason: String,
        hint: String,
        review: Option<&str>,
    ) -> Result<Step, ProxyError> {
        let seq = self.record_query(sql.into(), params, Some(&reason), review).await?;
        self.push(Pending::Execute(Outcome::denied(seq)));
        self.batch_denied = true;
        // A stamp of its own (no Parse or Bind of the client's has it).
        let bound = self.enforcer.bound("", sql);
        let denied = |sql: &str| Portal {
            sql: Arc::from(sql),
            params: Arc::new([]),
            denied: Some(format!("the unnamed statement is a refused one ({reason})")),
            effects: Arc::default(),
            may_write: false,
            described: None,
            formats: ResultFormats::All(0),
            // No Parse made it (they count from 1).
            parse: 0,
            bound,
            batch: self.rfq,
            decided: None,
        };
        // What PostgreSQL now holds under the unnamed names.
        self.statements.remove("");
        self.portals.insert(String::new(), denied(sql));
        let mut instead = BytesMut::new();
        let stmt = denial_statement(code, &reason, &hint);
        fe::parse_message("", &stmt, &mut instead);
        fe::bind_message("", "", &mut instead);
        fe::execute_message("", 0, &mut instead);
        Ok(Step::Replace(instead))
    }

    /// Whether every extended message of the open batch ran: they are sent with a Flush, and their
    /// answers awaited. If one failed, PostgreSQL skips the rest up to Sync: so does Warden
    /// (`batch_denied`), recording nothing more for it.
    async fn batch_ran(&mut self) -> Result<bool, ProxyError> {
        if !self.batch_denied {
            self.out.extend_from_slice(b"H\0\0\0\x04");
            write_flush(&mut self.wr, &self.out)
                .await
                .map_err(|e| ProxyError::Upstream {
                    database: self.session.database.clone(),
                    reason: format!("writing to PostgreSQL: {e}"),
                })?;
            self.out.clear();
            match self.replies.settled(self.rfq, self.replies_due).await {
                Some(true) => return Ok(true),
                Some(false) => {}
                None => {
                    return Err(ProxyError::OutOfStep(
                        "PostgreSQL answered more batches than the client sent".into(),
                    ))
                }
            }
            self.batch_denied = true;
        }
        tracing::debug!(session = %self.session.id, "a Query after a failed extended message is skipped, as PostgreSQL skips it");
        Ok(false)
    }

    /// A name PostgreSQL could take for another (`enforce::name_too_long`): refused.
    async fn refuse_long_name(&mut self, sql: &str, names: &[&str]) -> Result<Option<Step>, ProxyError> {
        let Some(reason) = names.iter().find_map(|n| super::enforce::name_too_long(n)) else {
            return Ok(None);
        };
        self.deny_extended(
            sql,
            None,
            sqlstate::NAME_TOO_LONG,
            reason,
            "use a shorter name".into(),
            None,
        )
        .await
        .map(Some)
    }

    /// Before a Bind or Execute uses what the Parse or Bind with stamp `stamp` (sent in batch
    /// `batch`) gave a name: if PostgreSQL may still refuse or skip that message, its answer is
    /// awaited, and what PostgreSQL confirmed since is applied (a refused Bind leaves the name's old
    /// portal, which a ROLLBACK TO SAVEPOINT can make runnable again). Drivers send a Parse or Bind
    /// and its use together, or wait for the answers first: nothing is awaited then. `false` if
    /// something failed in the open batch, so PostgreSQL skips this message.
    async fn settle(&mut self, batch: u64, stamp: u64) -> Result<bool, ProxyError> {
        let unanswered = batch != self.rfq
            && self.queued(|p| matches!(p, Pending::Parse(_, s) | Pending::Bind(_, s) if *s == stamp));
        if unanswered && !self.batch_ran().await? {
            return Ok(false);
        }
        // Also what the server side confirmed since this message's first look (a race otherwise).
        self.apply_forgotten();
        Ok(true)
    }

    /// Whether a `COPY ... FROM STDIN` this client sent may be reading the client's data: it was sent,
    /// the client has not ended it, and PostgreSQL has not answered it (an error before the COPY
    /// started answers it).
    fn copying(&mut self) -> bool {
        let Some(seq) = self.copy_open else {
            return false;
        };
        let open = self.queued(|p| matches!(p, Pending::Simple(o) | Pending::Execute(o) if o.query_seq == seq));
        if !open {
            self.copy_open = None;
        }
        open
    }

    /// Whether a Close of statement `name` is waiting for PostgreSQL's answer.
    fn close_pending(&self, name: &str) -> bool {
        self.queued(|p| matches!(p, Pending::Close(Forget::Statement(n, _)) if n == name))
    }

    /// Whether anything still waiting for PostgreSQL's answer is `what`.
    fn queued(&self, what: impl Fn(&Pending) -> bool) -> bool {
        self.queue.lock().expect("relay queue lock poisoned").iter().any(what)
    }

    /// Forgets the names PostgreSQL has confirmed dropped since the last message (only what they
    /// stood for when the drop was sent).
    fn apply_forgotten(&mut self) {
        let ended = self.replies.transaction_ended.load(Ordering::SeqCst);
        if ended > self.ended_applied {
            self.ended_applied = ended;
            if self.portals.len() > 1 || self.enforcer.has_cursors() {
                let f = Forget::TransactionEnded(ended);
                self.portals.retain(|name, p| name.is_empty() || p.bound > ended);
                self.enforcer.forget(&f);
            }
        }
        for f in self.replies.take_forgotten() {
            match &f {
                Forget::Statement(name, upto) => {
                    if self.statements.get(name).is_some_and(|p| p.parse <= *upto) {
                        self.statements.remove(name);
                    }
                }
                // DEALLOCATE ALL (the unnamed statement is replaced by the next Parse anyway).
                Forget::AllStatements(upto) => self.statements.retain(|name, p| name.is_empty() || p.parse > *upto),
                Forget::Cursor(name, upto) => {
                    if self.portals.get(name).is_some_and(|p| p.bound <= *upto) {
                        self.portals.remove(name);
                    }
                }
                Forget::AllCursors(upto) | Forget::TransactionEnded(upto) => {
                    self.portals.retain(|name, p| name.is_empty() || p.bound > *upto)
                }
                Forget::Unparsed(name, parse) => {
                    if self.statements.get(name).is_some_and(|p| p.parse == *parse) {
                        self.statements.remove(name);
                    }
                }
                Forget::Unbound(name, bound) => {
                    if self.portals.get(name).is_some_and(|p| p.bound == *bound) {
                        self.portals.remove(name);
                    }
                }
            }
            self.enforcer.forget(&f);
        }
    }

    fn in_transaction(&self) -> bool {
        self.tx_status.load(Ordering::SeqCst) != b'I'
    }

    /// A simple-protocol statement (or a fast-path call): forwarded, or replaced by its denial.
    async fn simple(&mut self, sql: &str, verdict: Verdict, review: Option<&str>) -> Result<Step, ProxyError> {
        match verdict {
            Verdict::Allow { effects, .. } => {
                let seq = self.record_query(sql.into(), None, None, review).await?;
                if copies_from_client(&effects) {
                    self.copy_open = Some(seq);
                }
                let forgets = Forget::of(&effects, self.enforcer.stamp());
                self.enforcer.applied(&effects, &self.session.db_role);
                // What this Query itself creates without HOLD is gone too if its ReadyForQuery
                // says no transaction is open.
                self.push(Pending::Simple(Outcome {
                    forgets,
                    stamp: self.enforcer.stamp(),
                    ..Outcome::new(seq)
                }));
                Ok(Step::Forward)
            }
            Verdict::Deny { code, reason, hint } => {
                let seq = self.record_query(sql.into(), None, Some(&reason), review).await?;
                self.push(Pending::Simple(Outcome::denied(seq)));
                let mut instead = BytesMut::new();
                fe::query(&denial_statement(code, &reason, &hint), &mut instead);
                Ok(Step::Replace(instead))
            }
        }
    }

    /// The `query` event, durable before the statement is forwarded.
    async fn record_query(
        &mut self,
        statement: Arc<str>,
        parameters: Option<Parameters>,
        denied: Option<&str>,
        review: Option<&str>,
    ) -> Result<u64, ProxyError> {
        let mut body = self.session.event("query");
        body.review_id = review.map(str::to_string);
        body.statement = Some(statement);
        body.parameters = parameters;
        body.decision = Some(if denied.is_some() { "deny" } else { "allow" }.into());
        body.reason = denied.map(str::to_string);
        let acks = self.acks.get_or_insert_with(Arc::default);
        self.shared.audit.append_to(body, acks).await.map_err(|e| {
            tracing::error!(session = %self.session.id, error = %e, "audit unavailable: statements are refused until the audit log can be written and Warden is restarted");
            ProxyError::AuditUnavailable { reason: e.to_string() }
        })
    }

    fn push(&self, p: Pending) {
        self.queue.lock().expect("relay queue lock poisoned").push_back(p);
    }
}

fn review_hint() -> String {
    "a person must approve each write of this role; see `warden requests list`".into()
}

fn review_denial(code: &'static str, reason: String) -> Verdict {
    Verdict::Deny {
        code,
        reason,
        hint: review_hint(),
    }
}

enum Step {
    Forward,
    /// Nothing is sent: PostgreSQL would skip the message (an earlier one of its batch failed).
    Skip,
    /// Send these bytes instead of the message (a denied statement's stand-in).
    Replace(BytesMut),
    Terminate,
    /// The client hung up while its statement was held.
    ClientGone,
}

/// PostgreSQL -> client.
struct ServerSide<'a> {
    shared: &'a Shared,
    session: &'a Session,
    queue: Queue,
    rd: ReadHalf<UpstreamStream>,
    buf: BytesMut,
    wr: WriteHalf<ClientStream>,
    max: usize,
    tx_status: Arc<AtomicU8>,
    notices: tokio::sync::mpsc::UnboundedReceiver<BytesMut>,
    /// ReadyForQuery messages relayed so far: which batch the responses belong to.
    rfq_seen: u64,
    /// Rows of each result to record (`[audit] result_rows`, as the session started).
    result_rows: usize,
    /// The last RowDescription met and its columns: a session that runs the same statements gets
    /// the same description each time, and its records share the names instead of copying them.
    last_columns: Option<(Vec<u8>, Arc<Columns>)>,
    /// The Describe at the front of the queue is being answered (its ParameterDescription came): the
    /// next RowDescription or NoData is its. A portal's Describe, not queued, has no
    /// ParameterDescription: its RowDescription goes to the Execute that follows, as a result's own.
    describing: bool,
    replies: Arc<Replies>,
    /// The `query` record of the statement that last began a COPY from the client
    /// (CopyInResponse): the Syncs the client sent during that COPY are ignored by PostgreSQL.
    copy_in: Option<u64>,
    /// Why the session must end once what is being relayed has been written (Warden lost count of
    /// PostgreSQL's answers).
    out_of_step: Option<String>,
}

/// What happens to one message from PostgreSQL.
enum Relay {
    Forward,
    Drop,
    Rewrite(BytesMut),
}

impl ServerSide<'_> {
    async fn run(&mut self) -> End {
        let mut finished = Vec::new();
        // As the client side's `out`: grown on first use and then reused, never allocated while idle.
        let mut out = BytesMut::new();
        loop {
            // Forward everything complete in the buffer in one write; mostly only the tags are looked at.
            loop {
                let frame = match split_frame(&mut self.buf, self.max) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return End::protocol(format!("PostgreSQL sent a bad message: {e}")),
                };
                match self.observe(&frame, &mut finished) {
                    Ok(Relay::Forward) => out.extend_from_slice(&frame.raw),
                    Ok(Relay::Drop) => {}
                    Ok(Relay::Rewrite(bytes)) => out.extend_from_slice(&bytes),
                    Err(e) => return End::protocol(e.to_string()),
                }
                if self.out_of_step.is_some() {
                    break;
                }
            }
            // Recorded first: the statements ran, whether or not the client is still there to hear it.
            for mut outcome in finished.drain(..) {
                if outcome.error.is_none() && !outcome.forgets.is_empty() {
                    self.replies.confirm(std::mem::take(&mut outcome.forgets));
                }
                self.record_result(outcome);
            }
            if !out.is_empty() {
                if let Err(e) = write_flush(&mut self.wr, &out).await {
                    return End::io(format!("writing to client: {e}"));
                }
                out.clear();
            }
            if let Some(why) = self.out_of_step.take() {
                return End::protocol(why);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8 * 1024);
            }
            tokio::select! {
                read = self.rd.read_buf(&mut self.buf) => match read {
                    Ok(0) => return End::Server,
                    Ok(_) => {}
                    Err(e) => return End::io(format!("reading from PostgreSQL: {e}")),
                },
                // Asynchronous messages from Warden itself (a NOTICE about a held statement).
                Some(notice) = self.notices.recv() => {
                    if let Err(e) = write_flush(&mut self.wr, &notice).await {
                        return End::io(format!("writing to client: {e}"));
                    }
                }
            }
        }
    }

    /// Tracks results against the statements in flight.
    fn observe(&mut self, frame: &Frame, finished: &mut Vec<Outcome>) -> Result<Relay, ProxyError> {
        if frame.tag == b'3' {
            // CloseComplete: the Close at the front was done (confirmed before it is counted, so
            // that a client side woken by the count finds it).
            let mut q = self.queue.lock().expect("relay queue lock poisoned");
            if let Some(Pending::Close(_)) = q.front() {
                if let Some(Pending::Close(f)) = q.pop_front() {
                    self.replies.confirm([f]);
                }
            }
        }
        // The answers that end an extended message's (or a Query's) work, for `Replies`.
        // An error and a ReadyForQuery are counted once the queue is up to date with them (below):
        // a client side they wake must find what they make it forget.
        if let b'1' | b'2' | b'3' | b'T' | b'n' | b'C' | b'I' | b's' = frame.tag {
            self.replies.answered(false);
        }
        if frame.tag == b'G' {
            if let Some(Pending::Simple(o) | Pending::Execute(o)) =
                self.queue.lock().expect("relay queue lock poisoned").front()
            {
                self.copy_in = Some(o.query_seq);
            }
        }
        match frame.tag {
            b'1' | b'2' => {
                // The client's Parse or Bind done, or a stand-in's: the client did not send those.
                let mut q = self.queue.lock().expect("relay queue lock poisoned");
                match q.front() {
                    Some(Pending::Parse(..)) if frame.tag == b'1' => drop(q.pop_front()),
                    Some(Pending::Bind(..)) if frame.tag == b'2' => drop(q.pop_front()),
                    Some(Pending::Execute(o)) if o.denied => return Ok(Relay::Drop),
                    _ => {}
                }
                return Ok(Relay::Forward);
            }
            b'C' | b'E' | b'I' | b's' | b'Z' | b'D' | b'T' | b't' | b'n' => {}
            _ => return Ok(Relay::Forward),
        }
        let mut relay = Relay::Forward;
        let mut q = self.queue.lock().expect("relay queue lock poisoned");
        if frame.tag == b'D' {
            if let Some(Pending::Simple(o) | Pending::Execute(o)) = q.front_mut() {
                o.data_rows += 1;
                if o.sample.len() < self.result_rows {
                    // An Execute's formats are its Bind's; the types come from the description.
                    let columns = o
                        .columns
                        .as_deref()
                        .or_else(|| o.described.as_ref()?.get().map(|c| &**c));
                    let row = data_row(frame.body(), |i| ValueFormat {
                        format: match &o.formats {
                            Some(formats) => formats.get(i),
                            None => columns.and_then(|c| c.formats.get(i).copied()),
                        },
                        type_oid: columns.and_then(|c| c.types.get(i).copied()),
                    });
                    o.sample.extend(row);
                }
            }
            return Ok(relay);
        }
        if frame.tag == b't' {
            self.describing = matches!(q.front(), Some(Pending::Describe(_)));
            return Ok(relay);
        }
        if self.describing && matches!(frame.tag, b'T' | b'n') {
            self.describing = false;
            if let Some(Pending::Describe(described)) = q.front_mut() {
                if let (Some(d), b'T') = (described.take(), frame.tag) {
                    if let Some(c) = columns(&mut self.last_columns, frame.body()) {
                        let _ = d.set(c);
                    }
                }
                q.pop_front();
            }
            return Ok(relay);
        }
        if frame.tag == b'T' {
            // A result's own, or a portal's Describe (not queued: its answer has no
            // ParameterDescription), which comes before its Execute, possibly behind statements'
            // Describes still to be answered. The first result set's, like the sample rows (a string
            // of several statements has more).
            let next = q.iter_mut().find(|p| {
                !matches!(
                    p,
                    Pending::Describe(_) | Pending::Close(_) | Pending::Parse(..) | Pending::Bind(..)
                )
            });
            if let Some(Pending::Simple(o) | Pending::Execute(o)) = next {
                if o.columns.is_none() {
                    o.columns = columns(&mut self.last_columns, frame.body());
                }
            }
            return Ok(relay);
        }
        if frame.tag == b'n' {
            return Ok(relay);
        }
        match BackendMessage::parse(frame)? {
            BackendMessage::CommandComplete { tag } => match q.front_mut() {
                Some(Pending::Simple(o)) => o.rows += command_rows(tag).unwrap_or(0),
                Some(Pending::Execute(o)) => {
                    o.rows += command_rows(tag).unwrap_or(0);
                    pop_outcome(&mut q, finished);
                }
                _ => {}
            },
            BackendMessage::EmptyQueryResponse | BackendMessage::PortalSuspended => {
                if let Some(Pending::Execute(o)) = q.front_mut() {
                    o.rows += o.data_rows;
                    pop_outcome(&mut q, finished);
                }
            }
            BackendMessage::ErrorResponse(e) => {
                // A COPY from the client failed while a Sync the client sent during it is
                // unresolved: PostgreSQL ignored that Sync if it read it before the error, and
                // answers it if not. Warden cannot tell which, so it cannot keep count: the error
                // is relayed and the session ends.
                let text = format!("{}: {}", e.code().unwrap_or("?????"), e.message().unwrap_or(""));
                // (A CopyFail's error comes once PostgreSQL has read all the client sent before it.)
                let copy_failed_by_client =
                    e.code() == Some("57014") && e.message().is_some_and(|m| m.starts_with("COPY from stdin failed"));
                if let (Some(Pending::Simple(o) | Pending::Execute(o)), Some(copying)) = (q.front_mut(), self.copy_in) {
                    if o.query_seq == copying
                        && !copy_failed_by_client
                        && q.iter()
                            .any(|p| matches!(p, Pending::Sync(_, Some(d)) if *d == copying))
                    {
                        if let Some(Pending::Simple(o) | Pending::Execute(o)) = q.front_mut() {
                            o.error = Some(text);
                        }
                        pop_outcome(&mut q, finished);
                        self.out_of_step = Some(
                            "a COPY failed while a Sync sent during it was unanswered, so Warden cannot tell which answers are whose; connect again".into(),
                        );
                        return Ok(relay);
                    }
                }
                if let Some(Pending::Simple(o) | Pending::Execute(o)) = q.front() {
                    if o.denied {
                        // The denial, raised by Warden's stand-in: shown without its PL/pgSQL context.
                        let mut clean = BytesMut::new();
                        e.encode_without(b"W", &mut clean);
                        relay = Relay::Rewrite(clean);
                    }
                }
                self.describing = false;
                match q.front_mut() {
                    Some(Pending::Simple(o)) => o.error = Some(text),
                    Some(
                        Pending::Execute(_)
                        | Pending::Describe(_)
                        | Pending::Close(_)
                        | Pending::Parse(..)
                        | Pending::Bind(..),
                    ) => {
                        // The Execute failed, or a message before it did. An error in its own Parse or
                        // Bind (a plan that fails, parameters that do not fit) is its error.
                        // (None: not an Execute's; Some(None): the Execute at the front.)
                        let failed = match q.front() {
                            Some(Pending::Parse(_, s) | Pending::Bind(_, s)) => Some(Some(*s)),
                            Some(Pending::Execute(_)) => Some(None),
                            _ => None,
                        };
                        let mut text = Some(text);
                        // PostgreSQL skips the rest of the batch up to Sync (a skipped Close drops
                        // nothing; nor does a Sync it ignored during a COPY; a refused or skipped
                        // Bind binds nothing).
                        let mut unbound = Vec::new();
                        loop {
                            if ignored_syncs(&mut q, self.copy_in, &mut self.rfq_seen, &self.replies) {
                                self.replies.answered(true);
                            }
                            match q.pop_front() {
                                Some(Pending::Execute(mut o)) => {
                                    let own = match (failed, o.from) {
                                        (Some(None), _) => true,
                                        (Some(Some(s)), Some((parse, bound))) => s == parse || s == bound,
                                        _ => false,
                                    };
                                    o.error = Some(match text.take() {
                                        Some(t) if own => t,
                                        _ => NOT_RUN.into(),
                                    });
                                    finished.push(o);
                                }
                                Some(Pending::Parse(name, stamp)) => unbound.push(Forget::Unparsed(name, stamp)),
                                Some(Pending::Bind(portal, stamp)) => unbound.push(Forget::Unbound(portal, stamp)),
                                Some(Pending::Describe(_) | Pending::Close(_)) => {}
                                Some(other) => {
                                    q.push_front(other);
                                    break;
                                }
                                None => break,
                            }
                        }
                        if !unbound.is_empty() {
                            self.replies.confirm(unbound);
                        }
                    }
                    _ => {}
                }
                self.replies.answered(true);
            }
            BackendMessage::ReadyForQuery { status } => {
                self.tx_status.store(status, Ordering::SeqCst);
                self.rfq_seen += 1;
                self.describing = false;
                // Drop anything left before the sync point, then the sync point itself.
                let mut stamp = None;
                let mut unbound = Vec::new();
                while let Some(p) = q.pop_front() {
                    match p {
                        Pending::Simple(o) => {
                            stamp = Some(o.stamp);
                            finished.push(o);
                            break;
                        }
                        // No answer came for it: PostgreSQL skipped it.
                        Pending::Execute(mut o) => {
                            o.error.get_or_insert_with(|| NOT_RUN.into());
                            finished.push(o);
                        }
                        Pending::Parse(name, parse) => unbound.push(Forget::Unparsed(name, parse)),
                        Pending::Bind(portal, bound) => unbound.push(Forget::Unbound(portal, bound)),
                        Pending::Describe(_) | Pending::Close(_) => {}
                        Pending::Sync(at, _) => {
                            stamp = Some(at);
                            break;
                        }
                    }
                }
                if !unbound.is_empty() {
                    self.replies.confirm(unbound);
                }
                // No transaction open: cursors without HOLD and portals made up to then are gone.
                if let (Some(upto), b'I') = (stamp, status) {
                    self.replies.transaction_ended.fetch_max(upto, Ordering::SeqCst);
                }
                self.replies.batch_ended();
            }
            _ => {}
        }
        ignored_syncs(&mut q, self.copy_in, &mut self.rfq_seen, &self.replies);
        Ok(relay)
    }

    /// `query.result`: written without holding up the client (the statement already ran).
    fn record_result(&self, o: Outcome) {
        let mut body = self.session.event("query.result");
        body.query_id = Some(o.query_seq);
        body.rows = Some(o.rows);
        body.duration_us = Some(o.started.elapsed().as_micros() as u64);
        // A statement's description is only its result's when it ran (a Bind may have failed).
        let described = o.described.filter(|_| o.error.is_none()).and_then(|d| d.get().cloned());
        body.columns = o.columns.or(described).map(|c| c.names.clone());
        body.error = o.error;
        body.sample_rows = (!o.sample.is_empty()).then_some(o.sample);
        // Enqueued now, so records keep their order; nobody waits on it. A failure to write it
        // refuses every later record, which the next statement's `query` record reports.
        self.shared.audit.record(body);
    }
}

/// The largest RowDescription a session remembers (about 60 columns with short names).
const MAX_REMEMBERED_DESCRIPTION: usize = 2048;

/// The columns a RowDescription describes: those of the last one when it is the same (nothing
/// allocated), else read and remembered. `None` if it is malformed.
fn columns(last: &mut Option<(Vec<u8>, Arc<Columns>)>, description: &[u8]) -> Option<Arc<Columns>> {
    if let Some((bytes, columns)) = last {
        if bytes.as_slice() == description {
            return Some(columns.clone());
        }
    }
    let described = warden_wire::backend::row_description(description)?;
    let columns = Arc::new(Columns {
        formats: described.iter().map(|c| c.format).collect(),
        types: described.iter().map(|c| c.type_oid).collect(),
        names: Arc::new(described.into_iter().map(|c| c.name).collect()),
    });
    // A wide result's description is not kept: an idle session would hold it.
    *last = (description.len() <= MAX_REMEMBERED_DESCRIPTION).then(|| (description.to_vec(), columns.clone()));
    Some(columns)
}

fn pop_outcome(q: &mut VecDeque<Pending>, finished: &mut Vec<Outcome>) {
    if let Some(Pending::Execute(o) | Pending::Simple(o)) = q.pop_front() {
        finished.push(o);
    }
}

async fn write_flush<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RowDescription body for text columns with these names.
    fn description(names: &[&str]) -> Vec<u8> {
        let mut t = (names.len() as i16).to_be_bytes().to_vec();
        for name in names {
            t.extend_from_slice(name.as_bytes());
            t.push(0);
            // table oid, attnum, type oid, typlen, typmod, format (text)
            t.extend_from_slice(&[0; 4 + 2 + 4 + 2 + 4 + 2]);
        }
        t
    }

    #[test]
    fn the_same_row_description_shares_its_columns() {
        let mut last = None;
        let a = columns(&mut last, &description(&["aid", "abalance"])).unwrap();
        assert_eq!(*a.names, ["aid", "abalance"]);
        assert_eq!(a.formats, [0, 0]);
        let again = columns(&mut last, &description(&["aid", "abalance"])).unwrap();
        assert!(Arc::ptr_eq(&a, &again), "the same description is read once");
        // Another description is read, and then it is the one remembered.
        let b = columns(&mut last, &description(&["bid"])).unwrap();
        assert_eq!(*b.names, ["bid"]);
        assert!(Arc::ptr_eq(&b, &columns(&mut last, &description(&["bid"])).unwrap()));
        let c = columns(&mut last, &description(&["aid", "abalance"])).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c.names, ["aid", "abalance"]);
        // A malformed one has no columns and leaves the last one remembered.
        assert!(columns(&mut last, &description(&["x"])[..5]).is_none());
        assert!(Arc::ptr_eq(
            &c,
            &columns(&mut last, &description(&["aid", "abalance"])).unwrap()
        ));
        // A wide one is read but not kept.
        let wide: Vec<String> = (0..200).map(|i| format!("column_{i}")).collect();
        let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
        let w = columns(&mut last, &description(&wide)).unwrap();
        assert_eq!(w.names.len(), 200);
        assert!(last.is_none());
        assert!(!Arc::ptr_eq(&w, &columns(&mut last, &description(&wide)).unwrap()));
    }
}
