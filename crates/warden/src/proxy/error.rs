//! Every way a connection can be refused or ended, with its wire form (SQLSTATE + message).

use time::OffsetDateTime;
use warden_policy::Refusal;
use warden_wire::sqlstate;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("TLS is required; connect with sslmode=verify-full and sslrootcert set to Warden's CA (the ca.crt of your credential, or `warden ca export host`)")]
    TlsRequired,
    #[error("no credential: connect with the client certificate from `warden issue` (sslcert/sslkey), or send its token as the password")]
    NoCredential,
    #[error("the client certificate was not issued by this Warden's user CA ({reason}); use a credential from `warden issue` of this deployment")]
    UnknownCa { reason: String },
    #[error("credential expired at {}; issue a new one with {reissue}", fmt_ts(*at))]
    Expired {
        at: OffsetDateTime,
        /// The `warden issue` command that makes a fresh one for the same identity.
        reissue: String,
    },
    #[error("credential is not valid before {}; check the client's clock", fmt_ts(*at))]
    NotYetValid { at: OffsetDateTime },
    #[error("the client certificate is not a Warden credential ({reason}); issue one with warden issue")]
    BadCertificate { reason: String },
    #[error(
        "the password is not a valid Warden token ({reason}); send the token file of a credential from warden issue"
    )]
    BadToken { reason: String },
    #[error("the connection's user \"{user}\" does not match the credential's identity {identity}; connect with user={name}")]
    WrongUser {
        user: String,
        identity: String,
        name: String,
    },
    #[error("no user in the startup message; connect with user=<your identity name>")]
    MissingUser,
    #[error(
        "replication connections are not supported through Warden; connect to PostgreSQL directly for replication"
    )]
    Replication,
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("a row filter of your roles cannot be applied: {reason} for {owner}; ask an administrator to set it in warden.toml")]
    RowFilter { owner: String, reason: String },
    #[error("cannot prepare PostgreSQL role {role}: {reason}")]
    Provision { role: String, reason: String },
    #[error("cannot reach PostgreSQL for database \"{database}\": {reason}")]
    Upstream { database: String, reason: String },
    #[error("PostgreSQL refused the login of role {role}: {message}")]
    UpstreamAuth { role: String, message: String },
    /// `reason` is the writer's error: it names the file and the OS error (`File too large`, `No space left`).
    #[error("{reason}; nothing was sent to PostgreSQL: Warden runs no statement it cannot record. An administrator must make the audit log writable again (disk space, file size limit, permissions) and restart Warden")]
    AuditUnavailable { reason: String },
    #[error("{message}")]
    Locked { message: String },
    #[error("{message}")]
    Revoked { message: String },
    #[error("cannot read Warden's state store ({reason}); connections are refused until it is readable")]
    StateUnavailable { reason: String },
    #[error("protocol error: {0}")]
    Protocol(#[from] warden_wire::WireError),
    /// Warden lost count of which of PostgreSQL's answers are whose: the session cannot go on.
    #[error("session ended: {0}; connect again")]
    OutOfStep(String),
    #[error("connection closed")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyError {
    pub fn sqlstate(&self) -> &'static str {
        use ProxyError::*;
        match self {
            TlsRequired
            | NoCredential
            | UnknownCa { .. }
            | Expired { .. }
            | NotYetValid { .. }
            | BadCertificate { .. }
            | BadToken { .. }
            | WrongUser { .. }
            | MissingUser
            | Replication
            | RowFilter { .. }
            | Locked { .. }
            | Revoked { .. }
            | Refused(_) => sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            Provision { .. } | Upstream { .. } | UpstreamAuth { .. } => sqlstate::CONNECTION_FAILURE,
            AuditUnavailable { .. } | StateUnavailable { .. } => sqlstate::CANNOT_CONNECT_NOW,
            Protocol(_) | OutOfStep(_) => sqlstate::PROTOCOL_VIOLATION,
            Closed | Io(_) => sqlstate::CONNECTION_EXCEPTION,
        }
    }

    /// The message the client sees: always starts with `warden:`.
    pub fn client_message(&self) -> String {
        format!("warden: {self}")
    }

    /// Whether this is an authentication refusal (recorded as `auth.failed`).
    pub fn is_auth_failure(&self) -> bool {
        self.sqlstate() == sqlstate::INVALID_AUTHORIZATION_SPECIFICATION
    }
}

pub fn fmt_ts(t: OffsetDateTime) -> String {
    // 2026-11-23T12:03:05Z: seconds are what a person compares against a clock.
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
