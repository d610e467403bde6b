use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::{claims_from_cert, IdentityKind};

fn claims(minutes: i64) -> Claims {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    Claims {
        kind: IdentityKind::Agent,
        name: "report-bot".into(),
        requester: Some("human:alice".parse().unwrap()),
        task: Some("T-42".into()),
        roles: vec!["analyst".into()],
        credential_id: uuid::Uuid::new_v4().to_string(),
        not_before: now - Duration::minutes(1),
        not_after: now + Duration::minutes(minutes),
    }
}

fn verifies(ca: &CertificateAuthority, leaf: &IssuedCert) -> bool {
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.cert_der).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert_der).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).is_ok()
}

#[test]
fn save_and_load_keep_the_key_private() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("Test CA", Duration::days(1)).unwrap();
    let (crt, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    ca.save(&crt, &key).unwrap();
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let loaded = CertificateAuthority::load(&crt, &key).unwrap();
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    // A leaf signed by the loaded CA verifies against the original certificate.
    let leaf = loaded.issue_client(&claims(10)).unwrap();
    assert!(verifies(&ca, &leaf));
    assert!(ca.save(&crt, &key).is_err(), "never overwrites a key");
}

#[test]
fn client_certificate_carries_the_claims() {
    let ca = CertificateAuthority::generate("Test CA", Duration::days(1)).unwrap();
    let c = claims(15);
    let cert = ca.issue_client(&c).unwrap();
    assert_eq!(claims_from_cert(&cert.cert_der).unwrap(), c);
    assert!(verifies(&ca, &cert));
    let other = CertificateAuthority::generate("Other CA", Duration::days(1)).unwrap();
    assert!(!verifies(&other, &cert));
    assert!(cert.key_pem.contains("PRIVATE KEY"));
}

#[test]
fn tokens_round_trip_and_reject_forgeries() {
    let ca = CertificateAuthority::generate("Test CA", Duration::days(1)).unwrap();
    let c = claims(15);
    let token = ca.sign_token(&c).unwrap();
    assert_eq!(ca.verify_token(&token).unwrap(), c);
    let other = CertificateAuthority::generate("Other CA", Duration::days(1)).unwrap();
    assert!(other.verify_token(&token).is_err());
    let mut tampered = token.clone().into_bytes();
    let mid = token.find('.').unwrap() + 5;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    assert!(ca.verify_token(std::str::from_utf8(&tampered).unwrap()).is_err());
    assert!(ca.verify_token("not-a-token").is_err());
    // Expired tokens still verify; the caller reports the expiry time.
    let old = claims(-5);
    assert_eq!(
        ca.verify_token(&ca.sign_token(&old).unwrap()).unwrap().not_after,
        old.not_after
    );
}

#[test]
fn server_and_db_certificates() {
    let ca = CertificateAuthority::generate("Test CA", Duration::days(1)).unwrap();
    let s = ca
        .issue_server(&["127.0.0.1".into(), "localhost".into()], Duration::days(1))
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&s.cert_der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert!(san
        .general_names
        .iter()
        .any(|n| matches!(n, x509_parser::extensions::GeneralName::IPAddress(ip) if *ip == [127, 0, 0, 1])));
    assert!(verifies(&ca, &s));
    let d = ca.issue_db_client("agent:report-bot", Duration::minutes(5)).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&d.cert_der).unwrap();
    assert_eq!(
        cert.subject().iter_common_name().next().unwrap().as_str().unwrap(),
        "agent:report-bot"
    );
}
