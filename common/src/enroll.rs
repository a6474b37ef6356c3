//! The enrollment exchange: one HTTPS request on the agent gateway, made before the agent has a
//! certificate. JSON, because it happens once per node and is easiest to debug with curl.
//!
//! `POST /v1/enroll` with [`EnrollRequest`] -> 200 [`EnrollResponse`], or 4xx with
//! [`EnrollError`] whose `error` says what was wrong (used token, expired token, bad CSR).

use serde::{Deserialize, Serialize};

/// Path of the enrollment endpoint on the agent gateway.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// Path of the agent link (websocket) on the agent gateway.
pub const LINK_PATH: &str = "/v1/link";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The token's id (public part).
    pub token_id: String,
    /// The token's secret; the controller stores only its hash.
    pub token_secret: String,
    /// PEM certificate signing request made from a key that never leaves the agent.
    pub csr_pem: String,
    /// The box's host name, used as the node's initial name.
    pub hostname: String,
    /// The agent's software version.
    pub agent_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub node_id: String,
    pub node_name: String,
    /// The signed client certificate, PEM.
    pub cert_pem: String,
    /// The controller's CA certificate, PEM (the agent checks it against the token's pin).
    pub ca_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollError {
    pub error: String,
}
