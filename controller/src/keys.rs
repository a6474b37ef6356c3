//! API keys for the application endpoints, and the one place that decides whether an
//! application request may proceed.
//!
//! Keys are optional: with `api_keys_required` off (a fresh install) every application endpoint
//! is open, as a plain vLLM is. When on, a request needs `Authorization: Bearer sk-spark-…` (or
//! the admin token); a key may be limited to some endpoints. Keys are shown once at creation and
//! stored as SHA-256 hashes; the in-memory table is reloaded on every change.
//!
//! Never: a key in a log, event or API response after creation.

// Helpers return a ready HTTP response as their error, as handlers do.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::App;
use crate::api::{Actor, ApiError, JsonBody};

/// The application endpoints: callable by applications (not only the admin), optionally behind
/// API keys. A key's `endpoints` list names entries of this list.
pub const APP_ENDPOINTS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/embeddings",
    "/v1/rerank",
    "/v1/audio/transcriptions",
    "/v1/audio/speech",
    "/api/search",
    "/api/endpoints",
    "/api/health-event",
];

/// The application endpoint a request path belongs to (aliases map to their endpoint).
pub fn app_endpoint(path: &str) -> Option<&'static str> {
    let path = path.strip_suffix('/').unwrap_or(path);
    match path {
        "/rerank" | "/v2/rerank" => Some("/v1/rerank"),
        _ => APP_ENDPOINTS.iter().copied().find(|e| *e == path),
    }
}

/// A key as listed (never the key itself).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    /// Endpoints this key may call; empty means all.
    pub endpoints: Vec<String>,
    pub created_at: String,
    pub created_by: String,
}

/// The live table: hash of the key -> key.
#[derive(Debug, Default)]
pub struct Keys(RwLock<Arc<HashMap<String, KeyInfo>>>);

impl Keys {
    fn lookup(&self, presented: &str) -> Option<KeyInfo> {
        let guard = self.0.read().unwrap_or_else(|p| p.into_inner());
        guard.get(&hash(presented)).cloned()
    }
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Reload the in-memory table from the database.
pub fn reload(app: &App) -> Result<(), crate::db::DbError> {
    let rows = app.db.with(|c| {
        let mut st = c.prepare(
            "SELECT id, name, prefix, hash, endpoints, created_at, created_by FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at",
        )?;
        let rows = st
            .query_map([], |r| {
                let endpoints: String = r.get(4)?;
                Ok((
                    r.get::<_, String>(3)?,
                    KeyInfo {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        prefix: r.get(2)?,
                        endpoints: serde_json::from_str(&endpoints).unwrap_or_default(),
                        created_at: crate::rfc3339(r.get(5)?),
                        created_by: r.get(6)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    })?;
    *app.keys.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rows.into_iter().collect());
    Ok(())
}

/// The error shape OpenAI clients understand.
pub fn openai_error(status: StatusCode, kind: &str, code: &str, message: String) -> Response {
    use axum::response::IntoResponse;
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}})),
    )
        .into_response()
}

/// Middleware on the whole HTTP router: application endpoints are checked against the API-key
/// setting, the caller is recorded as the request's [`Actor`], and the answer is counted in the
/// gateway metrics (route, the model and node the handler routed to, status, latency to the
/// response head).
pub async fn guard(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let Some(endpoint) = app_endpoint(req.uri().path()) else {
        return next.run(req).await;
    };
    let started = std::time::Instant::now();
    let resp = match authorize(&app, req.headers(), endpoint) {
        Ok(actor) => {
            req.extensions_mut().insert(Actor(actor));
            next.run(req).await
        }
        Err(resp) => resp,
    };
    let routed = resp.extensions().get::<crate::proxy::Routed>();
    let (model, node) = routed
        .map(|r| (r.model.as_str(), r.node.as_str()))
        .unwrap_or(("", ""));
    if let Some(d) = routed.and_then(|r| r.first_byte) {
        app.metrics
            .first_byte(endpoint, model, node, d.as_secs_f64());
    }
    app.metrics.request(
        endpoint,
        model,
        node,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

fn authorize(app: &App, headers: &HeaderMap, endpoint: &str) -> Result<String, Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if !app.settings.get().api_keys_required {
        // Open: a key, if any, only names the caller.
        return Ok(presented
            .and_then(|k| app.keys.lookup(k))
            .map(|k| format!("api-key:{}", k.id))
            .unwrap_or_else(|| "application".into()));
    }
    // The dashboard reads the service map and the model list from its own origin (a browser
    // marks such requests; another site's page cannot).
    if matches!(endpoint, "/api/endpoints" | "/v1/models")
        && headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"same-origin")
    {
        return Ok("browser".into());
    }
    let Some(presented) = presented.filter(|k| !k.is_empty()) else {
        return Err(openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "This endpoint needs an API key: send `Authorization: Bearer sk-spark-...` (keys are made with POST /api/keys)".into(),
        ));
    };
    if crate::api::is_admin_token(&app.admin_token, presented) {
        return Ok("admin-token".into());
    }
    let Some(key) = app.keys.lookup(presented) else {
        let shown: String = presented.chars().take(12).collect();
        return Err(openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            format!(
                "Incorrect API key provided ({shown}...): it is unknown or revoked; GET /api/keys lists the valid ones"
            ),
        ));
    };
    if !key.endpoints.is_empty() && !key.endpoints.iter().any(|e| e == endpoint) {
        return Err(openai_error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "endpoint_not_allowed",
            format!(
                "the API key {:?} ({}) may call only {}; not {endpoint}",
                key.name,
                key.id,
                key.endpoints.join(", ")
            ),
        ));
    }
    Ok(format!("api-key:{}", key.id))
}

// ---------- management API (control endpoints: admin token or same-origin browser) ----------

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/keys", get(list).post(create))
        .route("/keys/{id}", delete(revoke))
}

async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let table = app.keys.0.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut keys: Vec<&KeyInfo> = table.values().collect();
    keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Json(json!({
        "required": app.settings.get().api_keys_required,
        "keys": keys,
        "endpoints": APP_ENDPOINTS,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    endpoints: Vec<String>,
}

async fn create(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 80 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name: give 1 to 80 printable characters, e.g. \"meeting-recapper\"".into(),
        ));
    }
    for e in &body.endpoints {
        if !APP_ENDPOINTS.contains(&e.as_str()) {
            return Err(ApiError::bad_request(format!(
                "endpoints: {e:?} is not an application endpoint; choose from {}",
                APP_ENDPOINTS.join(", ")
            )));
        }
    }
    use rand::distr::{Alphanumeric, SampleString};
    let id = format!(
        "key_{}",
        Alphanumeric
            .sample_string(&mut rand::rng(), 10)
            .to_lowercase()
    );
    let key = format!(
        "sk-spark-{}",
        Alphanumeric.sample_string(&mut rand::rng(), 40)
    );
    let prefix: String = key.chars().take(14).collect();
    let endpoints = serde_json::to_string(&body.endpoints).unwrap_or_else(|_| "[]".into());
    let now = crate::now_ms();
    app.db.with(|c| {
        c.execute(
            "INSERT INTO api_keys(id, name, prefix, hash, endpoints, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, name, prefix, hash(&key), endpoints, now, actor.0],
        )
    })?;
    reload(&app)?;
    let _ = app.db.add_event(
        "api_key_created",
        None,
        Some(&actor.0),
        &format!("API key {id} ({name}) created"),
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "name": name,
            "key": key,
            "prefix": prefix,
            "endpoints": body.endpoints,
            "created_at": crate::rfc3339(now),
            "note": "the key is shown only now; store it",
        })),
    ))
}

async fn revoke(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let n = app.db.with(|c| {
        c.execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, crate::now_ms()],
        )
    })?;
    if n == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no live API key {id:?}; GET /api/keys lists them"),
        ));
    }
    reload(&app)?;
    let _ = app.db.add_event(
        "api_key_revoked",
        None,
        Some(&actor.0),
        &format!("API key {id} revoked"),
    );
    Ok(StatusCode::NO_CONTENT)
}
