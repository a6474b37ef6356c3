//! `POST /api/search`: hybrid search over the vector store (Qdrant).
//!
//! The query text becomes a dense vector (the embeddings service) and a sparse one (the
//! pluggable sparse provider, see [`crate::settings::SparseProvider`]), made in parallel; Qdrant's
//! query API then fuses a sparse and a dense prefetch with reciprocal rank fusion. With no sparse
//! provider (or no sparse vector for the text) the search is dense only. Callers may pass their
//! own `dense` and `sparse` vectors instead of text.
//!
//! Collection and vector names are checked against a strict pattern before they go anywhere
//! near a URL; the `filter` is passed to Qdrant as JSON, never spliced into text.

// Helpers return a ready HTTP response as their error, as handlers do.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::proxy::{ServiceTarget, error, read_body, with_routed};
use crate::services::{Api, Kind};
use crate::settings::SparseProvider;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/search", post(search))
}

/// Collection and vector names: letters, digits, `_` and `-`, starting with a letter or digit,
/// at most 64 characters. Nothing that could change a URL's path.
pub fn validate_identifier(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not allowed: use 1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit"
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    collection: String,
    #[serde(default)]
    query: Option<String>,
    #[serde(default = "default_limit")]
    limit: u32,
    /// A Qdrant filter, passed as is.
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    with_payload: Option<Value>,
    #[serde(default)]
    score_threshold: Option<f64>,
    /// A dense query vector instead of the text's embedding.
    #[serde(default)]
    dense: Option<Vec<f32>>,
    /// A sparse query vector instead of the provider's.
    #[serde(default)]
    sparse: Option<SparseVector>,
    #[serde(default)]
    prefetch_limit: Option<u32>,
    /// `"hybrid"` (default: sparse too when available), `"dense"` or `"sparse"`.
    #[serde(default)]
    mode: Option<String>,
}

fn default_limit() -> u32 {
    10
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct SparseVector {
    indices: Vec<u32>,
    values: Vec<f32>,
}

fn bad(msg: String) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_request",
        msg,
    )
}

fn unavailable(what: String) -> Response {
    error(
        StatusCode::BAD_GATEWAY,
        "upstream_unreachable",
        "upstream_unreachable",
        what,
    )
}

/// A configured service by name, reachable now, or the response saying why not.
fn service(app: &App, name: &str, kind: Kind) -> Result<ServiceTarget, Response> {
    crate::proxy::service_named(app, name, kind, "search").map_err(|r| *r)
}

async fn search(State(app): State<Arc<App>>, req: Request) -> Response {
    let arrived = Instant::now();
    let settings = app.settings.get();
    let (_, body) = match read_body(req, settings.limits.json_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let r: SearchRequest = match serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_slice(&body),
    ) {
        Ok(r) => r,
        Err(e) => {
            return bad(format!(
                "{}: {} (search takes {{\"collection\", \"query\", \"limit\"?, \"filter\"?, \"with_payload\"?, \"score_threshold\"?, \"dense\"?, \"sparse\"?, \"prefetch_limit\"?, \"mode\"?}})",
                e.path(),
                e.inner()
            ));
        }
    };
    if let Err(e) = validate_identifier(&r.collection) {
        return bad(format!("collection: {e}"));
    }
    if !(1..=1000).contains(&r.limit) {
        return bad(format!("limit: {} is out of range (1 to 1000)", r.limit));
    }
    if let Some(f) = &r.filter
        && !f.is_object()
    {
        return bad("filter: must be a Qdrant filter object, e.g. {\"must\": [{\"key\": \"lang\", \"match\": {\"value\": \"en\"}}]}".into());
    }
    if let Some(s) = &r.sparse
        && s.indices.len() != s.values.len()
    {
        return bad("sparse: indices and values must have the same length".into());
    }
    let mode = r.mode.as_deref().unwrap_or("hybrid");
    if !matches!(mode, "hybrid" | "dense" | "sparse") {
        return bad(format!(
            "mode: {mode:?} is not one of hybrid, dense, sparse"
        ));
    }
    let text = r.query.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if text.is_none() && r.dense.is_none() && r.sparse.is_none() {
        return bad("query: give the text to search for (or a dense / sparse vector)".into());
    }
    let s = &settings.search;
    let ServiceTarget {
        status: qst,
        base: qdrant,
        ..
    } = match service(&app, &s.vector_store_service, Kind::VectorStore) {
        Ok(x) => x,
        Err(resp) => return resp,
    };

    // Query vectors, in parallel.
    let want_dense = mode != "sparse" && r.dense.is_none();
    let want_sparse =
        mode != "dense" && r.sparse.is_none() && !matches!(s.sparse, SparseProvider::None);
    let embed_started = Instant::now();
    let dense_fut = async {
        match (want_dense, text) {
            (true, Some(t)) => dense_vector(&app, &s.embeddings_service, t).await.map(Some),
            (true, None) => Err(bad(
                "query: a dense search needs the text (or \"dense\")".into()
            )),
            _ => Ok(r.dense.clone()),
        }
    };
    let sparse_fut = async {
        match (want_sparse, text) {
            (true, Some(t)) => sparse_vector(&app, &s.sparse, t).await.map(Some),
            _ => Ok(r.sparse.clone()),
        }
    };
    let (dense, sparse) = tokio::join!(dense_fut, sparse_fut);
    let dense = match dense {
        Ok(d) => d.filter(|_| mode != "sparse"),
        Err(resp) => return resp,
    };
    let sparse = match sparse {
        Ok(v) => v.filter(|v| mode != "dense" && !v.indices.is_empty()),
        Err(resp) => return resp,
    };
    let embed_time = embed_started.elapsed();

    let prefetch_limit = r.prefetch_limit.unwrap_or(s.prefetch_limit).clamp(1, 1000);
    let mut q = match (&dense, &sparse) {
        (Some(d), Some(sp)) => json!({
            "prefetch": [
                {"query": {"indices": sp.indices, "values": sp.values}, "using": s.sparse_vector, "limit": prefetch_limit},
                {"query": d, "using": s.dense_vector, "limit": prefetch_limit},
            ],
            "query": {"fusion": "rrf"},
        }),
        (Some(d), None) => json!({"query": d, "using": s.dense_vector}),
        (None, Some(sp)) => json!({
            "query": {"indices": sp.indices, "values": sp.values},
            "using": s.sparse_vector,
        }),
        (None, None) => {
            return bad(format!(
                "mode {mode:?}: no query vector could be made for it"
            ));
        }
    };
    let fused = dense.is_some() && sparse.is_some();
    q["limit"] = json!(r.limit);
    q["with_payload"] = r.with_payload.clone().unwrap_or(json!(true));
    if let Some(f) = &r.filter {
        q["filter"] = f.clone();
    }
    if let Some(t) = r.score_threshold {
        q["score_threshold"] = json!(t);
    }
    let url = format!("{qdrant}/collections/{}/points/query", r.collection);
    let node = qst
        .node_name
        .clone()
        .unwrap_or_else(|| s.vector_store_service.clone());
    let routed = |resp: Response| with_routed(resp, "", &node);
    let search_started = Instant::now();
    let answer = match crate::proxy::client()
        .post(&url)
        .json(&q)
        .timeout(Duration::from_secs(30))
        .send()
        .await
    {
        Ok(a) => a,
        Err(e) => {
            return routed(unavailable(format!(
                "the vector store {} is unreachable at {qdrant}: {}",
                s.vector_store_service,
                crate::services::short_error(&e)
            )));
        }
    };
    let status = answer.status();
    let v: Value = answer.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = v["status"]["error"]
            .as_str()
            .unwrap_or("no message")
            .to_string();
        let (code, kind) = match status.as_u16() {
            404 => (StatusCode::NOT_FOUND, "collection_not_found"),
            400 | 422 => (StatusCode::BAD_REQUEST, "invalid_request"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
        };
        return routed(error(
            code,
            "invalid_request_error",
            kind,
            format!("Qdrant refused the search in {:?}: {msg}", r.collection),
        ));
    }
    let search_time = search_started.elapsed();
    let points = v["result"]["points"].clone();
    let mut resp = axum::Json(json!({
        "collection": r.collection,
        "mode": if fused { "hybrid" } else if dense.is_some() { "dense" } else { "sparse" },
        "fusion": if fused { Some("rrf") } else { None },
        "points": if points.is_array() { points } else { json!([]) },
        "timing_ms": {
            "embed": embed_time.as_secs_f64() * 1000.0,
            "search": search_time.as_secs_f64() * 1000.0,
            "total": arrived.elapsed().as_secs_f64() * 1000.0,
        },
    }))
    .into_response();
    let timing = format!(
        "embed;dur={:.3}, search;dur={:.3}",
        embed_time.as_secs_f64() * 1000.0,
        search_time.as_secs_f64() * 1000.0
    );
    if let Ok(h) = HeaderValue::from_str(&timing) {
        resp.headers_mut().insert("server-timing", h);
    }
    routed(resp)
}

/// The dense embedding of `text` from the embeddings service.
async fn dense_vector(app: &App, service_name: &str, text: &str) -> Result<Vec<f32>, Response> {
    let ServiceTarget { cfg, base, .. } = service(app, service_name, Kind::Embeddings)?;
    let (url, body) = match cfg.api() {
        Api::Tei => (
            format!("{base}/embed"),
            json!({"inputs": [text], "normalize": true, "truncate": true}),
        ),
        _ => (
            format!("{base}/v1/embeddings"),
            json!({"input": [text], "model": cfg.model}),
        ),
    };
    let v = call(&url, &body, service_name).await?;
    let vector = match cfg.api() {
        Api::Tei => v.get(0).cloned(),
        _ => v["data"].get(0).map(|d| d["embedding"].clone()),
    };
    vector
        .and_then(|x| serde_json::from_value::<Vec<f32>>(x).ok())
        .filter(|x| !x.is_empty())
        .ok_or_else(|| {
            unavailable(format!(
                "the embeddings service {service_name} answered without an embedding"
            ))
        })
}

/// The sparse vector of `text` from the configured provider.
async fn sparse_vector(
    app: &App,
    provider: &SparseProvider,
    text: &str,
) -> Result<SparseVector, Response> {
    let (url, what) = match provider {
        SparseProvider::None => {
            return Ok(SparseVector {
                indices: vec![],
                values: vec![],
            });
        }
        SparseProvider::Tei {
            service: Some(name),
            ..
        } => {
            let base = service(app, name, Kind::Embeddings)?.base;
            (format!("{base}/embed_sparse"), name.clone())
        }
        SparseProvider::Tei { url: Some(u), .. } => {
            let u = u.trim_end_matches('/');
            let url = if u.ends_with("/embed_sparse") {
                u.to_string()
            } else {
                format!("{u}/embed_sparse")
            };
            (url, u.to_string())
        }
        SparseProvider::Tei { .. } => {
            return Err(bad(
                "search.sparse in /api/settings names no service or url".into(),
            ));
        }
    };
    let v = call(&url, &json!({"inputs": [text]}), &what).await?;
    let mut indices = Vec::new();
    let mut values = Vec::new();
    for item in v.get(0).and_then(Value::as_array).into_iter().flatten() {
        if let (Some(i), Some(x)) = (item["index"].as_u64(), item["value"].as_f64()) {
            indices.push(i as u32);
            values.push(x as f32);
        }
    }
    Ok(SparseVector { indices, values })
}

async fn call(url: &str, body: &Value, what: &str) -> Result<Value, Response> {
    let resp = crate::proxy::client()
        .post(url)
        .json(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| {
            unavailable(format!(
                "{what} is unreachable at {url}: {}",
                crate::services::short_error(&e)
            ))
        })?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(unavailable(format!(
            "{what} answered {status} at {url}: {}",
            v["error"].as_str().unwrap_or("no message")
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_strict() {
        for ok in ["docs", "notes_2024", "A-b_c", "0"] {
            assert!(validate_identifier(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "a?x=1",
            "a%2F",
            "_x",
            "-x",
            "a.b",
            &"x".repeat(65),
            "ä",
        ] {
            assert!(validate_identifier(bad).is_err(), "{bad}");
        }
    }
}
