use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::{Claims, IdentityError};

/// Warden's private OID arc for the claims extension (JSON in the extension's OCTET STRING).
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

/// Leaf certificates start a little in the past so that a peer whose clock lags accepts them at once.
const SKEW: Duration = Duration::minutes(5);

impl CertificateAuthority {
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, Some("CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - SKEW;
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let cert_pem = std::fs::read_to_string(cert_path).map_err(|e| IdentityError::file(cert_path, e))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(|e| IdentityError::file(key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::file(key_path, e))?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e: rustls_pki_types::pem::Error| IdentityError::file(cert_path, e))?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| IdentityError::file(cert_path, e))?;
        Ok(CertificateAuthority {
            cert_pem,
            cert_der: der,
            issuer,
        })
    }

    /// Writes the certificate (0644) and the key (created 0600, never widened).
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), IdentityError> {
        crate::files::write_private(key_path, self.issuer.key().serialize_pem().as_bytes())?;
        std::fs::write(cert_path, &self.cert_pem).map_err(|e| IdentityError::file(cert_path, e))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// A client credential carrying `claims`: CN = name, OU = kind, the claims extension, clientAuth.
    pub fn issue_client(&self, claims: &Claims) -> Result<IssuedCert, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&claims.name, Some(&claims.kind.to_string()));
        params.not_before = claims.not_before;
        params.not_after = claims.not_after;
        params.serial_number = Some(serial_from_id(&claims.credential_id));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let json = serde_json::to_vec(claims).map_err(|e| IdentityError::NotACredential { reason: e.to_string() })?;
        params.custom_extensions = vec![CustomExtension::from_oid_content(WARDEN_CLAIMS_OID, json)];
        self.sign(params)
    }

    /// Warden's server certificate: IP SANs for addresses, DNS SANs otherwise; serverAuth.
    pub fn issue_server(&self, sans: &[String], validity: Duration) -> Result<IssuedCert, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(sans.first().map(String::as_str).unwrap_or("warden"), None);
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => s.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        self.leaf(&mut params, validity);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A login certificate for PostgreSQL's `cert` authentication: CN = the role, clientAuth.
    pub fn issue_db_client(&self, role: &str, validity: Duration) -> Result<IssuedCert, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(role, None);
        self.leaf(&mut params, validity);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    pub fn sign_token(&self, claims: &Claims) -> Result<String, IdentityError> {
        crate::token::sign(self.issuer.key(), claims)
    }

    /// Checks the token's signature and shape. Expiry is left to the caller, which reports it with the time.
    pub fn verify_token(&self, token: &str) -> Result<Claims, IdentityError> {
        crate::token::verify(self.issuer.key().public_key_raw(), token)
    }

    fn leaf(&self, params: &mut CertificateParams, validity: Duration) {
        let now = OffsetDateTime::now_utc();
        params.not_before = now - SKEW;
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCert, IdentityError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
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
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// The credential id (a UUID) as the serial, so a certificate can be matched to its audit records.
fn serial_from_id(id: &str) -> SerialNumber {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => {
            let mut bytes = *u.as_bytes();
            bytes[0] &= 0x7f;
            bytes[0] |= 0x01;
            SerialNumber::from_slice(&bytes)
        }
        Err(_) => random_serial(),
    }
}

#[cfg(test)]
mod tests;
