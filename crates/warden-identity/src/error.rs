use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("\"{input}\" is not an identity kind; use human, agent or workload")]
    BadKind { input: String },
    #[error("\"{input}\" is not a valid identity: {reason}")]
    BadName { input: String, reason: &'static str },
    #[error("\"{input}\" is not a duration like 90s, 15m, 1h, 7d or 1h30m")]
    BadDuration { input: String },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path} already holds a credential; pass --force to replace it")]
    CredentialExists { path: PathBuf },
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("not a Warden credential: {reason}")]
    NotACredential { reason: String },
    #[error("token rejected: {reason}")]
    BadToken { reason: String },
}

impl IdentityError {
    pub(crate) fn file(path: &std::path::Path, reason: impl ToString) -> Self {
        IdentityError::File {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}
