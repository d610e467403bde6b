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

use crate::proxy::frontend::new_session_id;
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

/// An authenticated client session: who it is, where it goes, as which PostgreSQL role. Fixed once
/// made, except `roles` (a reload replaces them): the audit records share copies of the other fields
/// (`AuditTags`), made in [`Session::new`].
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
    /// What every audit record of this session repeats, made once.
    tags: AuditTags,
}

/// A session's part of its audit records, shared by all of them instead of copied into each.
#[derive(Debug)]
struct AuditTags {
    session_id: Arc<str>,
    credential_id: Arc<str>,
    database: Arc<str>,
    db_user: Arc<str>,
    client_addr: Arc<str>,
    /// The identity as recorded, with the roles it was made from: made again when a reload changes them.
    identity: std::sync::Mutex<(Arc<Vec<String>>, Arc<IdentityRecord>)>,
}

impl Session {
    pub fn new(
        claims: Claims,
        database: String,
        roles: Vec<String>,
        db_role: String,
        client_addr: SocketAddr,
        client_params: Vec<(String, String)>,
    ) -> Session {
        let id = new_session_id();
        let roles = Arc::new(roles);
        let tags = AuditTags {
            session_id: id.as_str().into(),
            credential_id: claims.credential_id.as_str().into(),
            database: database.as_str().into(),
            db_user: db_role.as_str().into(),
            client_addr: client_addr.to_string().into(),
            identity: std::sync::Mutex::new((roles.clone(), Arc::new(identity_record(&claims, &roles)))),
        };
        Session {
            id,
            claims,
            database,
            roles: ArcSwap::new(roles),
            db_role,
            client_addr,
            client_params,
            tags,
        }
    }

    /// Who this session is, with its current roles, as its audit records name it.
    pub fn identity_record(&self) -> Arc<IdentityRecord> {
        let roles = self.roles.load();
        let mut cached = self.tags.identity.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&cached.0, &roles) {
            *cached = (Arc::clone(&roles), Arc::new(identity_record(&self.claims, &roles)));
        }
        Arc::clone(&cached.1)
    }

    /// Who this session is, in the terms locks are written in.
    pub fn subject(&self) -> warden_state::Subject {
        let mut s = subject(&self.claims);
        s.session_id = Some(self.id.clone());
        s
    }

    /// An audit event about this session, with the full identity filled in.
    pub fn event(&self, event: &'static str) -> EventBody {
        EventBody {
            event: event.into(),
            session_id: Some(Arc::clone(&self.tags.session_id)),
            identity: Some(self.identity_record()),
            credential_id: Some(Arc::clone(&self.tags.credential_id)),
            database: Some(Arc::clone(&self.tags.database)),
            db_user: Some(Arc::clone(&self.tags.db_user)),
            client_addr: Some(Arc::clone(&self.tags.client_addr)),
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
    // Closed now, so that new connections are refused at once (and a client or load balancer tries
    // elsewhere) instead of waiting unanswered in the backlog until the drain ends.
    drop(listener);
    tracing::info!(open = sessions.len(), "stopped accepting; draining sessions");
    while sessions.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Claims {
        Claims {
            kind: warden_identity::IdentityKind::Agent,
            name: "report-bot".into(),
            requester: Some("human:alice".parse().unwrap()),
            task: Some("t".into()),
            roles: vec![],
            credential_id: String::new(),
            not_before: time::OffsetDateTime::UNIX_EPOCH,
            not_after: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn records_share_the_session_fields_and_follow_a_change_of_roles() {
        let mut claims = agent();
        claims.credential_id = "cr_1".into();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let session = Session::new(
            claims,
            "shop".into(),
            vec!["analyst".into()],
            "agent:x".into(),
            peer,
            vec![],
        );
        let (a, b) = (session.event("query"), session.event("query.result"));
        assert_eq!(a.session_id.as_deref(), Some(session.id.as_str()));
        assert_eq!(a.credential_id.as_deref(), Some("cr_1"));
        assert_eq!(a.database.as_deref(), Some("shop"));
        assert_eq!(a.db_user.as_deref(), Some("agent:x"));
        assert_eq!(a.client_addr.as_deref(), Some("127.0.0.1:5000"));
        let (ia, ib) = (a.identity.unwrap(), b.identity.unwrap());
        assert!(Arc::ptr_eq(&ia, &ib), "one identity for records of the same roles");
        assert!(Arc::ptr_eq(
            a.session_id.as_ref().unwrap(),
            b.session_id.as_ref().unwrap()
        ));
        assert_eq!(ia.roles, ["analyst"]);
        assert_eq!(ia.requester.as_deref(), Some("human:alice"));

        // A reload changes the session's roles: the next record names the new ones.
        session.roles.store(Arc::new(vec!["analyst".into(), "support".into()]));
        let c = session.event("query").identity.unwrap();
        assert_eq!(c.roles, ["analyst", "support"]);
        assert!(!Arc::ptr_eq(&ia, &c));
        assert_eq!(
            ia.roles,
            ["analyst"],
            "records already made keep the roles they were made with"
        );
    }

    #[test]
    fn role_names() {
        let mut c = agent();
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
