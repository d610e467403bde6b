use std::os::unix::fs::PermissionsExt;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

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

fn new_ca(cn: &str) -> CertificateAuthority {
    CertificateAuthority::generate(cn, Duration::days(1)).unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn verifies(ca: &CertificateAuthority, leaf: &IssuedCert) -> bool {
    let ca_cert = parse(&ca.cert_der);
    parse(&leaf.cert_der)
        .verify_signature(Some(ca_cert.public_key()))
        .is_ok()
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    })
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0.to_vec()),
        _ => None,
    })
}

#[test]
fn ca_is_a_path_length_zero_signing_ca() {
    let ca = new_ca("Test CA");
    let cert = parse(&ca.cert_der);
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint == Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(subject_key_id(&cert).is_some());
    assert!(cert.verify_signature(None).is_ok(), "self-signed");
}

#[test]
fn save_and_load_keep_the_key_private() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("Test CA");
    let (crt, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    ca.save(&crt, &key).unwrap();
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let loaded = CertificateAuthority::load(&crt, &key).unwrap();
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.cert_der(), ca.cert_der());
    // A leaf signed by the loaded CA verifies against the original, and its authority key id still
    // matches the CA's subject key id (OpenSSL builds chains by it).
    let leaf = loaded.issue_client(&claims(10)).unwrap();
    assert!(verifies(&ca, &leaf));
    assert_eq!(
        authority_key_id(&parse(&leaf.cert_der)),
        subject_key_id(&parse(&ca.cert_der))
    );
    assert!(loaded.verify_token(&ca.sign_token(&claims(10)).unwrap()).is_ok());
    let e = ca.save(&crt, &key).unwrap_err();
    assert!(
        matches!(e, IdentityError::KeyExists { .. }),
        "never overwrites a key: {e}"
    );
}

#[test]
fn load_names_the_file_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    let e = CertificateAuthority::load(&crt, &key).unwrap_err().to_string();
    assert!(e.contains("ca.crt"), "{e}");
    new_ca("Test CA").save(&crt, &key).unwrap();
    let (other_crt, other_key) = (dir.path().join("other.crt"), dir.path().join("other.key"));
    new_ca("Other CA").save(&other_crt, &other_key).unwrap();
    let e = CertificateAuthority::load(&crt, &other_key).unwrap_err();
    assert!(matches!(e, IdentityError::KeyMismatch { .. }), "{e}");
    assert!(e.to_string().contains("other.key"), "{e}");
    std::fs::write(&other_crt, "not a certificate").unwrap();
    let e = CertificateAuthority::load(&other_crt, &key).unwrap_err().to_string();
    assert!(e.contains("other.crt"), "{e}");
    // A leaf is not a CA, even with its own key.
    let leaf = new_ca("Test CA").issue_client(&claims(5)).unwrap();
    std::fs::write(&other_crt, &leaf.cert_pem).unwrap();
    std::fs::remove_file(&other_key).unwrap();
    std::fs::write(&other_key, &leaf.key_pem).unwrap();
    let e = CertificateAuthority::load(&other_crt, &other_key)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a CA"), "{e}");
}

#[test]
fn client_certificate_carries_the_claims() {
    let ca = new_ca("Test CA");
    let c = claims(15);
    let cert = ca.issue_client(&c).unwrap();
    assert_eq!(claims_from_cert(&cert.cert_der).unwrap(), c);
    assert!(verifies(&ca, &cert));
    assert!(!verifies(&new_ca("Other CA"), &cert));
    assert!(cert.key_pem.contains("BEGIN PRIVATE KEY"));

    let x = parse(&cert.cert_der);
    // DER adds a leading zero byte when the first byte's high bit is set (the integer stays positive).
    let raw = x.tbs_certificate.raw_serial();
    let serial = if raw.len() == 17 && raw[0] == 0 { &raw[1..] } else { raw };
    assert_eq!(serial, uuid::Uuid::parse_str(&c.credential_id).unwrap().as_bytes());
    assert_eq!(x.validity().not_before.to_datetime(), c.not_before);
    assert!(!x.basic_constraints().unwrap().unwrap().value.ca);
    assert!(x.key_usage().unwrap().unwrap().value.digital_signature());
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(subject_key_id(&x).is_some());
    assert_eq!(authority_key_id(&x), subject_key_id(&parse(&ca.cert_der)));
    let oid = x509_parser::oid_registry::Oid::from(WARDEN_CLAIMS_OID).unwrap();
    let ext = x.extensions().iter().find(|e| e.oid == oid).unwrap();
    assert!(!ext.critical);
    assert!(x.subject().iter_organization().any(|o| o.as_str() == Ok("warden")));
}

#[test]
fn issue_client_refuses_malformed_claims() {
    let ca = new_ca("Test CA");
    let mut c = claims(5);
    c.credential_id = "c1".into();
    assert!(matches!(
        ca.issue_client(&c),
        Err(IdentityError::BadCredentialId { .. })
    ));
    assert!(matches!(ca.sign_token(&c), Err(IdentityError::BadCredentialId { .. })));
    let mut c = claims(5);
    c.not_after = c.not_before;
    assert!(matches!(ca.issue_client(&c), Err(IdentityError::BadValidity { .. })));
    let mut c = claims(5);
    c.name = "Report Bot".into();
    assert!(matches!(ca.issue_client(&c), Err(IdentityError::BadName { .. })));
}

#[test]
fn claims_from_cert_rejects_what_issue_client_did_not_make() {
    let ca = new_ca("Test CA");
    let db = ca.issue_db_client("report-bot", Duration::minutes(5)).unwrap();
    let e = claims_from_cert(&db.cert_der).unwrap_err().to_string();
    assert!(e.contains("no Warden claims extension"), "{e}");
    assert!(claims_from_cert(b"garbage").is_err());

    // Claims for one name in a certificate for another.
    let c = claims(5);
    let mut params = leaf_params(name("alice", Some("agent")));
    let json = serde_json::to_vec(&c).unwrap();
    params.custom_extensions = vec![CustomExtension::from_oid_content(WARDEN_CLAIMS_OID, json)];
    let forged = ca.sign(params).unwrap();
    let e = claims_from_cert(&forged.cert_der).unwrap_err().to_string();
    assert!(e.contains("\"alice\"") && e.contains("report-bot"), "{e}");

    let mut params = leaf_params(name(&c.name, Some("agent")));
    params.custom_extensions = vec![CustomExtension::from_oid_content(WARDEN_CLAIMS_OID, b"{".to_vec())];
    let e = claims_from_cert(&ca.sign(params).unwrap().cert_der)
        .unwrap_err()
        .to_string();
    assert!(e.contains("malformed"), "{e}");
}

#[test]
fn tokens_round_trip_and_reject_forgeries() {
    let ca = new_ca("Test CA");
    let c = claims(15);
    let token = ca.sign_token(&c).unwrap();
    assert_eq!(token.split('.').count(), 3);
    assert_eq!(ca.verify_token(&token).unwrap(), c);
    assert!(new_ca("Other CA").verify_token(&token).is_err());
    assert!(ca.verify_token("not-a-token").is_err());
    assert!(ca.verify_token("").is_err());

    // Change one character of the payload, then one of the signature.
    let (payload_at, signature_at) = (token.find('.').unwrap() + 5, token.rfind('.').unwrap() + 5);
    for at in [payload_at, signature_at] {
        let mut tampered = token.clone().into_bytes();
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let e = ca.verify_token(std::str::from_utf8(&tampered).unwrap()).unwrap_err();
        assert!(matches!(e, IdentityError::BadToken { .. }), "{e}");
    }
}

#[test]
fn expired_tokens_still_return_their_claims() {
    let ca = new_ca("Test CA");
    let mut old = claims(0);
    old.not_before -= Duration::hours(2);
    old.not_after -= Duration::hours(1);
    let back = ca.verify_token(&ca.sign_token(&old).unwrap()).unwrap();
    assert_eq!(back, old);
    assert!(back.not_after < OffsetDateTime::now_utc());
}

#[test]
fn server_certificate_names_its_addresses() {
    let ca = new_ca("Test CA");
    let s = ca
        .issue_server(
            &["127.0.0.1".into(), "::1".into(), "localhost".into()],
            Duration::days(1),
        )
        .unwrap();
    let cert = parse(&s.cert_der);
    let names = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .clone();
    assert!(names
        .iter()
        .any(|n| matches!(n, GeneralName::IPAddress(ip) if *ip == [127, 0, 0, 1])));
    assert!(names
        .iter()
        .any(|n| matches!(n, GeneralName::IPAddress(ip) if ip.len() == 16)));
    assert!(names.iter().any(|n| matches!(n, GeneralName::DNSName("localhost"))));
    assert!(cert.extended_key_usage().unwrap().unwrap().value.server_auth);
    assert!(verifies(&ca, &s));
    assert!(matches!(
        ca.issue_server(&[], Duration::days(1)),
        Err(IdentityError::NoSubjectAltNames)
    ));
    let e = ca
        .issue_server(&["my host".into()], Duration::days(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"my host\""), "{e}");
    assert!(matches!(
        ca.issue_server(&["localhost".into()], Duration::days(10_000_000)),
        Err(IdentityError::ValidityOutOfRange { .. })
    ));
}

#[test]
fn db_login_certificate_is_the_role() {
    let ca = new_ca("Test CA");
    let role = "agent:report-bot@human:alice+analyst";
    let d = ca.issue_db_client(role, Duration::minutes(5)).unwrap();
    let cert = parse(&d.cert_der);
    let cns: Vec<_> = cert.subject().iter_common_name().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(cns, [role]);
    assert!(cert.extended_key_usage().unwrap().unwrap().value.client_auth);
    let validity = cert.validity();
    let now = OffsetDateTime::now_utc();
    assert!(validity.not_before.to_datetime() <= now - Duration::minutes(4));
    assert!(validity.not_after.to_datetime() <= now + Duration::minutes(5));
    assert!(verifies(&ca, &d));
    assert!(matches!(
        ca.issue_db_client("", Duration::minutes(5)),
        Err(IdentityError::BadRole { .. })
    ));
    assert!(matches!(
        ca.issue_db_client("x", Duration::ZERO),
        Err(IdentityError::BadValidity { .. })
    ));
}
