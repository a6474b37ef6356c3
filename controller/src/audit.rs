//! The audit log: every control action — who (admin token, browser session, API key id, the
//! health policy), what (method and path, or a named internal action), when, and the result.
//!
//! Requests to control endpoints are recorded by the control guard ([`crate::api`]), refused ones
//! included; actions the controller takes on its own (policy restarts) call [`record`]. Only
//! methods, paths and statuses are kept: never a request body, so never a secret.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::routing::get;
use rusqlite::params;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::api::ApiError;

/// How many entries the audit log keeps.
const KEPT: i64 = 100_000;

/// Record one action.
pub fn record(app: &App, actor: &str, action: &str, target: &str, status: u16, result: &str) {
    let r = app.db.with(|c| {
        c.execute(
            "INSERT INTO audit(at, actor, action, target, status, result) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![crate::now_ms(), actor, action, target, status, result],
        )?;
        let id = c.last_insert_rowid();
        if id % 256 == 0 {
            c.execute("DELETE FROM audit WHERE id <= ?1", [id - KEPT])?;
        }
        Ok(())
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, %action, %target, "audit entry not written");
    }
}

pub fn routes() -> axum::Router<Arc<App>> {
    axum::Router::new().route("/audit", get(list))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
    actor: Option<String>,
    since: Option<String>,
}

async fn list(
    State(app): State<Arc<App>>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(200).clamp(1, 5000);
    let since = q.since.as_deref().map(parse_since).transpose()?;
    let rows = app.db.with(|c| {
        let mut st = c.prepare(
            "SELECT id, at, actor, action, target, status, result FROM audit
             WHERE (?2 IS NULL OR actor = ?2) AND (?3 IS NULL OR at >= ?3)
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st
            .query_map(params![limit, q.actor, since], |r| {
                Ok(json!({
                    "id": r.get::<_, i64>(0)?,
                    "at": crate::rfc3339(r.get(1)?),
                    "actor": r.get::<_, String>(2)?,
                    "action": r.get::<_, String>(3)?,
                    "target": r.get::<_, String>(4)?,
                    "status": r.get::<_, u16>(5)?,
                    "result": r.get::<_, String>(6)?,
                }))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    })?;
    Ok(Json(Value::Array(rows)))
}

/// A `since` query value: RFC 3339 time or unix milliseconds.
pub fn parse_since(s: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "since: {s:?} is neither an RFC 3339 time (2026-12-03T10:00:00Z) nor unix milliseconds"
            ))
        })
}
