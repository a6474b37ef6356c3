//! Node lifecycle: join tokens, enrollment, rename, revoke. The one place these rules live;
//! the HTTP API, the agent gateway and the CLI all call here.

use std::time::Duration;

use axum::http::StatusCode;
use rand::distr::{Alphanumeric, SampleString};
use spark_common::enroll::{EnrollRequest, EnrollResponse};
use spark_common::token::JoinToken;

use crate::App;
use crate::db::{Db, DbError, NodeRow, TokenRejection};
use crate::registry::SessionCmd;
use spark_common::proto::ControllerMsg;

/// Default lifetime of a join token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime a join token may have.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Token(#[from] TokenRejection),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Internal(String),
}

impl NodeError {
    pub fn status(&self) -> StatusCode {
        match self {
            NodeError::Token(_) => StatusCode::FORBIDDEN,
            NodeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Conflict(_) => StatusCode::CONFLICT,
            NodeError::Db(_) | NodeError::Internal(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

fn random_word(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// Create a join token; returns its text and expiry (unix ms). Only the secret's hash is stored.
pub fn create_token(
    db: &Db,
    ca_fingerprint: &str,
    gateways: &[String],
    ttl: Duration,
    actor: &str,
) -> Result<(String, i64), NodeError> {
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(NodeError::BadRequest(format!(
            "a join token must live between 1 second and {} days, not {} seconds",
            MAX_TOKEN_TTL.as_secs() / 86400,
            ttl.as_secs()
        )));
    }
    if gateways.is_empty() {
        return Err(NodeError::Internal(
            "no gateway address is known; start the controller once (`spark-control serve`) or pass --advertise".into(),
        ));
    }
    let token = JoinToken {
        gateways: gateways.to_vec(),
        ca_sha256: ca_fingerprint.to_string(),
        id: format!("t{}", random_word(11)),
        secret: random_word(32),
    };
    let expires_at = crate::now_ms() + ttl.as_millis() as i64;
    db.insert_token(
        &token.id,
        &spark_common::sha256_hex(token.secret.as_bytes()),
        expires_at,
    )?;
    db.add_event(
        "token_created",
        None,
        Some(actor),
        &format!(
            "join token {} created, expires {}",
            token.id,
            crate::rfc3339(expires_at)
        ),
    )?;
    Ok((token.encode(), expires_at))
}

/// Check a node name typed by a person.
pub fn validate_name(name: &str) -> Result<(), NodeError> {
    let ok = (1..=64).contains(&name.chars().count())
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '));
    if ok {
        Ok(())
    } else {
        Err(NodeError::BadRequest(format!(
            "node name {name:?} is not allowed: use 1-64 letters, digits, spaces, '-', '_' or '.', with no space at either end"
        )))
    }
}

/// Enroll a node: check the token, sign the CSR, record the node.
pub fn enroll(app: &App, req: &EnrollRequest, remote: &str) -> Result<EnrollResponse, NodeError> {
    let node_id = format!("n{}", random_word(9).to_ascii_lowercase());
    // Sign first (cheap, no state), so a bad CSR does not burn the token.
    let issued = app
        .ca
        .sign_client(&req.csr_pem, &node_id)
        .map_err(|e| NodeError::BadRequest(e.to_string()))?;
    if let Err(rejection) = app
        .db
        .consume_token(&req.token_id, &req.token_secret, &node_id)?
    {
        let _ = app.db.add_event(
            "enroll_refused",
            None,
            None,
            &format!("enrollment from {remote} refused: {rejection}"),
        );
        return Err(rejection.into());
    }
    let base = if validate_name(&req.hostname).is_ok() {
        req.hostname.clone()
    } else {
        format!("node-{node_id}")
    };
    let mut name = base.clone();
    let mut n = 2;
    while app.db.name_taken(&name, None)? {
        name = format!("{base}-{n}");
        n += 1;
    }
    let agent_version: String = req.agent_version.chars().take(64).collect();
    let hostname: String = req.hostname.chars().take(253).collect();
    let now = crate::now_ms();
    app.db.insert_node(&NodeRow {
        id: node_id.clone(),
        name: name.clone(),
        cert_fingerprint: issued.fingerprint,
        cert_not_after: issued.not_after_ms,
        hostname,
        enrolled_at: now,
        first_seen: None,
        last_seen: None,
        agent_version,
        protocol: None,
        revoked_at: None,
    })?;
    app.db.add_event(
        "node_enrolled",
        Some(&node_id),
        None,
        &format!(
            "node '{name}' enrolled from {remote} with token {}",
            req.token_id
        ),
    )?;
    Ok(EnrollResponse {
        node_id,
        node_name: name,
        cert_pem: issued.cert_pem,
        ca_pem: app.ca.cert_pem().to_string(),
    })
}

fn live_node(db: &Db, id: &str) -> Result<NodeRow, NodeError> {
    match db.node(id)? {
        Some(n) if n.revoked_at.is_none() => Ok(n),
        Some(_) => Err(NodeError::Conflict(format!("node {id} is revoked"))),
        None => Err(NodeError::NotFound(format!(
            "no node with id {id:?}; GET /api/nodes lists them"
        ))),
    }
}

pub fn rename(app: &App, id: &str, name: &str, actor: &str) -> Result<NodeRow, NodeError> {
    validate_name(name)?;
    let node = live_node(&app.db, id)?;
    if app.db.name_taken(name, Some(id))? {
        return Err(NodeError::Conflict(format!(
            "another node is already named {name:?}"
        )));
    }
    app.db.rename_node(id, name)?;
    app.db.add_event(
        "node_renamed",
        Some(id),
        Some(actor),
        &format!("node '{}' renamed to '{name}'", node.name),
    )?;
    app.registry.command(
        id,
        SessionCmd::Send(ControllerMsg::Renamed {
            node_name: name.to_string(),
        }),
    );
    live_node(&app.db, id)
}

/// Revoke a node: it is refused from now on, and its live connection is dropped.
pub fn revoke(app: &App, id: &str, actor: &str) -> Result<(), NodeError> {
    let node = live_node(&app.db, id)?;
    app.db.revoke_node(id)?;
    app.db.add_event(
        "node_revoked",
        Some(id),
        Some(actor),
        &format!("node '{}' revoked", node.name),
    )?;
    app.registry.command(
        id,
        SessionCmd::Refuse(format!(
            "node '{}' ({id}) was revoked by the operator; to use this box again, join it with a new token",
            node.name
        )),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["spark-1", "Spark 2", "gpu_box.lan"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", " x", "x ", "<script>", "a;b", &"x".repeat(65)] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("not allowed"), "{bad}: {err}");
        }
    }
}
