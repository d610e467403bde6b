use std::path::{Path, PathBuf};

use time::OffsetDateTime;

/// Everything that can go wrong with identities and credentials. Each variant names the input, file or
/// time at fault so the message alone tells an operator what to fix.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("\"{input}\" is not an identity kind; use human, agent or workload")]
    BadKind { input: String },
    #[error("\"{input}\" is not a valid identity: {reason}")]
    BadName { input: String, reason: &'static str },
    #[error("\"{input}\" is not a duration like 90s, 15m, 1h, 7d or 1h30m: {reason}")]
    BadDuration { input: String, reason: &'static str },
    #[error("\"{input}\" is not a credential id; credential ids are UUIDs")]
    BadCredentialId { input: String },
    #[error(
        "a credential valid from {} until {} would never be valid",
        rfc3339(not_before),
        rfc3339(not_after)
    )]
    BadValidity {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    #[error("a validity of {validity} from now is out of range")]
    ValidityOutOfRange { validity: time::Duration },
    #[error("\"{input}\" is neither an IP address nor a DNS name usable in a certificate")]
    BadSubjectAltName { input: String },
    #[error("a server certificate needs at least one DNS name or IP address")]
    NoSubjectAltNames,
    #[error("\"{input}\" cannot be the database role of a login certificate: {reason}")]
    BadRole { input: String, reason: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a usable CA file: {reason}")]
    BadCaFile { path: PathBuf, reason: String },
    #[error("{key_path} is not the key of the certificate in {cert_path}")]
    KeyMismatch { cert_path: PathBuf, key_path: PathBuf },
    #[error("{path} already exists; move it away first, a CA key is never replaced in place")]
    KeyExists { path: PathBuf },
    #[error("{path} already holds a credential; pass --force to replace it")]
    CredentialExists { path: PathBuf },
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("not a Warden credential: {reason}")]
    NotACredential { reason: String },
    #[error("could not sign the token: {reason}")]
    TokenSigning { reason: String },
    #[error("token rejected: {reason}")]
    BadToken { reason: String },
}

impl IdentityError {
    /// The error for claims whose validity is empty or reversed.
    pub(crate) fn validity(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        IdentityError::BadValidity { not_before, not_after }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        IdentityError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn ca_file(path: &Path, reason: impl ToString) -> Self {
        IdentityError::BadCaFile {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// Times in messages as people and logs write them: `2025-01-31T12:00:00Z`.
pub(crate) fn rfc3339(t: &OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
