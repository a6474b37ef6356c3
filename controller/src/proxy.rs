//! The OpenAI-compatible gateway for text generation, and the relay every application route
//! uses to reach an upstream.
//!
//! `POST /v1/chat/completions` and `/v1/completions` go straight to the model server that serves
//! the requested `model` (by served name or recipe key): a swap-managed server on a node, or a
//! configured `llm` service. The request body is passed on byte for byte; the answer is streamed
//! back chunk by chunk as the upstream emits it, with no idle timeout; a client that goes away
//! drops the upstream request. A request naming a model that is not loaded, whose recipe allows
//! on-demand loading, asks the swap arbiter for it (the swap lock applies) and waits up to the
//! configured time; past that it gets 503 with `Retry-After` and its queue position.
//!
//! Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`. An upstream that
//! fails in the middle of a stream ends it with `data: {"error": …}` and `data: [DONE]`.
//!
//! Every relayed response carries `Server-Timing` (`queue`: arrival to dispatch; `upstream`:
//! dispatch to the upstream's response head; `ttfb`: dispatch to its first body byte) and a
//! [`Routed`] extension the metrics layer reads.

// Helpers return a ready HTTP response as their error, as handlers do.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::recipes::{self, Recipe};
use crate::swap::Demand;
use crate::{App, catalog};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/chat/completions", post(forward))
        .route("/v1/completions", post(forward))
}

/// The client for application traffic: pooled, no overall or idle timeout (a long generation
/// is never cut), a short connect timeout (a model server on the LAN answers at once or not).
pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        spark_agent::install_crypto_provider();
        reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default()
    })
}

/// An error in OpenAI's shape.
pub fn error(status: StatusCode, kind: &str, code: &str, message: impl Into<String>) -> Response {
    crate::keys::openai_error(status, kind, code, message.into())
}

/// What a response was routed to, for the metrics layer.
#[derive(Debug, Clone, Default)]
pub struct Routed {
    pub model: String,
    pub node: String,
    /// From dispatch to the upstream's first body byte, when it came before the response head.
    pub first_byte: Option<Duration>,
}

pub fn with_routed(mut resp: Response, model: &str, node: &str) -> Response {
    resp.extensions_mut().insert(Routed {
        model: model.to_string(),
        node: node.to_string(),
        first_byte: None,
    });
    resp
}

// ---------- where each model is served ----------

/// A model server the gateway can send generation requests to.
#[derive(Debug, Clone)]
pub struct LlmTarget {
    /// The served name (what `/v1/models` lists).
    pub model: String,
    /// The recipe key, for swap-managed servers (also accepted as the `model`).
    pub key: Option<String>,
    /// The node's name (or the service's, for a server outside the agents).
    pub node: String,
    pub base: String,
    /// `--api-key` the server requires.
    pub api_key: Option<String>,
    /// Served in pooling mode (embeddings) rather than generation.
    pub pooling: bool,
}

/// The routing table: rebuilt at most every [`ROUTES_TTL`], or at once when something changed.
pub struct RouteTable {
    pub targets: Vec<LlmTarget>,
    built: Instant,
}

const ROUTES_TTL: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Routes(RwLock<Option<Arc<RouteTable>>>);

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Routes")
    }
}

impl Routes {
    /// The current table (rebuilt if stale).
    pub fn get(&self, app: &App) -> Arc<RouteTable> {
        if let Some(t) = self.0.read().unwrap_or_else(|p| p.into_inner()).as_ref()
            && t.built.elapsed() < ROUTES_TTL
        {
            return t.clone();
        }
        self.fresh(app)
    }

    /// A table built now.
    pub fn fresh(&self, app: &App) -> Arc<RouteTable> {
        let t = Arc::new(build_routes(app));
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
        t
    }

    /// Forget the table (a service changed, a server stopped answering).
    pub fn invalidate(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl RouteTable {
    /// The target serving `model` (served name or key), or the only generative one when `model`
    /// is absent.
    pub fn find(&self, model: Option<&str>) -> Option<&LlmTarget> {
        match model {
            Some(m) => self
                .targets
                .iter()
                .find(|t| t.model == m || t.key.as_deref() == Some(m)),
            None => {
                let mut generative = self.targets.iter().filter(|t| !t.pooling);
                let first = generative.next();
                if generative.next().is_some() {
                    None
                } else {
                    first
                }
            }
        }
    }
}

fn build_routes(app: &App) -> RouteTable {
    let mut targets = Vec::new();
    let containers: Vec<_> = crate::swap::model_containers(app)
        .into_iter()
        .filter(crate::swap::ModelContainer::serving)
        .collect();
    if !containers.is_empty() {
        let recipes: std::collections::HashMap<String, Recipe> = catalog::all(app)
            .0
            .into_iter()
            .map(|e| (e.recipe.key.clone(), e.recipe))
            .collect();
        let names: std::collections::HashMap<String, String> = app
            .db
            .nodes(false)
            .unwrap_or_default()
            .into_iter()
            .map(|n| (n.id, n.name))
            .collect();
        for c in containers {
            let Some(r) = c.info.recipe.as_deref().and_then(|k| recipes.get(k)) else {
                continue;
            };
            targets.push(LlmTarget {
                model: recipes::served_name(r).to_string(),
                key: Some(r.key.clone()),
                node: names.get(&c.node_id).cloned().unwrap_or(c.node_id),
                base: format!("http://{}:{}", c.address, recipes::port(r)),
                api_key: api_key(r),
                pooling: r.capabilities.iter().any(|c| c == "embedding"),
            });
        }
    }
    for (cfg, st) in app.services.of_kind(crate::services::Kind::Llm) {
        let Some(base) = st.base_url.filter(|_| st.healthy) else {
            continue;
        };
        for m in &st.models {
            if targets.iter().any(|t| &t.model == m) {
                continue;
            }
            targets.push(LlmTarget {
                model: m.clone(),
                key: None,
                node: st.node_name.clone().unwrap_or_else(|| cfg.name.clone()),
                base: base.clone(),
                api_key: None,
                pooling: false,
            });
        }
    }
    RouteTable {
        targets,
        built: Instant::now(),
    }
}

/// A recipe serving `model`.
fn recipe_for(app: &App, model: &str) -> Option<Recipe> {
    catalog::all(app)
        .0
        .into_iter()
        .map(|e| e.recipe)
        .find(|r| recipes::served_name(r) == model || r.key == model)
}

/// The models a request may name: loaded ones, then those that load on demand.
fn known_models(app: &App) -> (Vec<String>, Vec<String>) {
    let loaded: Vec<String> = app
        .routes
        .get(app)
        .targets
        .iter()
        .map(|t| t.model.clone())
        .collect();
    let on_demand = catalog::all(app)
        .0
        .into_iter()
        .filter(|e| e.recipe.on_demand)
        .map(|e| recipes::served_name(&e.recipe).to_string())
        .filter(|m| !loaded.contains(m))
        .collect();
    (loaded, on_demand)
}

fn unknown_model(app: &App, name: &str) -> Response {
    let (loaded, on_demand) = known_models(app);
    let listing = match (loaded.is_empty(), on_demand.is_empty()) {
        (true, true) => "no model is loaded (POST /api/swap loads one)".to_string(),
        _ => {
            let mut parts = Vec::new();
            if !loaded.is_empty() {
                parts.push(format!("loaded: {}", loaded.join(", ")));
            }
            if !on_demand.is_empty() {
                parts.push(format!("loadable on demand: {}", on_demand.join(", ")));
            }
            parts.join("; ")
        }
    };
    // OpenAI's shape, with the lists machine-readable too.
    let message =
        format!("The model `{name}` does not exist. Models: {listing}. GET /v1/models lists them.");
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": {
            "message": message,
            "type": "NotFoundError", "param": "model", "code": "model_not_found",
            "available": loaded, "on_demand": on_demand,
        }})),
    )
        .into_response()
}

// ---------- services as targets ----------

/// A configured service the gateway sends a request to.
pub struct ServiceTarget {
    pub cfg: crate::services::ServiceConfig,
    pub status: crate::services::Status,
    /// Its base URL now.
    pub base: String,
}

impl ServiceTarget {
    /// The relay description of a request to `path` on this service.
    pub fn upstream(&self, path: &str) -> Upstream {
        let node = self
            .status
            .node_name
            .clone()
            .unwrap_or_else(|| self.cfg.name.clone());
        Upstream {
            what: format!(
                "the {} service {} on {node}",
                self.cfg.kind.as_str(),
                self.cfg.name
            ),
            url: format!("{}{path}", self.base),
            model: self.status.models.first().cloned().unwrap_or_default(),
            node,
            bearer: None,
            content_type: None,
        }
    }
}

/// `(cfg, status)` with its address, or 502 saying why it cannot be reached.
fn reachable(
    cfg: crate::services::ServiceConfig,
    status: crate::services::Status,
) -> Result<ServiceTarget, Box<Response>> {
    match status.base_url.clone() {
        Some(base) => Ok(ServiceTarget { cfg, status, base }),
        None => Err(Box::new(error(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            "upstream_unreachable",
            format!(
                "the {} service {} cannot be reached: {}",
                cfg.kind.as_str(),
                cfg.name,
                status.error.as_deref().unwrap_or("no address")
            ),
        ))),
    }
}

/// The enabled service of `kind` for a request: the one serving `model` when given, else the
/// first healthy one, else the first.
pub fn service_of_kind(
    app: &App,
    kind: crate::services::Kind,
    model: Option<&str>,
) -> Result<ServiceTarget, Box<Response>> {
    let list = app.services.of_kind(kind);
    let chosen = model
        .and_then(|m| list.iter().find(|(_, st)| st.models.iter().any(|x| x == m)))
        .or_else(|| list.iter().find(|(_, st)| st.healthy))
        .or(list.first())
        .cloned();
    let Some((cfg, st)) = chosen else {
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "service_not_configured",
            format!(
                "no {} service is configured: add one with PUT /api/services/{{name}} {{\"kind\": \"{}\", …}}",
                kind.as_str(),
                kind.as_str()
            ),
        )));
    };
    reachable(cfg, st)
}

/// The service `name` (which must be of `kind` and enabled), for `purpose` ("search").
pub fn service_named(
    app: &App,
    name: &str,
    kind: crate::services::Kind,
    purpose: &str,
) -> Result<ServiceTarget, Box<Response>> {
    let unavailable = |code: &str, msg: String| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            code,
            msg,
        ))
    };
    let Some((cfg, st)) = app.services.get(name) else {
        return Err(unavailable(
            "service_not_configured",
            format!(
                "{purpose} needs the {} service {name:?}, which is not configured (PUT /api/services/{name}, or change {purpose} in /api/settings)",
                kind.as_str()
            ),
        ));
    };
    if !cfg.enabled {
        return Err(unavailable(
            "service_disabled",
            format!("{purpose} needs the service {name:?}, which is disabled"),
        ));
    }
    reachable(cfg, st)
}

// ---------- request bodies ----------

/// Read a request body up to `limit` bytes; beyond it, 413 naming the limit.
pub async fn read_body(req: Request, limit: u64) -> Result<(HeaderMap, Bytes), Response> {
    let too_large = |got: Option<u64>| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!(
                "the request body{} exceeds this endpoint's limit of {limit} bytes ({}); the limit is set in /api/settings (limits)",
                got.map(|g| format!(" ({g} bytes)")).unwrap_or_default(),
                human_bytes(limit)
            ),
        )
    };
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(too_large(Some(len)));
    }
    let limited = http_body_util::Limited::new(body, limit as usize);
    match http_body_util::BodyExt::collect(limited).await {
        Ok(c) => Ok((parts.headers, c.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(None)),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "bad_body",
            format!("the request body could not be read: {e}"),
        )),
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.0} MiB", n as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.0} KiB", n as f64 / 1024.0)
    }
}

/// The `model` of a JSON request body (the rest is skipped, not parsed into values).
pub fn peek_model(body: &[u8]) -> Result<Option<String>, Response> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, default)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Peek<'_>>(body) {
        Ok(p) => Ok(p.model.map(|m| m.into_owned())),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            format!("the request body must be a JSON object: {e}"),
        )),
    }
}

// ---------- the generation routes ----------

async fn forward(State(app): State<Arc<App>>, req: Request) -> Response {
    let arrived = Instant::now();
    let path = req.uri().path().to_string();
    let (headers, body) = match read_body(req, app.settings.get().limits.llm_json_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let model = match peek_model(&body) {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    // The fast path: the model is being served.
    if let Some(t) = app.routes.get(&app).find(model.as_deref()).cloned()
        && !loading(&app, &t.model)
    {
        if let Some(k) = &t.key {
            app.swaps.used(k);
        }
        return relay(&app, &t, &path, &headers, body, arrived).await;
    }
    on_demand(app, model, path, headers, body, arrived).await
}

/// Whether a swap is (re)loading the recipe serving `model` right now.
fn loading(app: &App, model: &str) -> bool {
    app.swaps
        .active()
        .map(|j| j.record())
        .is_some_and(|r| r.served_model_name == model || r.key == model)
}

/// The model is not being served: load it on demand where its recipe allows, or say why not.
async fn on_demand(
    app: Arc<App>,
    model: Option<String>,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    arrived: Instant,
) -> Response {
    let wait = app
        .settings
        .get()
        .on_demand_wait_seconds
        .map(Duration::from_secs)
        .unwrap_or(app.config.on_demand_wait);
    let deadline = arrived + wait;
    let mut position: usize;
    loop {
        let routes = app.routes.fresh(&app);
        if let Some(t) = routes.find(model.as_deref())
            && !loading(&app, &t.model)
        {
            if let Some(k) = &t.key {
                app.swaps.used(k);
            }
            return relay(&app, t, &path, &headers, body, arrived).await;
        }
        let Some(name) = model.as_deref() else {
            let (loaded, _) = known_models(&app);
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "model_required",
                if loaded.is_empty() {
                    "the request names no \"model\" and no model is loaded; GET /v1/models lists what is served".to_string()
                } else {
                    format!(
                        "the request names no \"model\" and several are loaded ({}); name one",
                        loaded.join(", ")
                    )
                },
            );
        };
        let Some(recipe) = recipe_for(&app, name) else {
            return unknown_model(&app, name);
        };
        let loading_this = loading(&app, name);
        if !recipe.on_demand && !loading_this {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "model_not_loaded",
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
                    "locked",
                    format!(
                        "the model `{name}` is not loaded and cannot be loaded now: {}",
                        e.message
                    ),
                );
                set_retry_after(&mut resp, e.retry_after.unwrap_or(30));
                return resp;
            }
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "model_not_loaded",
                    e.code,
                    e.message,
                );
            }
        }
        if Instant::now() >= deadline {
            let retry = recipe.expected_ready_seconds.clamp(5, 600);
            let message = if position == 0 {
                format!("the model `{name}` is loading; retry in about {retry} s")
            } else {
                format!(
                    "the model `{name}` is queued to load (position {position}); retry in about {retry} s"
                )
            };
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": {
                    "message": message,
                    "type": "model_loading",
                    "param": null,
                    "code": "model_loading",
                    "queue_position": position,
                }})),
            )
                .into_response();
            set_retry_after(&mut resp, retry);
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn set_retry_after(resp: &mut Response, secs: u64) {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

async fn relay(
    app: &App,
    t: &LlmTarget,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    arrived: Instant,
) -> Response {
    let up = Upstream {
        url: format!("{}{path}", t.base),
        model: t.model.clone(),
        node: t.node.clone(),
        what: format!("the model server for `{}` on node {}", t.model, t.node),
        bearer: t.api_key.clone(),
        content_type: None,
    };
    let resp = up.send(headers, body, arrived).await;
    if resp.status() == StatusCode::BAD_GATEWAY {
        app.routes.invalidate();
    }
    resp
}

// ---------- the relay ----------

/// One request to an upstream, described for the relay.
pub struct Upstream {
    pub url: String,
    /// For the `Routed` extension and messages.
    pub model: String,
    pub node: String,
    /// "the model server for `x` on node y", for error messages.
    pub what: String,
    pub bearer: Option<String>,
    /// The request's content type (default: the client's, else JSON).
    pub content_type: Option<HeaderValue>,
}

/// How long the relay waits for the upstream's first body byte before sending the response
/// head without it (its `ttfb` then missing from `Server-Timing`).
const FIRST_BYTE_WAIT: Duration = Duration::from_secs(10);

/// Request headers passed on: what describes the body and what the client accepts. Never the
/// client's `Authorization` (that is for the gateway).
const PASSED_REQUEST_HEADERS: &[header::HeaderName] = &[header::ACCEPT, header::ACCEPT_LANGUAGE];

impl Upstream {
    /// Send `body` and relay the answer.
    pub async fn send(self, headers: &HeaderMap, body: Bytes, arrived: Instant) -> Response {
        let content_type = self
            .content_type
            .clone()
            .or_else(|| headers.get(header::CONTENT_TYPE).cloned())
            .unwrap_or(HeaderValue::from_static("application/json"));
        let mut rb = client()
            .post(&self.url)
            .header(header::CONTENT_TYPE, content_type)
            .body(body);
        for h in PASSED_REQUEST_HEADERS {
            if let Some(v) = headers.get(h) {
                rb = rb.header(h, v);
            }
        }
        if let Some(key) = &self.bearer {
            rb = rb.bearer_auth(key);
        }
        let dispatched = Instant::now();
        let queue = dispatched - arrived;
        let upstream = match rb.send().await {
            Ok(r) => r,
            Err(e) => return self.unreachable(&e),
        };
        let head = dispatched.elapsed();
        self.relay_response(upstream, queue, head, dispatched).await
    }

    /// 502: the upstream could not be reached (or broke before answering), saying which.
    pub fn unreachable(&self, e: &reqwest::Error) -> Response {
        with_routed(
            error(
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                "upstream_unreachable",
                format!(
                    "{} is unreachable at {}: {}",
                    self.what,
                    self.url,
                    crate::services::short_error(e)
                ),
            ),
            &self.model,
            &self.node,
        )
    }

    /// Relay an upstream's response: status, content type, and the body streamed through.
    pub async fn relay_response(
        self,
        upstream: reqwest::Response,
        queue: Duration,
        head: Duration,
        dispatched: Instant,
    ) -> Response {
        let status =
            StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
        let sse = content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut stream = upstream.bytes_stream().boxed();
        let first = tokio::time::timeout(FIRST_BYTE_WAIT, stream.next()).await;
        let mut ttfb = None;
        let first = match first {
            Ok(Some(Ok(b))) => {
                ttfb = Some(dispatched.elapsed());
                Some(b)
            }
            Ok(Some(Err(e))) if !sse => {
                return with_routed(
                    error(
                        StatusCode::BAD_GATEWAY,
                        "upstream_failed",
                        "upstream_failed",
                        format!(
                            "{} failed while answering: {}",
                            self.what,
                            crate::services::short_error(&e)
                        ),
                    ),
                    &self.model,
                    &self.node,
                );
            }
            Ok(Some(Err(e))) => {
                // Nothing was relayed yet: the stream is only the error event.
                let mut r =
                    Relay::new(futures_util::stream::empty().boxed(), None, sse, &self.what);
                r.fail(&e);
                let mut resp = Response::new(Body::from_stream(r));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                return with_routed(resp, &self.model, &self.node);
            }
            Ok(None) => None,
            Err(_) => None,
        };
        let relay = Relay::new(stream, first, sse, &self.what);
        let mut resp = Response::new(Body::from_stream(relay));
        *resp.status_mut() = status;
        if let Some(ct) = content_type {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        if sse {
            // Tell reverse proxies in front of the controller not to buffer the stream.
            resp.headers_mut()
                .insert("x-accel-buffering", HeaderValue::from_static("no"));
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        let timing = server_timing(queue, Some(head), ttfb);
        if let Ok(v) = HeaderValue::from_str(&timing) {
            resp.headers_mut().insert("server-timing", v);
        }
        resp.extensions_mut().insert(Routed {
            model: self.model,
            node: self.node,
            first_byte: ttfb,
        });
        resp
    }
}

/// `Server-Timing` text: durations in milliseconds.
pub fn server_timing(queue: Duration, head: Option<Duration>, ttfb: Option<Duration>) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut parts = vec![format!("queue;dur={:.3}", ms(queue))];
    if let Some(h) = head {
        parts.push(format!(
            "upstream;dur={:.3};desc=\"upstream connect + response head\"",
            ms(h)
        ));
    }
    if let Some(f) = ttfb {
        parts.push(format!(
            "ttfb;dur={:.3};desc=\"upstream first byte\"",
            ms(f)
        ));
    }
    parts.join(", ")
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The relayed body: the upstream's chunks as they come. When a server-sent-event stream fails
/// part-way, it ends with an OpenAI error event and `[DONE]` (completing a half-sent event
/// first), so clients see why instead of a cut connection.
struct Relay {
    inner: ByteStream,
    first: Option<Bytes>,
    sse: bool,
    what: String,
    /// The last bytes sent, to know whether the stream stands at an event boundary.
    tail: Vec<u8>,
    trailer: Option<Bytes>,
    done: bool,
}

impl Relay {
    fn new(inner: ByteStream, first: Option<Bytes>, sse: bool, what: &str) -> Relay {
        Relay {
            inner,
            first,
            sse,
            what: what.to_string(),
            tail: Vec::new(),
            trailer: None,
            done: false,
        }
    }

    fn track(&mut self, b: &Bytes) {
        self.tail.extend_from_slice(&b[b.len().saturating_sub(4)..]);
        let excess = self.tail.len().saturating_sub(4);
        self.tail.drain(..excess);
    }

    fn at_boundary(&self) -> bool {
        self.tail.is_empty() || self.tail.ends_with(b"\n\n") || self.tail.ends_with(b"\r\n\r\n")
    }

    fn fail(&mut self, e: &reqwest::Error) {
        self.done = true;
        let event = json!({"error": {
            "message": format!("{} failed mid-stream: {}", self.what, crate::services::short_error(e)),
            "type": "upstream_error",
            "param": null,
            "code": "upstream_failed",
        }});
        let sep = if self.at_boundary() { "" } else { "\n\n" };
        self.trailer = Some(Bytes::from(format!(
            "{sep}data: {event}\n\ndata: [DONE]\n\n"
        )));
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(b) = self.first.take() {
            self.track(&b);
            return Poll::Ready(Some(Ok(b)));
        }
        if let Some(t) = self.trailer.take() {
            return Poll::Ready(Some(Ok(t)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.track(&b);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                if self.sse {
                    self.fail(&e);
                    Poll::Ready(self.trailer.take().map(Ok))
                } else {
                    self.done = true;
                    Poll::Ready(Some(Err(std::io::Error::other(format!(
                        "{} failed mid-body: {e}",
                        self.what
                    )))))
                }
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_timing_is_well_formed() {
        let t = server_timing(
            Duration::from_micros(120),
            Some(Duration::from_millis(2)),
            Some(Duration::from_millis(15)),
        );
        assert_eq!(
            t,
            "queue;dur=0.120, upstream;dur=2.000;desc=\"upstream connect + response head\", ttfb;dur=15.000;desc=\"upstream first byte\""
        );
    }
}
