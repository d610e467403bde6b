//! The PostgreSQL side: make sure the identity's role exists with exactly its grants, then log in as it.

use std::sync::Arc;

use time::Duration;
use warden_policy::UpstreamAuth;

use super::error::ProxyError;
use super::{Session, Shared};

mod catalog;
mod connect;
mod provision;

pub use connect::{Upstream, UpstreamStream};
pub use provision::{grant_statements, Provisioner};

/// Makes the session's PostgreSQL role hold exactly the grants and row filters of its current roles
/// (nothing happens when they are unchanged). Also run for live sessions after a reload changed their
/// roles, so that PostgreSQL's own privileges follow the new configuration too.
pub async fn provision(shared: &Shared, session: &Session) -> Result<warden_policy::DatabaseConfig, ProxyError> {
    let config = shared.config.load();
    let db = config
        .database(&session.database)
        .ok_or_else(|| ProxyError::Upstream {
            database: session.database.clone(),
            reason: "no longer configured".into(),
        })?
        .clone();
    // Until the roles provisioned are the session's current ones: a reload may change them meanwhile.
    loop {
        let current = session.roles.load_full();
        ensure_roles(shared, session, &config, &db, &current).await?;
        if Arc::ptr_eq(&current, &session.roles.load_full()) {
            return Ok(db);
        }
    }
}

async fn ensure_roles(
    shared: &Shared,
    session: &Session,
    config: &warden_policy::Config,
    db: &warden_policy::DatabaseConfig,
    current: &[String],
) -> Result<(), ProxyError> {
    let roles: Vec<_> = current.iter().filter_map(|r| config.role(r)).collect();
    let grants = config.grants(&roles);
    // Row filters use the requester's traits for an agent, the identity's own otherwise.
    let trait_owner = session
        .claims
        .requester
        .clone()
        .unwrap_or_else(|| session.claims.identity());
    let traits = config
        .identity(&trait_owner)
        .map(|i| i.traits.clone())
        .unwrap_or_default();
    let filters = grants
        .resolved_row_filters(&traits)
        .map_err(|reason| ProxyError::RowFilter {
            owner: trait_owner.to_string(),
            reason,
        })?;
    shared
        .provisioner
        .ensure(&shared.db_ca, db, &session.db_role, &grants, &filters)
        .await
}

/// How long the certificate Warden logs in with is valid: only the login itself needs it.
const LOGIN_CERT_VALIDITY: Duration = Duration::minutes(5);

/// Provisions (when the grants changed) and opens the session's upstream connection.
pub async fn open(shared: &Arc<Shared>, session: &Session) -> Result<Upstream, ProxyError> {
    let db = provision(shared, session).await?;
    let login_lock = (db.upstream_auth == UpstreamAuth::Password)
        .then(|| shared.provisioner.password_login_lock(&db.name, &session.db_role));
    let _login = match &login_lock {
        Some(l) => Some(l.lock().await),
        None => None,
    };
    let (client_cert, password) = match db.upstream_auth {
        UpstreamAuth::Cert => {
            let cert = shared
                .db_ca
                .issue_db_client(&session.db_role, LOGIN_CERT_VALIDITY)
                .map_err(|e| ProxyError::Provision {
                    role: session.db_role.clone(),
                    reason: e.to_string(),
                })?;
            (Some((vec![cert.cert_der], cert.key_der)), None)
        }
        UpstreamAuth::Password => {
            let pw = shared
                .provisioner
                .one_time_password(&shared.db_ca, &db, &session.db_role)
                .await?;
            (None, Some(pw))
        }
    };
    let tls = crate::tls::upstream_config(&db.url, client_cert).map_err(|e| ProxyError::Upstream {
        database: db.name.clone(),
        reason: e.to_string(),
    })?;
    connect::login(
        &db,
        Arc::new(tls),
        session,
        password.as_deref(),
        shared.config.load().server.max_message_size,
    )
    .await
}
