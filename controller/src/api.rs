//! The HTTP API (JSON) and the routes of the HTTP port.
//!
//! Errors are always `{"error": {"code": "...", "message": "..."}}`, with a message that says
//! what to fix. Control endpoints (every non-GET under `/api`) need the admin token or a
//! same-origin browser request; a cross-origin browser request is refused (CSRF guard).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use spark_common::host::HostSnapshot;

use crate::App;
use crate::db::NodeRow;
use crate::nodes::{self, NodeError};

/// An API error: status, a stable code, and a message for a person.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields of the `error` object (e.g. `holder` and `expires_at` of a 423 `locked`).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: serde_json::Map::new(),
            retry_after: None,
        }
    }

    /// Add a field to the `error` object.
    pub fn with_field(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// Answer with `Retry-After: secs`.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 400 `bad_request`: the request itself is wrong, and `message` says how.
    pub fn bad_request(message: String) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        for (k, v) in self.extra {
            error.entry(k).or_insert(v);
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let code = match &e {
            NodeError::Token(_) => "token_refused",
            NodeError::BadRequest(_) => "bad_request",
            NodeError::NotFound(_) => "not_found",
            NodeError::Conflict(_) => "conflict",
            NodeError::Db(_) | NodeError::Internal(_) => "unavailable",
        };
        ApiError::new(e.status(), code, e.to_string())
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

/// `Json<T>` whose rejections use the API's error shape and say what was wrong.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::new(e.status(), "bad_request", e.body_text())),
        }
    }
}

/// Parse an optional JSON body: empty means `T::default()`; anything else must parse, or the
/// error shows the expected shape (`example`).
pub fn optional_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    example: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("body must be JSON like {example}, or empty: {e}"))
    })
}

/// Who made a control request, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/nodes", get(list_nodes))
        .route("/nodes/tokens", post(create_token))
        .route(
            "/nodes/{id}",
            get(get_node).patch(rename_node).delete(revoke_node),
        )
        .route("/events", get(list_events))
        .route("/version", get(version))
        .merge(crate::boxes::routes())
        .merge(crate::lock::routes())
        .merge(crate::menu::routes())
        .merge(crate::swap::routes())
        .merge(crate::webhooks::routes())
        .merge(crate::schedules::routes())
        .merge(crate::settings::routes())
        .merge(crate::services::routes())
        .merge(crate::keys::routes())
        .merge(crate::audit::routes())
        .merge(crate::health::routes())
        .merge(crate::live::routes())
        .fallback(api_not_found)
        .layer(middleware::from_fn_with_state(app.clone(), control_guard));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .nest("/api", api)
        .merge(crate::proxy::routes())
        .merge(crate::embed::routes())
        .merge(crate::search::routes())
        .merge(crate::endpoints::routes())
        .merge(crate::health::app_routes())
        .merge(crate::audio::routes())
        .route("/metrics", get(crate::metrics::handler))
        .merge(crate::web::router())
        .layer(middleware::from_fn_with_state(
            app.clone(),
            crate::keys::guard,
        ))
        .with_state(app)
}

async fn api_not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no API endpoint {method} {uri}; see docs/api.md"),
    )
}

/// The CSRF guard and admin check for control endpoints.
async fn control_guard(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(next.run(req).await);
    }
    // Every control request is audited: who, what, the result. Never its body.
    let action = req.method().to_string();
    let target = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.path().to_string())
        .unwrap_or_else(|| format!("/api{}", req.uri().path()));
    let actor = match authorize_control(&app.admin_token, req.headers()) {
        Ok(a) => a,
        Err(e) => {
            crate::audit::record(
                &app,
                "unauthenticated",
                &action,
                &target,
                e.status.as_u16(),
                &format!("refused: {}", e.code),
            );
            return Err(e);
        }
    };
    req.extensions_mut().insert(Actor(actor.clone()));
    let resp = next.run(req).await;
    let status = resp.status();
    crate::audit::record(
        &app,
        &actor,
        &action,
        &target,
        status.as_u16(),
        if status.is_success() {
            "ok"
        } else {
            status.canonical_reason().unwrap_or("failed")
        },
    );
    Ok(resp)
}

/// Whether `presented` is the admin token (compared in constant time).
pub fn is_admin_token(admin_token: &str, presented: &str) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(
        presented.as_bytes(),
        admin_token.as_bytes(),
    ))
}

/// Decide whether a control request may proceed; returns who made it.
pub fn authorize_control(admin_token: &str, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let presented = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if is_admin_token(admin_token, presented) {
            return Ok("admin-token".into());
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the Authorization header does not carry the admin token; use `Authorization: Bearer <contents of DATA_DIR/admin.token>`",
        ));
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        return match host {
            Some(host) if same_origin(origin, host) => Ok("browser".into()),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                format!(
                    "cross-origin request refused: a page from {origin:?} may not change this controller; use the dashboard itself, or call the API with the admin token"
                ),
            )),
        };
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            format!("cross-site request refused (Sec-Fetch-Site: {site})"),
        ));
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this endpoint changes the cluster and needs the admin token: send `Authorization: Bearer <contents of DATA_DIR/admin.token>`",
    ))
}

/// Whether a browser `Origin` names the same host and port the request was sent to.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |h: &str| -> String {
        let h = h.to_ascii_lowercase();
        // A port is present if the text after the last ':' is digits and not inside [v6].
        match h.rsplit_once(':') {
            Some((_, p))
                if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']') =>
            {
                h
            }
            _ => format!("{h}:{default_port}"),
        }
    };
    !rest.is_empty() && !rest.contains('/') && with_port(rest) == with_port(host)
}

// ---------- nodes ----------

/// A node as the API shows it.
#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub connected: bool,
    pub connected_since: Option<String>,
    pub last_seen: Option<String>,
    pub first_seen: Option<String>,
    pub enrolled_at: String,
    pub hostname: String,
    pub agent_version: String,
    pub protocol: Option<String>,
    pub cert_fingerprint: String,
    pub cert_expires_at: String,
    pub revoked: bool,
    pub revoked_at: Option<String>,
    pub host: Option<HostSnapshot>,
}

pub(crate) fn node_view(app: &App, row: NodeRow) -> NodeView {
    let live = app
        .registry
        .get(&row.id)
        .filter(|_| row.revoked_at.is_none());
    let last_seen = live.as_ref().map(|l| l.last_seen).or(row.last_seen);
    NodeView {
        connected: live.is_some(),
        connected_since: live.as_ref().map(|l| crate::rfc3339(l.connected_since)),
        last_seen: last_seen.map(crate::rfc3339),
        first_seen: row.first_seen.map(crate::rfc3339),
        enrolled_at: crate::rfc3339(row.enrolled_at),
        agent_version: live
            .as_ref()
            .map(|l| l.agent_version.clone())
            .unwrap_or(row.agent_version),
        protocol: live.as_ref().map(|l| l.protocol.clone()).or(row.protocol),
        cert_expires_at: crate::rfc3339(row.cert_not_after),
        revoked: row.revoked_at.is_some(),
        revoked_at: row.revoked_at.map(crate::rfc3339),
        host: live.and_then(|l| l.host),
        id: row.id,
        name: row.name,
        hostname: row.hostname,
        cert_fingerprint: row.cert_fingerprint,
    }
}

#[derive(Deserialize)]
struct ListNodesQuery {
    #[serde(default)]
    include_revoked: bool,
}

async fn list_nodes(
    State(app): State<Arc<App>>,
    Query(q): Query<ListNodesQuery>,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    let rows = app.db.nodes(q.include_revoked)?;
    Ok(Json(rows.into_iter().map(|r| node_view(&app, r)).collect()))
}

async fn get_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    match app.db.node(&id)? {
        Some(row) => Ok(Json(node_view(&app, row))),
        None => Err(NodeError::NotFound(format!(
            "no node with id {id:?}; GET /api/nodes lists them"
        ))
        .into()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateTokenBody {
    ttl_seconds: Option<u64>,
}

async fn create_token(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    // The body is optional: no body means the default lifetime.
    let body: CreateTokenBody = optional_body(&body, "{\"ttl_seconds\": 3600}")?;
    let ttl = body
        .ttl_seconds
        .map(Duration::from_secs)
        .unwrap_or(nodes::DEFAULT_TOKEN_TTL);
    let (token, expires_at) = nodes::create_token(
        &app.db,
        &app.ca.fingerprint(),
        &app.gateway_addrs,
        ttl,
        &actor.0,
    )?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "expires_at": crate::rfc3339(expires_at),
            "gateways": app.gateway_addrs,
            "join_command": format!("spark-agent join {token}"),
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    name: String,
}

async fn rename_node(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RenameBody>,
) -> Result<Json<NodeView>, ApiError> {
    let row = nodes::rename(&app, &id, &body.name, &actor.0)?;
    Ok(Json(node_view(&app, row)))
}

async fn revoke_node(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    nodes::revoke(&app, &id, &actor.0)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- events ----------

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<u32>,
    node: Option<String>,
    subject: Option<String>,
    kind: Option<String>,
    since: Option<String>,
}

async fn list_events(
    State(app): State<Arc<App>>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(200).clamp(1, 5000);
    let since = q
        .since
        .as_deref()
        .map(crate::audit::parse_since)
        .transpose()?;
    let rows = app.db.query_events(&crate::db::EventQuery {
        limit,
        node_id: q.node.as_deref(),
        subject: q.subject.as_deref(),
        kind: q.kind.as_deref(),
        since,
    })?;
    let out: Vec<_> = rows
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "at": crate::rfc3339(e.at),
                "kind": e.kind,
                "subject": e.subject,
                "node_id": e.node_id,
                "actor": e.actor,
                "message": e.message,
            })
        })
        .collect();
    Ok(Json(json!(out)))
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({
        "version": spark_common::SOFTWARE_VERSION,
        "protocol": format!("{}.{}", spark_common::proto::PROTO_MAJOR, spark_common::proto::PROTO_MINOR),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn control_guard_decisions() {
        let token = "sc-admin-0123456789abcdef";
        let check = |pairs: &[(&str, &str)]| {
            authorize_control(token, &headers(pairs)).map_err(|e| e.status)
        };
        assert_eq!(
            check(&[("authorization", "Bearer sc-admin-0123456789abcdef")]).unwrap(),
            "admin-token"
        );
        assert_eq!(
            check(&[("authorization", "Bearer wrong")]),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(check(&[]), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(
            check(&[
                ("host", "10.0.0.5:9999"),
                ("origin", "http://10.0.0.5:9999")
            ])
            .unwrap(),
            "browser"
        );
        assert_eq!(
            check(&[("host", "10.0.0.5:9999"), ("origin", "http://evil.example")]),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            check(&[("host", "10.0.0.5:9999"), ("origin", "null")]),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            check(&[("host", "10.0.0.5:9999"), ("sec-fetch-site", "cross-site")]),
            Err(StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn same_origin_rules() {
        assert!(same_origin("http://a:9999", "a:9999"));
        assert!(same_origin("http://A", "a:80"));
        assert!(same_origin("https://a", "a:443"));
        assert!(same_origin("http://[::1]:9999", "[::1]:9999"));
        assert!(!same_origin("http://a:9998", "a:9999"));
        assert!(!same_origin("http://a.evil:9999", "a:9999"));
        assert!(!same_origin("ftp://a:9999", "a:9999"));
        assert!(!same_origin("http://a:9999/x", "a:9999"));
    }
}
