use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::{IdentityError, IssuedCert};

/// Writes a credential directory (created 0700 if missing): identity.crt, identity.key (0600), ca.crt,
/// token (0600) and profile.toml. An existing non-empty identity.key is kept unless `overwrite`.
///
/// Each file is written beside its final name and renamed into place, so a reader never sees a
/// half-written file, and secrets are created 0600 from the start rather than narrowed afterwards.
pub fn write_credential_dir(
    dir: &Path,
    cred: &IssuedCert,
    ca_pem: &str,
    token: &str,
    profile_toml: &str,
    overwrite: bool,
) -> Result<(), IdentityError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| IdentityError::io(dir, e))?;
    let key = dir.join("identity.key");
    let holds_key = key.metadata().is_ok_and(|m| m.len() > 0);
    if holds_key && !overwrite {
        return Err(IdentityError::CredentialExists {
            path: dir.to_path_buf(),
        });
    }
    let token_line = format!("{}\n", token.trim_end());
    // The key goes last: it marks a complete credential, so a run that fails part-way into a new
    // directory can simply be repeated without `overwrite`.
    let files: [(&str, &[u8], u32); 5] = [
        ("identity.crt", cred.cert_pem.as_bytes(), 0o644),
        ("ca.crt", ca_pem.as_bytes(), 0o644),
        ("profile.toml", profile_toml.as_bytes(), 0o644),
        ("token", token_line.as_bytes(), 0o600),
        ("identity.key", cred.key_pem.as_bytes(), 0o600),
    ];
    for (name, contents, mode) in files {
        replace_file(&dir.join(name), contents, mode)?;
    }
    Ok(())
}

/// Creates `path` with `mode` 0600 from the start; fails if it exists (a CA key is never replaced).
pub(crate) fn create_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Writes `contents` to a fresh temporary file with `mode` and renames it over `path`.
fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let file_name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{file_name}.tmp"));
    // A temporary file left by an interrupted run is ours to discard.
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(IdentityError::io(&temp, e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(|e| IdentityError::io(&temp, e))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| IdentityError::io(&temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| IdentityError::io(path, e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use time::{Duration, OffsetDateTime};

    use super::*;
    use crate::{CertificateAuthority, Claims, IdentityKind};

    fn credential(ca: &CertificateAuthority) -> IssuedCert {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        ca.issue_client(&Claims {
            kind: IdentityKind::Human,
            name: "alice".into(),
            requester: None,
            task: None,
            roles: vec![],
            credential_id: uuid::Uuid::new_v4().to_string(),
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::hours(1),
        })
        .unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_secrets_private_and_refuses_to_clobber() {
        let ca = CertificateAuthority::generate("Test CA", Duration::days(1)).unwrap();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("alice");
        let first = credential(&ca);
        write_credential_dir(&dir, &first, ca.cert_pem(), "tok1", "[proxy]\n", false).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("identity.key")), 0o600);
        assert_eq!(mode(&dir.join("token")), 0o600);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("identity.crt"), first.cert_pem);
        assert_eq!(read("identity.key"), first.key_pem);
        assert_eq!(read("ca.crt"), ca.cert_pem());
        assert_eq!(read("token"), "tok1\n");
        assert_eq!(read("profile.toml"), "[proxy]\n");

        let second = credential(&ca);
        let e = write_credential_dir(&dir, &second, ca.cert_pem(), "tok2", "", false).unwrap_err();
        assert!(matches!(e, IdentityError::CredentialExists { .. }), "{e}");
        assert_eq!(read("identity.key"), first.key_pem, "untouched after a refusal");

        write_credential_dir(&dir, &second, ca.cert_pem(), "tok2", "", true).unwrap();
        assert_eq!(read("identity.key"), second.key_pem);
        assert_eq!(read("token"), "tok2\n");
        assert_eq!(mode(&dir.join("identity.key")), 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn an_empty_key_file_is_not_a_credential() {
        let ca = CertificateAuthority::generate("Test CA", Duration::days(1)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("identity.key"), "").unwrap();
        std::fs::write(dir.path().join("token"), "stale").unwrap();
        write_credential_dir(dir.path(), &credential(&ca), ca.cert_pem(), "t", "", false).unwrap();
        assert_eq!(mode(&dir.path().join("identity.key")), 0o600);
        assert_eq!(std::fs::read_to_string(dir.path().join("token")).unwrap(), "t\n");
    }
}
