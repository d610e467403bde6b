//! Warden's identities and credentials.
//!
//! Three certificate authorities (user, host, db) are ECDSA P-256 keys kept in Warden's data dir. The
//! user CA signs client credentials: an X.509 certificate whose subject and a Warden extension carry the
//! claims (kind, name, requester, task, roles, credential id, validity), and the same claims as a signed
//! token (JWT, ES256) for clients that send a password instead. The host CA signs Warden's own server
//! certificate; the db CA signs the short-lived certificates Warden logs in to PostgreSQL with.
//! This crate does no network I/O; it reads and writes only the files it is asked to.

mod ca;
mod claims;
mod duration;
mod error;
mod files;
mod token;

pub use ca::{CertificateAuthority, IssuedCert, WARDEN_CLAIMS_OID};
pub use claims::{claims_from_cert, Claims, IdentityKind, IdentityName};
pub use duration::parse_duration;
pub use error::IdentityError;
pub use files::write_credential_dir;
