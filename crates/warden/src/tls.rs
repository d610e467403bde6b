//! rustls configurations for both hops.
//!
//! The client-facing listener accepts any client certificate during the handshake (proof of key
//! possession is still checked) and verifies the chain against the user CA right after it. That way a
//! bad certificate gets a PostgreSQL error with SQLSTATE 28000 and a sentence that says what to do,
//! instead of a bare TLS alert the client prints as "unknown ca".

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use warden_policy::{SslMode, UpstreamUrl};

/// The one crypto provider Warden uses everywhere (ring). Installing it as the process default also
/// keeps any library that asks for the default from panicking.
pub fn provider() -> Arc<CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Listener config: Warden's server certificate, client certificates optional (the token path has none;
/// the API answers a missing one with a JSON error). `alpn` is `postgresql` or `http/1.1`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(DeferredClientVerifier {
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Checks a client's chain against the user CA after the handshake.
pub struct UserCaVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl UserCaVerifier {
    pub fn new(user_ca: CertificateDer<'static>) -> Result<Self, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(user_ca)?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(UserCaVerifier { inner })
    }

    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let (end_entity, intermediates) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        self.inner
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
    }
}

#[derive(Debug)]
struct DeferredClientVerifier {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to UserCaVerifier::verify after the handshake; the handshake signature below still
        // proves the client holds the certificate's key.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Client config toward PostgreSQL, honouring the URL's sslmode, optionally presenting a certificate.
pub fn upstream_config(
    url: &UpstreamUrl,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, UpstreamTlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (&url.sslmode, &url.sslrootcert) {
        (SslMode::Require, _) => Arc::new(AnyServerCert {
            provider: provider.clone(),
        }),
        (mode, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| UpstreamTlsError::RootCert {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let mut roots = RootCertStore::empty();
            for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: CertificateDer<'static> = cert.map_err(|e| UpstreamTlsError::RootCert {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                roots.add(cert).map_err(|e| UpstreamTlsError::RootCert {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| UpstreamTlsError::RootCert {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            Arc::new(ChainVerifier {
                inner,
                check_name: *mode == SslMode::VerifyFull,
            })
        }
        (_, None) => return Err(UpstreamTlsError::MissingRootCert),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UpstreamTlsError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(UpstreamTlsError::Tls)?,
        None => builder.with_no_client_auth(),
    };
    // No resumption towards PostgreSQL. Each connection logs in with the certificate of its own
    // role, and a resumed TLS session carries the identity of the handshake it came from; PostgreSQL
    // offers none anyway (it turns its session cache and tickets off). rustls's default, a cache
    // in every config, made here per connection, only held 14 KiB of every session.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The host name or address PostgreSQL's certificate is checked against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, UpstreamTlsError> {
    ServerName::try_from(host.to_string()).map_err(|_| UpstreamTlsError::BadHost(host.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("cannot load PostgreSQL's CA from {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("sslmode verify-ca/verify-full needs sslrootcert in the database url")]
    MissingRootCert,
    #[error("\"{0}\" is not a valid host name for TLS")]
    BadHost(String),
    #[error("TLS configuration: {0}")]
    Tls(rustls::Error),
}

/// verify-ca and verify-full: the chain must lead to sslrootcert; verify-ca skips the host name, as libpq does.
#[derive(Debug)]
struct ChainVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// sslmode=require: encrypted, server not authenticated (libpq's meaning). `warden start` warns about it.
#[derive(Debug)]
struct AnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Connections towards PostgreSQL log in as different roles: none may resume another's TLS
    /// session (and so present its certificate), and none should carry a session cache of its own.
    #[test]
    fn upstream_connections_do_not_resume_tls_sessions() {
        let url = UpstreamUrl::parse(
            "postgres://warden_admin@127.0.0.1:5432/shop?sslmode=require",
            Path::new("."),
        )
        .expect("url");
        let config = upstream_config(&url, None).expect("config");
        let resumption = format!("{:?}", config.resumption);
        assert!(
            resumption.contains("NoClientSessionStorage"),
            "resumption towards PostgreSQL must be off: {resumption}"
        );
    }
}
