use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warden_audit::FsyncMode;

use crate::deployment::{self, Authorities};
use crate::proxy::{self, Shared};
use crate::sinks::Sinks;
use crate::tls;

pub fn run(config: &Path) -> Result<ExitCode> {
    init_logging();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = Server::prepare(config).await?;
        tokio::spawn(stop_on_signals(stop_tx, server.shared.clone()));
        server.run(stop_rx).await;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG").unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if std::env::var("WARDEN_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A configured, bound, not yet serving Warden.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    api: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    config_path: std::path::PathBuf,
    sinks: Sinks,
}

/// How long the audit sinks get at shutdown to deliver what is left (the rest goes at the next start).
const SINK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Warden's own server certificate is reissued at each start from the host CA; it never leaves memory.
const SERVER_CERT_VALIDITY: Duration = Duration::days(30);

impl Server {
    pub async fn prepare(config_path: &Path) -> Result<Self> {
        let config = deployment::load_config(config_path)?;
        let cas = Authorities::load(&config.server.data_dir)?;
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let listen: std::net::SocketAddr = config.server.postgres_listen.parse()?;
        let api_listen: Option<std::net::SocketAddr> =
            config.server.api_listen.as_deref().map(str::parse).transpose()?;
        for ip in std::iter::once(listen.ip()).chain(api_listen.map(|a| a.ip())) {
            if !ip.is_unspecified() && !sans.contains(&ip.to_string()) {
                sans.push(ip.to_string());
            }
        }
        let server_cert = cas.host.issue_server(&sans, SERVER_CERT_VALIDITY)?;
        let chain = vec![server_cert.cert_der.clone(), cas.host.cert_der()];
        let tls_config = tls::server_config(chain.clone(), server_cert.key_der.clone_key(), b"postgresql")?;
        let api_tls = tls::server_config(chain, server_cert.key_der, b"http/1.1")?;
        if deployment::audit_mode(&config) == FsyncMode::Off {
            tracing::warn!("audit fsync = \"off\": a crash can lose the records of statements that ran");
        }
        crate::proxy::lifecycle::warn_unconfigured_admins(&config);
        for db in &config.databases {
            if db.url.sslmode == warden_policy::SslMode::Require {
                tracing::warn!(database = %db.name, "sslmode=require: PostgreSQL's certificate is not verified");
            }
        }
        let audit = deployment::open_audit(&config)?;
        if let Some(bytes) = audit.recovered_tail {
            // A write a crash interrupted: no statement waited on it went to PostgreSQL.
            tracing::warn!(
                log = %config.audit.path.display(),
                bytes,
                "the audit log ended in a partly written record (a crash mid-write); it was cut and the chain continues"
            );
        }
        let sinks = Sinks::prepare(&config, &audit)?;
        let store = Arc::new(deployment::open_state(&config)?);
        let state: Arc<dyn warden_state::StateStore> = store.clone();
        let requests: Arc<dyn warden_state::RequestStore> = store;
        let blocks = state.blocklist(time::OffsetDateTime::now_utc())?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen} (server.postgres_listen)"))?;
        let api = match api_listen {
            Some(addr) => Some((
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr} (server.api_listen)"))?,
                tokio_rustls::TlsAcceptor::from(api_tls),
            )),
            None => None,
        };
        let shared = Arc::new(Shared {
            user_ca_verifier: tls::UserCaVerifier::new(cas.user.cert_der())?,
            user_ca: cas.user,
            db_ca: cas.db,
            host_ca_pem: cas.host.cert_pem().to_string(),
            acceptor: tokio_rustls::TlsAcceptor::from(tls_config),
            config: ArcSwap::from_pointee(config),
            audit,
            cancels: Default::default(),
            provisioner: Default::default(),
            analyses: Default::default(),
            state,
            requests,
            blocks: ArcSwap::from_pointee(blocks),
            sessions: Default::default(),
            reviews: Default::default(),
        });
        Ok(Server {
            shared,
            listener,
            api,
            config_path: config_path.to_path_buf(),
            sinks,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` flips; reloads the config on SIGHUP.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let addr = self.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %addr, config = %self.config_path.display(), "warden is accepting PostgreSQL connections");
        tokio::spawn(reload_on_hangup(self.shared.clone(), self.config_path.clone()));
        tokio::spawn(proxy::lifecycle::watch(self.shared.clone(), self.config_path.clone()));
        index_periodically(self.shared.clone(), stop.clone());
        if let Some((listener, acceptor)) = self.api {
            let at = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(listen = %at, "warden API is accepting HTTPS requests");
            tokio::spawn(crate::api::serve(self.shared.clone(), listener, acceptor, stop.clone()));
            tokio::spawn(crate::api::requests::expire_periodically(self.shared.clone()));
        }
        let sinks = self.sinks.spawn();
        let shared = self.shared.clone();
        proxy::serve(self.shared, self.listener, stop).await;
        // The last records are signed now rather than at the next interval.
        if let Err(e) = shared.audit.checkpoint_now().await {
            tracing::error!(error = %e, "cannot sign the audit log's last records");
        }
        sinks.shutdown(SINK_GRACE).await;
        tracing::info!("warden stopped");
    }
}

/// The first SIGTERM or Ctrl-C drains: no new sessions, running statements may finish (for up to
/// 30 s). A second one ends the sessions left at once, their running statements cancelled.
async fn stop_on_signals(stop: watch::Sender<bool>, shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining (send it again to end the sessions left now)"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining (interrupt again to end the sessions left now)"),
    }
    let _ = stop.send(true);
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let ended = shared.sessions.end_where(|_| Some(proxy::lifecycle::Kill::stop()));
    tracing::info!(sessions = ended, "second stop signal: ending the sessions left now");
}

/// How often the running proxy brings the audit search index up to date.
const INDEX_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the search index beside the audit log current, so that `warden audit search` and `warden
/// sessions` on a busy deployment only index the last second's records. SQLite work is blocking and
/// is no statement's business: it runs on a thread of its own at the lowest CPU priority (nice 19),
/// so under load the proxy's threads go first and the index lags (searches catch up the rest by
/// themselves). The index is a cache: failures are logged (once per distinct error) and never touch
/// the proxy.
fn index_periodically(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let spawned = std::thread::Builder::new().name("warden-index".into()).spawn(move || {
        // On Linux the nice value is per thread: this lowers only the indexer.
        // SAFETY: setpriority has no memory-safety preconditions.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
        let mut index: Option<(std::path::PathBuf, warden_audit::Index)> = None;
        let mut last_error: Option<String> = None;
        let mut stale_closed = false;
        loop {
            let next = std::time::Instant::now() + INDEX_EVERY;
            while std::time::Instant::now() < next {
                if *stop.borrow() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            // The log this process writes (a reload that changes `[audit] path` takes effect at the
            // next start), not the one the reloaded configuration names.
            let log = shared.audit.path().to_path_buf();
            let current = index.take().filter(|(path, _)| *path == log);
            let mut ix = match current {
                Some((_, ix)) => ix,
                None => match warden_audit::Index::open(&log) {
                    Ok(ix) => ix,
                    Err(e) => {
                        note_index_error(&mut last_error, e.to_string());
                        continue;
                    }
                },
            };
            match ix.catch_up() {
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(records = n, "audit index caught up");
                    }
                    last_error = None;
                    // Only once no earlier Warden runs on this log (one still draining after
                    // SIGTERM, in a rolling restart, ends its own sessions).
                    if !stale_closed && owns_log(&log) {
                        match close_stale_sessions(&shared, &mut ix) {
                            Ok(0) => stale_closed = true,
                            Ok(n) => {
                                tracing::warn!(
                                    sessions = n,
                                    "sessions an earlier run of Warden left open (it stopped without ending them) are recorded as ended"
                                );
                                stale_closed = true;
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot close the sessions an earlier run left open in the audit log; retrying"),
                        }
                    }
                }
                Err(e) => note_index_error(&mut last_error, e.to_string()),
            }
            index = Some((log, ix));
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the audit index thread (searches catch up by themselves)");
    }
}

/// Whether this process owns the log's `.running` lock: taken once no other Warden holds it, and
/// held until the process exits (its drain included), so that a Warden started while another still
/// drains does not take that one's live sessions for ones a crash left open.
fn owns_log(log: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    static OWNED: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if OWNED.get().is_some() {
        return true;
    }
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".running");
    let path = log.with_file_name(name);
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the audit log's running lock");
            return false;
        }
    };
    match file.try_lock() {
        Ok(()) => OWNED.set(file).is_ok() || OWNED.get().is_some(),
        Err(_) => false,
    }
}

/// What a session that an earlier run of Warden left open (it crashed or was killed, so it wrote no
/// `session.end`) says when it is closed.
pub const STALE_SESSION_END: &str =
    "warden stopped without ending it (a crash or a kill); recorded when Warden started again";

/// Sessions an earlier run left open in the log cannot still be running (a session dies with its
/// Warden): each gets its `session.end` now, once, so that `warden sessions list --active`, replays
/// and `warden lock --session` see them as ended. Only sessions started before this run opened the
/// log, and not in this run's registry (one running Warden per audit log).
fn close_stale_sessions(shared: &Shared, index: &mut warden_audit::Index) -> Result<usize, warden_audit::AuditError> {
    let before = shared.audit.head_at_open;
    let live: std::collections::HashSet<String> = shared.sessions.list().into_iter().map(|s| s.session_id).collect();
    let mut closed = 0;
    for s in index.sessions(true, None)? {
        let Some(start) = &s.start else {
            continue;
        };
        if start.seq > before || live.contains(&s.session_id) {
            continue;
        }
        let b = &start.body;
        shared.audit.record(warden_audit::EventBody {
            event: "session.end".into(),
            session_id: b.session_id.clone(),
            identity: b.identity.clone(),
            credential_id: b.credential_id.clone(),
            database: b.database.clone(),
            db_user: b.db_user.clone(),
            client_addr: b.client_addr.clone(),
            reason: Some(STALE_SESSION_END.into()),
            ..warden_audit::EventBody::default()
        });
        closed += 1;
    }
    Ok(closed)
}

fn note_index_error(last: &mut Option<String>, error: String) {
    if last.as_ref() != Some(&error) {
        tracing::warn!(error = %error, "audit search index not updated (searches catch up by themselves)");
        *last = Some(error);
    }
}

/// Builds the new config fully, then swaps it in; a bad file keeps the old config and says why.
async fn reload_on_hangup(shared: Arc<Shared>, path: std::path::PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        proxy::lifecycle::reload(&shared, &path, "SIGHUP").await;
    }
}
