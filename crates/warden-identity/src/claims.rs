use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ca::WARDEN_CLAIMS_OID;
use crate::IdentityError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    Human,
    Agent,
    Workload,
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdentityKind::Human => "human",
            IdentityKind::Agent => "agent",
            IdentityKind::Workload => "workload",
        })
    }
}

impl FromStr for IdentityKind {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(IdentityKind::Human),
            "agent" => Ok(IdentityKind::Agent),
            "workload" => Ok(IdentityKind::Workload),
            _ => Err(IdentityError::BadKind { input: s.to_string() }),
        }
    }
}

/// `<kind>:<name>`, e.g. `agent:report-bot`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityName {
    pub kind: IdentityKind,
    pub name: String,
}

impl IdentityName {
    /// Names are 1 to 63 characters of `a-z 0-9 . _ -`, starting with a letter or digit, so that they
    /// are valid PostgreSQL user names, certificate CNs and file names as they are.
    pub fn new(kind: IdentityKind, name: &str) -> Result<Self, IdentityError> {
        let bad = |reason| IdentityError::BadName {
            input: name.to_string(),
            reason,
        };
        if name.is_empty() || name.len() > 63 {
            return Err(bad("a name has 1 to 63 characters"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c))
        {
            return Err(bad("use lower-case letters, digits, '.', '-' and '_'"));
        }
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(bad("a name starts with a letter or digit"));
        }
        Ok(IdentityName {
            kind,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for IdentityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

impl FromStr for IdentityName {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = s.split_once(':').ok_or_else(|| IdentityError::BadName {
            input: s.to_string(),
            reason: "write it as KIND:NAME, e.g. human:alice",
        })?;
        IdentityName::new(kind.parse()?, name)
    }
}

impl Serialize for IdentityName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IdentityName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a credential says about its holder. The certificate and the token carry the same claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub kind: IdentityKind,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<IdentityName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub roles: Vec<String>,
    pub credential_id: String,
    #[serde(with = "time::serde::timestamp")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::timestamp")]
    pub not_after: OffsetDateTime,
}

impl Claims {
    pub fn identity(&self) -> IdentityName {
        IdentityName {
            kind: self.kind,
            name: self.name.clone(),
        }
    }

    /// The checks every credential passes before it is signed and after it is read back, so that a
    /// malformed name or id never reaches a certificate, a token or the audit log.
    pub(crate) fn check(&self) -> Result<(), IdentityError> {
        IdentityName::new(self.kind, &self.name)?;
        uuid::Uuid::parse_str(&self.credential_id).map_err(|_| IdentityError::BadCredentialId {
            input: self.credential_id.clone(),
        })?;
        if self.not_after <= self.not_before {
            return Err(IdentityError::validity(self.not_before, self.not_after));
        }
        Ok(())
    }
}

/// Reads the claims out of a client certificate made by `CertificateAuthority::issue_client`. The
/// validity comes from the certificate itself, and its CN and OU must equal the claimed name and kind.
/// This does not check the signature or the expiry: verify the chain first.
pub fn claims_from_cert(der: &[u8]) -> Result<Claims, IdentityError> {
    let not = |reason: String| IdentityError::NotACredential { reason };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| not(format!("not an X.509 certificate ({e})")))?;
    // The constant is a well-formed OID, so this cannot fail; map it anyway rather than unwrap.
    let oid = x509_parser::oid_registry::Oid::from(WARDEN_CLAIMS_OID).map_err(|_| not("bad claims OID".into()))?;
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid == oid)
        .ok_or_else(|| not("it has no Warden claims extension".into()))?;
    let mut claims: Claims =
        serde_json::from_slice(ext.value).map_err(|e| not(format!("its claims extension is malformed ({e})")))?;
    let subject = cert.subject();
    let first = |attrs: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        attrs.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let cn = first(&mut subject.iter_common_name()).ok_or_else(|| not("it has no common name".into()))?;
    if cn != claims.name {
        return Err(not(format!(
            "its common name \"{cn}\" differs from the name \"{}\" in its claims",
            claims.name
        )));
    }
    let ou = first(&mut subject.iter_organizational_unit());
    if ou.as_deref() != Some(&claims.kind.to_string()) {
        return Err(not(format!(
            "its organizational unit {ou:?} differs from the kind \"{}\" in its claims",
            claims.kind
        )));
    }
    claims.not_before = cert.validity().not_before.to_datetime();
    claims.not_after = cert.validity().not_after.to_datetime();
    claims.check()?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names() {
        let id: IdentityName = "agent:report-bot".parse().unwrap();
        assert_eq!(id.kind, IdentityKind::Agent);
        assert_eq!(id.to_string(), "agent:report-bot");
        for bad in [
            "report-bot",
            "robot:x",
            "human:",
            "human:Alice",
            "human:-x",
            "human:a b",
            &format!("human:{}", "a".repeat(64)),
        ] {
            assert!(bad.parse::<IdentityName>().is_err(), "{bad}");
        }
        let e = "human:Alice".parse::<IdentityName>().unwrap_err().to_string();
        assert!(e.contains("Alice") && e.contains("lower-case"), "{e}");
    }

    #[test]
    fn kinds() {
        for k in [IdentityKind::Human, IdentityKind::Agent, IdentityKind::Workload] {
            assert_eq!(k.to_string().parse::<IdentityKind>().unwrap(), k);
        }
        let e = "robot".parse::<IdentityKind>().unwrap_err().to_string();
        assert!(e.contains("\"robot\""), "{e}");
    }

    #[test]
    fn claims_serialize_names_as_strings_and_times_as_seconds() {
        let c = Claims {
            kind: IdentityKind::Agent,
            name: "report-bot".into(),
            requester: Some("human:alice".parse().unwrap()),
            task: None,
            roles: vec!["analyst".into()],
            credential_id: "7f0c8a52-5c43-4a0e-9d3e-2f1f7a3b9c10".into(),
            not_before: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            not_after: OffsetDateTime::from_unix_timestamp(1_700_000_900).unwrap(),
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["kind"], "agent");
        assert_eq!(json["requester"], "human:alice");
        assert_eq!(json["not_after"], 1_700_000_900);
        assert!(json.get("task").is_none());
        assert_eq!(serde_json::from_value::<Claims>(json).unwrap(), c);
        let bad = r#"{"kind":"agent","name":"x","requester":"alice","roles":[],"credential_id":"","not_before":0,"not_after":1}"#;
        assert!(serde_json::from_str::<Claims>(bad).is_err());
        assert_eq!(c.identity().to_string(), "agent:report-bot");
        assert!(c.check().is_ok());
    }
}
