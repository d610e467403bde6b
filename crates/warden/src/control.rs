//! Acts on credentials and locks, shared by the offline admin commands (which write the state store and
//! the audit log directly) and the API: the records they store and the audit events they write.

use time::{Duration, OffsetDateTime};
use warden_audit::{EventBody, IdentityRecord, LockRecord};
use warden_identity::Claims;
use warden_state::{CredentialRecord, Lock, LockTarget, NewLock};

use crate::proxy::error::fmt_ts;

/// The actor recorded for the offline admin commands: whoever can read the data dir is an admin. Named
/// by the process's real user id (not `$USER`, which the caller sets at will).
pub fn local_admin() -> String {
    format!("admin:{}", os_user())
}

fn os_user() -> String {
    // SAFETY: getuid cannot fail; getpwuid_r writes only into `pw` and `buf`, both ours and sized as
    // passed, and `name` points into `buf` while it lives.
    unsafe {
        let uid = libc::getuid();
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = [0 as libc::c_char; 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) == 0 && !found.is_null() {
            if let Ok(name) = std::ffi::CStr::from_ptr(pw.pw_name).to_str() {
                return name.to_string();
            }
        }
        format!("uid {uid}")
    }
}

/// `parent`: the credential the caller obtained this one with (revoking it revokes this one).
pub fn credential_record(claims: &Claims, issued_by: &str, parent: Option<&str>) -> CredentialRecord {
    CredentialRecord {
        id: claims.credential_id.clone(),
        identity: claims.identity().to_string(),
        requester: claims.requester.as_ref().map(|r| r.to_string()),
        task: claims.task.clone(),
        roles: claims.roles.clone(),
        issued_at: OffsetDateTime::now_utc(),
        not_after: claims.not_after,
        issued_by: issued_by.to_string(),
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
        parent: parent.map(str::to_string),
    }
}

pub fn issued_event(claims: &Claims, issued_by: &str, how: &str) -> EventBody {
    EventBody {
        event: "credential.issued".into(),
        identity: Some(crate::proxy::identity_record(claims, &claims.roles).into()),
        credential_id: Some(claims.credential_id.as_str().into()),
        actor: Some(issued_by.to_string()),
        reason: Some(format!("issued {how}, valid until {}", fmt_ts(claims.not_after))),
        ..EventBody::default()
    }
}

pub fn revoked_event(c: &CredentialRecord) -> EventBody {
    let (kind, name) = c.identity.split_once(':').unwrap_or(("", &c.identity));
    EventBody {
        event: "credential.revoked".into(),
        identity: Some(
            IdentityRecord {
                kind: kind.to_string(),
                name: name.to_string(),
                requester: c.requester.clone(),
                task: c.task.clone(),
                roles: c.roles.clone(),
            }
            .into(),
        ),
        credential_id: Some(c.id.as_str().into()),
        actor: c.revoked_by.clone(),
        reason: c.revoke_reason.clone(),
        ..EventBody::default()
    }
}

/// `lock.created` or `lock.removed`.
pub fn lock_event(event: &'static str, lock: &Lock, actor: &str) -> EventBody {
    EventBody {
        event: event.into(),
        actor: Some(actor.to_string()),
        reason: Some(lock.reason.clone()),
        lock: Some(LockRecord {
            id: lock.id.clone(),
            target: lock.target.kind().to_string(),
            value: lock.target.value().to_string(),
            expires_at: lock.expires_at.map(fmt_ts),
        }),
        ..EventBody::default()
    }
}

pub fn new_lock(target: LockTarget, reason: Option<String>, ttl: Option<Duration>, by: &str) -> NewLock {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    NewLock {
        target,
        reason: reason.unwrap_or_default(),
        created_by: by.to_string(),
        created_at: now,
        expires_at: ttl.map(|d| now + d.min(MAX_LOCK_TTL)),
    }
}

/// Checks free text that travels into certificates, PostgreSQL settings and error messages: printable
/// (no control characters, so no NUL and no line breaks), at most `max` characters.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        return Err(format!("{field} contains control characters; use printable text"));
    }
    if value.chars().count() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    Ok(())
}

/// The longest lock anyone may set with a TTL; longer means "until lifted", so say that instead.
pub const MAX_LOCK_TTL: Duration = Duration::days(3650);
