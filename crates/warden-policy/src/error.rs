use std::path::PathBuf;

use warden_identity::IdentityName;

/// A configuration problem, always located: file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is part of the message (not a separate source, which error reports would print
    /// a second time).
    #[error("{path}: cannot read: {error}{}", read_hint(error))]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}:{line}: `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
}

fn read_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            " (give the warden.toml that `warden init --dir DIR` wrote, with --config or WARDEN_CONFIG)"
        }
        std::io::ErrorKind::PermissionDenied => " (run as the user that owns the deployment)",
        _ => "",
    }
}

/// Why an identity may not use a database right now. Each variant renders as a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("identity {identity} is not in the configuration; an administrator must add it to warden.toml")]
    UnknownIdentity { identity: IdentityName },
    #[error("requester {requester} of {identity} is not in the configuration")]
    UnknownRequester {
        identity: IdentityName,
        requester: IdentityName,
    },
    #[error("agent {identity} has no requester; issue its credential with --requester KIND:NAME")]
    MissingRequester { identity: IdentityName },
    #[error("database \"{database}\" is not configured; ask for one of: {known}")]
    UnknownDatabase { database: String, known: String },
    #[error("{identity} holds no role for database \"{database}\" (credential roles: {credential_roles}); ask an administrator for one, then issue a new credential with warden issue --roles")]
    NoRoleForDatabase {
        identity: IdentityName,
        database: String,
        credential_roles: String,
    },
}
