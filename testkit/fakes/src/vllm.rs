//! A fake vLLM OpenAI-compatible server (upstream-apis.md §1).
//!
//! Follows: the health life cycle (port not bound while "loading" — see [`crate::spawn`] and
//! [`Config::load_delay`] — then `GET /health` 200 with an empty body, then 503 with an empty
//! body once the engine is dead), `GET /ping`, `/version`, `/load`, `GET /v1/models` in vLLM's
//! shape, `POST /v1/chat/completions` and `/v1/completions` (non-streaming, and SSE streaming with
//! the role chunk, `finish_reason` on the last content chunk, the usage-only chunk when
//! `stream_options.include_usage`, `data: [DONE]`, and mid-stream errors as
//! `data: {"error":{..}}` followed by `[DONE]`), the current error shape
//! `{"error":{"message","type","param","code"}}` with HTTP status == code, `--api-key` guarding
//! `/v1/*` only (401 `{"error":"Unauthorized"}`), and in [`Mode::Embed`] `POST /v1/embeddings`
//! and `/rerank`, `/v1/rerank`, `/v2/rerank`. `/metrics` serves Prometheus text with
//! `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`,
//! `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`,
//! `vllm:request_success_total{finished_reason}` and the e2e / time-to-first-token histograms,
//! tracked for real.
//!
//! Simplified: the "model" echoes the last user message (chat) or the prompt (completions) word
//! by word; one word is one token. Without `max_tokens` (chat) it echoes the words once and
//! finishes with `stop`; with `max_tokens` N (completions default 16, as in vLLM) it emits exactly
//! N words, cycling through the prompt, and finishes with `length`. Prompt tokens are the
//! whitespace-separated words of all messages (no chat template). `n`, `stop`, sampling
//! parameters, logprobs, tools and reasoning are ignored (`reasoning` is always null); there is
//! no queue (`num_requests_waiting` is 0). Embeddings are [`crate::synth::dense_embedding`],
//! rerank scores [`crate::synth::overlap_score`]; `encoding_format: base64` is not supported.
//! When the engine is dead every `/v1/*` route answers 500 (real vLLM may also exit).
//!
//! Test controls (not in vLLM): `POST /fake/kill-engine`, `POST /fake/revive`,
//! `POST /fake/stream-failure {"after_tokens": N|null}`, and `GET /fake/requests` (the bodies of
//! the last 64 inference requests, newest last).
//!
//! # Command line (`spark-fake vllm`, [`ServeArgs`])
//!
//! Takes real `vllm serve MODEL [flags]` command lines: `--flag value` and `--flag=value`,
//! underscores in flag names (`--max_model_len`) and `-tp`/`-pp`/`-dp`, as vLLM's
//! `FlexibleArgumentParser` does ([`normalize_serve_args`]); a repeated flag's last value wins.
//! An unknown flag or a bad value is clap's error: message on stderr, exit code 2.
//!
//! * Served model: `MODEL` / `--model`, `--served-model-name A [B..]`, `--max-model-len`
//!   (N, `32k` = 32000, `32K` = 32768, `auto` / `-1` = 32768; [`human_readable_int`]),
//!   `--api-key`; `--host`, `--port` (spark-fake's global flags).
//! * Parallelism: `--tensor-parallel-size`/`-tp`, `--pipeline-parallel-size`/`-pp`,
//!   `--data-parallel-size`/`-dp` (all >= 1), `--distributed-executor-backend
//!   ray|mp|uni|external_launcher`, `--nnodes N`, `--node-rank R`, `--master-addr A`,
//!   `--master-port P`, `--headless`, `--[no-]enable-expert-parallel`.
//! * Memory and scheduling: `--gpu-memory-utilization F` (0 < F <= 1),
//!   `--max-num-batched-tokens N`, `--max-num-seqs N`, `--max-num-partial-prefills N`,
//!   `--kv-cache-dtype` ([`KV_CACHE_DTYPES`]), `--block-size`, `--swap-space GIB`,
//!   `--[no-]enable-prefix-caching`, `--[no-]enable-chunked-prefill`, `--[no-]async-scheduling`,
//!   `--[no-]enforce-eager`.
//! * Weights: `--load-format` ([`LOAD_FORMATS`]), `--[no-]trust-remote-code`, `--dtype`
//!   ([`DTYPES`]), `--quantization`/`-q` (any name), `--revision`, `--tokenizer`,
//!   `--download-dir`, `--seed`, `--attention-backend`, `--moe-backend`, `--speculative-config
//!   JSON`, `--compilation-config`/`-O`.
//! * Front end: `--[no-]enable-auto-tool-choice`, `--tool-call-parser`, `--reasoning-parser`,
//!   `--chat-template`, `--limit-mm-per-prompt JSON` (an object), `--mm-encoder-tp-mode
//!   weights|data`, `--[no-]enable-log-requests`, `--disable-log-requests`.
//! * Model kind: `--task` ([`TASKS`]), `--runner` ([`RUNNERS`]), `--convert` ([`CONVERTS`]);
//!   `--runner pooling`, `--task embed|embedding|classify|score|reward` and
//!   `--convert embed|classify|reward` serve a pooling model ([`Mode::Embed`]).
//!
//! Only the served model, `--max-model-len`, `--api-key` and the model kind change what the
//! server does; the other flags are validated and logged. After parsing, [`ServeArgs::validate`]
//! makes vLLM's simple cross-checks (`--node-rank` < `--nnodes`, world size divisible by
//! `--nnodes`, `--enable-auto-tool-choice` needs `--tool-call-parser`) and the fake's rule that
//! `--headless` is a multi-node worker (`--nnodes` > 1, `--node-rank` >= 1); a failure is
//! reported like a parse error (exit code 2).
//!
//! As a process it logs vLLM-like lines (`INFO MM-DD HH:MM:SS [file.py:N] ...`): the version,
//! `argv: [..]` (the whole command line as a JSON array), `environment: NAME=VALUE` for
//! `VLLM_HOST_IP`, `NCCL_SOCKET_IFNAME`, `NCCL_IB_HCA` and `GLOO_SOCKET_IFNAME` when set,
//! `Starting vLLM engine for MODEL (tp=T, nnodes=N, rank=R, pp=P, backend=B)`, an
//! `Engine config: ..` line with the effective settings, `Loading weights took S seconds`,
//! then, right before binding, `Starting vLLM API server on http://HOST:PORT`, and
//! `listening on ADDR` (on stdout) once bound. The log lines go to stderr unless
//! `VLLM_LOGGING_STREAM=ext://sys.stdout` (vLLM's own variable; real vLLM defaults to stdout,
//! the fake to stderr so that stdout's first line stays `listening on ADDR`). A `--headless`
//! worker logs `headless worker rank R of N, master ADDR:PORT`, never binds a port and runs
//! until SIGTERM/SIGINT (exit 0). SIGTERM/SIGINT end every phase promptly (exit 0).
//!
//! Test controls on the command line (not in vLLM): `--check-args` (parse and validate only,
//! print `arguments ok`, exit 0, bind nothing), `--load-delay-ms N` (loading time; the port is
//! not bound meanwhile), `--exit-during-load-ms N` with `--exit-code C` (default 1: loading
//! fails after N ms, whatever `--load-delay-ms` says, with vLLM's CUDA out-of-memory and
//! `RuntimeError: Engine core initialization failed. See root cause above.` lines on stderr, and
//! exit C; the port is never bound; also for `--headless`), `--token-delay-ms`, `--die-after-ms`,
//! `--die-after-requests`, `--fail-after-tokens`, `--embedding`, `--embedding-dim`,
//! `--vllm-version`.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::synth;
use crate::util::{empty, json as json_resp, now_secs, text};

/// What the served model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A generative model: chat and completions.
    #[default]
    Generate,
    /// A pooling model (`--task embed` / `--runner pooling`): embeddings and rerank.
    Embed,
}

/// Configuration of the fake vLLM server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The model path or HF id (`vllm serve <model>`), reported as `root`.
    pub model: String,
    /// `--served-model-name` values; empty means the model itself is the only name.
    pub served_model_names: Vec<String>,
    /// `--max-model-len`: prompt + completion tokens must fit.
    pub max_model_len: u32,
    /// Time from start until the port is bound (vLLM loads before binding).
    pub load_delay: Duration,
    /// Delay before each generated token (streaming and non-streaming).
    pub token_delay: Duration,
    /// The engine dies this long after the port was bound.
    pub die_after: Option<Duration>,
    /// The engine serves this many inference requests; the next one crashes it (that request
    /// gets a 500, and `/health` answers 503 from then on).
    pub die_after_requests: Option<u64>,
    /// Every generation fails after this many tokens (mid-stream error when streaming, 500
    /// otherwise). Also settable at run time with `POST /fake/stream-failure`.
    pub fail_after_tokens: Option<u32>,
    /// Generative or pooling model.
    pub mode: Mode,
    /// Embedding dimension in [`Mode::Embed`].
    pub embedding_dim: usize,
    /// `--api-key`: required as `Authorization: Bearer KEY` on `/v1/*`.
    pub api_key: Option<String>,
    /// Reported by `GET /version`.
    pub version: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: "fake-org/fake-model".into(),
            served_model_names: Vec::new(),
            max_model_len: 32_768,
            load_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            die_after: None,
            die_after_requests: None,
            fail_after_tokens: None,
            mode: Mode::Generate,
            embedding_dim: 1024,
            api_key: None,
            version: "0.11.0".into(),
        }
    }
}

impl Config {
    /// The ids listed by `/v1/models`.
    pub fn names(&self) -> Vec<String> {
        if self.served_model_names.is_empty() {
            vec![self.model.clone()]
        } else {
            self.served_model_names.clone()
        }
    }
}

const HIST_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const LOG_LEN: usize = 64;

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; HIST_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (bound, count) in HIST_BUCKETS.iter().zip(self.counts.iter_mut()) {
            if v <= *bound {
                *count += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Metrics {
    running: u64,
    prompt_tokens: u64,
    generation_tokens: u64,
    success: BTreeMap<&'static str, u64>,
    e2e: Histogram,
    ttft: Histogram,
}

struct Inner {
    cfg: Config,
    names: Vec<String>,
    ready_at: Instant,
    killed: AtomicBool,
    admitted: AtomicU64,
    seq: AtomicU64,
    fail_after_tokens: Mutex<Option<u32>>,
    metrics: Mutex<Metrics>,
    log: Mutex<VecDeque<Value>>,
}

type Shared = Arc<Inner>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn dead(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
            || self
                .cfg
                .die_after
                .is_some_and(|d| Instant::now().saturating_duration_since(self.ready_at) >= d)
    }

    fn next_id(&self, prefix: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        format!("{prefix}-{n:032x}")
    }

    /// Admits an inference request: fails if the engine is dead (or this request kills it),
    /// counts it, logs the body.
    fn admit(&self, path: &str, body: &Value) -> Result<(), Response> {
        if self.dead() {
            return Err(engine_dead());
        }
        let n = self.admitted.fetch_add(1, Ordering::SeqCst) + 1;
        if self.cfg.die_after_requests.is_some_and(|limit| n > limit) {
            // The request after the last good one crashes the engine.
            self.killed.store(true, Ordering::SeqCst);
            return Err(engine_dead());
        }
        let mut log = lock(&self.log);
        if log.len() == LOG_LEN {
            log.pop_front();
        }
        log.push_back(json!({"path": path, "body": body}));
        Ok(())
    }

    /// What every OpenAI route does first, as vLLM does: parse the JSON object, resolve the
    /// served model, and refuse a route this server's mode does not offer with `unsupported`.
    fn accept(
        &self,
        body: &Bytes,
        mode: Mode,
        unsupported: &str,
    ) -> Result<(Value, String), Response> {
        let body = parse_body(body)?;
        let model = self.resolve_model(&body)?;
        if self.cfg.mode != mode {
            return Err(bad_request(unsupported));
        }
        Ok((body, model))
    }

    fn resolve_model(&self, body: &Value) -> Result<String, Response> {
        match body.get("model") {
            None | Some(Value::Null) => Ok(self.names[0].clone()),
            Some(Value::String(m)) if self.names.contains(m) => Ok(m.clone()),
            Some(Value::String(m)) => Err(not_found_model(m)),
            Some(other) => Err(not_found_model(&other.to_string())),
        }
    }
}

/// Counts a request in `num_requests_running` while alive and records its metrics.
struct Inflight {
    state: Shared,
    start: Instant,
    first_token_seen: bool,
}

impl Inflight {
    fn new(state: &Shared, prompt_tokens: u32) -> Self {
        let mut m = lock(&state.metrics);
        m.running += 1;
        m.prompt_tokens += u64::from(prompt_tokens);
        drop(m);
        Inflight {
            state: state.clone(),
            start: Instant::now(),
            first_token_seen: false,
        }
    }

    fn tokens(&mut self, n: u64) {
        let mut m = lock(&self.state.metrics);
        m.generation_tokens += n;
        if !self.first_token_seen && n > 0 {
            self.first_token_seen = true;
            m.ttft.observe(self.start.elapsed().as_secs_f64());
        }
    }

    fn success(&self, reason: &'static str) {
        let mut m = lock(&self.state.metrics);
        *m.success.entry(reason).or_insert(0) += 1;
        m.e2e.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let mut m = lock(&self.state.metrics);
        m.running = m.running.saturating_sub(1);
    }
}

/// The error body vLLM returns, with HTTP status == `code`.
pub fn error_body(status: StatusCode, kind: &str, message: &str) -> Value {
    json!({"error": {
        "message": message,
        "type": kind,
        "param": null,
        "code": status.as_u16(),
    }})
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_resp(status, error_body(status, kind, message))
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "BadRequestError", message)
}

fn not_found_model(model: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NotFoundError",
        &format!("The model `{model}` does not exist."),
    )
}

const ENGINE_DEAD: &str =
    "EngineCore encountered an issue. See stack trace (above) for the root cause.";

fn engine_dead() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        ENGINE_DEAD,
    )
}

fn stream_failure_message(after: u32) -> String {
    format!("fake engine failure after {after} generated tokens")
}

/// The router of the fake vLLM server. The `die_after` clock starts `load_delay` after this call.
pub fn router(cfg: Config) -> Router {
    let names = cfg.names();
    let state: Shared = Arc::new(Inner {
        ready_at: Instant::now() + cfg.load_delay,
        fail_after_tokens: Mutex::new(cfg.fail_after_tokens),
        names,
        cfg,
        killed: AtomicBool::new(false),
        admitted: AtomicU64::new(0),
        seq: AtomicU64::new(0),
        metrics: Mutex::new(Metrics::default()),
        log: Mutex::new(VecDeque::new()),
    });
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/rerank", post(rerank))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/version", get(version))
        .route("/load", get(load))
        .route("/metrics", get(metrics))
        .route("/rerank", post(rerank))
        .route("/v2/rerank", post(rerank))
        .route("/fake/kill-engine", post(kill))
        .route("/fake/revive", post(revive))
        .route("/fake/stream-failure", post(stream_failure))
        .route("/fake/requests", get(requests))
        .merge(v1)
        .with_state(state)
}

async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {key}"));
        if !ok {
            return json_resp(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
        }
    }
    next.run(req).await
}

async fn health(State(st): State<Shared>) -> Response {
    if st.dead() {
        empty(StatusCode::SERVICE_UNAVAILABLE)
    } else {
        empty(StatusCode::OK)
    }
}

async fn version(State(st): State<Shared>) -> Response {
    json_resp(StatusCode::OK, json!({"version": st.cfg.version}))
}

async fn load(State(st): State<Shared>) -> Response {
    let running = lock(&st.metrics).running;
    json_resp(StatusCode::OK, json!({"server_load": running}))
}

async fn kill(State(st): State<Shared>) -> Response {
    st.killed.store(true, Ordering::SeqCst);
    json_resp(StatusCode::OK, json!({"dead": true}))
}

async fn revive(State(st): State<Shared>) -> Response {
    st.killed.store(false, Ordering::SeqCst);
    json_resp(StatusCode::OK, json!({"dead": st.dead()}))
}

async fn stream_failure(State(st): State<Shared>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let after = v
        .get("after_tokens")
        .and_then(Value::as_u64)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    *lock(&st.fail_after_tokens) = after;
    json_resp(StatusCode::OK, json!({"after_tokens": after}))
}

async fn requests(State(st): State<Shared>) -> Response {
    let log: Vec<Value> = lock(&st.log).iter().cloned().collect();
    json_resp(StatusCode::OK, Value::Array(log))
}

async fn models(State(st): State<Shared>) -> Response {
    if st.dead() {
        return engine_dead();
    }
    let created = now_secs();
    let data: Vec<Value> = st
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": st.cfg.model,
                "parent": null,
                "max_model_len": st.cfg.max_model_len,
                "permission": [{
                    "id": format!("modelperm-{:032x}", i + 1),
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": false,
                    "allow_sampling": true,
                    "allow_logprobs": true,
                    "allow_search_indices": false,
                    "allow_view": true,
                    "allow_fine_tuning": false,
                    "organization": "*",
                    "group": null,
                    "is_blocking": false,
                }],
            })
        })
        .collect();
    json_resp(StatusCode::OK, json!({"object": "list", "data": data}))
}

fn parse_body(body: &Bytes) -> Result<Value, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(bad_request("Input should be a valid dictionary")),
        Err(e) => Err(bad_request(&format!("JSON decode error: {e}"))),
    }
}

/// The text of a message `content`: a string, or the `text` of its parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn word_count(s: &str) -> u32 {
    u32::try_from(s.split_whitespace().count()).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completion,
}

/// What one choice will generate.
#[derive(Debug, Clone)]
struct Plan {
    words: Vec<String>,
    finish: &'static str,
}

fn plan(source: &str, max_tokens: Option<u32>) -> Plan {
    let src: Vec<String> = source.split_whitespace().map(str::to_string).collect();
    let src = if src.is_empty() {
        vec!["ok".to_string()]
    } else {
        src
    };
    match max_tokens {
        None => Plan {
            words: src,
            finish: "stop",
        },
        Some(n) => Plan {
            words: src.iter().cycle().take(n as usize).cloned().collect(),
            finish: "length",
        },
    }
}

/// Reads and validates `max_tokens` (or `max_completion_tokens` for chat) against the context.
fn max_tokens(
    st: &Inner,
    body: &Value,
    api: Api,
    prompt_tokens: u32,
) -> Result<Option<u32>, Response> {
    let raw = match api {
        Api::Chat => body
            .get("max_completion_tokens")
            .filter(|v| !v.is_null())
            .or_else(|| body.get("max_tokens")),
        Api::Completion => body.get("max_tokens"),
    };
    let requested = match raw {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n < 1 => {
                return Err(bad_request(&format!(
                    "max_tokens must be at least 1, got {n}."
                )));
            }
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            None => return Err(bad_request("max_tokens: Input should be a valid integer")),
        },
    };
    let requested = match (api, requested) {
        (Api::Completion, None) => Some(16),
        (_, r) => r,
    };
    let limit = st.cfg.max_model_len;
    if prompt_tokens >= limit {
        return Err(bad_request(&format!(
            "This model's maximum context length is {limit} tokens. However, your request has \
             {prompt_tokens} input tokens. Please reduce the length of the input messages."
        )));
    }
    if let Some(n) = requested
        && u64::from(prompt_tokens) + u64::from(n) > u64::from(limit)
    {
        return Err(bad_request(&format!(
            "This model's maximum context length is {limit} tokens. However, you requested {} \
             tokens ({prompt_tokens} in the messages, {n} in the completion). Please reduce the \
             length of the messages or completion.",
            u64::from(prompt_tokens) + u64::from(n)
        )));
    }
    Ok(requested)
}

/// One generation request, ready to run.
struct Job {
    api: Api,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: u32,
    plans: Vec<Plan>,
    include_usage: bool,
    fail_after: Option<u32>,
    token_delay: Duration,
}

impl Job {
    fn completion_tokens(&self) -> u32 {
        self.plans.iter().map(|p| p.words.len() as u32).sum()
    }

    fn usage(&self) -> Value {
        let c = self.completion_tokens();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + c,
            "completion_tokens": c,
            "prompt_tokens_details": null,
        })
    }

    fn chunk(&self, choices: Value) -> Value {
        let object = match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completion => "text_completion",
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn content_choice(&self, index: usize, text: &str, finish: Option<&str>) -> Value {
        let mut choice = match self.api {
            Api::Chat => json!({
                "index": index,
                "delta": {"content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Api::Completion => json!({
                "index": index,
                "text": text,
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        if finish.is_some() || self.api == Api::Completion {
            choice["stop_reason"] = Value::Null;
        }
        choice
    }

    /// The token at which generation fails, if it fails before completing.
    fn failure_point(&self) -> Option<u32> {
        self.fail_after.filter(|f| *f < self.completion_tokens())
    }
}

async fn chat(State(st): State<Shared>, body: Bytes) -> Response {
    let (body, model) = match st.accept(
        &body,
        Mode::Generate,
        "The model does not support Chat Completions API",
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return bad_request("messages: Field required");
    };
    if messages.is_empty() {
        return bad_request("messages: List should have at least 1 item after validation");
    }
    let mut prompt_tokens = 0u32;
    let mut last_user = None;
    for m in messages {
        let text = m.get("content").map(content_text).unwrap_or_default();
        prompt_tokens = prompt_tokens.saturating_add(word_count(&text));
        if m.get("role").and_then(Value::as_str) == Some("user") {
            last_user = Some(text);
        }
    }
    let max = match max_tokens(&st, &body, Api::Chat, prompt_tokens) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Err(r) = st.admit("/v1/chat/completions", &body) {
        return r;
    }
    let job = Job {
        api: Api::Chat,
        id: st.next_id("chatcmpl"),
        created: now_secs(),
        model,
        prompt_tokens,
        plans: vec![plan(&last_user.unwrap_or_default(), max)],
        include_usage: include_usage(&body),
        fail_after: *lock(&st.fail_after_tokens),
        token_delay: st.cfg.token_delay,
    };
    run_job(st, job, is_stream(&body)).await
}

async fn completions(State(st): State<Shared>, body: Bytes) -> Response {
    let (body, model) = match st.accept(
        &body,
        Mode::Generate,
        "The model does not support Completions API",
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let prompts: Vec<String> = match body.get("prompt") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_string) {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            } else {
                // Token ids (one prompt as [int], or several as [[int]]): words are the ids.
                let ids = |v: &Value| -> String {
                    v.as_array()
                        .map(|a| a.iter().map(Value::to_string).collect::<Vec<_>>())
                        .unwrap_or_else(|| vec![v.to_string()])
                        .join(" ")
                };
                if items.iter().all(Value::is_array) {
                    items.iter().map(ids).collect()
                } else {
                    vec![ids(&Value::Array(items.clone()))]
                }
            }
        }
        _ => return bad_request("prompt: Field required"),
    };
    let prompt_tokens = prompts
        .iter()
        .map(|p| word_count(p))
        .fold(0u32, u32::saturating_add);
    let longest = prompts.iter().map(|p| word_count(p)).max().unwrap_or(0);
    let max = match max_tokens(&st, &body, Api::Completion, longest) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Err(r) = st.admit("/v1/completions", &body) {
        return r;
    }
    let job = Job {
        api: Api::Completion,
        id: st.next_id("cmpl"),
        created: now_secs(),
        model,
        prompt_tokens,
        plans: prompts.iter().map(|p| plan(p, max)).collect(),
        include_usage: include_usage(&body),
        fail_after: *lock(&st.fail_after_tokens),
        token_delay: st.cfg.token_delay,
    };
    run_job(st, job, is_stream(&body)).await
}

fn is_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

fn include_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

async fn run_job(st: Shared, job: Job, stream: bool) -> Response {
    let inflight = Inflight::new(&st, job.prompt_tokens);
    if stream {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        tokio::spawn(stream_job(st, job, tx, inflight));
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
        });
        return (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            )],
            Body::from_stream(body),
        )
            .into_response();
    }
    complete_job(st, job, inflight).await
}

async fn complete_job(st: Shared, job: Job, mut inflight: Inflight) -> Response {
    let total = job.completion_tokens();
    let produced = job.failure_point().unwrap_or(total);
    if !job.token_delay.is_zero() {
        tokio::time::sleep(job.token_delay * produced).await;
    }
    inflight.tokens(u64::from(produced));
    if st.dead() {
        return engine_dead();
    }
    if let Some(after) = job.failure_point() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            &stream_failure_message(after),
        );
    }
    let choices: Vec<Value> = job
        .plans
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let text = p.words.join(" ");
            match job.api {
                Api::Chat => json!({
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": null,
                        "annotations": null,
                        "audio": null,
                        "function_call": null,
                        "tool_calls": [],
                        "reasoning": null,
                    },
                    "logprobs": null,
                    "finish_reason": p.finish,
                    "stop_reason": null,
                }),
                Api::Completion => json!({
                    "index": i,
                    "text": text,
                    "logprobs": null,
                    "finish_reason": p.finish,
                    "stop_reason": null,
                    "prompt_logprobs": null,
                }),
            }
        })
        .collect();
    let object = match job.api {
        Api::Chat => "chat.completion",
        Api::Completion => "text_completion",
    };
    inflight.success(job.plans.last().map_or("stop", |p| p.finish));
    json_resp(
        StatusCode::OK,
        json!({
            "id": job.id,
            "object": object,
            "created": job.created,
            "model": job.model,
            "choices": choices,
            "service_tier": null,
            "system_fingerprint": null,
            "usage": job.usage(),
            "prompt_logprobs": null,
            "kv_transfer_params": null,
        }),
    )
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

const DONE: &str = "data: [DONE]\n\n";

async fn stream_job(st: Shared, job: Job, tx: mpsc::Sender<Bytes>, mut inflight: Inflight) {
    // Every send failing means the client went away: stop generating.
    if job.api == Api::Chat {
        let role = job.chunk(json!([{
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        }]));
        if tx.send(sse(&role)).await.is_err() {
            return;
        }
    }
    let mut emitted = 0u32;
    for (index, p) in job.plans.iter().enumerate() {
        for (k, word) in p.words.iter().enumerate() {
            if !job.token_delay.is_zero() {
                tokio::time::sleep(job.token_delay).await;
            }
            let failure = if st.dead() {
                Some(error_body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    ENGINE_DEAD,
                ))
            } else if job.fail_after.is_some_and(|f| emitted >= f) {
                Some(error_body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    &stream_failure_message(emitted),
                ))
            } else {
                None
            };
            if let Some(err) = failure {
                let _ = tx.send(sse(&err)).await;
                let _ = tx.send(Bytes::from_static(DONE.as_bytes())).await;
                return;
            }
            let piece = if k == 0 {
                word.clone()
            } else {
                format!(" {word}")
            };
            let finish = (k + 1 == p.words.len()).then_some(p.finish);
            let chunk = job.chunk(json!([job.content_choice(index, &piece, finish)]));
            if tx.send(sse(&chunk)).await.is_err() {
                return;
            }
            inflight.tokens(1);
            emitted += 1;
        }
    }
    if job.include_usage {
        let mut chunk = job.chunk(json!([]));
        chunk["usage"] = job.usage();
        if tx.send(sse(&chunk)).await.is_err() {
            return;
        }
    }
    if tx.send(Bytes::from_static(DONE.as_bytes())).await.is_ok() {
        inflight.success(job.plans.last().map_or("stop", |p| p.finish));
    }
}

/// Items of an embeddings `input`: a string, strings, or token-id arrays (read as words).
fn embedding_inputs(input: Option<&Value>) -> Result<Vec<String>, Response> {
    let items = match input {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(bad_request("input: List should have at least 1 item"));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            vec![a.iter().map(Value::to_string).collect::<Vec<_>>().join(" ")]
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                Value::Array(ids) => ids
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                other => other.to_string(),
            })
            .collect(),
        _ => return Err(bad_request("input: Field required")),
    };
    Ok(items)
}

async fn embeddings(State(st): State<Shared>, body: Bytes) -> Response {
    let (body, model) = match st.accept(
        &body,
        Mode::Embed,
        "The model does not support Embeddings API",
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let inputs = match embedding_inputs(body.get("input")) {
        Ok(i) => i,
        Err(r) => return r,
    };
    if body.get("encoding_format").and_then(Value::as_str) == Some("base64") {
        return bad_request("encoding_format base64 is not supported by this fake");
    }
    let tokens: u32 = inputs.iter().map(|t| word_count(t)).sum();
    if let Some(long) = inputs.iter().find(|t| word_count(t) > st.cfg.max_model_len) {
        return bad_request(&format!(
            "This model's maximum context length is {} tokens. However, you requested {} tokens \
             in the input for embedding generation. Please reduce the length of the input.",
            st.cfg.max_model_len,
            word_count(long)
        ));
    }
    if let Err(r) = st.admit("/v1/embeddings", &body) {
        return r;
    }
    let inflight = Inflight::new(&st, tokens);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "index": i,
                "object": "embedding",
                "embedding": synth::dense_embedding(t, st.cfg.embedding_dim),
            })
        })
        .collect();
    inflight.success("stop");
    json_resp(
        StatusCode::OK,
        json!({
            "id": st.next_id("embd"),
            "object": "list",
            "created": now_secs(),
            "model": model,
            "data": data,
            "usage": {
                "prompt_tokens": tokens,
                "total_tokens": tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": null,
            },
        }),
    )
}

async fn rerank(State(st): State<Shared>, body: Bytes) -> Response {
    let (body, model) = match st.accept(
        &body,
        Mode::Embed,
        "The model does not support Rerank (Score) API",
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(query) = body.get("query").and_then(Value::as_str) else {
        return bad_request("query: Field required");
    };
    let Some(docs) = body.get("documents").and_then(Value::as_array) else {
        return bad_request("documents: Field required");
    };
    let docs: Vec<String> = docs
        .iter()
        .map(|d| match d {
            Value::String(s) => s.clone(),
            other => other
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
        .collect();
    if let Err(r) = st.admit("/rerank", &body) {
        return r;
    }
    let tokens: u32 = docs.iter().map(|d| word_count(query) + word_count(d)).sum();
    let inflight = Inflight::new(&st, tokens);
    let mut results: Vec<(usize, f32)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (i, synth::overlap_score(query, d)))
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(n) = body.get("top_n").and_then(Value::as_u64).filter(|n| *n > 0) {
        results.truncate(n as usize);
    }
    let results: Vec<Value> = results
        .into_iter()
        .map(|(i, score)| {
            json!({
                "index": i,
                "document": {"text": docs[i]},
                "relevance_score": score,
            })
        })
        .collect();
    inflight.success("stop");
    json_resp(
        StatusCode::OK,
        json!({
            "id": st.next_id("rerank"),
            "model": model,
            "usage": {"total_tokens": tokens},
            "results": results,
        }),
    )
}

async fn metrics(State(st): State<Shared>) -> Response {
    let m = lock(&st.metrics);
    let labels = format!(
        "engine=\"0\",model_name=\"{}\"",
        st.names[0].replace('\\', "\\\\").replace('"', "\\\"")
    );
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {v:?}\n"
        ));
    };
    gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        m.running as f64,
    );
    gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        0.0,
    );
    gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        (m.running as f64 * 0.05).min(1.0),
    );
    let mut counter = |name: &str, help: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name}_total {help}\n# TYPE {name}_total counter\n{name}_total{{{labels}}} {:?}\n",
            v as f64
        ));
    };
    counter(
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        m.prompt_tokens,
    );
    counter(
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        m.generation_tokens,
    );
    out.push_str(
        "# HELP vllm:request_success_total Count of successfully processed requests.\n\
         # TYPE vllm:request_success_total counter\n",
    );
    for reason in ["stop", "length", "abort"] {
        let v = m.success.get(reason).copied().unwrap_or(0);
        out.push_str(&format!(
            "vllm:request_success_total{{{labels},finished_reason=\"{reason}\"}} {:?}\n",
            v as f64
        ));
    }
    let mut histogram = |name: &str, help: &str, h: &Histogram| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (bound, count) in HIST_BUCKETS.iter().zip(h.counts.iter()) {
            out.push_str(&format!(
                "{name}_bucket{{{labels},le=\"{bound:?}\"}} {:?}\n",
                *count as f64
            ));
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels},le=\"+Inf\"}} {:?}\n{name}_count{{{labels}}} {:?}\n\
             {name}_sum{{{labels}}} {:?}\n",
            h.count as f64, h.count as f64, h.sum
        ));
    };
    histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &m.e2e,
    );
    histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &m.ttft,
    );
    drop(m);
    let mut resp = text(StatusCode::OK, out);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// The `vllm serve` command line
// ---------------------------------------------------------------------------------------------

/// `--kv-cache-dtype` values (vLLM's `CacheDType`, union over recent versions).
pub const KV_CACHE_DTYPES: [&str; 9] = [
    "auto",
    "float16",
    "bfloat16",
    "int8",
    "fp8",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_inc",
    "fp8_ds_mla",
];

/// `--load-format` values (vLLM's `LoadFormats`, union over recent versions).
pub const LOAD_FORMATS: [&str; 15] = [
    "auto",
    "hf",
    "bitsandbytes",
    "dummy",
    "fastsafetensors",
    "gguf",
    "instanttensor",
    "mistral",
    "npcache",
    "pt",
    "runai_streamer",
    "runai_streamer_sharded",
    "safetensors",
    "sharded_state",
    "tensorizer",
];

/// `--dtype` values (vLLM's `ModelDType`).
pub const DTYPES: [&str; 6] = ["auto", "half", "float16", "bfloat16", "float", "float32"];

/// `--distributed-executor-backend` values.
pub const EXECUTOR_BACKENDS: [&str; 4] = ["ray", "mp", "uni", "external_launcher"];

/// `--task` values (deprecated in vLLM in favour of `--runner`/`--convert`, still accepted).
pub const TASKS: [&str; 9] = [
    "auto",
    "generate",
    "embedding",
    "embed",
    "classify",
    "score",
    "reward",
    "transcription",
    "draft",
];

/// `--runner` values.
pub const RUNNERS: [&str; 4] = ["auto", "generate", "pooling", "draft"];

/// `--convert` values.
pub const CONVERTS: [&str; 5] = ["auto", "none", "embed", "classify", "reward"];

/// `--block-size` values.
pub const BLOCK_SIZES: [&str; 7] = ["1", "8", "16", "32", "64", "128", "256"];

/// vLLM's short aliases that are not single-letter flags (clap knows only single-letter shorts).
const SHORT_ALIASES: [(&str, &str); 3] = [
    ("-tp", "--tensor-parallel-size"),
    ("-pp", "--pipeline-parallel-size"),
    ("-dp", "--data-parallel-size"),
];

/// Rewrites the arguments that follow `vllm` the way vLLM's `FlexibleArgumentParser` reads
/// them, so clap can parse them: `--max_model_len=8k` becomes `--max-model-len=8k`
/// (underscores in a long flag's name), and `-tp 2` / `-tp=2` (also `-pp`, `-dp`) become the long
/// flags. Values and everything after `--` are left alone.
pub fn normalize_serve_args<I>(args: I) -> Vec<std::ffi::OsString>
where
    I: IntoIterator<Item = std::ffi::OsString>,
{
    let mut out = Vec::new();
    let mut rest = false;
    for arg in args {
        let Some(s) = arg.to_str().filter(|_| !rest) else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let name = if let Some((_, long)) = SHORT_ALIASES.iter().find(|(short, _)| *short == name) {
            (*long).to_string()
        } else if name.len() > 2 && name.starts_with("--") {
            name.replace('_', "-")
        } else {
            out.push(arg);
            continue;
        };
        out.push(match value {
            Some(v) => format!("{name}={v}").into(),
            None => name.into(),
        });
    }
    out
}

/// vLLM's `human_readable_int`: a plain integer, or a number with a suffix: `k`, `m`, `g`, `t`
/// are decimal (`25.6k` = 25600), `K`, `M`, `G`, `T` binary (`32K` = 32768, no decimals).
pub fn human_readable_int(value: &str) -> Result<u64, String> {
    let v = value.trim();
    if let Some(suffix) = v.chars().last().filter(|c| "kKmMgGtT".contains(*c)) {
        let number = &v[..v.len() - 1];
        let (int, frac) = number.split_once('.').unwrap_or((number, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if digits(int) && digits(frac) {
            let decimal = match suffix {
                'k' => Some(1e3),
                'm' => Some(1e6),
                'g' => Some(1e9),
                't' => Some(1e12),
                _ => None,
            };
            if let Some(mult) = decimal {
                let n: f64 = number
                    .parse()
                    .map_err(|_| format!("invalid number '{v}'"))?;
                return Ok((n * mult) as u64);
            }
            let shift = match suffix {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                _ => 40,
            };
            let n: u64 = number.parse().map_err(|_| {
                format!(
                    "Decimals are not allowed with binary suffixes like {suffix}. Did you mean to \
                     use {number}{} instead?",
                    suffix.to_ascii_lowercase()
                )
            })?;
            return n
                .checked_mul(1 << shift)
                .ok_or_else(|| format!("'{v}' is too large"));
        }
    }
    v.parse::<u64>()
        .map_err(|_| format!("invalid literal for int() with base 10: '{v}'"))
}

fn positive_human_int(value: &str) -> Result<u64, String> {
    match human_readable_int(value)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// `--max-model-len`: a token count in [`human_readable_int`] form, or `auto` / `-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxModelLen {
    /// `auto` or `-1`: vLLM fits the context to memory; the fake uses its default (32768).
    Auto,
    Tokens(u32),
}

impl std::fmt::Display for MaxModelLen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxModelLen::Auto => f.write_str("auto"),
            MaxModelLen::Tokens(n) => write!(f, "{n}"),
        }
    }
}

/// Parses `--max-model-len` as vLLM's `human_readable_int_or_auto` does.
pub fn parse_max_model_len(value: &str) -> Result<MaxModelLen, String> {
    let v = value.trim();
    if v == "-1" || v.eq_ignore_ascii_case("auto") {
        return Ok(MaxModelLen::Auto);
    }
    let n = positive_human_int(v)?;
    u32::try_from(n)
        .map(MaxModelLen::Tokens)
        .map_err(|_| format!("{n} tokens is too large"))
}

fn gpu_memory_utilization(value: &str) -> Result<f64, String> {
    let f: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("could not convert string to float: '{value}'"))?;
    if f > 0.0 && f <= 1.0 {
        Ok(f)
    } else {
        Err(format!("must be greater than 0 and at most 1, got {value}"))
    }
}

fn non_negative_float(value: &str) -> Result<f64, String> {
    let f: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("could not convert string to float: '{value}'"))?;
    if f >= 0.0 {
        Ok(f)
    } else {
        Err(format!("must be at least 0, got {value}"))
    }
}

fn json_object(value: &str) -> Result<String, String> {
    match serde_json::from_str::<Value>(value) {
        Ok(Value::Object(_)) => Ok(value.to_string()),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// `--flag` / `--no-flag` pairs (vLLM's `argparse.BooleanOptionalAction`): `Some(true)`,
/// `Some(false)` or not given.
fn tristate(yes: bool, no: bool) -> Option<bool> {
    match (yes, no) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// The `vllm serve` command line as `spark-fake vllm` accepts it: vLLM's own flags (those
/// Spark Control and spark-vllm-docker use), validated as vLLM does where that is simple, plus
/// the fake's test controls. Anything else is an error (clap's, exit code 2), as with vLLM's
/// parser. `--host` and `--port` are `spark-fake`'s global flags. See the module documentation.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Model path or HF id (as in `vllm serve MODEL`); also `--model`.
    #[arg(value_name = "MODEL")]
    pub model_pos: Option<String>,
    /// Model path or HF id, reported as `root` in /v1/models.
    #[arg(long)]
    pub model: Option<String>,
    /// Served model name(s); repeatable, and several may follow one flag.
    #[arg(long = "served-model-name", num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// Context length reported and enforced: N, 32k (32000), 32K (32768), or auto / -1 (32768).
    #[arg(long, value_parser = parse_max_model_len, allow_negative_numbers = true)]
    pub max_model_len: Option<MaxModelLen>,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long)]
    pub api_key: Option<String>,

    /// Tensor parallel size (alias -tp).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub tensor_parallel_size: u32,
    /// Pipeline parallel size (alias -pp).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub pipeline_parallel_size: u32,
    /// Data parallel size (alias -dp).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub data_parallel_size: u32,
    /// Ray or multiprocessing workers.
    #[arg(long, value_parser = EXECUTOR_BACKENDS)]
    pub distributed_executor_backend: Option<String>,
    /// Number of nodes of a multi-node (non-Ray) deployment.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub nnodes: u32,
    /// This node's rank, below --nnodes.
    #[arg(long, default_value_t = 0)]
    pub node_rank: u32,
    /// Address of rank 0 (multi-node).
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Port of rank 0's torch.distributed store (multi-node).
    #[arg(long, default_value_t = 29_501)]
    pub master_port: u16,
    /// A worker of a multi-node deployment: no API server.
    #[arg(long)]
    pub headless: bool,
    /// Expert parallelism for MoE layers.
    #[arg(long, overrides_with = "no_enable_expert_parallel")]
    pub enable_expert_parallel: bool,
    #[arg(long, overrides_with = "enable_expert_parallel", hide = true)]
    pub no_enable_expert_parallel: bool,
    /// Fraction of GPU memory vLLM may use, in (0, 1] (default 0.9).
    #[arg(long, default_value = "0.9", value_parser = gpu_memory_utilization)]
    pub gpu_memory_utilization: f64,
    /// Token budget of one scheduler step (human-readable integer).
    #[arg(long, value_parser = positive_human_int)]
    pub max_num_batched_tokens: Option<u64>,
    /// Maximum concurrent sequences.
    #[arg(long, value_parser = positive_human_int)]
    pub max_num_seqs: Option<u64>,
    /// Maximum concurrent partial prefills.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_num_partial_prefills: Option<u32>,
    /// KV cache data type.
    #[arg(long, default_value = "auto", value_parser = KV_CACHE_DTYPES)]
    pub kv_cache_dtype: String,
    /// KV cache block size.
    #[arg(long, value_parser = BLOCK_SIZES)]
    pub block_size: Option<String>,
    /// CPU swap space per GPU, GiB.
    #[arg(long, value_parser = non_negative_float)]
    pub swap_space: Option<f64>,
    /// Automatic prefix caching.
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    #[arg(long, overrides_with = "enable_prefix_caching", hide = true)]
    pub no_enable_prefix_caching: bool,
    /// Chunked prefill.
    #[arg(long, overrides_with = "no_enable_chunked_prefill")]
    pub enable_chunked_prefill: bool,
    #[arg(long, overrides_with = "enable_chunked_prefill", hide = true)]
    pub no_enable_chunked_prefill: bool,
    /// Asynchronous scheduling.
    #[arg(long, overrides_with = "no_async_scheduling")]
    pub async_scheduling: bool,
    #[arg(long, overrides_with = "async_scheduling", hide = true)]
    pub no_async_scheduling: bool,
    /// Eager mode (no CUDA graphs).
    #[arg(long, overrides_with = "no_enforce_eager")]
    pub enforce_eager: bool,
    #[arg(long, overrides_with = "enforce_eager", hide = true)]
    pub no_enforce_eager: bool,
    /// Weight format / loader.
    #[arg(long, default_value = "auto", value_parser = LOAD_FORMATS)]
    pub load_format: String,
    /// Trust the model repository's custom code.
    #[arg(long, overrides_with = "no_trust_remote_code")]
    pub trust_remote_code: bool,
    #[arg(long, overrides_with = "trust_remote_code", hide = true)]
    pub no_trust_remote_code: bool,
    /// Weights and activations data type.
    #[arg(long, default_value = "auto", value_parser = DTYPES)]
    pub dtype: String,
    /// Quantization method (not checked against vLLM's list, which changes per version).
    #[arg(long, short = 'q')]
    pub quantization: Option<String>,
    /// Model revision.
    #[arg(long)]
    pub revision: Option<String>,
    /// Tokenizer path or HF id.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Weights download directory.
    #[arg(long)]
    pub download_dir: Option<String>,
    /// Random seed.
    #[arg(long)]
    pub seed: Option<i64>,
    /// Attention backend name.
    #[arg(long)]
    pub attention_backend: Option<String>,
    /// MoE kernel backend name.
    #[arg(long)]
    pub moe_backend: Option<String>,
    /// Speculative decoding configuration (JSON object).
    #[arg(long, value_parser = json_object)]
    pub speculative_config: Option<String>,
    /// Compilation configuration (JSON object or level; not checked).
    #[arg(long, short = 'O')]
    pub compilation_config: Option<String>,
    /// `auto` tool choice (needs --tool-call-parser).
    #[arg(long, overrides_with = "no_enable_auto_tool_choice")]
    pub enable_auto_tool_choice: bool,
    #[arg(long, overrides_with = "enable_auto_tool_choice", hide = true)]
    pub no_enable_auto_tool_choice: bool,
    /// Tool call parser name.
    #[arg(long)]
    pub tool_call_parser: Option<String>,
    /// Reasoning parser name.
    #[arg(long)]
    pub reasoning_parser: Option<String>,
    /// Chat template (path or inline Jinja).
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Per-prompt multi-modal limits (JSON object, e.g. {"image":2}).
    #[arg(long, value_parser = json_object)]
    pub limit_mm_per_prompt: Option<String>,
    /// Multi-modal encoder tensor parallel mode.
    #[arg(long, value_parser = ["weights", "data"])]
    pub mm_encoder_tp_mode: Option<String>,
    /// Task (deprecated in vLLM); embed / embedding / classify / score / reward serve a pooling
    /// model (like --embedding).
    #[arg(long, value_parser = TASKS)]
    pub task: Option<String>,
    /// Runner; `pooling` serves a pooling model (like --embedding).
    #[arg(long, value_parser = RUNNERS)]
    pub runner: Option<String>,
    /// Conversion; embed / classify / reward serve a pooling model (like --embedding).
    #[arg(long, value_parser = CONVERTS)]
    pub convert: Option<String>,
    /// Log every request (accepted, no effect).
    #[arg(long, overrides_with = "no_enable_log_requests")]
    pub enable_log_requests: bool,
    #[arg(long, overrides_with = "enable_log_requests", hide = true)]
    pub no_enable_log_requests: bool,
    /// Deprecated in vLLM (accepted, no effect).
    #[arg(long, hide = true)]
    pub disable_log_requests: bool,

    /// Only parse and validate the arguments: print `arguments ok` and exit 0.
    #[arg(long, help_heading = "Test controls")]
    pub check_args: bool,
    /// Time before the port is bound ("loading").
    #[arg(long, default_value_t = 0, help_heading = "Test controls")]
    pub load_delay_ms: u64,
    /// Loading fails after this long (CUDA out of memory on stderr, exit --exit-code); the port
    /// is never bound.
    #[arg(long, help_heading = "Test controls")]
    pub exit_during_load_ms: Option<u64>,
    /// Exit code of --exit-during-load-ms.
    #[arg(long, default_value_t = 1, help_heading = "Test controls")]
    pub exit_code: u8,
    /// Delay before each generated token.
    #[arg(long, default_value_t = 0, help_heading = "Test controls")]
    pub token_delay_ms: u64,
    /// The engine dies (health 503) this long after binding.
    #[arg(long, help_heading = "Test controls")]
    pub die_after_ms: Option<u64>,
    /// The engine serves this many inference requests; the next one crashes it.
    #[arg(long, help_heading = "Test controls")]
    pub die_after_requests: Option<u64>,
    /// Generations fail after this many tokens (mid-stream error).
    #[arg(long, help_heading = "Test controls")]
    pub fail_after_tokens: Option<u32>,
    /// Serve a pooling model: /v1/embeddings and /rerank instead of generation.
    #[arg(long, help_heading = "Test controls")]
    pub embedding: bool,
    /// Embedding dimension of a pooling model.
    #[arg(long, default_value_t = 1024, help_heading = "Test controls")]
    pub embedding_dim: usize,
    /// Version reported by /version.
    #[arg(long, default_value = "0.11.0", help_heading = "Test controls")]
    pub vllm_version: String,
}

impl ServeArgs {
    /// The model path or HF id (`--model` wins over the positional one).
    pub fn model_name(&self) -> String {
        self.model
            .clone()
            .or_else(|| self.model_pos.clone())
            .unwrap_or_else(|| Config::default().model)
    }

    /// Whether the flags ask for a pooling model (`--embedding`, `--runner pooling`,
    /// `--task embed|embedding|classify|score|reward`, `--convert embed|classify|reward`).
    pub fn pooling(&self) -> bool {
        self.embedding
            || self.runner.as_deref() == Some("pooling")
            || matches!(
                self.task.as_deref(),
                Some("embed" | "embedding" | "classify" | "score" | "reward")
            )
            || matches!(
                self.convert.as_deref(),
                Some("embed" | "classify" | "reward")
            )
    }

    /// `--enable-prefix-caching` / `--no-enable-prefix-caching`, if given.
    pub fn prefix_caching(&self) -> Option<bool> {
        tristate(self.enable_prefix_caching, self.no_enable_prefix_caching)
    }

    /// The cross-checks vLLM makes after parsing, as far as the fake models them:
    ///
    /// * `--node-rank` < `--nnodes`, and with `--nnodes` > 1 the world size
    ///   (tp x pp x dp) divisible by `--nnodes` (vLLM's `ParallelConfig`, same messages);
    /// * `--headless` only for a multi-node worker: `--nnodes` > 1 and `--node-rank` >= 1
    ///   (the fake's model; vLLM's data-parallel headless modes are not modelled);
    /// * `--enable-auto-tool-choice` needs `--tool-call-parser` (vLLM's serve-args check).
    pub fn validate(&self) -> Result<(), String> {
        if self.node_rank >= self.nnodes {
            return Err(format!(
                "node_rank={} must be less than nnodes={}.",
                self.node_rank, self.nnodes
            ));
        }
        let world = u64::from(self.tensor_parallel_size)
            * u64::from(self.pipeline_parallel_size)
            * u64::from(self.data_parallel_size);
        if self.nnodes > 1 && world % u64::from(self.nnodes) != 0 {
            return Err(format!(
                "world_size={world} must be divisible by nnodes={}.",
                self.nnodes
            ));
        }
        if self.headless && self.nnodes < 2 {
            return Err(
                "--headless needs --nnodes > 1 (a worker of a multi-node deployment)".into(),
            );
        }
        if self.headless && self.node_rank == 0 {
            return Err("--headless needs --node-rank >= 1 (rank 0 serves the API)".into());
        }
        if self.enable_auto_tool_choice && self.tool_call_parser.is_none() {
            return Err("--enable-auto-tool-choice requires --tool-call-parser".into());
        }
        Ok(())
    }

    /// One line with the engine settings, as logged at start.
    pub fn summary(&self) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "None".into());
        let opt_n = |v: Option<u64>| v.map_or_else(|| "None".into(), |n| n.to_string());
        let bool_opt = |v: Option<bool>| v.map_or_else(|| "None".into(), |b| b.to_string());
        format!(
            "Engine config: model={}, served_model_name={:?}, max_model_len={}, dtype={}, \
             quantization={}, load_format={}, kv_cache_dtype={}, gpu_memory_utilization={}, \
             max_num_batched_tokens={}, max_num_seqs={}, enable_prefix_caching={}, \
             enforce_eager={}, trust_remote_code={}, tensor_parallel_size={}, \
             pipeline_parallel_size={}, data_parallel_size={}, distributed_executor_backend={}, \
             enable_expert_parallel={}, tool_call_parser={}, reasoning_parser={}, runner={}",
            self.model_name(),
            self.served_model_name,
            self.to_config().max_model_len,
            self.dtype,
            opt(&self.quantization),
            self.load_format,
            self.kv_cache_dtype,
            self.gpu_memory_utilization,
            opt_n(self.max_num_batched_tokens),
            opt_n(self.max_num_seqs),
            bool_opt(self.prefix_caching()),
            tristate(self.enforce_eager, self.no_enforce_eager).unwrap_or(false),
            tristate(self.trust_remote_code, self.no_trust_remote_code).unwrap_or(false),
            self.tensor_parallel_size,
            self.pipeline_parallel_size,
            self.data_parallel_size,
            opt(&self.distributed_executor_backend),
            tristate(self.enable_expert_parallel, self.no_enable_expert_parallel).unwrap_or(false),
            opt(&self.tool_call_parser),
            opt(&self.reasoning_parser),
            if self.pooling() {
                "pooling"
            } else {
                "generate"
            },
        )
    }

    /// The server configuration. `load_delay` is `--load-delay-ms` (a caller that does the
    /// loading phase itself sets it to zero).
    pub fn to_config(&self) -> Config {
        let defaults = Config::default();
        Config {
            model: self.model_name(),
            served_model_names: self.served_model_name.clone(),
            max_model_len: match self.max_model_len {
                Some(MaxModelLen::Tokens(n)) => n,
                _ => defaults.max_model_len,
            },
            load_delay: Duration::from_millis(self.load_delay_ms),
            token_delay: Duration::from_millis(self.token_delay_ms),
            die_after: self.die_after_ms.map(Duration::from_millis),
            die_after_requests: self.die_after_requests,
            fail_after_tokens: self.fail_after_tokens,
            mode: if self.pooling() {
                Mode::Embed
            } else {
                Mode::Generate
            },
            embedding_dim: self.embedding_dim,
            api_key: self.api_key.clone(),
            version: self.vllm_version.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_readable_ints_as_vllm_reads_them() {
        assert_eq!(human_readable_int("32768"), Ok(32_768));
        assert_eq!(human_readable_int("32k"), Ok(32_000));
        assert_eq!(human_readable_int("32K"), Ok(32_768));
        assert_eq!(human_readable_int("25.6k"), Ok(25_600));
        assert_eq!(human_readable_int("1M"), Ok(1 << 20));
        assert!(human_readable_int("1.5K").unwrap_err().contains("Decimals"));
        assert!(human_readable_int("abc").is_err());
        assert!(human_readable_int("k").is_err());
        assert_eq!(parse_max_model_len("auto"), Ok(MaxModelLen::Auto));
        assert_eq!(parse_max_model_len("-1"), Ok(MaxModelLen::Auto));
        assert_eq!(
            parse_max_model_len("128K"),
            Ok(MaxModelLen::Tokens(131_072))
        );
        assert!(parse_max_model_len("0").is_err());
        assert!(parse_max_model_len("8T").is_err());
    }

    #[test]
    fn normalizes_like_flexible_argument_parser() {
        let args = [
            "MODEL",
            "-tp",
            "2",
            "-pp=1",
            "--max_model_len=8k",
            "--served_model_name",
            "my_model",
            "-q",
            "fp8",
            "--",
            "--x_y",
        ];
        let out: Vec<String> = normalize_serve_args(args.iter().map(Into::into))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            out,
            [
                "MODEL",
                "--tensor-parallel-size",
                "2",
                "--pipeline-parallel-size=1",
                "--max-model-len=8k",
                "--served-model-name",
                "my_model",
                "-q",
                "fp8",
                "--",
                "--x_y",
            ]
        );
    }
}
