//! The application gateway: LLM passthrough (streaming, cancellation, every error path),
//! `/v1/models`, embeddings and rerank, hybrid search against the Qdrant double, `/api/endpoints`,
//! API keys, body limits, `Server-Timing` and `/metrics`.
//!
//! Upstreams are the fakes of `spark-fakes` on loopback, configured as services.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use reqwest::Method;
use serde_json::{Value, json};
use spark_fakes::{Fake, qdrant, synth, tei, tts, vllm};
use spark_testkit::{TestController, init, wait_until};

async fn put_service(ctl: &TestController, name: &str, body: Value) -> Value {
    let resp = ctl
        .admin(Method::PUT, &format!("/api/services/{name}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

async fn settings(ctl: &TestController, patch: Value) -> Value {
    let resp = ctl
        .admin(Method::PUT, "/api/settings")
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn fake_llm(name: &str, token_delay: Duration) -> vllm::Config {
    vllm::Config {
        model: format!("org/{name}"),
        served_model_names: vec![name.into()],
        token_delay,
        ..Default::default()
    }
}

/// Check an OpenAI-shaped error and return its message.
fn openai_error(body: &Value) -> String {
    let e = &body["error"];
    assert!(e["message"].is_string(), "{body}");
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("param").is_some(), "{body}");
    assert!(e.get("code").is_some(), "{body}");
    e["message"].as_str().unwrap().to_string()
}

/// The value of the sample `name{labels…}` in Prometheus exposition `text` (parsed by an
/// independent parser), or a panic showing the text.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> prometheus_parse::Value {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition text");
    scrape
        .samples
        .into_iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| s.value)
        .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
}

/// Read a streamed response as (arrival time, bytes) chunks.
async fn timed_chunks(mut resp: reqwest::Response) -> Vec<(Instant, Bytes)> {
    let mut out = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
        .await
        .expect("stream stalled")
        .expect("stream read")
    {
        out.push((Instant::now(), c));
    }
    out
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            b.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_is_relayed_chunk_by_chunk_and_cancellation_reaches_the_upstream() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_manual_discovery(dir.path()).await;
    let up = spark_fakes::spawn(Fake::Vllm(fake_llm("chat-a", Duration::from_millis(80))))
        .await
        .unwrap();
    let svc = put_service(&ctl, "second-llm", json!({"kind": "llm", "url": up.url()})).await;
    assert_eq!(svc["status"]["healthy"], true, "{svc}");
    assert_eq!(svc["status"]["models"], json!(["chat-a"]));

    // A 12-token stream takes about 1 s upstream; the first chunk must arrive long before that.
    let body = json!({"model": "chat-a", "stream": true, "max_tokens": 12,
        "messages": [{"role": "user", "content": "tell me about the sea"}]});
    let sent = Instant::now();
    let resp = ctl
        .client
        .post(ctl.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let timing = resp.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_string();
    for part in ["queue;dur=", "upstream;dur=", "ttfb;dur="] {
        assert!(
            timing.contains(part),
            "Server-Timing {timing:?} lacks {part}"
        );
    }
    let chunks = timed_chunks(resp).await;
    let first = chunks.first().unwrap().0 - sent;
    let last = chunks.last().unwrap().0 - sent;
    assert!(
        last >= Duration::from_millis(800),
        "the upstream takes ~1 s; the stream ended after {last:?}"
    );
    assert!(
        first + Duration::from_millis(500) < last,
        "first chunk after {first:?}, last after {last:?}: the relay buffered"
    );
    assert!(chunks.len() >= 6, "only {} chunks arrived", chunks.len());
    // Chunk boundaries intact: every event is a complete JSON chunk, in order, then [DONE];
    // the relayed text equals what the upstream gives directly.
    let text: String = chunks
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    let events = sse_data(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut content = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{e:?}: {err}"));
        assert_eq!(v["object"], "chat.completion.chunk");
        content.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    let direct = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", up.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut direct_content = String::new();
    for e in sse_data(&direct).iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        direct_content.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(content, direct_content);
    assert!(!content.is_empty());

    // Cancellation: a 400-token stream (~32 s), abandoned after its first chunk.
    let long = json!({"model": "chat-a", "stream": true, "max_tokens": 400,
        "messages": [{"role": "user", "content": "a long story"}]});
    let mut resp = ctl
        .client
        .post(ctl.url("/v1/chat/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap().unwrap();
    let running = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with("vllm:num_requests_running"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let metrics_url = format!("{}/metrics", up.url());
    let m = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(running(&m), 1.0, "the upstream should be generating");
    drop(resp);
    wait_until(
        Duration::from_secs(3),
        "the upstream to see the cancel",
        || {
            let url = metrics_url.clone();
            async move {
                let m = reqwest::get(&url).await.ok()?.text().await.ok()?;
                (running(&m) == 0.0).then_some(())
            }
        },
    )
    .await;
}

/// An upstream that sends two events of a stream and then breaks the connection.
fn breaking_upstream() -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/health", get(|| async { "" }))
        .route(
            "/v1/models",
            get(|| async {
                axum::Json(json!({"object": "list", "data": [{"id": "brittle", "object": "model"}]}))
            }),
        )
        .route(
            "/v1/chat/completions",
            post(|| async {
                let chunk = |c: &str| {
                    Ok::<_, std::io::Error>(Bytes::from(format!(
                        "data: {}\n\n",
                        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": c}}]})
                    )))
                };
                let s = futures_util::stream::iter(vec![chunk("one"), chunk(" two")]).chain(
                    futures_util::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        // Half an event, then the connection breaks.
                        Ok(Bytes::from_static(b"data: {\"obj"))
                    }),
                )
                .chain(futures_util::stream::once(async {
                    // Long enough for the half event to be flushed first.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(std::io::Error::other("engine died"))
                }));
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(s))
                    .unwrap()
            }),
        )
        .route(
            "/v1/completions",
            // Accepts the connection and closes it without an answer.
            post(|| async {
                let s = futures_util::stream::once(async {
                    Err::<Bytes, _>(std::io::Error::other("crash"))
                });
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from_stream(s))
                    .unwrap()
            }),
        )
}

use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_path_has_the_documented_shape() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_manual_discovery(dir.path()).await;
    let post = |path: &str, body: Value| ctl.client.post(ctl.url(path)).json(&body).send();

    // No model served at all: an unknown model is 404 listing (no) models.
    let resp = post(
        "/v1/chat/completions",
        json!({"model": "nope", "messages": []}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert!(openai_error(&v).contains("`nope` does not exist"), "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");

    // Not JSON: 400.
    let resp = ctl
        .client
        .post(ctl.url("/v1/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(openai_error(&v).contains("JSON"), "{v}");

    let up = spark_fakes::spawn(Fake::Vllm(fake_llm("chat-b", Duration::ZERO)))
        .await
        .unwrap();
    put_service(&ctl, "spare", json!({"kind": "llm", "url": up.url()})).await;
    let brittle = spark_fakes::spawn(Fake::Router {
        router: breaking_upstream(),
        bind_delay: Duration::ZERO,
    })
    .await
    .unwrap();
    put_service(
        &ctl,
        "brittle",
        json!({"kind": "llm", "url": brittle.url()}),
    )
    .await;

    // Unknown model with models served: 404 listing them.
    let resp = post("/v1/completions", json!({"model": "gpt-4", "prompt": "x"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    let msg = openai_error(&v);
    assert!(msg.contains("chat-b") && msg.contains("brittle"), "{msg}");
    let mut available: Vec<String> =
        serde_json::from_value(v["error"]["available"].clone()).unwrap();
    available.sort();
    assert_eq!(available, ["brittle", "chat-b"]);

    // The upstream's own errors pass through with their status and body.
    let resp = post(
        "/v1/chat/completions",
        json!({"model": "chat-b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    openai_error(&resp.json().await.unwrap());

    // A failure mid-stream: the events so far, the half event completed, an error event, [DONE].
    let resp = post(
        "/v1/chat/completions",
        json!({"model": "brittle", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let events = sse_data(&text);
    assert_eq!(events.len(), 5, "{text:?}");
    assert!(events[0].contains("\"one\"") && events[1].contains("\" two\""));
    assert_eq!(events[2], "{\"obj", "the half event stands alone");
    let err: Value = serde_json::from_str(&events[3]).unwrap();
    let msg = openai_error(&err);
    assert!(
        msg.contains("`brittle`") && msg.contains("mid-stream"),
        "{msg}"
    );
    assert_eq!(events[4], "[DONE]");

    // A non-streaming answer that breaks before its first byte: 502.
    let resp = post(
        "/v1/completions",
        json!({"model": "brittle", "prompt": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 502);
    let msg = openai_error(&resp.json().await.unwrap());
    assert!(msg.contains("`brittle`"), "{msg}");

    // Upstream down: 502 naming the model, the node and the address.
    let addr = up.url();
    up.stop().await.unwrap();
    let resp = post(
        "/v1/chat/completions",
        json!({"model": "chat-b", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    let msg = openai_error(&v);
    assert!(
        msg.contains("`chat-b`") && msg.contains("spare") && msg.contains(&addr),
        "{msg}"
    );
    assert!(msg.contains("unreachable"), "{msg}");
    assert_eq!(v["error"]["code"], "upstream_unreachable");

    // No model named and several served: 400 naming them.
    let resp = post("/v1/completions", json!({"prompt": "x"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Body limits: 413 naming the limit, with and without a Content-Length.
    settings(
        &ctl,
        json!({"limits": {"llm_json_bytes": 2048, "json_bytes": 1024}}),
    )
    .await;
    let big = json!({"model": "brittle", "prompt": "x".repeat(4000)});
    let resp = post("/v1/completions", big.clone()).await.unwrap();
    assert_eq!(resp.status(), 413);
    let msg = openai_error(&resp.json().await.unwrap());
    assert!(msg.contains("2048 bytes"), "{msg}");
    let chunked = Body::from_stream(futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
        Bytes::from(big.to_string()),
    )]));
    let resp = ctl
        .client
        .post(ctl.url("/v1/embeddings"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(
            http_body_util::BodyDataStream::new(chunked),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let msg = openai_error(&resp.json().await.unwrap());
    assert!(msg.contains("1024 bytes"), "{msg}");

    // A bad setting is refused naming the field, and nothing changes.
    let resp = ctl
        .admin(Method::PUT, "/api/settings")
        .json(&json!({"limits": {"json_bytes": "lots"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.json_bytes"),
        "{v}"
    );
    let (_, s) = ctl.get_json("/api/settings").await;
    assert_eq!(s["limits"]["json_bytes"], 1024);
}

/// Records every request body that reaches a router.
fn recording(router: axum::Router, log: Arc<Mutex<Vec<(String, Value)>>>) -> axum::Router {
    router.layer(middleware::from_fn(move |req: Request, next: Next| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            log.lock().unwrap().push((parts.uri.path().to_string(), v));
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }))
}

/// JSON equality, with numbers equal to 6 significant digits (f32 vectors cross JSON twice).
fn approx_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| approx_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| approx_eq(v, w)))
        }
        _ => a == b,
    }
}

const DOCS: &[(u64, &str, &str)] = &[
    (1, "the red fox jumps over the lazy dog", "en"),
    (2, "a quick brown fox and a sleepy hound", "en"),
    (3, "der schnelle braune fuchs", "de"),
    (4, "stock markets fell sharply on tuesday", "en"),
    (5, "fox news about the markets", "en"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_rerank_and_hybrid_search_reach_their_services() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_manual_discovery(dir.path()).await;
    let tei_cfg = tei::Config {
        dim: 64,
        ..Default::default()
    };
    let tei = spark_fakes::spawn(Fake::Tei(tei_cfg)).await.unwrap();
    let qlog = Arc::new(Mutex::new(Vec::new()));
    let qdrant = spark_fakes::spawn(Fake::Router {
        router: recording(qdrant::router(qdrant::Config::default()), qlog.clone()),
        bind_delay: Duration::ZERO,
    })
    .await
    .unwrap();
    put_service(
        &ctl,
        "embeddings",
        json!({"kind": "embeddings", "url": tei.url()}),
    )
    .await;
    put_service(
        &ctl,
        "qdrant",
        json!({"kind": "vector_store", "url": qdrant.url()}),
    )
    .await;

    // Embeddings: the same answer as TEI's own OpenAI route.
    let req = json!({"model": "BAAI/bge-m3", "input": ["hello world", "second"]});
    let via: Value = ctl
        .client
        .post(ctl.url("/v1/embeddings"))
        .json(&req)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let direct: Value = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", tei.url()))
        .json(&req)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(via["data"], direct["data"]);
    assert_eq!(via["data"].as_array().unwrap().len(), 2);

    // Rerank, translated to TEI and back: sorted scores equal to TEI's, top_n, documents.
    let docs: Vec<&str> = DOCS.iter().map(|d| d.1).collect();
    let resp = ctl
        .client
        .post(ctl.url("/v1/rerank"))
        .json(&json!({"query": "fox", "documents": docs, "top_n": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rr: Value = resp.json().await.unwrap();
    let tei_scores: Vec<Value> = reqwest::Client::new()
        .post(format!("{}/rerank", tei.url()))
        .json(&json!({"query": "fox", "texts": docs}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let results = rr["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (r, t) in results.iter().zip(&tei_scores) {
        assert_eq!(r["index"], t["index"]);
        assert!(
            (r["relevance_score"].as_f64().unwrap() - t["score"].as_f64().unwrap()).abs() < 1e-6
        );
        assert_eq!(
            r["document"]["text"],
            docs[r["index"].as_u64().unwrap() as usize]
        );
    }
    // A malformed rerank: 400 saying the shape.
    let resp = ctl
        .client
        .post(ctl.url("/v1/rerank"))
        .json(&json!({"query": "fox"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(openai_error(&resp.json().await.unwrap()).contains("documents"));

    // A collection with dense + sparse vectors, filled through Qdrant's own API.
    let q = reqwest::Client::new();
    let r = q
        .put(format!("{}/collections/notes", qdrant.url()))
        .json(
            &json!({"vectors": {"dense": {"size": 64, "distance": "Cosine"}},
            "sparse_vectors": {"sparse": {"modifier": "idf"}}}),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let points: Vec<Value> = DOCS
        .iter()
        .map(|(id, text, lang)| {
            let sp = synth::sparse_embedding(text);
            json!({"id": id, "vector": {
                "dense": synth::dense_embedding(text, 64),
                "sparse": {"indices": sp.iter().map(|x| x.0).collect::<Vec<_>>(),
                           "values": sp.iter().map(|x| x.1).collect::<Vec<_>>()}},
                "payload": {"text": text, "lang": lang}})
        })
        .collect();
    let r = q
        .put(format!(
            "{}/collections/notes/points?wait=true",
            qdrant.url()
        ))
        .json(&json!({"points": points}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    qlog.lock().unwrap().clear();

    let filter = json!({"must": [{"key": "lang", "match": {"value": "en"}}]});
    let resp = ctl
        .client
        .post(ctl.url("/api/search"))
        .json(&json!({"collection": "notes", "query": "fox markets", "limit": 3, "filter": filter}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let found: Value = resp.json().await.unwrap();
    assert_eq!(found["mode"], "hybrid", "{found}");
    // What reached Qdrant is its query API: a sparse and a dense prefetch fused by RRF.
    let sent = qlog.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, "/collections/notes/points/query");
    let body = &sent[0].1;
    let sp = synth::sparse_embedding("fox markets");
    let expected = json!({
        "prefetch": [
            {"query": {"indices": sp.iter().map(|x| x.0).collect::<Vec<_>>(),
                       "values": sp.iter().map(|x| x.1).collect::<Vec<_>>()},
             "using": "sparse", "limit": 20},
            {"query": synth::dense_embedding("fox markets", 64), "using": "dense", "limit": 20},
        ],
        "query": {"fusion": "rrf"},
        "limit": 3,
        "with_payload": true,
        "filter": filter,
    });
    assert!(
        approx_eq(body, &expected),
        "sent {body}\nexpected {expected}"
    );
    // The same query sent straight to Qdrant gives the same points.
    let direct: Value = q
        .post(format!("{}/collections/notes/points/query", qdrant.url()))
        .json(&expected)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["points"], direct["result"]["points"]);
    let ids: Vec<u64> = found["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert!(
        !ids.is_empty() && !ids.contains(&3),
        "the filter excludes German: {ids:?}"
    );

    // Sparse provider switched off: dense only.
    settings(&ctl, json!({"search": {"sparse": {"kind": "none"}}})).await;
    let found: Value = ctl
        .client
        .post(ctl.url("/api/search"))
        .json(&json!({"collection": "notes", "query": "fox"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["mode"], "dense", "{found}");
    assert_eq!(qlog.lock().unwrap().last().unwrap().1["using"], "dense");

    // Injection attempts in the collection name never reach Qdrant.
    let before = qlog.lock().unwrap().len();
    for evil in [
        "notes/points/delete",
        "../collections",
        "notes?wait=true",
        "notes%2Fpoints",
        "notes points",
        "",
    ] {
        let resp = ctl
            .client
            .post(ctl.url("/api/search"))
            .json(&json!({"collection": evil, "query": "fox"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{evil}");
        let msg = openai_error(&resp.json().await.unwrap());
        assert!(msg.starts_with("collection:"), "{msg}");
    }
    assert_eq!(qlog.lock().unwrap().len(), before);
    // A missing collection: 404 from Qdrant's words. A bad filter: 400 passed through.
    let resp = ctl
        .client
        .post(ctl.url("/api/search"))
        .json(&json!({"collection": "absent", "query": "fox"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = ctl
        .client
        .post(ctl.url("/api/search"))
        .json(&json!({"collection": "notes", "query": "fox", "filter": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(openai_error(&resp.json().await.unwrap()).starts_with("filter:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_endpoints_list_every_service() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_manual_discovery(dir.path()).await;
    // Fresh install: the default services are configured (on node #2) but nothing answers.
    let (_, eps) = ctl.get_json("/api/endpoints").await;
    assert_eq!(eps["llm"]["ready"], false, "{eps}");
    assert_eq!(eps["stt"]["configured"], true);
    assert_eq!(eps["stt"]["ready"], false);
    let (_, models) = ctl.get_json("/v1/models").await;
    assert_eq!(models, json!({"object": "list", "data": []}));

    let llm = spark_fakes::spawn(Fake::Vllm(fake_llm("big-model", Duration::ZERO)))
        .await
        .unwrap();
    let tei = spark_fakes::spawn(Fake::Tei(tei::Config::default()))
        .await
        .unwrap();
    let kokoro = spark_fakes::spawn(Fake::Kokoro(tts::KokoroConfig::default()))
        .await
        .unwrap();
    let asr = spark_fakes::spawn(Fake::Asr(Default::default()))
        .await
        .unwrap();
    let qd = spark_fakes::spawn(Fake::Qdrant(Default::default()))
        .await
        .unwrap();
    put_service(&ctl, "llm2", json!({"kind": "llm", "url": llm.url()})).await;
    put_service(
        &ctl,
        "embeddings",
        json!({"kind": "embeddings", "url": tei.url()}),
    )
    .await;
    put_service(&ctl, "tts", json!({"kind": "tts", "url": kokoro.url()})).await;
    put_service(
        &ctl,
        "asr",
        json!({"kind": "asr", "url": asr.url(), "model": "nvidia/parakeet-tdt-0.6b-v3"}),
    )
    .await;
    put_service(
        &ctl,
        "qdrant",
        json!({"kind": "vector_store", "url": qd.url()}),
    )
    .await;

    let (status, models) = ctl.get_json("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    let data = models["data"].as_array().unwrap();
    let kind_of = |id: &str| {
        data.iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing from {models}"))["kind"]
            .clone()
    };
    assert_eq!(kind_of("big-model"), "llm");
    assert_eq!(kind_of("BAAI/bge-m3"), "embeddings");
    assert_eq!(kind_of("nvidia/parakeet-tdt-0.6b-v3"), "asr");
    assert_eq!(kind_of("af_heart"), "tts_voice");
    for m in data {
        assert_eq!(m["object"], "model");
        assert!(m["created"].is_i64() && m["owned_by"].is_string(), "{m}");
    }

    let (_, eps) = ctl.get_json("/api/endpoints").await;
    let base = format!("http://{}", ctl.http);
    assert_eq!(eps["base_url"], base);
    assert_eq!(eps["llm"]["base_url"], format!("{base}/v1"));
    assert_eq!(eps["llm"]["ready"], true);
    assert_eq!(eps["llm"]["model"], "big-model");
    assert_eq!(eps["embeddings"]["model"], "BAAI/bge-m3");
    assert_eq!(eps["embeddings"]["ready"], true);
    assert_eq!(eps["stt"]["ready"], true);
    assert_eq!(eps["tts"]["ready"], true);
    assert!(eps["tts"]["voices"].as_array().unwrap().len() > 1);
    assert_eq!(eps["search"]["ready"], true);
    assert_eq!(eps["search"]["url"], format!("{base}/api/search"));

    // A service that goes away shows as not ready once discovery runs again.
    asr.stop().await.unwrap();
    let (_, svc) = ctl.get_json("/api/services/asr").await;
    assert_eq!(svc["status"]["healthy"], false);
    assert!(
        svc["status"]["error"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
    let (_, eps) = ctl.get_json("/api/endpoints").await;
    assert_eq!(eps["stt"]["ready"], false);

    // Services can be removed; a bad one is refused naming the field.
    let resp = ctl
        .admin(Method::DELETE, "/api/services/asr")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = ctl
        .admin(Method::PUT, "/api/services/x")
        .json(&json!({"kind": "tts", "url": "ftp://nowhere"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().starts_with("url:"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_allow_refuse_and_limit_endpoints() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_manual_discovery(dir.path()).await;
    let llm = spark_fakes::spawn(Fake::Vllm(fake_llm("keyed", Duration::ZERO)))
        .await
        .unwrap();
    let tei = spark_fakes::spawn(Fake::Tei(tei::Config::default()))
        .await
        .unwrap();
    put_service(&ctl, "llm2", json!({"kind": "llm", "url": llm.url()})).await;
    put_service(
        &ctl,
        "embeddings",
        json!({"kind": "embeddings", "url": tei.url()}),
    )
    .await;
    let chat =
        json!({"model": "keyed", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let embed = json!({"input": "hi"});
    let call = |path: &'static str, body: Value, key: Option<String>| {
        let mut rb = ctl.client.post(ctl.url(path)).json(&body);
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        async move {
            let r = rb.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Off by default: open.
    assert_eq!(
        call("/v1/chat/completions", chat.clone(), None).await.0,
        200
    );

    // Keys are made by the admin only, shown once.
    let resp = ctl
        .client
        .post(ctl.url("/api/keys"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let make = |name: &str, endpoints: Value| {
        ctl.admin(Method::POST, "/api/keys")
            .json(&json!({"name": name, "endpoints": endpoints}))
            .send()
    };
    let full: Value = make("recapper", json!([]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let full_key = full["key"].as_str().unwrap().to_string();
    assert!(full_key.starts_with("sk-spark-"));
    let limited: Value = make("embedder", json!(["/v1/embeddings"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let limited_key = limited["key"].as_str().unwrap().to_string();
    let resp = make("bad", json!(["/api/nodes"])).await.unwrap();
    assert_eq!(resp.status(), 400);
    let (_, listed) = ctl.get_json("/api/keys").await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains(&full_key),
        "a key is never listed"
    );

    settings(&ctl, json!({"api_keys_required": true})).await;
    let (s, v) = call("/v1/chat/completions", chat.clone(), None).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "missing_api_key");
    openai_error(&v);
    let (s, v) = call(
        "/v1/chat/completions",
        chat.clone(),
        Some("sk-spark-wrong".into()),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(openai_error(&v).contains("Incorrect API key"));
    // GET routes of applications are guarded too, except for the dashboard's own reads.
    let r = ctl.client.get(ctl.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = ctl
        .client
        .get(ctl.url("/api/endpoints"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = ctl
        .client
        .get(ctl.url("/api/endpoints"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    assert_eq!(
        call("/v1/chat/completions", chat.clone(), Some(full_key.clone()))
            .await
            .0,
        200
    );
    assert_eq!(
        call("/v1/embeddings", embed.clone(), Some(full_key.clone()))
            .await
            .0,
        200
    );
    assert_eq!(
        call("/v1/embeddings", embed.clone(), Some(limited_key.clone()))
            .await
            .0,
        200
    );
    let (s, v) = call(
        "/v1/chat/completions",
        chat.clone(),
        Some(limited_key.clone()),
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(v["error"]["code"], "endpoint_not_allowed");
    assert!(openai_error(&v).contains("/v1/embeddings"));
    // The admin token works everywhere.
    assert_eq!(
        call(
            "/v1/chat/completions",
            chat.clone(),
            Some(ctl.admin_token.clone())
        )
        .await
        .0,
        200
    );

    // Revoked: refused at once.
    let id = full["id"].as_str().unwrap();
    let r = ctl
        .admin(Method::DELETE, &format!("/api/keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        call("/v1/chat/completions", chat.clone(), Some(full_key.clone()))
            .await
            .0,
        401
    );

    // The requirement survives a restart, and so do the keys.
    let mut ctl = ctl;
    let data = ctl.data_dir.clone();
    ctl.stop().await;
    let ctl = TestController::start_manual_discovery(&data).await;
    put_service(
        &ctl,
        "embeddings",
        json!({"kind": "embeddings", "url": tei.url()}),
    )
    .await;
    let r = ctl
        .client
        .post(ctl.url("/v1/embeddings"))
        .json(&embed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = ctl
        .client
        .post(ctl.url("/v1/embeddings"))
        .bearer_auth(&limited_key)
        .json(&embed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_requests() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_manual_discovery(dir.path()).await;
    let token = ctl.token().await;
    let agent =
        spark_testkit::TestAgent::join_and_run(&token, &dir.path().join("a1"), "box-1").await;
    let llm = spark_fakes::spawn(Fake::Vllm(fake_llm("counted", Duration::ZERO)))
        .await
        .unwrap();
    put_service(&ctl, "llm2", json!({"kind": "llm", "url": llm.url()})).await;
    let chat = json!({"model": "counted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    for _ in 0..7 {
        let r = ctl
            .client
            .post(ctl.url("/v1/chat/completions"))
            .json(&chat)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    for _ in 0..2 {
        let r = ctl
            .client
            .post(ctl.url("/v1/chat/completions"))
            .json(&json!({"model": "missing", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    // Telemetry arrives every second.
    wait_until(Duration::from_secs(5), "node gauges", || async {
        let text = ctl
            .client
            .get(ctl.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("spark_node_memory_total_bytes{node=\"box-1\"}")
            .then_some(())
    })
    .await;

    let resp = ctl.client.get(ctl.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text().await.unwrap();
    let ok = [
        ("route", "/v1/chat/completions"),
        ("model", "counted"),
        ("node", "llm2"),
        ("status", "200"),
    ];
    assert_eq!(
        metric(&text, "spark_gateway_requests_total", &ok),
        prometheus_parse::Value::Counter(7.0)
    );
    assert_eq!(
        metric(
            &text,
            "spark_gateway_requests_total",
            &[
                ("route", "/v1/chat/completions"),
                ("status", "404"),
                ("model", "")
            ]
        ),
        prometheus_parse::Value::Counter(2.0)
    );
    match metric(&text, "spark_gateway_request_duration_seconds", &ok) {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
            assert_eq!(inf.count, 7.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
    // Time to first byte, labelled by the gateway route the request came in on.
    let first_byte = [
        ("route", "/v1/chat/completions"),
        ("model", "counted"),
        ("node", "llm2"),
    ];
    match metric(
        &text,
        "spark_gateway_upstream_first_byte_seconds",
        &first_byte,
    ) {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
            assert_eq!(inf.count, 7.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert_eq!(
        metric(&text, "spark_node_up", &[("node", "box-1")]),
        prometheus_parse::Value::Gauge(1.0)
    );
    assert_eq!(
        metric(&text, "spark_model_loaded", &[("model", "counted")]),
        prometheus_parse::Value::Gauge(1.0)
    );
    // Every line is a comment or a sample with a numeric value.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad sample line {line:?}"
        );
    }
    // GPU gauges from a GB10-like box (unified memory), sent over a raw agent link.
    let identity = ctl.enroll(&dir.path().join("gb10"), "gb10-box").await;
    let mut ws = ctl.raw_link(&identity).await.unwrap();
    let hello = spark_common::proto::Hello {
        proto_major: spark_common::proto::PROTO_MAJOR,
        proto_minor: spark_common::proto::PROTO_MINOR,
        software_version: "test".into(),
        features: vec!["telemetry".into()],
    };
    spark_testkit::raw_handshake(&mut ws, &hello).await;
    let telemetry = spark_common::telemetry::Telemetry {
        host: spark_agent::host::HostSampler::new().sample(),
        gpu: spark_common::telemetry::GpuReport {
            unavailable: None,
            driver_version: Some("580.95".into()),
            cuda_version: Some("13.0".into()),
            devices: vec![spark_common::telemetry::GpuDevice {
                index: 0,
                name: "NVIDIA GB10".into(),
                uuid: "GPU-0".into(),
                utilization_pct: Some(87),
                temperature_c: Some(64),
                power_watts: Some(41.5),
                power_limit_watts: None,
                memory: spark_common::telemetry::GpuMemory {
                    total_bytes: 128 << 30,
                    used_bytes: 100 << 30,
                    unified: true,
                    gpu_attributed_bytes: 90 << 30,
                },
                processes: vec![],
            }],
        },
        nics: vec![],
        store: vec![],
        docker: spark_common::telemetry::DockerStatus {
            available: false,
            version: None,
            message: Some("no docker".into()),
        },
    };
    {
        use futures_util::SinkExt;
        let msg = spark_common::proto::AgentMsg::Telemetry(Box::new(telemetry));
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(
            spark_common::proto::encode(&msg).into(),
        ))
        .await
        .unwrap();
    }
    let text = wait_until(Duration::from_secs(5), "GPU gauges", || async {
        let text = ctl
            .client
            .get(ctl.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("spark_gpu_utilization_percent{")
            .then_some(text)
    })
    .await;
    let gpu = [("node", "gb10-box"), ("gpu", "0")];
    assert_eq!(
        metric(
            &text,
            "spark_gpu_utilization_percent",
            &[("node", "gb10-box"), ("name", "NVIDIA GB10")]
        ),
        prometheus_parse::Value::Gauge(87.0)
    );
    assert_eq!(
        metric(&text, "spark_gpu_temperature_celsius", &gpu),
        prometheus_parse::Value::Gauge(64.0)
    );
    assert_eq!(
        metric(&text, "spark_gpu_power_watts", &gpu),
        prometheus_parse::Value::Gauge(41.5)
    );
    assert_eq!(
        metric(
            &text,
            "spark_gpu_memory_total_bytes",
            &[("node", "gb10-box"), ("unified", "true")]
        ),
        prometheus_parse::Value::Gauge((128u64 << 30) as f64)
    );
    agent.stop().await;
}
