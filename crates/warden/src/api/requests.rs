//! Access requests for roles with `approval = "session"`: an identity that holds such a role in its
//! configuration but not in its credential asks; a human holding one of the role's approver roles
//! decides; the asker then assumes a credential that adds the role, bound to the same requester and task.
//!
//! Rules: a reason is required; an undecided request expires; only humans approve; nobody approves their
//! own request; for an agent's request its requester may approve only where every role says
//! `requester_may_approve = true`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use warden_audit::EventBody;
use warden_identity::{parse_duration, IdentityKind};
use warden_policy::{Approval, Config};
use warden_state::{AccessRequest, RequestState};

use super::handlers::{credential_response, IssuedCredential};
use super::{ApiError, ApiJson, Caller};
use crate::cli::issue::{claims_for, human_duration};
use crate::control;
use crate::proxy::review::{ReviewInfo, ReviewOutcome};
use crate::proxy::Shared;

type ApiResult<T> = Result<T, ApiError>;

/// How long a request waits for a decision unless it asks for less.
const DEFAULT_WAIT: Duration = Duration::minutes(30);
const MAX_WAIT: Duration = Duration::hours(24);
/// How long the elevated credential may last unless the request asks for less.
const DEFAULT_ELEVATED_TTL: Duration = Duration::hours(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    roles: Vec<String>,
    reason: String,
    /// How long the elevated credential may last once approved, e.g. 30m.
    ttl: Option<String>,
    /// How long the request waits for a decision before it expires, e.g. 10m.
    wait: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    reason: Option<String>,
}

/// A request as listed: what it asks, for whom, its state and age, and whether the caller may decide it.
#[derive(Serialize)]
pub struct RequestView {
    id: String,
    kind: &'static str,
    identity: String,
    /// The agent, when an agent asks (same as `identity`).
    agent: Option<String>,
    requester: Option<String>,
    task: Option<String>,
    roles: Vec<String>,
    reason: String,
    state: &'static str,
    age_seconds: i64,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    ttl: String,
    decided_by: Option<String>,
    decision_reason: Option<String>,
    may_approve: bool,
    /// For a held statement (kind "statement"): its text, parameters and session.
    #[serde(skip_serializing_if = "Option::is_none")]
    statement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Vec<Option<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
}

fn view(q: &AccessRequest, may_approve: bool) -> RequestView {
    let now = OffsetDateTime::now_utc();
    RequestView {
        id: q.id.clone(),
        kind: "session",
        identity: q.identity.clone(),
        agent: q.identity.starts_with("agent:").then(|| q.identity.clone()),
        requester: q.requester.clone(),
        task: q.task.clone(),
        roles: q.roles.clone(),
        reason: q.reason.clone(),
        state: q.state.as_str(),
        age_seconds: (now - q.created_at).whole_seconds(),
        created_at: q.created_at,
        expires_at: q.expires_at,
        ttl: human_duration(Duration::seconds(q.ttl_seconds)),
        decided_by: q.decided_by.clone(),
        decision_reason: q.decision_reason.clone(),
        may_approve,
        statement: None,
        parameters: None,
        session_id: None,
    }
}

fn review_view(r: &ReviewInfo, may_approve: bool) -> RequestView {
    let now = OffsetDateTime::now_utc();
    RequestView {
        id: r.id.clone(),
        kind: "statement",
        identity: r.identity.clone(),
        agent: r.identity.starts_with("agent:").then(|| r.identity.clone()),
        requester: r.requester.clone(),
        task: r.task.clone(),
        roles: r.roles.clone(),
        reason: format!("a write under role {}", r.roles.join(", ")),
        state: "pending",
        age_seconds: (now - r.created_at).whole_seconds(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        ttl: String::new(),
        decided_by: None,
        decision_reason: None,
        may_approve,
        statement: Some(r.statement.clone()),
        parameters: r.parameters.clone(),
        session_id: Some(r.session_id.clone()),
    }
}

fn event(name: &'static str, q: &AccessRequest, actor: &str, reason: Option<String>) -> EventBody {
    let (kind, n) = q.identity.split_once(':').unwrap_or(("", &q.identity));
    EventBody {
        event: name.into(),
        identity: Some(
            warden_audit::IdentityRecord {
                kind: kind.to_string(),
                name: n.to_string(),
                requester: q.requester.clone(),
                task: q.task.clone(),
                roles: q.roles.clone(),
            }
            .into(),
        ),
        credential_id: Some(q.credential_id.as_str().into()),
        actor: Some(actor.to_string()),
        reason,
        request_id: Some(q.id.clone()),
        ..EventBody::default()
    }
}

async fn record(shared: &Shared, body: EventBody) -> ApiResult<()> {
    shared
        .audit
        .append(body)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::unavailable(format!("the audit log cannot be written ({e})")))
}

/// POST /v1/requests
pub async fn create(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateRequest>,
) -> ApiResult<impl IntoResponse> {
    let config = shared.config.load();
    let me = caller.claims.identity();
    if req.reason.trim().is_empty() {
        return Err(ApiError::bad_request("reason is required: say why you need the roles"));
    }
    control::check_text("reason", &req.reason, 1000).map_err(ApiError::bad_request)?;
    if req.roles.is_empty() {
        return Err(ApiError::bad_request("roles is empty: name the roles you ask for"));
    }
    let configured = config.identity(&me).map(|i| i.roles.clone()).unwrap_or_default();
    let requester_roles = caller
        .claims
        .requester
        .as_ref()
        .and_then(|r| config.identity(r))
        .map(|i| i.roles.clone());
    for r in &req.roles {
        let Some(role) = config.role(r) else {
            return Err(ApiError::bad_request(format!("unknown role \"{r}\"")));
        };
        if role.approval != Approval::Session {
            return Err(ApiError::bad_request(format!(
                "role \"{r}\" does not need an access request (its approval is not \"session\")"
            )));
        }
        if caller.claims.roles.contains(r) {
            return Err(ApiError::bad_request(format!(
                "your credential already carries role \"{r}\""
            )));
        }
        if !configured.contains(r) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "outside_bounds",
                format!(
                    "{me} does not hold role \"{r}\" in warden.toml, so it cannot be requested; ask an administrator"
                ),
            ));
        }
        if let (Some(req_id), Some(rr)) = (&caller.claims.requester, &requester_roles) {
            if !rr.contains(r) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "outside_bounds",
                    format!("requester {req_id} does not hold role \"{r}\", so its agent may not either"),
                ));
            }
        }
    }
    let parse = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
    };
    let all_roles: Vec<String> = caller.claims.roles.iter().chain(&req.roles).cloned().collect();
    let bound = config.max_ttl(&me, caller.claims.requester.as_ref(), &all_roles);
    let ttl = parse("ttl", &req.ttl)?.unwrap_or(DEFAULT_ELEVATED_TTL.min(bound));
    if ttl > bound || !ttl.is_positive() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "outside_bounds",
            format!(
                "ttl {} is outside the {} bound (the smallest max_ttl involved)",
                human_duration(ttl),
                human_duration(bound)
            ),
        ));
    }
    let wait = parse("wait", &req.wait)?.unwrap_or(DEFAULT_WAIT);
    if wait > MAX_WAIT || !wait.is_positive() {
        return Err(ApiError::bad_request(format!(
            "wait must be between 1s and {}",
            human_duration(MAX_WAIT)
        )));
    }
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    let q = AccessRequest {
        id: warden_state::new_request_id(),
        identity: me.to_string(),
        requester: caller.claims.requester.as_ref().map(|r| r.to_string()),
        task: caller.claims.task.clone(),
        credential_id: caller.claims.credential_id.clone(),
        roles: req.roles.clone(),
        reason: req.reason.clone(),
        ttl_seconds: ttl.whole_seconds(),
        state: RequestState::Pending,
        created_at: now,
        expires_at: now + wait,
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        assumed_credential: None,
    };
    shared.requests.create_request(&q)?;
    record(
        &shared,
        event("request.created", &q, &me.to_string(), Some(q.reason.clone())),
    )
    .await?;
    tracing::info!(request = %q.id, identity = %q.identity, roles = %q.roles.join(","), "access request created");
    let may = may_approve(&config, &caller, &q.identity, q.requester.as_deref(), &q.roles).is_ok();
    Ok((StatusCode::CREATED, Json(view(&q, may))))
}

/// Whether `caller` may decide what `identity` (acting for `requester`) asks under `roles`, or why not.
fn may_approve(
    config: &Config,
    caller: &Caller,
    identity: &str,
    requester: Option<&str>,
    roles: &[String],
) -> Result<(), String> {
    let me = caller.name();
    if caller.claims.kind != IdentityKind::Human {
        return Err("only humans approve requests".into());
    }
    if identity == me {
        return Err("nobody approves their own request".into());
    }
    let held: Vec<&String> = caller
        .claims
        .roles
        .iter()
        .filter(|r| {
            config
                .identity(&caller.claims.identity())
                .is_some_and(|i| i.roles.contains(r))
        })
        .collect();
    for r in roles {
        let Some(role) = config.role(r) else {
            return Err(format!("role \"{r}\" is no longer configured"));
        };
        if requester == Some(me.as_str()) && !role.requester_may_approve {
            return Err(format!(
                "you are the requester this agent acts for; role \"{r}\" does not let a requester approve (requester_may_approve)"
            ));
        }
        if !role.approvers.iter().any(|a| held.contains(&a)) {
            return Err(format!(
                "approving role \"{r}\" takes one of the roles {} in your credential",
                role.approvers.join(", ")
            ));
        }
    }
    Ok(())
}

/// Whether `caller` is the asker of `q` (or continues its credential): same identity, requester and task.
fn is_asker(caller: &Caller, q: &AccessRequest) -> bool {
    let c = &caller.claims;
    q.identity == c.identity().to_string()
        && q.requester == c.requester.as_ref().map(|r| r.to_string())
        && q.task == c.task
}

/// GET /v1/requests: your own, and those you may decide (admins: all), newest first, from the last week.
pub async fn list(State(shared): State<Arc<Shared>>, caller: Caller) -> ApiResult<Json<Vec<RequestView>>> {
    expire(&shared).await;
    let config = shared.config.load();
    let since = OffsetDateTime::now_utc() - Duration::days(7);
    let all = shared.requests.requests(since)?;
    let me = caller.name();
    // Held statements first: they hold a session up.
    let mut out: Vec<RequestView> = shared
        .reviews
        .list()
        .iter()
        .filter_map(|r| {
            let may = may_approve(&config, &caller, &r.identity, r.requester.as_deref(), &r.roles).is_ok();
            (caller.admin || may || r.identity == me).then(|| review_view(r, may))
        })
        .collect();
    out.extend(all.iter().filter_map(|q| {
        let may = may_approve(&config, &caller, &q.identity, q.requester.as_deref(), &q.roles).is_ok();
        (caller.admin || may || is_asker(&caller, q)).then(|| view(q, may))
    }));
    Ok(Json(out))
}

/// POST /v1/requests/{id}/approve and /deny.
pub async fn approve(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RequestView>> {
    decide(shared, caller, id, true, body).await
}

pub async fn deny(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RequestView>> {
    decide(shared, caller, id, false, body).await
}

async fn decide(
    shared: Arc<Shared>,
    caller: Caller,
    id: String,
    approve: bool,
    body: axum::body::Bytes,
) -> ApiResult<Json<RequestView>> {
    let decision: Decision = if body.iter().all(u8::is_ascii_whitespace) {
        Decision::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?
    };
    if let Some(r) = &decision.reason {
        control::check_text("reason", r, 1000).map_err(ApiError::bad_request)?;
    }
    if id.starts_with("rv_") {
        return decide_review(&shared, &caller, &id, approve, decision.reason);
    }
    expire(&shared).await;
    let Some(q) = shared.requests.request(&id)? else {
        return Err(ApiError::not_found(format!("no request {id}")));
    };
    let config = shared.config.load();
    may_approve(&config, &caller, &q.identity, q.requester.as_deref(), &q.roles)
        .map_err(|why| ApiError::forbidden(format!("you may not decide {id}: {why}")))?;
    let me = caller.name();
    let decided = shared
        .requests
        .decide_request(&id, approve, &me, decision.reason.as_deref(), OffsetDateTime::now_utc())?
        .map_err(|q| {
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("request {id} is {}, not pending; nothing was changed", q.state.as_str()),
            )
        })?;
    let name = if approve { "request.approved" } else { "request.denied" };
    record(&shared, event(name, &decided, &me, decision.reason.clone())).await?;
    tracing::info!(request = %id, by = %me, approved = approve, "access request decided");
    Ok(Json(view(&decided, false)))
}

/// A held statement: the decision goes to the waiting session, which records it and runs the statement
/// exactly as sent (approve) or answers 42501 naming who denied it.
fn decide_review(
    shared: &Shared,
    caller: &Caller,
    id: &str,
    approve: bool,
    reason: Option<String>,
) -> ApiResult<Json<RequestView>> {
    let Some(info) = shared.reviews.get(id) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("review {id} is not pending here: it was decided, it timed out, or its session ended"),
        ));
    };
    let config = shared.config.load();
    may_approve(&config, caller, &info.identity, info.requester.as_deref(), &info.roles)
        .map_err(|why| ApiError::forbidden(format!("you may not decide {id}: {why}")))?;
    let by = caller.name();
    let outcome = if approve {
        ReviewOutcome::Approved { by: by.clone(), reason }
    } else {
        ReviewOutcome::Denied { by: by.clone(), reason }
    };
    let Some(info) = shared.reviews.decide(id, outcome) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("review {id} was decided or withdrawn meanwhile"),
        ));
    };
    tracing::info!(review = %id, by = %by, approved = approve, "statement review decided");
    let mut v = review_view(&info, false);
    v.state = if approve { "approved" } else { "denied" };
    v.decided_by = Some(by);
    Ok(Json(v))
}

/// The shortest elevated credential worth using up an approval for.
const MIN_ASSUMED_TTL: Duration = Duration::minutes(1);

/// POST /v1/requests/{id}/assume: the elevated credential, once approved; only for the asker.
pub async fn assume(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let Some(q) = shared.requests.request(&id)? else {
        return Err(ApiError::not_found(format!("no request {id}")));
    };
    if !is_asker(&caller, &q) {
        return Err(ApiError::forbidden(format!(
            "request {id} was made by {} (requester {}, task {}); assume it with that identity's credential",
            q.identity,
            q.requester.as_deref().unwrap_or("none"),
            q.task.as_deref().unwrap_or("none")
        )));
    }
    if q.state != RequestState::Approved {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "request {id} is {}; only an approved request can be assumed, once",
                q.state.as_str()
            ),
        ));
    }
    let config = shared.config.load();
    let mut roles = caller.claims.roles.clone();
    for r in &q.roles {
        if !roles.contains(r) {
            roles.push(r.clone());
        }
    }
    // Within every bound again, under the configuration of now.
    // Never past the credential that asks: an agent's ends with the human's it was issued under.
    let bound = config.max_ttl(&caller.claims.identity(), caller.claims.requester.as_ref(), &roles);
    let caller_left = Duration::seconds((caller.claims.not_after - OffsetDateTime::now_utc()).whole_seconds());
    if caller_left < MIN_ASSUMED_TTL {
        // Refused before the approval is used up: the asker renews its credential and assumes then.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "your credential expires in {}s, too soon for the elevated one, which cannot outlive it; get a fresh credential for the same identity, requester and task, then assume request {id} (it stays approved)",
                caller_left.whole_seconds().max(0)
            ),
        ));
    }
    let ttl = Duration::seconds(q.ttl_seconds).min(bound).min(caller_left);
    let identity = caller.claims.identity();
    let claims = claims_for(
        &config,
        &identity,
        caller.claims.requester.as_ref(),
        caller.claims.task.as_deref(),
        &roles,
        ttl,
    )
    .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "outside_bounds", e.to_string()))?;
    super::refuse_blocked(&shared, &claims)?;
    // The credential first: if it cannot be issued (recorded, audited), the request stays approved.
    // Then the request is marked assumed, once; a credential that lost that race is withdrawn.
    let body = credential_response(&shared, &config, &claims, &caller, &format!("through request {id}")).await?;
    let assumed = match shared.requests.assume_request(&id, &claims.credential_id) {
        Ok(Ok(q)) => q,
        Ok(Err(q)) => {
            let why = format!("request {id} is {}", q.state.as_str());
            withdraw(&shared, &claims.credential_id, &caller.name(), &why).await;
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", why));
        }
        Err(e) => {
            let why = format!("request {id} could not be marked assumed: {e}");
            withdraw(&shared, &claims.credential_id, &caller.name(), &why).await;
            return Err(e.into());
        }
    };
    record(
        &shared,
        event(
            "request.assumed",
            &assumed,
            &caller.name(),
            Some(format!("credential {}", claims.credential_id)),
        ),
    )
    .await?;
    Ok((StatusCode::CREATED, Json::<IssuedCredential>(body)))
}

/// A credential issued for a request that could not then be marked assumed: revoked at once.
async fn withdraw(shared: &Shared, credential_id: &str, by: &str, why: &str) {
    let reason = format!("withdrawn at once: {why}");
    match shared
        .state
        .revoke_credential(credential_id, by, &reason, OffsetDateTime::now_utc())
    {
        // Recorded unless another revocation (its parent's) already revoked and recorded it.
        Ok(r) if r.revoked_now => {
            if let Err(e) = shared.audit.append(control::revoked_event(&r.credential)).await {
                tracing::error!(error = %e, credential = %credential_id, "cannot record credential.revoked");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, credential = %credential_id, "cannot withdraw a credential"),
    }
}

/// Moves undecided requests past their time to expired, with a `request.expired` event each.
pub async fn expire(shared: &Shared) {
    match shared.requests.expire_requests(OffsetDateTime::now_utc()) {
        Ok(expired) => {
            for q in expired {
                let _ = shared
                    .audit
                    .append(event(
                        "request.expired",
                        &q,
                        "warden",
                        Some("not decided in time".into()),
                    ))
                    .await;
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot expire access requests"),
    }
}

/// Expires undecided requests every second, for the life of the process.
pub async fn expire_periodically(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        expire(&shared).await;
    }
}
