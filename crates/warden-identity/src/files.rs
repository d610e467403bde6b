use std::io::Write;
use std::path::Path;

use crate::{IdentityError, IssuedCert};

/// Writes a credential directory: identity.crt, identity.key (0600), ca.crt, token (0600), profile.toml.
pub fn write_credential_dir(
    dir: &Path,
    cred: &IssuedCert,
    ca_pem: &str,
    token: &str,
    profile_toml: &str,
    overwrite: bool,
) -> Result<(), IdentityError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| IdentityError::file(dir, e))?;
    let key = dir.join("identity.key");
    if key.metadata().is_ok_and(|m| m.len() > 0) {
        if !overwrite {
            return Err(IdentityError::CredentialExists {
                path: dir.to_path_buf(),
            });
        }
        for f in ["identity.key", "token"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    write_private(&key, cred.key_pem.as_bytes())?;
    write_private(&dir.join("token"), format!("{token}\n").as_bytes())?;
    for (name, contents) in [
        ("identity.crt", cred.cert_pem.as_str()),
        ("ca.crt", ca_pem),
        ("profile.toml", profile_toml),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|e| IdentityError::file(&path, e))?;
    }
    Ok(())
}

/// Creates `path` with mode 0600 from the start, so the secret is never readable by others.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| IdentityError::file(path, e))?;
    f.write_all(contents).map_err(|e| IdentityError::file(path, e))
}
