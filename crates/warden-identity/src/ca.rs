use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::{Claims, IdentityError};

/// The claims extension's OID, under Warden's private enterprise arc `1.3.6.1.4.1.59999` (`.1` for
/// certificate extensions, `.1.1` for the claims). The extension's OCTET STRING holds the claims' JSON.
pub const WARDEN_CLAIMS_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 59999, 1, 1];

/// A certificate authority: a self-signed ECDSA P-256 certificate and its key.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate with its new private key.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivateKeyDer<'static>,
}

// Debug never prints a private key: these values end up in logs and panic messages.
impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Server and database login certificates start a little in the past so that a peer whose clock lags
/// accepts them at once. (Client credentials take their start from the claims; the issuer backdates them.)
const SKEW: Duration = Duration::minutes(5);

impl CertificateAuthority {
    /// A new self-signed CA valid from now (backdated by `SKEW`) for `validity`.
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, Some("CA"));
        // Path length 0: a Warden CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            // The user CA's key also signs tokens.
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = window(validity)?;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and PKCS#8 PEM key, checking that they belong together.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let cert_pem = std::fs::read_to_string(cert_path).map_err(|e| IdentityError::io(cert_path, e))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(|e| IdentityError::io(key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::ca_file(key_path, e))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(IdentityError::ca_file(key_path, "the key is not ECDSA P-256"));
        }
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| IdentityError::ca_file(cert_path, e))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| IdentityError::ca_file(cert_path, e))?;
        if !parsed.is_ca() {
            return Err(IdentityError::ca_file(
                cert_path,
                "the certificate is not a CA certificate",
            ));
        }
        // A key from another CA would sign leaves that nothing verifies; say so now, not at first use.
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(IdentityError::KeyMismatch {
                cert_path: cert_path.to_path_buf(),
                key_path: key_path.to_path_buf(),
            });
        }
        // from_ca_cert_der keeps the CA's own subject key identifier, so leaves' authority key
        // identifiers match it (OpenSSL, and so libpq and PostgreSQL, refuse a chain where they differ).
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| IdentityError::ca_file(cert_path, e))?;
        Ok(CertificateAuthority {
            cert_pem,
            cert_der: der,
            issuer,
        })
    }

    /// Writes the key (created 0600, and never over an existing key) and then the certificate.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), IdentityError> {
        crate::files::create_private(key_path, self.issuer.key().serialize_pem().as_bytes()).map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::AlreadyExists => IdentityError::KeyExists {
                    path: key_path.to_path_buf(),
                },
                _ => IdentityError::io(key_path, e),
            }
        })?;
        std::fs::write(cert_path, &self.cert_pem).map_err(|e| IdentityError::io(cert_path, e))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// A client credential carrying `claims`: CN = name, OU = kind, O = warden, the serial from the
    /// credential id, validity exactly `not_before..not_after`, clientAuth, and the claims extension
    /// whose value is the claims' JSON. Non-critical, so TLS stacks that do not know it ignore it.
    pub fn issue_client(&self, claims: &Claims) -> Result<IssuedCert, IdentityError> {
        claims.check()?;
        let mut params = leaf_params(name(&claims.name, Some(&claims.kind.to_string())));
        params.not_before = claims.not_before;
        params.not_after = claims.not_after;
        params.serial_number = Some(serial_from_id(&claims.credential_id)?);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        // Serializing a struct of strings and integers cannot fail; map it rather than unwrap anyway.
        let json = serde_json::to_vec(claims).map_err(|e| IdentityError::NotACredential { reason: e.to_string() })?;
        params.custom_extensions = vec![CustomExtension::from_oid_content(WARDEN_CLAIMS_OID, json)];
        self.sign(params)
    }

    /// Warden's server certificate: IP SANs for addresses, DNS SANs otherwise; CN = the first SAN;
    /// serverAuth.
    pub fn issue_server(&self, sans: &[String], validity: Duration) -> Result<IssuedCert, IdentityError> {
        let first = sans.first().ok_or(IdentityError::NoSubjectAltNames)?;
        let mut params = leaf_params(name(first, None));
        params.subject_alt_names = sans.iter().map(|s| subject_alt_name(s)).collect::<Result<_, _>>()?;
        (params.not_before, params.not_after) = window(validity)?;
        params.serial_number = Some(random_serial());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A login certificate for PostgreSQL's `cert` authentication, which compares the CN with the role
    /// name: so CN = `role` exactly; clientAuth; valid from `SKEW` ago for `validity`.
    pub fn issue_db_client(&self, role: &str, validity: Duration) -> Result<IssuedCert, IdentityError> {
        let bad = |reason| IdentityError::BadRole {
            input: role.to_string(),
            reason,
        };
        if role.is_empty() {
            return Err(bad("it is empty"));
        }
        if role.contains('\0') {
            return Err(bad("it contains a NUL character"));
        }
        let mut params = leaf_params(name(role, None));
        (params.not_before, params.not_after) = window(validity)?;
        params.serial_number = Some(random_serial());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// The claims as a JWT (ES256) signed with this CA's key, for the password path.
    pub fn sign_token(&self, claims: &Claims) -> Result<String, IdentityError> {
        claims.check()?;
        crate::token::sign(self.issuer.key(), claims)
    }

    /// Checks the token's signature, issuer and shape. Validity is left to the caller, so that it can
    /// say "expired at ..." (or "not valid before ...") instead of "bad token".
    pub fn verify_token(&self, token: &str) -> Result<Claims, IdentityError> {
        crate::token::verify(self.issuer.key().public_key_raw(), token)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCert, IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// What every leaf shares: basicConstraints CA:FALSE (which also makes rcgen write a subject key
/// identifier), an authority key identifier for path building, and digitalSignature, the only key
/// usage an ECDSA TLS key needs.
fn leaf_params(subject: DistinguishedName) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

/// From `SKEW` ago until `validity` from now.
fn window(validity: Duration) -> Result<(OffsetDateTime, OffsetDateTime), IdentityError> {
    let now = OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(validity)
        .ok_or(IdentityError::ValidityOutOfRange { validity })?;
    let not_before = now - SKEW;
    if not_after <= now {
        return Err(IdentityError::validity(not_before, not_after));
    }
    Ok((not_before, not_after))
}

fn subject_alt_name(san: &str) -> Result<SanType, IdentityError> {
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = || IdentityError::BadSubjectAltName { input: san.to_string() };
    let valid = !san.is_empty()
        && san.len() <= 253
        && san.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_*".contains(&b))
        });
    if !valid {
        return Err(bad());
    }
    san.to_string().try_into().map(SanType::DnsName).map_err(|_| bad())
}

fn name(common_name: &str, unit: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "warden");
    if let Some(u) = unit {
        dn.push(DnType::OrganizationalUnitName, u);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] |= 0x01; // never zero, which RFC 5280 forbids
    SerialNumber::from_slice(&bytes)
}

/// The credential id's 16 bytes, read as a positive integer, are the serial: `openssl x509 -serial`
/// shows the id, so a certificate can be matched to its audit records by hand.
fn serial_from_id(id: &str) -> Result<SerialNumber, IdentityError> {
    let uuid = uuid::Uuid::parse_str(id).map_err(|_| IdentityError::BadCredentialId { input: id.to_string() })?;
    if uuid.is_nil() {
        return Err(IdentityError::BadCredentialId { input: id.to_string() });
    }
    Ok(SerialNumber::from_slice(uuid.as_bytes()))
}

#[cfg(test)]
mod tests;
