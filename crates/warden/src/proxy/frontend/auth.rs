//! Authenticate: a client certificate from the user CA, or the token as the password; then the checks
//! that tie the credential to this connection (user name, expiry, database, effective roles).

use std::net::SocketAddr;

use bytes::BytesMut;
use rustls::CertificateError;
use time::OffsetDateTime;
use warden_identity::{claims_from_cert, Claims};
use warden_wire::frontend::{parse_password, FrontendMessage};

use super::{AuthResult, ClientStream};
use crate::proxy::error::ProxyError;
use crate::proxy::io::Framed;
use crate::proxy::{db_role_name, Session, Shared};

/// Client startup parameters passed on to PostgreSQL. Anything else (notably `options`, which can set
/// `role` or `warden.*`) is dropped.
const PASSED_PARAMS: &[&str] = &[
    "client_encoding",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "lc_messages",
];

pub(super) async fn authenticate(
    shared: &Shared,
    client: &mut Framed<ClientStream>,
    params: Vec<(String, String)>,
    peer: SocketAddr,
) -> AuthResult {
    let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let user = param("user").ok_or((ProxyError::MissingUser, None))?;
    let database = param("database").unwrap_or_else(|| user.clone());
    if param("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err((ProxyError::Replication, None));
    }

    let claims = credential(shared, client).await.map_err(|e| (e, None))?;
    let fail = |e: ProxyError| (e, Some(claims.clone()));
    let now = OffsetDateTime::now_utc();
    if now >= claims.not_after {
        return Err(fail(expired(&claims)));
    }
    if now < claims.not_before {
        return Err(fail(ProxyError::NotYetValid { at: claims.not_before }));
    }
    if user != claims.name {
        return Err(fail(ProxyError::WrongUser {
            user,
            identity: claims.identity().to_string(),
            name: claims.name.clone(),
        }));
    }
    match shared.block_for(&crate::proxy::subject(&claims)) {
        Ok(None) => {}
        Ok(Some(block)) => return Err(fail(block.into())),
        Err(e) => return Err(fail(ProxyError::StateUnavailable { reason: e.to_string() })),
    }
    let config = shared.config.load();
    let identity = claims.identity();
    let roles: Vec<String> = config
        .effective_roles(&identity, claims.requester.as_ref(), &claims.roles, &database)
        .map_err(|r| fail(ProxyError::Refused(r)))?
        .iter()
        .map(|r| r.name.clone())
        .collect();
    // The most this identity could hold here, to name its role (see db_role_name).
    let configured = config.identity(&identity).map(|i| i.roles.clone()).unwrap_or_default();
    let full: Vec<String> = config
        .effective_roles(&identity, claims.requester.as_ref(), &configured, &database)
        .map(|rs| rs.iter().map(|r| r.name.clone()).collect())
        .unwrap_or_default();
    let client_params = params
        .iter()
        .filter(|(k, _)| PASSED_PARAMS.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(k, v)| {
            // Statements and names are read as UTF-8 (see `utf8_client_encoding`): any other
            // client encoding becomes UTF8.
            if k.eq_ignore_ascii_case("client_encoding") && !warden_sql::utf8_client_encoding(v) {
                (k.clone(), "UTF8".to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let db_role = db_role_name(&claims, &roles, &full);
    Ok(Session::new(claims, database, roles, db_role, peer, client_params))
}

/// The credential's claims, verified: from the TLS client certificate, else from the token password.
async fn credential(shared: &Shared, client: &mut Framed<ClientStream>) -> Result<Claims, ProxyError> {
    let chain = client
        .stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    if let Some(leaf) = chain.first() {
        return match shared.user_ca_verifier.verify(&chain) {
            Ok(()) => claims_from_cert(leaf).map_err(|e| ProxyError::BadCertificate { reason: e.to_string() }),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => match claims_from_cert(leaf) {
                Ok(c) => Err(expired(&c)),
                Err(e) => Err(ProxyError::BadCertificate { reason: e.to_string() }),
            },
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            )) => match claims_from_cert(leaf) {
                Ok(c) => Err(ProxyError::NotYetValid { at: c.not_before }),
                Err(e) => Err(ProxyError::BadCertificate { reason: e.to_string() }),
            },
            Err(e) => Err(ProxyError::UnknownCa { reason: e.to_string() }),
        };
    }
    let mut buf = BytesMut::new();
    warden_wire::backend::authentication_cleartext_password(&mut buf);
    client.send(&buf).await?;
    let frame = client.read_frame().await?;
    let password = match FrontendMessage::parse(&frame)? {
        FrontendMessage::Password(body) => parse_password(body)?.to_string(),
        _ => return Err(ProxyError::NoCredential),
    };
    let token = password.trim();
    if token.is_empty() {
        return Err(ProxyError::NoCredential);
    }
    shared
        .user_ca
        .verify_token(token)
        .map_err(|e| ProxyError::BadToken { reason: e.to_string() })
}

fn expired(c: &Claims) -> ProxyError {
    let mut reissue = format!("warden issue --kind {} --name {}", c.kind, c.name);
    if let Some(r) = &c.requester {
        reissue += &format!(" --requester {r}");
    }
    if let Some(t) = &c.task {
        reissue += &format!(" --task {t}");
    }
    ProxyError::Expired {
        at: c.not_after,
        reissue,
    }
}
