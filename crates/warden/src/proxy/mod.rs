//! The data path. `frontend` is the client side (TLS, startup, authentication), `backend` the PostgreSQL
//! side (provisioning and upstream login), `relay` moves messages between them and records statements.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use warden_audit::{AuditHandle, EventBody, IdentityRecord};
use warden_identity::{CertificateAuthority, Claims};
use warden_policy::Config;

pub mod backend;
pub mod cancel;
pub mod enforce;
pub mod error;
pub mod frontend;
pub mod io;
pub mod lifecycle;
pub mod relay;
pub mod review;

use crate::tls::UserCaVerifier;

/// Everything sessions share. The config is swapped whole on reload; readers `load()` it per decision.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub acceptor: TlsAcceptor,
    pub user_ca: CertificateAuthority,
    pub user_ca_verifier: UserCaVerifier,
    pub db_ca: CertificateAuthority,
    /// PEM of the host CA, which clients trust for Warden's server certificate (handed out with credentials).
    pub host_ca_pem: String,
    pub audit: AuditHandle,
    pub cancels: cancel::CancelRegistry,
    pub provisioner: backend::Provisioner,
    /// Statement analyses by text (and catalog generation and search_path).
    pub analyses: warden_sql::AnalysisCache,
    /// Credentials, revocations and locks (shared with the admin commands through the store).
    pub state: Arc<dyn warden_state::StateStore>,
    /// Access requests (the same store).
    pub requests: Arc<dyn warden_state::RequestStore>,
    /// Locks and revocations as last read from `state`.
    pub blocks: ArcSwap<warden_state::Blocklist>,
    /// Live sessions, so that locks, revocation, expiry and reloads can reach them.
    pub sessions: lifecycle::SessionRegistry,
    /// Writes held for statement review.
    pub reviews: review::ReviewRegistry,
}

/// An authenticated client session: who it is, where it goes, as which PostgreSQL role.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub claims: Claims,
    pub database: String,
    /// Effective roles (names): computed at connection, recomputed at each configuration reload, read
    /// at each statement.
    pub roles: ArcSwap<Vec<String>>,
    /// The provisioned PostgreSQL role this identity logs in as.
    pub db_role: String,
    pub client_addr: SocketAddr,
    /// Startup parameters the client asked for that Warden passes on (encoding, date style, time zone...).
    pub client_params: Vec<(String, String)>,
}

impl Session {
    pub fn identity_record(&self) -> IdentityRecord {
        identity_record(&self.claims, &self.roles.load())
    }

    /// Who this session is, in the terms locks are written in.
    pub fn subject(&self) -> warden_state::Subject {
        let mut s = subject(&self.claims);
        s.session_id = Some(self.id.clone());
        s
    }

    /// An audit event about this session, with the full identity filled in.
    pub fn event(&self, event: &str) -> EventBody {
        EventBody {
            event: event.to_string(),
            session_id: Some(self.id.clone()),
            identity: Some(self.identity_record()),
            credential_id: Some(self.claims.credential_id.clone()),
            database: Some(self.database.clone()),
            db_user: Some(self.db_role.clone()),
            client_addr: Some(self.client_addr.to_string()),
            ..EventBody::default()
        }
    }
}

/// Who a credential names, as the audit log records it; `roles` are the effective ones where known.
pub fn identity_record(claims: &Claims, roles: &[String]) -> IdentityRecord {
    IdentityRecord {
        kind: claims.kind.to_string(),
        name: claims.name.clone(),
        requester: claims.requester.as_ref().map(|r| r.to_string()),
        task: claims.task.clone(),
        roles: roles.to_vec(),
    }
}

/// Who a credential names, in the terms locks are written in (no session yet).
pub fn subject(claims: &Claims) -> warden_state::Subject {
    warden_state::Subject {
        identity: claims.identity().to_string(),
        requester: claims.requester.as_ref().map(|r| r.to_string()),
        task: claims.task.clone(),
        credential_id: claims.credential_id.clone(),
        session_id: None,
    }
}

/// The PostgreSQL role a session is provisioned as. It names the actor in `pg_stat_activity` and
/// PostgreSQL's logs (`human:alice`, `agent:report-bot@human:alice`) and cannot collide with a role a
/// person would create. Each distinct set of privileges gets its own role, so that sessions of one
/// identity with different grants never share (and overwrite) one role's privileges or row filters:
/// an agent's role includes its requester (whose traits its row filters use), and a credential that
/// carries fewer roles than the identity may hold adds them (`...+analyst`).
pub fn db_role_name(claims: &Claims, effective: &[String], full: &[String]) -> String {
    let mut name = format!("{}:{}", claims.kind, claims.name);
    if let Some(r) = &claims.requester {
        name += &format!("@{r}");
    }
    if effective.len() != full.len() {
        let mut roles = effective.to_vec();
        roles.sort();
        name += &format!("+{}", roles.join("+"));
    }
    short_identifier(&name)
}

/// PostgreSQL cuts identifiers at 63 bytes; a longer name keeps its start and gets a stable hash.
pub fn short_identifier(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    // FNV-1a: stable across builds, so a restart maps the same name to the same role.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut cut = 54;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{:08x}", &name[..cut], hash as u32)
}

/// Accepts connections until `shutdown` flips to true.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let shared = shared.clone();
                    sessions.spawn(frontend::handle(shared, tcp, peer, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    tracing::info!(open = sessions.len(), "stopped accepting; draining sessions");
    while sessions.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names() {
        let mut c = Claims {
            kind: warden_identity::IdentityKind::Agent,
            name: "report-bot".into(),
            requester: Some("human:alice".parse().unwrap()),
            task: Some("t".into()),
            roles: vec![],
            credential_id: String::new(),
            not_before: time::OffsetDateTime::UNIX_EPOCH,
            not_after: time::OffsetDateTime::UNIX_EPOCH,
        };
        let full = vec!["analyst".to_string(), "writer".to_string()];
        assert_eq!(db_role_name(&c, &full, &full), "agent:report-bot@human:alice");
        assert_eq!(
            db_role_name(&c, &full[..1], &full),
            "agent:report-bot@human:alice+analyst"
        );
        c.name = "a".repeat(60);
        let long = db_role_name(&c, &full, &full);
        assert_eq!(long.len(), 63);
        assert_eq!(long, db_role_name(&c, &full, &full));
    }
}
