//! `/v1/embeddings` and rerank (`/v1/rerank`, with vLLM's aliases `/rerank` and `/v2/rerank`).
//!
//! Embeddings go, body untouched, to the server of the requested model: a swap-managed pooling
//! model, else the embeddings service serving that model, else the first healthy embeddings
//! service. Rerank takes the vLLM / Jina / Cohere shape `{model?, query, documents, top_n?,
//! return_documents?}`; to TEI it is translated to `/rerank {query, texts}` and the answer back to
//! `{"results": [{"index", "relevance_score", "document"?}]}`, sorted by score.

// Helpers return a ready HTTP response as their error, as handlers do.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::proxy::{self, Upstream, error, read_body};
use crate::services::{Api, Kind};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/rerank", post(rerank))
        .route("/rerank", post(rerank))
        .route("/v2/rerank", post(rerank))
}

/// Where an embeddings request for `model` goes.
enum EmbedTarget {
    Llm(proxy::LlmTarget),
    Service(Box<proxy::ServiceTarget>),
}

fn embed_target(app: &App, model: Option<&str>) -> Result<EmbedTarget, Response> {
    if let Some(m) = model
        && let Some(t) = app.routes.get(app).targets.iter().find(|t| t.model == m)
    {
        return Ok(EmbedTarget::Llm(t.clone()));
    }
    proxy::service_of_kind(app, Kind::Embeddings, model)
        .map(|t| EmbedTarget::Service(Box::new(t)))
        .map_err(|r| *r)
}

fn llm_upstream(t: proxy::LlmTarget, path: &str) -> Upstream {
    Upstream {
        url: format!("{}{path}", t.base),
        what: format!("the model server for `{}` on node {}", t.model, t.node),
        model: t.model,
        node: t.node,
        bearer: t.api_key,
        content_type: None,
    }
}

async fn embeddings(State(app): State<Arc<App>>, req: Request) -> Response {
    let arrived = Instant::now();
    let (headers, body) = match read_body(req, app.settings.get().limits.json_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let model = match proxy::peek_model(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let up = match embed_target(&app, model.as_deref()) {
        Ok(EmbedTarget::Llm(t)) => llm_upstream(t, "/v1/embeddings"),
        Ok(EmbedTarget::Service(s)) => s.upstream("/v1/embeddings"),
        Err(r) => return r,
    };
    up.send(&headers, body, arrived).await
}

#[derive(Deserialize)]
struct RerankRequest {
    #[serde(default)]
    model: Option<String>,
    query: String,
    documents: Vec<Document>,
    #[serde(default)]
    top_n: Option<usize>,
    #[serde(default = "yes")]
    return_documents: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Document {
    Text(String),
    Object { text: String },
}

impl Document {
    fn text(&self) -> &str {
        match self {
            Document::Text(t) | Document::Object { text: t } => t,
        }
    }
}

async fn rerank(State(app): State<Arc<App>>, req: Request) -> Response {
    let arrived = Instant::now();
    let (headers, body) = match read_body(req, app.settings.get().limits.json_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed: RerankRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                format!(
                    "rerank takes {{\"model\"?, \"query\": \"…\", \"documents\": [\"…\" or {{\"text\"}}], \"top_n\"?, \"return_documents\"?}}: {e}"
                ),
            );
        }
    };
    let target = match embed_target(&app, parsed.model.as_deref()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match target {
        EmbedTarget::Llm(t) => {
            llm_upstream(t, "/v1/rerank")
                .send(&headers, body, arrived)
                .await
        }
        EmbedTarget::Service(s) if s.cfg.api() == Api::Openai => {
            s.upstream("/v1/rerank").send(&headers, body, arrived).await
        }
        EmbedTarget::Service(s) => tei_rerank(&s, parsed, arrived).await,
    }
}

/// Rerank through TEI's `/rerank`, answering in the vLLM / Cohere shape.
async fn tei_rerank(
    target: &proxy::ServiceTarget,
    req: RerankRequest,
    arrived: Instant,
) -> Response {
    let up = target.upstream("/rerank");
    let texts: Vec<&str> = req.documents.iter().map(Document::text).collect();
    let tei_body =
        json!({"query": req.query, "texts": texts, "raw_scores": false, "return_text": false});
    let dispatched = Instant::now();
    let result = proxy::client().post(&up.url).json(&tei_body).send().await;
    let head = dispatched.elapsed();
    let resp = match result {
        Ok(r) => r,
        Err(e) => return up.unreachable(&e),
    };
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap_or_default();
    if !status.is_success() {
        // TEI's own error (`{"error", "error_type"}`), in OpenAI's shape.
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let msg = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        let code = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        return with(
            error(
                code,
                "upstream_error",
                v["error_type"].as_str().unwrap_or("upstream_error"),
                format!("{} refused the rerank: {msg}", up.what),
            ),
            &up,
        );
    }
    #[derive(Deserialize)]
    struct Scored {
        index: usize,
        score: f64,
    }
    let mut scored: Vec<Scored> = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            return with(
                error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "upstream_bad_answer",
                    format!("{} answered rerank with an unexpected body: {e}", up.what),
                ),
                &up,
            );
        }
    };
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    if let Some(n) = req.top_n {
        scored.truncate(n);
    }
    let results: Vec<Value> = scored
        .iter()
        .filter(|s| s.index < req.documents.len())
        .map(|s| {
            let mut r = json!({"index": s.index, "relevance_score": s.score});
            if req.return_documents {
                r["document"] = json!({"text": req.documents[s.index].text()});
            }
            r
        })
        .collect();
    let body = json!({
        "id": format!("rerank-{}", crate::now_ms()),
        "model": req.model.clone().unwrap_or_else(|| up.model.clone()),
        "usage": {"total_tokens": 0},
        "results": results,
    });
    let mut out = axum::Json(body).into_response();
    let timing = proxy::server_timing(dispatched - arrived, Some(head), None);
    if let Ok(v) = axum::http::HeaderValue::from_str(&timing) {
        out.headers_mut().insert("server-timing", v);
    }
    with(out, &up)
}

fn with(resp: Response, up: &Upstream) -> Response {
    proxy::with_routed(resp, &up.model, &up.node)
}
