//! Logging in to PostgreSQL as the provisioned role over TLS, with the session's identity settings.

use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use warden_policy::DatabaseConfig;
use warden_wire::backend::{AuthRequest, BackendMessage};
use warden_wire::frontend as fe;

use crate::proxy::error::ProxyError;
use crate::proxy::io::Framed;
use crate::proxy::Session;

pub type UpstreamStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A logged-in upstream connection, ready for queries.
pub struct Upstream {
    pub conn: Framed<UpstreamStream>,
    /// ParameterStatus values PostgreSQL reported, to pass on to the client.
    pub params: Vec<(String, String)>,
    /// The session's search_path as PostgreSQL reports it (`SHOW search_path`), for name resolution.
    pub search_path: String,
    /// The backend's own cancel key (the client gets Warden's).
    pub backend_key: (i32, i32),
    pub host: String,
    pub port: u16,
}

pub async fn login(
    db: &DatabaseConfig,
    tls: Arc<rustls::ClientConfig>,
    session: &Session,
    password: Option<&str>,
    max_message: usize,
) -> Result<Upstream, ProxyError> {
    let url = &db.url;
    let unreachable = |reason: String| ProxyError::Upstream {
        database: db.name.clone(),
        reason,
    };
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| unreachable(format!("{}:{}: {e}", url.host, url.port)))?;
    let _ = tcp.set_nodelay(true);
    let mut plain = Framed::new(tcp, max_message);
    let mut buf = BytesMut::with_capacity(512);
    fe::ssl_request(&mut buf);
    plain.send(&buf).await?;
    plain.fill().await?;
    if plain.buf.as_ref() != b"S" {
        return Err(unreachable("PostgreSQL does not accept TLS (ssl = off?)".into()));
    }
    let (tcp, _) = plain.into_parts();
    let name = crate::tls::server_name(&url.host).map_err(|e| unreachable(e.to_string()))?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| unreachable(format!("TLS: {e}")))?;
    let mut conn = Framed::new(stream, max_message);

    let settings = identity_settings(session);
    let mut params: Vec<(&str, &str)> = vec![("user", &session.db_role), ("database", &url.dbname)];
    params.extend(settings.iter().map(|(k, v)| (*k, v.as_str())));
    params.extend(session.client_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    buf.clear();
    fe::startup_message(&params, &mut buf);
    conn.send(&buf).await?;
    authenticate(&mut conn, session, password).await?;

    let mut server_params = Vec::new();
    let mut backend_key = (0, 0);
    loop {
        let frame = conn.read_frame().await?;
        match BackendMessage::parse(&frame)? {
            BackendMessage::ParameterStatus { name, value } => {
                server_params.push((name.to_string(), value.to_string()))
            }
            BackendMessage::BackendKeyData { process_id, secret_key } => backend_key = (process_id, secret_key),
            BackendMessage::ReadyForQuery { .. } => break,
            BackendMessage::ErrorResponse(e) => {
                return Err(ProxyError::UpstreamAuth {
                    role: session.db_role.clone(),
                    message: e.message().unwrap_or("error").to_string(),
                })
            }
            _ => {}
        }
    }
    let search_path = show_search_path(&mut conn).await?;
    Ok(Upstream {
        conn,
        params: server_params,
        search_path,
        backend_key,
        host: url.host.clone(),
        port: url.port,
    })
}

/// Asks the fresh session for its search_path (database and role defaults apply), before the client
/// can send anything.
async fn show_search_path(conn: &mut Framed<UpstreamStream>) -> Result<String, ProxyError> {
    let mut buf = BytesMut::new();
    fe::query("SHOW search_path", &mut buf);
    conn.send(&buf).await?;
    let mut value = String::new();
    loop {
        let frame = conn.read_frame().await?;
        if frame.tag == b'D' {
            // DataRow: i16 count, i32 length, bytes.
            let body = frame.body();
            if body.len() >= 6 {
                value = String::from_utf8_lossy(&body[6..]).into_owned();
            }
            continue;
        }
        if let BackendMessage::ReadyForQuery { .. } = BackendMessage::parse(&frame)? {
            return Ok(value);
        }
    }
}

/// `application_name` and the `warden.*` settings that make PostgreSQL's own views name the actor.
fn identity_settings(session: &Session) -> Vec<(&'static str, String)> {
    let c = &session.claims;
    let requester = c.requester.as_ref().map(|r| r.to_string()).unwrap_or_default();
    let task = c.task.clone().unwrap_or_default();
    let mut app = format!("warden {}:{}", c.kind, c.name);
    if !requester.is_empty() {
        app += &format!(" for {requester}");
    }
    if !task.is_empty() {
        app += &format!(" task {task}");
    }
    // PostgreSQL truncates application_name at 63 bytes; cut on a character boundary ourselves.
    while app.len() > 63 {
        app.pop();
    }
    vec![
        ("application_name", app),
        ("warden.identity", c.identity().to_string()),
        ("warden.requester", requester),
        ("warden.task", task),
        ("warden.session", session.id.clone()),
        ("warden.credential", c.credential_id.clone()),
        // Statements are parsed with standard strings; a database or role default of `off` would make
        // PostgreSQL read backslashes differently. The startup value is also what RESET returns to.
        ("standard_conforming_strings", "on".to_string()),
        // Statements and names are read as UTF-8; PostgreSQL converts from the client encoding, and
        // a database default other than UTF8 would change the bytes it compares names by.
        ("client_encoding", "UTF8".to_string()),
    ]
}

async fn authenticate(
    conn: &mut Framed<UpstreamStream>,
    session: &Session,
    password: Option<&str>,
) -> Result<(), ProxyError> {
    let refused = |message: String| ProxyError::UpstreamAuth {
        role: session.db_role.clone(),
        message,
    };
    let need_password = || {
        password.ok_or_else(|| refused("PostgreSQL asked for a password; with upstream_auth = \"cert\" its pg_hba.conf must use `hostssl ... cert` for Warden's roles".into()))
    };
    let mut scram: Option<ScramSha256> = None;
    let mut buf = BytesMut::new();
    loop {
        let frame = conn.read_frame().await?;
        buf.clear();
        match BackendMessage::parse(&frame)? {
            BackendMessage::Authentication(AuthRequest::Ok) => return Ok(()),
            BackendMessage::Authentication(AuthRequest::CleartextPassword) => {
                fe::password_message(need_password()?.as_bytes(), &mut buf);
            }
            BackendMessage::Authentication(AuthRequest::Md5Password { salt }) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    session.db_role.as_bytes(),
                    need_password()?.as_bytes(),
                    salt,
                );
                fe::password_message(hash.as_bytes(), &mut buf);
            }
            BackendMessage::Authentication(AuthRequest::Sasl { mechanisms }) => {
                if !mechanisms.contains(&"SCRAM-SHA-256") {
                    return Err(refused(format!("unsupported SASL mechanisms {mechanisms:?}")));
                }
                let s = ScramSha256::new(need_password()?.as_bytes(), ChannelBinding::unsupported());
                fe::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut buf);
                scram = Some(s);
            }
            BackendMessage::Authentication(AuthRequest::SaslContinue(data)) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| refused("unexpected SASL continue".into()))?;
                s.update(data).map_err(|e| refused(format!("SCRAM: {e}")))?;
                fe::sasl_response(s.message(), &mut buf);
            }
            BackendMessage::Authentication(AuthRequest::SaslFinal(data)) => {
                let mut s = scram.take().ok_or_else(|| refused("unexpected SASL final".into()))?;
                s.finish(data).map_err(|e| refused(format!("SCRAM: {e}")))?;
                continue;
            }
            BackendMessage::Authentication(other) => {
                return Err(refused(format!("unsupported authentication request {other:?}")));
            }
            BackendMessage::ErrorResponse(e) => {
                return Err(refused(e.message().unwrap_or("error").to_string()));
            }
            _ => continue,
        }
        conn.send(&buf).await?;
    }
}
