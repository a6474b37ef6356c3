//! TLS client configurations the agent uses: one that pins the controller's CA by hash for
//! enrollment, one with the agent's client certificate for the link.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use spark_common::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("'{0}' is not a valid host name or IP address")]
    ServerName(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parse every certificate in a PEM text.
pub fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsSetupError::Pem {
        what,
        message: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            what,
            message: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// The TLS server name for a `host:port` gateway address (IP literals included).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let host = spark_common::token::host_of(addr);
    ServerName::try_from(host.to_string()).map_err(|_| TlsSetupError::ServerName(host.into()))
}

/// Client config for the link: trusts only the controller's CA, presents the agent's
/// certificate. HTTP/1.1 only (websockets).
pub fn link_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(ca_pem, "the CA certificate")? {
        roots.add(ca)?;
    }
    let chain = certs_from_pem(cert_pem, "the agent certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsSetupError::Pem {
            what: "the agent key",
            message: e.to_string(),
        })?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What the pinning verifier saw, so a mismatch can be reported in plain words instead of as an
/// opaque handshake failure.
#[derive(Debug, Default)]
pub struct PinObservation {
    /// SHA-256 of the CA certificates the server presented, when none matched the pin.
    pub mismatch: Mutex<Option<Vec<String>>>,
}

/// Client config for enrollment: accepts the server only if it presents a CA certificate whose
/// SHA-256 equals `pin`, and its leaf certificate verifies against that CA for the name dialled.
pub fn pinned_config(pin: &str) -> Result<(ClientConfig, Arc<PinObservation>), TlsSetupError> {
    let observation = Arc::new(PinObservation::default());
    let verifier = PinnedCaVerifier {
        pin: pin.to_ascii_lowercase(),
        provider: provider(),
        observation: observation.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok((config, observation))
}

#[derive(Debug)]
struct PinnedCaVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
    observation: Arc<PinObservation>,
}

impl PinnedCaVerifier {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| sha256_hex(c) == self.pin) else {
            let seen = intermediates.iter().map(|c| sha256_hex(c)).collect();
            if let Ok(mut m) = self.observation.mismatch.lock() {
                *m = Some(seen);
            }
            return Err(rustls::Error::General(
                "the controller's CA does not match the join token's pin".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}
