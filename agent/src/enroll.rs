//! `spark-agent join`: turn a join token into a signed client certificate.
//!
//! The agent makes its own key and CSR; the key never leaves the box. It reaches the controller
//! over TLS that is trusted only if the controller presents the CA whose hash the token carries.

use std::path::Path;
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use spark_common::enroll::{ENROLL_PATH, EnrollError, EnrollRequest, EnrollResponse};
use spark_common::sha256_hex;
use spark_common::token::{JoinToken, TokenError};

use crate::state::{Identity, StateError};
use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(
        "this state directory ({dir}) is already enrolled as node '{node}'; to join again, stop the agent and remove that directory, or pass another --state-dir"
    )]
    AlreadyEnrolled { dir: String, node: String },
    #[error(
        "refusing to enroll: the controller at {gateway} presented a CA certificate with SHA-256 {seen}, but the join token pins {expected}. The token belongs to another controller, or something is intercepting the connection"
    )]
    CaMismatch {
        gateway: String,
        expected: String,
        seen: String,
    },
    #[error("the controller refused enrollment: {0}")]
    Refused(String),
    #[error("could not reach the controller at any gateway address in the token: {0}")]
    Unreachable(String),
    #[error("the controller's answer was not valid: {0}")]
    BadResponse(String),
    #[error("cannot make a key or CSR: {0}")]
    Crypto(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Enroll this box with the controller named in `token_text` and write the identity to
/// `state_dir`. `hostname` becomes the node's initial name.
pub async fn join(
    token_text: &str,
    state_dir: &Path,
    hostname: &str,
) -> Result<Identity, JoinError> {
    let token = JoinToken::parse(token_text)?;
    if let Some(existing) = Identity::load(state_dir)? {
        return Err(JoinError::AlreadyEnrolled {
            dir: state_dir.display().to_string(),
            node: existing.node_name,
        });
    }
    let key = KeyPair::generate().map_err(|e| JoinError::Crypto(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hostname);
    params.distinguished_name = dn;
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| JoinError::Crypto(e.to_string()))?;
    let request = EnrollRequest {
        token_id: token.id.clone(),
        token_secret: token.secret.clone(),
        csr_pem,
        hostname: hostname.to_string(),
        agent_version: spark_common::SOFTWARE_VERSION.to_string(),
    };

    let mut failures = Vec::new();
    for gateway in &token.gateways {
        match enroll_at(gateway, &token, &request).await {
            Ok(resp) => {
                let identity = Identity {
                    node_id: resp.node_id,
                    node_name: resp.node_name,
                    gateways: ordered_gateways(&token.gateways, gateway),
                    key_pem: key.serialize_pem(),
                    cert_pem: resp.cert_pem,
                    ca_pem: resp.ca_pem,
                };
                identity.save(state_dir)?;
                return Ok(identity);
            }
            // Only an unreachable address is worth trying the next one; a refusal or a
            // pin mismatch is an answer.
            Err(JoinError::Unreachable(msg)) => failures.push(format!("{gateway}: {msg}")),
            Err(other) => return Err(other),
        }
    }
    Err(JoinError::Unreachable(failures.join("; ")))
}

/// Put the address that worked first, keep the others as fallbacks.
fn ordered_gateways(all: &[String], good: &str) -> Vec<String> {
    let mut out = vec![good.to_string()];
    out.extend(all.iter().filter(|g| *g != good).cloned());
    out
}

async fn enroll_at(
    gateway: &str,
    token: &JoinToken,
    request: &EnrollRequest,
) -> Result<EnrollResponse, JoinError> {
    let (config, observation) = tls::pinned_config(&token.ca_sha256)?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .map_err(|e| JoinError::Unreachable(e.to_string()))?;
    let url = format!("https://{gateway}{ENROLL_PATH}");
    let sent = client.post(&url).json(request).send().await;
    let mismatch = observation.mismatch.lock().ok().and_then(|m| m.clone());
    if let Some(seen) = mismatch {
        return Err(JoinError::CaMismatch {
            gateway: gateway.to_string(),
            expected: token.ca_sha256.clone(),
            seen: if seen.is_empty() {
                "(none: the server sent no CA certificate)".into()
            } else {
                seen.join(", ")
            },
        });
    }
    let resp = sent.map_err(|e| JoinError::Unreachable(error_chain(&e)))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| JoinError::Unreachable(error_chain(&e)))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<EnrollError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        return Err(JoinError::Refused(message));
    }
    let resp: EnrollResponse =
        serde_json::from_slice(&body).map_err(|e| JoinError::BadResponse(e.to_string()))?;
    // The CA we will trust from now on must be the one we pinned.
    let ca = tls::certs_from_pem(&resp.ca_pem, "the CA certificate")?;
    if ca.iter().all(|c| sha256_hex(c) != token.ca_sha256) {
        return Err(JoinError::BadResponse(
            "the CA certificate in the answer does not match the token's pin".into(),
        ));
    }
    tls::certs_from_pem(&resp.cert_pem, "the signed certificate")?;
    Ok(resp)
}

/// An error with its causes, so "connection refused" is not hidden behind "error sending request".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}
