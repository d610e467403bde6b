//! The routes. Who may do what:
//! - a human or workload issues task credentials for agents acting on its behalf (never beyond its own
//!   roles or its own credential's lifetime), and revokes credentials it holds or issued to its agents;
//! - anyone may lock their own sessions and credentials, and a human or workload `requester` =
//!   themselves (all their agents);
//! - an agent's own is only what its credential covers: the agent name is shared by every requester
//!   who runs it, so it never reaches another requester's credentials or sessions;
//! - admins (`server.admins`) manage every lock and credential and see every session;
//! - a locked or revoked caller may still revoke credentials (that only takes access away); lifting a
//!   lock gives access back and needs an unblocked caller.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use warden_identity::{parse_duration, IdentityKind, IdentityName};
use warden_state::{CredentialRecord, Lock, LockTarget};

use super::{AnyCaller, ApiError, ApiJson, Caller, OPENAPI};
use crate::cli::issue::{claims_for, human_duration};
use crate::control;
use crate::proxy::error::fmt_ts;
use crate::proxy::lifecycle::SessionInfo;
use crate::proxy::Shared;

type ApiResult<T> = Result<T, ApiError>;

/// An agent's credential lasts this long unless asked otherwise or bounded lower.
const DEFAULT_TTL: time::Duration = time::Duration::minutes(15);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/whoami", get(whoami))
        .route("/v1/credentials", post(issue).get(list_credentials))
        .route("/v1/credentials/{id}/revoke", post(revoke))
        .route("/v1/locks", post(create_lock).get(list_locks))
        .route("/v1/locks/{id}", axum::routing::delete(remove_lock))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/requests", post(super::requests::create).get(super::requests::list))
        .route("/v1/requests/{id}/approve", post(super::requests::approve))
        .route("/v1/requests/{id}/deny", post(super::requests::deny))
        .route("/v1/requests/{id}/assume", post(super::requests::assume))
        .method_not_allowed_fallback(super::method_not_allowed)
        .fallback(super::fallback)
        .with_state(shared)
}

async fn openapi() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

#[derive(Serialize)]
struct WhoAmI {
    identity: String,
    requester: Option<String>,
    task: Option<String>,
    roles: Vec<String>,
    credential_id: String,
    #[serde(with = "time::serde::rfc3339")]
    not_after: OffsetDateTime,
    admin: bool,
}

async fn whoami(caller: Caller) -> Json<WhoAmI> {
    let c = &caller.claims;
    Json(WhoAmI {
        identity: c.identity().to_string(),
        requester: c.requester.as_ref().map(|r| r.to_string()),
        task: c.task.clone(),
        roles: c.roles.clone(),
        credential_id: c.credential_id.clone(),
        not_after: c.not_after,
        admin: caller.admin,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    /// The agent's name (`report-bot`); it will act for the caller.
    agent: String,
    task: String,
    #[serde(default)]
    roles: Vec<String>,
    /// Default: 15m, or the tightest bound if that is shorter.
    ttl: Option<String>,
    /// Which database the connection settings name; default: the first one its roles reach.
    database: Option<String>,
}

#[derive(Serialize)]
pub struct IssuedCredential {
    credential_id: String,
    identity: String,
    requester: Option<String>,
    task: Option<String>,
    roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    not_after: OffsetDateTime,
    /// PEM: the client certificate and its private key (the key exists only in this response).
    certificate: String,
    private_key: String,
    /// PEM: the CA that signs Warden's server certificate (sslrootcert).
    ca_certificate: String,
    /// The same claims as a token, for clients that send it as the password.
    token: String,
    /// Where to connect: `host:port` of Warden's PostgreSQL listener, and a database.
    postgres: String,
    pub database: Option<String>,
}

/// Signs `claims` as certificate and token, records the credential (store and `credential.issued`) and
/// builds the response that carries it. Nothing is returned unless it was recorded. `caller` is the
/// credential it is obtained with: revoking that one revokes this one.
pub async fn credential_response(
    shared: &Shared,
    config: &warden_policy::Config,
    claims: &warden_identity::Claims,
    caller: &Caller,
    how: &str,
) -> ApiResult<IssuedCredential> {
    let by = &caller.name();
    let cert = shared
        .user_ca
        .issue_client(claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let token = shared
        .user_ca
        .sign_token(claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let recorded = shared.state.record_credential(&control::credential_record(
        claims,
        by,
        Some(&caller.claims.credential_id),
    ))?;
    if recorded.revoked_at.is_some() {
        // The caller's credential was revoked between its authentication and now: the new one was
        // recorded revoked with it, and is not handed out.
        if let Err(e) = shared.audit.append(control::revoked_event(&recorded)).await {
            tracing::error!(error = %e, credential = %recorded.id, "cannot record credential.revoked");
        }
        return Err(ApiError::forbidden(format!(
            "your credential {} was revoked meanwhile; nothing was issued",
            caller.claims.credential_id
        )));
    }
    if let Err(e) = shared.audit.append(control::issued_event(claims, by, how)).await {
        // Recorded in the store but never handed out: marked so there too.
        let why = format!("its issue could not be recorded in the audit log: {e}");
        if let Err(e) = shared
            .state
            .revoke_credential(&claims.credential_id, by, &why, OffsetDateTime::now_utc())
        {
            tracing::error!(error = %e, credential = %claims.credential_id, "cannot withdraw an unrecorded credential");
        }
        return Err(ApiError::unavailable(format!(
            "the audit log cannot be written ({e}); nothing was issued"
        )));
    }
    tracing::info!(credential = %claims.credential_id, identity = %claims.identity(), by, how, "credential issued");
    let database = claims
        .roles
        .iter()
        .filter_map(|r| config.role(r))
        .flat_map(|r| r.databases.first())
        .next()
        .cloned();
    Ok(IssuedCredential {
        credential_id: claims.credential_id.clone(),
        identity: claims.identity().to_string(),
        requester: claims.requester.as_ref().map(|r| r.to_string()),
        task: claims.task.clone(),
        roles: claims.roles.clone(),
        not_after: claims.not_after,
        certificate: cert.cert_pem,
        private_key: cert.key_pem,
        ca_certificate: shared.host_ca_pem.clone(),
        token,
        postgres: config.server.postgres_listen.clone(),
        database,
    })
}

/// Issues a task credential for an agent acting for the caller, within every delegation bound.
async fn issue(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    ApiJson(req): ApiJson<IssueRequest>,
) -> ApiResult<impl IntoResponse> {
    let requester = caller.claims.identity();
    if requester.kind == IdentityKind::Agent {
        return Err(ApiError::forbidden(format!(
            "{requester} is an agent; only a human or a workload issues credentials for agents"
        )));
    }
    let agent = IdentityName::new(IdentityKind::Agent, &req.agent).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if req.task.trim().is_empty() {
        return Err(ApiError::bad_request(
            "task is empty: an agent credential is issued for a task",
        ));
    }
    control::check_text("task", &req.task, 128).map_err(ApiError::bad_request)?;
    let explicit_ttl = req
        .ttl
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?;
    let config = shared.config.load();
    // A role that needs approval is asked for by the agent (first: the caller may not hold it either).
    for r in &req.roles {
        if config.needs_request(r) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "needs_approval",
                format!(
                    "role \"{r}\" needs a human's approval: issue the agent's credential without it, then ask from the agent with `warden requests create --roles {r} --reason ...`"
                ),
            ));
        }
    }
    // Never beyond the human it acts for: its roles are within the caller's credential's roles, and it
    // ends no later than the caller's credential does.
    for r in &req.roles {
        if !caller.claims.roles.contains(r) {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "outside_bounds", format!(
                "role \"{r}\" is not in your own credential (roles {}); an agent never holds more than the person it acts for",
                caller.claims.roles.join(", ")
            )));
        }
    }
    let caller_left = time::Duration::seconds((caller.claims.not_after - OffsetDateTime::now_utc()).whole_seconds());
    let roles: Vec<String> = if req.roles.is_empty() {
        // By default: every role the agent may hold that the caller's credential carries.
        let held = config.identity(&agent).map(|i| i.roles.clone()).unwrap_or_default();
        // Roles that need a human's approval are never part of a default: they are asked for.
        let roles: Vec<String> = held
            .into_iter()
            .filter(|r| caller.claims.roles.contains(r))
            .filter(|r| !config.needs_request(r))
            .collect();
        if roles.is_empty() && config.identity(&agent).is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "outside_bounds",
                format!(
                    "none of {agent}'s roles are in your own credential (roles {}); an agent never holds more than the person it acts for",
                    caller.claims.roles.join(", ")
                ),
            ));
        }
        roles
    } else {
        req.roles.clone()
    };
    let ttl = match explicit_ttl {
        Some(ttl) => ttl,
        None => DEFAULT_TTL
            .min(caller_left)
            .min(config.max_ttl(&agent, Some(&requester), &roles)),
    };
    if ttl > caller_left {
        // The tighter of the two bounds, so that asking for what this says is accepted.
        let most = caller_left.min(config.max_ttl(&agent, Some(&requester), &roles));
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "outside_bounds",
            format!(
                "ttl {} outlives your own credential, which expires at {}; ask for at most {}",
                human_duration(ttl),
                fmt_ts(caller.claims.not_after),
                human_duration(most)
            ),
        ));
    }
    let claims = claims_for(&config, &agent, Some(&requester), Some(&req.task), &roles, ttl).map_err(|e| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "outside_bounds",
            e.to_string()
                .replace("--ttl", "ttl")
                .replace("--task", "task")
                .replace("--requester", "requester"),
        )
    })?;
    let database = match req.database {
        Some(db) => {
            if config
                .effective_roles(&agent, Some(&requester), &claims.roles, &db)
                .is_err()
            {
                return Err(ApiError::bad_request(format!(
                    "none of the roles {} reach database \"{db}\"",
                    claims.roles.join(", ")
                )));
            }
            Some(db)
        }
        None => claims
            .roles
            .iter()
            .filter_map(|r| config.role(r))
            .flat_map(|r| r.databases.first())
            .next()
            .cloned(),
    };
    // A credential a lock would refuse at once is not issued (a locked agent, task or requester).
    super::refuse_blocked(&shared, &claims)?;
    let mut body = credential_response(&shared, &config, &claims, &caller, "through the API").await?;
    body.database = database;
    Ok((StatusCode::CREATED, Json(body)))
}

/// Whether the caller may act on a credential: its holder, the requester it was issued for, or an
/// admin. An agent holds only its own credential: its name is shared by every requester who runs it.
fn owns_credential(caller: &Caller, c: &CredentialRecord) -> bool {
    if caller.admin {
        return true;
    }
    if caller.is_agent() {
        return c.id == caller.claims.credential_id;
    }
    let me = caller.name();
    c.identity == me || c.requester.as_deref() == Some(me.as_str())
}

/// Whether the caller may see or lock a live session (same rule as for credentials).
fn owns_session(caller: &Caller, s: &SessionInfo) -> bool {
    if caller.admin {
        return true;
    }
    if caller.is_agent() {
        return s.credential_id == caller.claims.credential_id;
    }
    let me = caller.name();
    s.identity == me || s.requester.as_deref() == Some(me.as_str())
}

async fn list_credentials(State(shared): State<Arc<Shared>>, caller: Caller) -> ApiResult<Json<Vec<CredentialRecord>>> {
    let all = shared.state.credentials(OffsetDateTime::now_utc())?;
    Ok(Json(all.into_iter().filter(|c| owns_credential(&caller, c)).collect()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    reason: Option<String>,
}

async fn revoke(
    State(shared): State<Arc<Shared>>,
    AnyCaller(caller): AnyCaller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<CredentialRecord>> {
    // The body is optional: none, or {"reason": "..."}.
    let body: RevokeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("body: {e}; send {{\"reason\": \"...\"}} or nothing")))?
    };
    let Some(existing) = shared.state.credential(&id)? else {
        return Err(ApiError::not_found(format!("no credential {id} in this deployment")));
    };
    if !owns_credential(&caller, &existing) {
        return Err(ApiError::forbidden(format!(
            "credential {id} belongs to {}; only its holder, its requester or an admin may revoke it",
            existing.identity
        )));
    }
    if existing.revoked_at.is_some() {
        return Ok(Json(existing));
    }
    let reason = body.reason.unwrap_or_else(|| format!("revoked by {}", caller.name()));
    control::check_text("reason", &reason, 1000).map_err(ApiError::bad_request)?;
    let revoked = shared
        .state
        .revoke_credential(&id, &caller.name(), &reason, OffsetDateTime::now_utc())?;
    shared.sessions.changed.notify_one();
    // Records for what this call changed (another may have revoked it meanwhile).
    let own = revoked.revoked_now.then_some(&revoked.credential);
    for c in own.into_iter().chain(&revoked.with_it) {
        if let Err(e) = shared.audit.append(control::revoked_event(c)).await {
            tracing::error!(error = %e, credential = %c.id, "cannot record credential.revoked");
        }
    }
    tracing::info!(credential = %id, with_it = revoked.with_it.len(), by = %caller.name(), "credential revoked");
    Ok(Json(revoked.credential))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockRequest {
    /// identity, requester, task, credential or session.
    target: String,
    value: String,
    reason: Option<String>,
    ttl: Option<String>,
}

async fn create_lock(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    ApiJson(req): ApiJson<LockRequest>,
) -> ApiResult<impl IntoResponse> {
    // Identities are written canonically, so that a lock matches what connections present.
    let value = match req.target.as_str() {
        "identity" | "requester" => req
            .value
            .trim()
            .parse::<IdentityName>()
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "value: {e}; write identities as KIND:NAME, e.g. agent:report-bot"
                ))
            })?
            .to_string(),
        _ => req.value.clone(),
    };
    control::check_text("value", &value, 256).map_err(ApiError::bad_request)?;
    if let Some(r) = &req.reason {
        control::check_text("reason", r, 1000).map_err(ApiError::bad_request)?;
    }
    let target = LockTarget::from_parts(&req.target, value).ok_or_else(|| {
        ApiError::bad_request(format!(
            "target \"{}\" is not one of identity, requester, task, credential, session",
            req.target
        ))
    })?;
    if req.value.trim().is_empty() {
        return Err(ApiError::bad_request("value is empty: name what to lock"));
    }
    // Only an admin learns that a credential does not exist; others get 403 below for it.
    if let LockTarget::Credential(id) = &target {
        if caller.admin && shared.state.credential(id)?.is_none() {
            return Err(ApiError::not_found(format!(
                "no credential {id} is recorded in this deployment; lock its identity or task instead"
            )));
        }
    }
    // A session lock stops one live session (ids are never reused): one that is not live, or a
    // prefix of several, would stop nothing the caller meant. A unique prefix is expanded, among the
    // sessions the caller may see (a prefix must not probe others' session ids).
    let target = match target {
        LockTarget::Session(prefix) => {
            let live: Vec<String> = shared
                .sessions
                .list()
                .into_iter()
                .filter(|s| {
                    s.session_id == prefix
                        || (s.session_id.starts_with(&prefix) && (caller.admin || owns_session(&caller, s)))
                })
                .map(|s| s.session_id)
                .collect();
            match live.as_slice() {
                [one] => LockTarget::Session(one.clone()),
                [] => {
                    return Err(ApiError::not_found(format!(
                        "no live session {prefix}; GET /v1/sessions lists them (a session that ended is not resumed)"
                    )))
                }
                more => {
                    return Err(ApiError::bad_request(format!(
                        "{prefix} is ambiguous: it starts {} live sessions; give more characters",
                        more.len()
                    )))
                }
            }
        }
        other => other,
    };
    let ttl = req
        .ttl
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?;
    if !may_lock(&shared, &caller, &target)? {
        return Err(ApiError::forbidden(format!(
            "only an admin may lock {target}; you may lock your own sessions and credentials, and requester {}",
            caller.name()
        )));
    }
    // Checked once the caller may lock it (its expiry is not for others to learn).
    if let LockTarget::Credential(id) = &target {
        if let Some(c) = shared
            .state
            .credential(id)?
            .filter(|c| c.not_after <= OffsetDateTime::now_utc())
        {
            return Err(ApiError::bad_request(format!(
                "credential {id} expired at {}: it cannot connect, so a lock on it would stop nothing",
                fmt_ts(c.not_after)
            )));
        }
    }
    let by = caller.name();
    let lock = shared
        .state
        .create_lock(control::new_lock(target, req.reason, ttl, &by))?;
    shared.sessions.changed.notify_one();
    if let Err(e) = shared
        .audit
        .append(control::lock_event("lock.created", &lock, &by))
        .await
    {
        tracing::error!(error = %e, lock = %lock.id, "cannot record lock.created");
    }
    tracing::info!(lock = %lock.id, target = %lock.target, by = %by, "lock created");
    Ok((StatusCode::CREATED, Json(lock)))
}

fn may_lock(shared: &Shared, caller: &Caller, target: &LockTarget) -> ApiResult<bool> {
    if caller.admin {
        return Ok(true);
    }
    let me = caller.name();
    Ok(match target {
        // An agent is never a requester; its name is shared, so it may not lock it either.
        LockTarget::Requester(r) => !caller.is_agent() && *r == me,
        LockTarget::Credential(id) => shared
            .state
            .credential(id)?
            .is_some_and(|c| owns_credential(caller, &c)),
        LockTarget::Session(id) => shared
            .sessions
            .list()
            .iter()
            .any(|s| s.session_id == *id && owns_session(caller, s)),
        LockTarget::Identity(_) | LockTarget::Task(_) => false,
    })
}

#[derive(Deserialize, Default)]
struct ListLocks {
    #[serde(default)]
    all: bool,
}

async fn list_locks(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Query(q): Query<ListLocks>,
) -> ApiResult<Json<Vec<Lock>>> {
    let me = caller.name();
    let locks = shared.state.locks(OffsetDateTime::now_utc(), q.all)?;
    Ok(Json(
        locks
            .into_iter()
            .filter(|l| caller.admin || l.created_by == me)
            .collect(),
    ))
}

/// Lifting gives access back: a locked or revoked caller may not (a stolen admin credential, revoked,
/// must not lift the locks put on its agents); the offline `warden unlock` remains for an admin.
async fn remove_lock(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Lock>> {
    let Some(lock) = shared.state.lock(&id)? else {
        return Err(ApiError::not_found(format!("no lock {id}")));
    };
    let me = caller.name();
    if !caller.admin && lock.created_by != me {
        return Err(ApiError::forbidden(format!(
            "lock {id} was created by {}; only its creator or an admin may lift it",
            lock.created_by
        )));
    }
    if lock.removed_at.is_some() {
        return Ok(Json(lock));
    }
    // Lifting gives access back: recorded first, and not done if it cannot be (a lock being
    // created or a credential revoked only takes access away, and goes ahead). In a task of its own,
    // so that a client hanging up cannot stop it between the record and the lifting.
    let task = tokio::spawn(async move {
        let now = OffsetDateTime::now_utc();
        let mut lifted = lock.clone();
        lifted.removed_at = Some(now);
        lifted.removed_by = Some(me.clone());
        shared
            .audit
            .append(control::lock_event("lock.removed", &lifted, &me))
            .await
            .map_err(|e| ApiError::unavailable(format!("the audit log cannot be written ({e}); the lock stays")))?;
        let lifted = shared.state.remove_lock(&id, &me, now)?;
        shared.sessions.changed.notify_one();
        Ok::<_, ApiError>(lifted)
    });
    let lifted = task
        .await
        .map_err(|e| ApiError::internal(format!("lifting the lock failed: {e}")))??;
    Ok(Json(lifted))
}

async fn list_sessions(State(shared): State<Arc<Shared>>, caller: Caller) -> Json<Vec<SessionInfo>> {
    let sessions = shared.sessions.list();
    Json(sessions.into_iter().filter(|s| owns_session(&caller, s)).collect())
}
