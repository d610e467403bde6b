//! The token form of a credential: a JWT (ES256) signed by the user CA's key, carrying the same claims
//! as the certificate, for clients that send a password rather than a client certificate.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Claims, IdentityError, IdentityKind, IdentityName};

/// The JWT body: registered claims (`sub` = `kind:name`, `jti` = credential id, unix-second times)
/// beside Warden's own. `iss` is always "warden".
#[derive(Serialize, Deserialize)]
struct TokenClaims {
    iss: String,
    sub: String,
    jti: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    kind: IdentityKind,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requester: Option<IdentityName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    roles: Vec<String>,
}

const ISSUER: &str = "warden";

pub(crate) fn sign(key: &KeyPair, claims: &Claims) -> Result<String, IdentityError> {
    let bad = |e: jsonwebtoken::errors::Error| IdentityError::TokenSigning { reason: e.to_string() };
    // jsonwebtoken takes the PKCS#8 form of an ECDSA key, which is what rcgen serializes.
    let encoding = EncodingKey::from_ec_der(key.serialized_der());
    let body = TokenClaims {
        iss: ISSUER.into(),
        sub: claims.identity().to_string(),
        jti: claims.credential_id.clone(),
        iat: OffsetDateTime::now_utc().unix_timestamp(),
        nbf: claims.not_before.unix_timestamp(),
        exp: claims.not_after.unix_timestamp(),
        kind: claims.kind,
        name: claims.name.clone(),
        requester: claims.requester.clone(),
        task: claims.task.clone(),
        roles: claims.roles.clone(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &body, &encoding).map_err(bad)
}

pub(crate) fn verify(public_key: &[u8], token: &str) -> Result<Claims, IdentityError> {
    let bad = |reason: String| IdentityError::BadToken { reason };
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
    let data = jsonwebtoken::decode::<TokenClaims>(token, &DecodingKey::from_ec_der(public_key), &validation)
        .map_err(|e| bad(e.to_string()))?;
    let t = data.claims;
    let identity = IdentityName::new(t.kind, &t.name)?;
    if t.sub != identity.to_string() {
        return Err(bad(format!(
            "its subject \"{}\" is not its identity \"{identity}\"",
            t.sub
        )));
    }
    let time = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).map_err(|e| bad(e.to_string()));
    let claims = Claims {
        kind: t.kind,
        name: t.name,
        requester: t.requester,
        task: t.task,
        roles: t.roles,
        credential_id: t.jti,
        not_before: time(t.nbf)?,
        not_after: time(t.exp)?,
    };
    claims.check()?;
    Ok(claims)
}
