//! The OpenAI-compatible passthrough for text generation, with on-demand loading.
//!
//! `POST /v1/chat/completions` and `/v1/completions` go straight to the model server that serves
//! the requested `model` (by served name or recipe key), streaming the answer through unbuffered;
//! a client that goes away drops the upstream request. A request naming a model that is not
//! loaded, whose recipe allows on-demand loading, asks the swap arbiter for it (the swap lock
//! applies) and waits up to the configured time; past that it gets 503 with `Retry-After` and its
//! queue position. Errors use OpenAI's shape `{"error": {"message", "type", "code"}}`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::recipes::{self, Recipe};
use crate::swap::Demand;
use crate::{App, catalog};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/chat/completions", post(forward))
        .route("/v1/completions", post(forward))
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        spark_agent::install_crypto_provider();
        reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default()
    })
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": {
            "message": message.into(),
            "type": kind,
            "param": null,
            "code": status.as_u16(),
        }})),
    )
        .into_response()
}

/// A running model server.
struct Target {
    key: String,
    base: String,
    recipe: Recipe,
}

/// The loaded model serving `model` (served name or key), or the only one when `model` is
/// absent.
fn loaded(app: &App, model: Option<&str>) -> Option<Target> {
    let mut found = Vec::new();
    for c in crate::swap::model_containers(app)
        .into_iter()
        .filter(crate::swap::ModelContainer::serving)
    {
        let Some(entry) = c.info.recipe.as_deref().and_then(|k| catalog::get(app, k)) else {
            continue;
        };
        let r = entry.recipe;
        if model.is_none_or(|m| m == recipes::served_name(&r) || m == r.key) {
            found.push(Target {
                key: r.key.clone(),
                base: format!("http://{}:{}", c.address, recipes::port(&r)),
                recipe: r,
            });
        }
    }
    if model.is_none() && found.len() > 1 {
        return None;
    }
    found.into_iter().next()
}

/// A recipe serving `model`.
fn recipe_for(app: &App, model: &str) -> Option<Recipe> {
    catalog::all(app)
        .0
        .into_iter()
        .map(|e| e.recipe)
        .find(|r| recipes::served_name(r) == model || r.key == model)
}

async fn forward(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let model: Option<String> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("model")?.as_str().map(str::to_string));
    let deadline = Instant::now() + app.config.on_demand_wait;
    let mut position: usize;
    loop {
        let loading_this = app.swaps.active().map(|j| j.record()).is_some_and(|r| {
            Some(&r.key)
                == recipe_for(&app, model.as_deref().unwrap_or(""))
                    .map(|r| r.key)
                    .as_ref()
        });
        if !loading_this && let Some(t) = loaded(&app, model.as_deref()) {
            app.swaps.used(&t.key);
            return send(&t, uri.path(), &headers, body).await;
        }
        let Some(name) = model.as_deref() else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the request names no \"model\" and not exactly one model is loaded; GET /api/status shows what is loaded",
            );
        };
        let Some(recipe) = recipe_for(&app, name) else {
            return error(
                StatusCode::NOT_FOUND,
                "NotFoundError",
                format!(
                    "The model `{name}` does not exist: no recipe serves it (GET /api/models lists them)"
                ),
            );
        };
        if !recipe.on_demand && !loading_this {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "model_not_loaded",
                format!(
                    "the model `{name}` is not loaded and its recipe does not allow on-demand loading; load it with POST /api/swap {{\"key\": \"{}\"}}",
                    recipe.key
                ),
            );
        }
        match app.swaps.demand(&recipe.key).await {
            Ok(Demand::Loading(job)) => {
                let r = job.record();
                if r.status() == "failed" {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "model_load_failed",
                        format!("loading `{name}` failed: {}", r.error.unwrap_or_default()),
                    );
                }
                position = 0;
            }
            Ok(Demand::Queued(p)) => position = p,
            Err(e) if e.code == "locked" => {
                let mut resp = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "model_not_loaded",
                    format!(
                        "the model `{name}` is not loaded and cannot be loaded now: {}",
                        e.message
                    ),
                );
                let secs = e.retry_after.unwrap_or(30).to_string();
                if let Ok(v) = HeaderValue::from_str(&secs) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return resp;
            }
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "model_not_loaded",
                    e.message,
                );
            }
        }
        if Instant::now() >= deadline {
            let retry = recipe.expected_ready_seconds.clamp(5, 600);
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": {
                    "message": if position == 0 {
                        format!("the model `{name}` is loading; retry in about {retry} s")
                    } else {
                        format!("the model `{name}` is queued to load (position {position}); retry in about {retry} s")
                    },
                    "type": "model_loading",
                    "param": null,
                    "code": 503,
                    "queue_position": position,
                }})),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Pass the request to the model server and stream its answer back.
async fn send(t: &Target, path: &str, headers: &HeaderMap, body: Bytes) -> Response {
    let mut rb = client()
        .post(format!("{}{path}", t.base))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(accept) = headers.get(header::ACCEPT) {
        rb = rb.header(header::ACCEPT, accept);
    }
    if let Some(key) = api_key(&t.recipe) {
        rb = rb.bearer_auth(key);
    }
    let upstream = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                format!(
                    "the model server for `{}` at {} did not answer: {e}",
                    recipes::served_name(&t.recipe),
                    t.base
                ),
            );
        }
    };
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = upstream
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .cloned();
    let mut resp = Response::new(Body::from_stream(upstream.bytes_stream()));
    *resp.status_mut() = status;
    if let Some(ct) = content_type.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}

/// The `--api-key` a recipe gives its server (it guards `/v1/*`).
pub(crate) fn api_key(r: &Recipe) -> Option<String> {
    let mut it = r.args.iter();
    while let Some(a) = it.next() {
        if a == "--api-key" {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix("--api-key=") {
            return Some(v.to_string());
        }
    }
    None
}
