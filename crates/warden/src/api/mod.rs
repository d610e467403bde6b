//! The HTTPS API (`server.api_listen`): issuing task credentials for agents on the caller's behalf,
//! revocation, locks and live sessions. Every call is authenticated by the caller's own client
//! certificate from the user CA (mTLS); errors are JSON `{"error": {"code", "message"}}`.
//!
//! The document in `docs/openapi.json` describes every route and is served at `/openapi.json`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use warden_identity::{claims_from_cert, Claims};

use crate::proxy::Shared;

mod handlers;
pub mod requests;

/// The OpenAPI document, as kept in the repository.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API until `shutdown` flips.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = handlers::router(shared.clone());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    tokio::spawn(connection(shared.clone(), app.clone(), acceptor.clone(), tcp, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// One TLS connection: the client certificate is verified once here; each request re-checks expiry and locks.
async fn connection(shared: Arc<Shared>, app: Router, acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "API TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let presented = match chain.first() {
        None => Err(ApiError::unauthenticated(
            "no client certificate: call the API with your credential's identity.crt and identity.key",
        )),
        Some(leaf) => match shared.user_ca_verifier.verify(&chain) {
            Ok(()) => {
                claims_from_cert(leaf).map_err(|e| ApiError::unauthenticated(format!("not a Warden credential: {e}")))
            }
            Err(e) => Err(ApiError::unauthenticated(format!(
                "the client certificate is not valid for this Warden ({e}); use a current credential of this deployment"
            ))),
        },
    };
    let svc = app.layer(Extension(Presented(Arc::new(presented))));
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "API connection ended");
    }
}

/// What the connection's client certificate proved, checked once per connection.
#[derive(Clone)]
struct Presented(Arc<Result<Claims, ApiError>>);

/// The authenticated caller of a request, not locked or revoked.
pub struct Caller {
    pub claims: Claims,
    pub admin: bool,
}

/// A caller that may be locked or revoked: for the calls that only take access away (revoking a
/// credential), which a blocked caller must still be able to make.
pub struct AnyCaller(pub Caller);

impl Caller {
    pub fn name(&self) -> String {
        self.claims.identity().to_string()
    }

    pub fn is_agent(&self) -> bool {
        self.claims.kind == warden_identity::IdentityKind::Agent
    }
}

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let caller = AnyCaller::from_request_parts(parts, shared).await?.0;
        refuse_blocked(shared, &caller.claims)?;
        Ok(caller)
    }
}

impl FromRequestParts<Arc<Shared>> for AnyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let Some(Presented(result)) = parts.extensions.get::<Presented>().cloned() else {
            return Err(ApiError::unauthenticated("no client certificate"));
        };
        let claims = result.as_ref().clone()?;
        if OffsetDateTime::now_utc() >= claims.not_after {
            return Err(ApiError::unauthenticated(format!(
                "your credential expired at {}; get a new one",
                crate::proxy::error::fmt_ts(claims.not_after)
            )));
        }
        let config = shared.config.load();
        let identity = claims.identity();
        if config.identity(&identity).is_none() {
            return Err(ApiError::forbidden(format!(
                "{identity} is no longer configured in this deployment"
            )));
        }
        let admin = config.server.admins.contains(&identity);
        Ok(AnyCaller(Caller { claims, admin }))
    }
}

/// An API error: an HTTP status, a stable code, and a sentence that says what to do.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorInner {
                code: self.code,
                message: &self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<warden_state::StateError> for ApiError {
    fn from(e: warden_state::StateError) -> Self {
        match e {
            warden_state::StateError::NoSuchLock(_) | warden_state::StateError::NoSuchCredential(_) => {
                ApiError::not_found(e.to_string())
            }
            other => ApiError::unavailable(format!("Warden's state store: {other}")),
        }
    }
}

/// 403 `locked` when a lock or revocation covers `claims` (503 when the store cannot tell).
pub fn refuse_blocked(shared: &Shared, claims: &Claims) -> Result<(), ApiError> {
    match shared.block_for(&crate::proxy::subject(claims)) {
        Ok(None) => Ok(()),
        Ok(Some(block)) => {
            let e: crate::proxy::error::ProxyError = block.into();
            Err(ApiError::new(StatusCode::FORBIDDEN, "locked", e.to_string()))
        }
        Err(e) => Err(ApiError::unavailable(format!("cannot read Warden's state store: {e}"))),
    }
}

/// A JSON body whose rejections (bad JSON, unknown fields, wrong content type) are API errors too.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(ApiError::new(rejection.status(), "bad_request", rejection.body_text())),
        }
    }
}

/// A known path with a method it does not serve.
async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not served on {}; GET /openapi.json lists the API",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Requests the router does not know get the JSON error shape too.
async fn fallback(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}; GET /openapi.json lists the API",
        req.method(),
        req.uri().path()
    ))
}
