//! What applications discover: `GET /v1/models` (one OpenAI-shaped list of everything served)
//! and `GET /api/endpoints` (a stable map of each capability's base URL, model and readiness).
//!
//! Both read the routing table and the services' discovery cache only; neither waits on a box.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::App;
use crate::proxy::Routed;
use crate::services::{Kind, ServiceConfig, Status};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/api/endpoints", get(endpoints))
}

fn model_entry(id: &str, created: i64, kind: &str, node: &str, extra: Value) -> Value {
    let mut v = json!({
        "id": id,
        "object": "model",
        "created": created,
        "owned_by": "spark-control",
        "kind": kind,
        "node": node,
    });
    if let (Value::Object(o), Value::Object(e)) = (&mut v, extra) {
        o.extend(e);
    }
    v
}

fn node_of(cfg: &ServiceConfig, st: &Status) -> String {
    st.node_name.clone().unwrap_or_else(|| cfg.name.clone())
}

async fn models(State(app): State<Arc<App>>) -> Response {
    let created = app.started_at / 1000;
    let mut data = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in app.routes.get(&app).targets.iter() {
        if seen.insert(t.model.clone()) {
            let kind = if t.pooling { "embeddings" } else { "llm" };
            data.push(model_entry(
                &t.model,
                created,
                kind,
                &t.node,
                json!({"root": t.key}),
            ));
        }
    }
    for (kind, label) in [
        (Kind::Asr, "asr"),
        (Kind::Embeddings, "embeddings"),
        (Kind::Tts, "tts"),
    ] {
        for (cfg, st) in app.services.of_kind(kind) {
            if !st.healthy {
                continue;
            }
            let node = node_of(&cfg, &st);
            for m in &st.models {
                if seen.insert(m.clone()) {
                    data.push(model_entry(
                        m,
                        created,
                        label,
                        &node,
                        json!({"service": cfg.name}),
                    ));
                }
            }
            for v in &st.voices {
                if seen.insert(v.clone()) {
                    data.push(model_entry(
                        v,
                        created,
                        "tts_voice",
                        &node,
                        json!({"service": cfg.name}),
                    ));
                }
            }
        }
    }
    let mut resp = Json(json!({"object": "list", "data": data})).into_response();
    resp.extensions_mut().insert(Routed::default());
    resp
}

/// The URL applications use to reach this controller, from the request.
fn public_base(headers: &HeaderMap, app: &App) -> String {
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| app.http_addr_hint.clone());
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

fn service_view(base: &str, path: &str, list: &[(ServiceConfig, Status)]) -> Value {
    let ready = list.iter().find(|(_, s)| s.healthy).or(list.first());
    match ready {
        None => json!({
            "base_url": format!("{base}{path}"),
            "configured": false,
            "ready": false,
            "model": null,
        }),
        Some((cfg, st)) => json!({
            "base_url": format!("{base}{path}"),
            "configured": true,
            "ready": st.healthy,
            "model": st.models.first(),
            "voices": if st.voices.is_empty() { None } else { Some(&st.voices) },
            "service": cfg.name,
            "node": st.node_name,
            "upstream": st.base_url,
            "error": st.error,
        }),
    }
}

async fn endpoints(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let base = public_base(&headers, &app);
    let routes = app.routes.get(&app);
    let llms: Vec<Value> = routes
        .targets
        .iter()
        .filter(|t| !t.pooling)
        .map(|t| json!({"model": t.model, "node": t.node, "upstream": t.base}))
        .collect();
    let active = app.swaps.active().map(|j| j.record());
    let embeddings = app.services.of_kind(Kind::Embeddings);
    let settings = app.settings.get();
    let vector = app
        .services
        .get(&settings.search.vector_store_service)
        .filter(|(c, _)| c.enabled);
    let search_ready = vector.as_ref().is_some_and(|(_, s)| s.healthy)
        && app
            .services
            .get(&settings.search.embeddings_service)
            .is_some_and(|(_, s)| s.healthy);
    let out = json!({
        "base_url": base,
        "openai_base_url": format!("{base}/v1"),
        "api_key_required": settings.api_keys_required,
        "llm": {
            "base_url": format!("{base}/v1"),
            "chat_completions": format!("{base}/v1/chat/completions"),
            "ready": !llms.is_empty(),
            "model": llms.first().map(|m| m["model"].clone()),
            "models": llms,
            "loading": active.as_ref().map(|r| json!({"model": r.served_model_name, "phase": r.phase})),
        },
        "stt": service_view(&base, "/v1", &app.services.of_kind(Kind::Asr)),
        "transcriptions": format!("{base}/v1/audio/transcriptions"),
        "speech": format!("{base}/v1/audio/speech"),
        "tts": service_view(&base, "/v1", &app.services.of_kind(Kind::Tts)),
        "embeddings": service_view(&base, "/v1", &embeddings),
        "rerank": service_view(&base, "/v1", &embeddings),
        "search": {
            "url": format!("{base}/api/search"),
            "ready": search_ready,
            "vector_store": vector.as_ref().map(|(c, s)| json!({
                "service": c.name, "upstream": s.base_url, "ready": s.healthy, "error": s.error,
            })),
        },
        "metrics": format!("{base}/metrics"),
    });
    let mut resp = Json(out).into_response();
    resp.extensions_mut().insert(Routed::default());
    resp
}
