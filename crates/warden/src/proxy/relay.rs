//! The Ready phase: relay messages both ways, record each statement before it is forwarded and its
//! outcome after PostgreSQL answers.
//!
//! Two tasks, one per direction, so that neither side's backpressure can stall the other (a
//! single-task relay deadlocks when both socket buffers fill). They share a queue of statements in
//! flight: the client side pushes one entry per Query, Execute and Sync; the server side pops them as
//! CommandComplete, ErrorResponse and ReadyForQuery come back. Result sets stream through message by
//! message; nothing buffers more than one message.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use warden_wire::backend::{command_rows, BackendMessage, ErrorResponse};
use warden_wire::frontend::FrontendMessage;
use warden_wire::{split_frame, sqlstate, Frame};

use super::backend::Upstream;
use super::cancel::CancelTarget;
use super::error::ProxyError;
use super::frontend::{greeting, ClientStream};
use super::io::Framed;
use super::{Session, Shared};

use super::backend::UpstreamStream;

/// Why a session ended, as recorded in `session.end`.
#[derive(Debug, Clone)]
enum End {
    Client,
    Server,
    Shutdown,
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
    /// The ReadyForQuery that ends an extended-protocol batch (or answers a FunctionCall).
    Sync,
}

#[derive(Debug)]
struct Outcome {
    query_seq: u64,
    started: Instant,
    rows: u64,
    data_rows: u64,
    error: Option<String>,
}

impl Outcome {
    fn new(query_seq: u64) -> Self {
        Outcome {
            query_seq,
            started: Instant::now(),
            rows: 0,
            data_rows: 0,
            error: None,
        }
    }
}

type Queue = Arc<Mutex<VecDeque<Pending>>>;

pub async fn run(
    shared: Arc<Shared>,
    session: Session,
    client: Framed<ClientStream>,
    upstream: Upstream,
    mut shutdown: watch::Receiver<bool>,
) {
    let session = Arc::new(session);
    let cancel_key = shared.cancels.register(CancelTarget {
        host: upstream.host.clone(),
        port: upstream.port,
        process_id: upstream.backend_key.0,
        secret_key: upstream.backend_key.1,
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
        let e = ProxyError::AuditUnavailable {
            reason: e.to_string(),
        };
        let mut buf = BytesMut::new();
        fatal(&e, &mut buf);
        let _ = write_flush(&mut client_wr, &buf).await;
        shared.cancels.remove(cancel_key);
        return;
    }
    let mut hello = BytesMut::new();
    greeting(&upstream.params, cancel_key, &mut hello);
    if write_flush(&mut client_wr, &hello).await.is_err() {
        shared.cancels.remove(cancel_key);
        return;
    }
    tracing::info!(session = %session.id, identity = %session.claims.identity(), db_role = %session.db_role, database = %session.database, "session started");

    let queue: Queue = Arc::default();
    let mut to_server = ClientSide {
        shared: &shared,
        session: &session,
        queue: queue.clone(),
        rd: client_rd,
        buf: client_buf,
        wr: server_wr,
        max,
        statements: HashMap::new(),
        portals: HashMap::new(),
    };
    let mut to_client = ServerSide {
        shared: &shared,
        session: &session,
        queue,
        rd: server_rd,
        buf: upstream_buf,
        wr: client_wr,
        max,
    };
    let end = tokio::select! {
        e = to_server.run() => e,
        e = to_client.run() => e,
        _ = shutdown.wait_for(|s| *s) => End::Shutdown,
    };
    let farewell = match &end {
        End::Shutdown => Some((
            sqlstate::ADMIN_SHUTDOWN,
            "warden: Warden is shutting down; reconnect in a moment".to_string(),
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
        let _ = write_flush(&mut to_client.wr, &buf).await;
    }
    let _ = to_client.wr.shutdown().await;
    shared.cancels.remove(cancel_key);
    let mut body = session.event("session.end");
    body.reason = Some(end.reason());
    body.duration_us = Some(started.elapsed().as_micros() as u64);
    if let Err(e) = shared.audit.append(body).await {
        tracing::error!(session = %session.id, error = %e, "cannot record session.end");
    }
    tracing::info!(session = %session.id, reason = %end.reason(), "session ended");
}

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
    /// Prepared statement name -> text, so an Execute can be recorded with the statement it runs.
    statements: HashMap<String, Arc<str>>,
    /// Portal name -> (statement text, parameters as bound).
    portals: HashMap<String, (Arc<str>, Vec<Option<String>>)>,
}

impl ClientSide<'_> {
    async fn run(&mut self) -> End {
        let mut out = BytesMut::with_capacity(8 * 1024);
        loop {
            loop {
                let frame = match split_frame(&mut self.buf, self.max) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return End::protocol(format!("client sent a bad message: {e}")),
                };
                match self.inspect(&frame).await {
                    Ok(Step::Forward) => out.extend_from_slice(&frame.raw),
                    Ok(Step::Terminate) => {
                        out.extend_from_slice(&frame.raw);
                        let _ = write_flush(&mut self.wr, &out).await;
                        return End::Client;
                    }
                    Err(e) => {
                        let _ = write_flush(&mut self.wr, &out).await;
                        return End::Failed {
                            code: e.sqlstate(),
                            reason: e.to_string(),
                        };
                    }
                }
            }
            if !out.is_empty() {
                if let Err(e) = write_flush(&mut self.wr, &out).await {
                    return End::io(format!("writing to PostgreSQL: {e}"));
                }
                out.clear();
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

    /// Records what must be recorded before `frame` goes on.
    async fn inspect(&mut self, frame: &Frame) -> Result<Step, ProxyError> {
        match FrontendMessage::parse(frame)? {
            FrontendMessage::Query { sql } => {
                let seq = self.record_query(sql.to_string(), None).await?;
                self.push(Pending::Simple(Outcome::new(seq)));
            }
            FrontendMessage::Parse { name, sql, .. } => {
                self.statements.insert(name.to_string(), Arc::from(sql));
            }
            FrontendMessage::Bind(bind) => {
                let sql = self
                    .statements
                    .get(bind.statement)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(""));
                let params = (0..bind.params.len())
                    .map(|i| bind.param_display(i))
                    .collect();
                self.portals.insert(bind.portal.to_string(), (sql, params));
            }
            FrontendMessage::Execute { portal, .. } => {
                let (sql, params) = self
                    .portals
                    .get(portal)
                    .cloned()
                    .unwrap_or_else(|| (Arc::from(""), Vec::new()));
                let seq = self.record_query(sql.to_string(), Some(params)).await?;
                self.push(Pending::Execute(Outcome::new(seq)));
            }
            FrontendMessage::Close { kind, name } => {
                if kind == b'S' {
                    self.statements.remove(name);
                } else {
                    self.portals.remove(name);
                }
            }
            FrontendMessage::Sync => self.push(Pending::Sync),
            FrontendMessage::FunctionCall => {
                let seq = self.record_query("<function call>".into(), None).await?;
                self.push(Pending::Simple(Outcome::new(seq)));
            }
            FrontendMessage::Terminate => return Ok(Step::Terminate),
            _ => {}
        }
        Ok(Step::Forward)
    }

    /// The `query` event, durable before the statement is forwarded.
    async fn record_query(
        &self,
        statement: String,
        parameters: Option<Vec<Option<String>>>,
    ) -> Result<u64, ProxyError> {
        let mut body = self.session.event("query");
        body.statement = Some(statement);
        body.parameters = parameters;
        body.decision = Some("allow".into());
        self.shared.audit.append(body).await.map_err(|e| {
            tracing::error!(session = %self.session.id, error = %e, "audit unavailable: refusing statements");
            ProxyError::AuditUnavailable { reason: e.to_string() }
        })
    }

    fn push(&self, p: Pending) {
        self.queue
            .lock()
            .expect("relay queue lock poisoned")
            .push_back(p);
    }
}

enum Step {
    Forward,
    Terminate,
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
}

impl ServerSide<'_> {
    async fn run(&mut self) -> End {
        let mut finished = Vec::new();
        let mut out = BytesMut::with_capacity(16 * 1024);
        loop {
            // Forward everything complete in the buffer in one write; mostly only the tags are looked at.
            loop {
                let frame = match split_frame(&mut self.buf, self.max) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return End::protocol(format!("PostgreSQL sent a bad message: {e}")),
                };
                if let Err(e) = self.observe(&frame, &mut finished) {
                    return End::protocol(e.to_string());
                }
                out.extend_from_slice(&frame.raw);
            }
            if !out.is_empty() {
                if let Err(e) = write_flush(&mut self.wr, &out).await {
                    return End::io(format!("writing to client: {e}"));
                }
                out.clear();
            }
            for outcome in finished.drain(..) {
                self.record_result(outcome);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8 * 1024);
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) => return End::Server,
                Ok(_) => {}
                Err(e) => return End::io(format!("reading from PostgreSQL: {e}")),
            }
        }
    }

    /// Tracks results against the statements in flight.
    fn observe(&self, frame: &Frame, finished: &mut Vec<Outcome>) -> Result<(), ProxyError> {
        if !matches!(frame.tag, b'C' | b'E' | b'I' | b's' | b'Z' | b'D') {
            return Ok(());
        }
        let mut q = self.queue.lock().expect("relay queue lock poisoned");
        if frame.tag == b'D' {
            if let Some(Pending::Simple(o) | Pending::Execute(o)) = q.front_mut() {
                o.data_rows += 1;
            }
            return Ok(());
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
                let text = format!(
                    "{}: {}",
                    e.code().unwrap_or("?????"),
                    e.message().unwrap_or("")
                );
                match q.front_mut() {
                    Some(Pending::Simple(o)) => o.error = Some(text),
                    Some(Pending::Execute(o)) => {
                        o.error = Some(text);
                        pop_outcome(&mut q, finished);
                        // PostgreSQL skips the rest of the batch up to Sync.
                        while let Some(Pending::Execute(_)) = q.front() {
                            if let Some(Pending::Execute(mut o)) = q.pop_front() {
                                o.error =
                                    Some("not run: an earlier message of the batch failed".into());
                                finished.push(o);
                            }
                        }
                    }
                    _ => {}
                }
            }
            BackendMessage::ReadyForQuery { .. } => {
                // Drop anything left before the sync point, then the sync point itself.
                while let Some(p) = q.pop_front() {
                    match p {
                        Pending::Simple(o) => {
                            finished.push(o);
                            break;
                        }
                        Pending::Execute(o) => finished.push(o),
                        Pending::Sync => break,
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `query.result`: written without holding up the client (the statement already ran).
    fn record_result(&self, o: Outcome) {
        let mut body = self.session.event("query.result");
        body.query_id = Some(o.query_seq);
        body.rows = Some(o.rows);
        body.duration_us = Some(o.started.elapsed().as_micros() as u64);
        body.error = o.error;
        let audit = self.shared.audit.clone();
        let session = self.session.id.clone();
        // Enqueued now (so records keep their order), awaited in the background.
        let pending = audit.submit(body);
        tokio::spawn(async move {
            if let Err(e) = pending.await {
                tracing::error!(%session, error = %e, "cannot record query.result");
            }
        });
    }
}

fn pop_outcome(q: &mut VecDeque<Pending>, finished: &mut Vec<Outcome>) {
    if let Some(Pending::Execute(o) | Pending::Simple(o)) = q.pop_front() {
        finished.push(o);
    }
}

async fn write_flush<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
