//! The client side of a connection, as explicit phases:
//! ExpectSslRequest -> Tls -> ExpectStartup -> Authenticate -> Provision (backend) -> Ready (relay).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use warden_audit::EventBody;
use warden_wire::backend::{self as be, ErrorResponse};
use warden_wire::frontend::StartupPacket;
use warden_wire::MAX_STARTUP_LEN;

use super::backend::Upstream;
use super::error::ProxyError;
use super::io::Framed;
use super::lifecycle::Kill;
use super::{backend, relay, Session, Shared};

mod auth;

pub type ClientStream = tokio_rustls::server::TlsStream<TcpStream>;

pub async fn handle(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, shutdown: watch::Receiver<bool>) {
    // The login's state (TLS handshakes, authentication, provisioning) is much larger than the
    // relay's and is done with once the session runs: boxed, so that an idle session does not
    // keep room for it in its task.
    let login = Box::pin(login(&shared, tcp, peer));
    let Some((client, session, kill, upstream)) = login.await else {
        return;
    };
    relay::run(shared, session, kill, client, upstream, shutdown).await;
}

/// From the first packet to an upstream connection ready for the relay; `None` once the client has
/// been answered (refused, cancelled, or gone).
async fn login(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(
    Framed<ClientStream>,
    Arc<Session>,
    watch::Receiver<Option<Kill>>,
    Upstream,
)> {
    let _ = tcp.set_nodelay(true);
    let client = expect_ssl_request(shared, Framed::new(tcp, MAX_STARTUP_LEN), peer).await?;
    let mut client = Framed::new(client, shared.config.load().server.max_message_size);
    let params = match client.read_startup().await {
        Ok(StartupPacket::Startup { params, .. }) => params,
        Ok(StartupPacket::Cancel { process_id, secret_key }) => {
            let _ = shared.cancels.cancel(process_id, secret_key).await;
            return None;
        }
        Ok(_) => {
            refuse(shared, &mut client, peer, &ProxyError::Closed, None).await;
            return None;
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "no startup message after TLS");
            return None;
        }
    };
    let session = match auth::authenticate(shared, &mut client, params, peer).await {
        Ok(s) => s,
        Err((e, claims)) => {
            refuse(shared, &mut client, peer, &e, claims.as_ref()).await;
            return None;
        }
    };
    // Registered before provisioning, so that a reload or lock during the login reaches it too.
    let session = Arc::new(session);
    let kill = shared.sessions.register(session.clone());
    // A reload between the roles' computation and the registration did not see this session. Until
    // the configuration stays the same across the update (a reload racing it may store its roles
    // first, then these would be older).
    let followed = loop {
        let config = shared.config.load_full();
        let followed = shared.sessions.follow_current(&session, &config);
        if followed.is_err() || Arc::ptr_eq(&config, &shared.config.load()) {
            break followed;
        }
    };
    if let Err(refusal) = followed {
        shared.sessions.remove(&session.id);
        refuse(
            shared,
            &mut client,
            peer,
            &ProxyError::Refused(refusal),
            Some(&session.claims),
        )
        .await;
        return None;
    }
    let upstream = match backend::open(shared, &session).await {
        Ok(u) => u,
        Err(e) => {
            shared.sessions.remove(&session.id);
            tracing::warn!(session = %session.id, error = %e, "upstream connection failed");
            let mut body = session.event("session.error");
            body.error = Some(e.to_string());
            let _ = shared.audit.append(body).await;
            send_error(&mut client, "FATAL", &e).await;
            return None;
        }
    };
    Some((client, session, kill, upstream))
}

/// Plain TCP phase: only SSLRequest leads on; a plain startup is refused, a cancel is routed.
async fn expect_ssl_request(shared: &Shared, mut plain: Framed<TcpStream>, peer: SocketAddr) -> Option<ClientStream> {
    loop {
        match plain.read_startup().await {
            Ok(StartupPacket::SslRequest) => break,
            Ok(StartupPacket::GssEncRequest) => {
                plain.send(b"N").await.ok()?;
            }
            Ok(StartupPacket::Cancel { process_id, secret_key }) => {
                let _ = shared.cancels.cancel(process_id, secret_key).await;
                return None;
            }
            Ok(StartupPacket::Startup { params, .. }) => {
                let user = params.iter().find(|(k, _)| k == "user").map(|(_, v)| v.clone());
                let e = ProxyError::TlsRequired;
                record_auth_failure(shared, peer, &e, None, user.as_deref()).await;
                send_error(&mut plain, "FATAL", &e).await;
                return None;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad first packet");
                return None;
            }
        }
    }
    // Bytes sent after SSLRequest but before the handshake would be read as if they came over TLS:
    // refuse them (the CVE-2021-23214 class of injection).
    if !plain.buf.is_empty() {
        return None;
    }
    plain.send(b"S").await.ok()?;
    let (tcp, _) = plain.into_parts();
    match shared.acceptor.accept(tcp).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            let reason = format!("TLS handshake failed: {e}");
            let _ = shared
                .audit
                .append(EventBody {
                    event: "auth.failed".into(),
                    client_addr: Some(peer.to_string().into()),
                    reason: Some(reason),
                    ..EventBody::default()
                })
                .await;
            None
        }
    }
}

/// Sends a FATAL refusal and records it.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut Framed<S>,
    peer: SocketAddr,
    e: &ProxyError,
    claims: Option<&warden_identity::Claims>,
) {
    tracing::info!(%peer, sqlstate = e.sqlstate(), reason = %e, "connection refused");
    record_auth_failure(shared, peer, e, claims, None).await;
    send_error(client, "FATAL", e).await;
}

async fn record_auth_failure(
    shared: &Shared,
    peer: SocketAddr,
    e: &ProxyError,
    claims: Option<&warden_identity::Claims>,
    user: Option<&str>,
) {
    // A user named before authentication is only what the client claimed: said in the reason, never
    // as `db_user` (the role a session runs as).
    let reason = match user {
        Some(u) => format!(
            "{e} (the client named user \"{}\")",
            u.chars().take(64).collect::<String>()
        ),
        None => e.to_string(),
    };
    let mut body = EventBody {
        event: "auth.failed".into(),
        client_addr: Some(peer.to_string().into()),
        reason: Some(reason),
        error: Some(e.sqlstate().to_string()),
        ..EventBody::default()
    };
    if let Some(c) = claims {
        body.identity = Some(super::identity_record(c, &c.roles).into());
        body.credential_id = Some(c.credential_id.as_str().into());
    }
    if let Err(err) = shared.audit.append(body).await {
        tracing::error!(error = %err, "cannot record auth.failed");
    }
}

pub async fn send_error<S: AsyncRead + AsyncWrite + Unpin>(client: &mut Framed<S>, severity: &str, e: &ProxyError) {
    let mut buf = BytesMut::new();
    let message = e.client_message();
    ErrorResponse {
        severity,
        code: e.sqlstate(),
        message: &message,
        detail: None,
        hint: None,
    }
    .encode(&mut buf);
    let _ = client.send(&buf).await;
}

/// What the client sees once its session is ready: the upstream's parameters and Warden's cancel key.
pub fn greeting(params: &[(String, String)], cancel_key: (i32, i32), buf: &mut BytesMut) {
    be::authentication_ok(buf);
    for (k, v) in params {
        be::parameter_status(k, v, buf);
    }
    be::backend_key_data(cancel_key.0, cancel_key.1, buf);
    be::ready_for_query(b'I', buf);
}

pub(crate) fn new_session_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) type AuthResult = Result<Session, (ProxyError, Option<warden_identity::Claims>)>;
