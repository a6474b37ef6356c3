//! Services: the always-on model servers beside the big LLM (speech, embeddings, the vector
//! store, a second LLM, custom ones), as configuration, and what the controller last learned of
//! each by asking it.
//!
//! A service lives on a node (by id, name, or `#N`, the N-th enrolled node — the last one when
//! there are fewer) at a port, or at an explicit base URL. The controller reaches it by the
//! node's IP (never a `.local` name). Every few seconds a discovery pass asks each enabled
//! service for its health and what it serves (models, voices); the gateway and `/api/endpoints`
//! read that cache and never wait on a slow box.
//!
//! Owns: the `services` table, the discovery cache. Never: acts on containers (that is the
//! agent's, through typed operations).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::App;
use crate::api::{Actor, ApiError};

/// What a service is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An OpenAI-compatible LLM server outside the swap arbiter (e.g. a second vLLM).
    Llm,
    /// Speech to text (Parakeet, an ASR NIM).
    Asr,
    /// Text to speech (Kokoro, Magpie).
    Tts,
    /// Embeddings and rerank (TEI, or vLLM in pooling mode).
    Embeddings,
    /// The vector store (Qdrant).
    VectorStore,
    /// Anything else: health only.
    Custom,
}

/// The HTTP API a service speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI-shaped (vLLM, Parakeet servers, many others).
    Openai,
    /// Hugging Face text-embeddings-inference.
    Tei,
    /// Kokoro-FastAPI.
    Kokoro,
    /// NVIDIA Magpie / Riva TTS NIM.
    Magpie,
    /// Qdrant REST.
    Qdrant,
    /// Plain HTTP: only the health path is known.
    Http,
}

impl Kind {
    fn default_api(self) -> Api {
        match self {
            Kind::Llm | Kind::Asr => Api::Openai,
            Kind::Tts => Api::Kokoro,
            Kind::Embeddings => Api::Tei,
            Kind::VectorStore => Api::Qdrant,
            Kind::Custom => Api::Http,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Llm => "llm",
            Kind::Asr => "asr",
            Kind::Tts => "tts",
            Kind::Embeddings => "embeddings",
            Kind::VectorStore => "vector_store",
            Kind::Custom => "custom",
        }
    }
}

impl Api {
    fn default_health(self) -> &'static str {
        match self {
            Api::Magpie => "/v1/health/ready",
            Api::Qdrant => "/readyz",
            _ => "/health",
        }
    }

    fn allowed_for(self, kind: Kind) -> bool {
        match kind {
            Kind::Llm | Kind::Asr => matches!(self, Api::Openai),
            Kind::Tts => matches!(self, Api::Kokoro | Api::Magpie | Api::Openai),
            Kind::Embeddings => matches!(self, Api::Tei | Api::Openai),
            Kind::VectorStore => matches!(self, Api::Qdrant),
            Kind::Custom => true,
        }
    }
}

/// One service as configured (`PUT /api/services/{name}` takes this without `name`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default)]
    pub name: String,
    pub kind: Kind,
    /// Defaults from the kind (Kokoro for TTS, TEI for embeddings, …).
    #[serde(default)]
    pub api: Option<Api>,
    /// Node id, node name, or `#N`; with `port`. Ignored when `url` is set.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// A base URL instead of node + port (a server outside the cluster's agents).
    #[serde(default)]
    pub url: Option<String>,
    /// The container the agent manages for it.
    #[serde(default)]
    pub container: Option<String>,
    /// Defaults from the API (`/health`, `/readyz` for Qdrant, `/v1/health/ready` for Magpie).
    #[serde(default)]
    pub health_path: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The model id to advertise when the server does not say (e.g. an ASR server).
    #[serde(default)]
    pub model: Option<String>,
}

fn yes() -> bool {
    true
}

impl ServiceConfig {
    pub fn api(&self) -> Api {
        self.api.unwrap_or(self.kind.default_api())
    }

    pub fn health_path(&self) -> &str {
        self.health_path
            .as_deref()
            .unwrap_or(self.api().default_health())
    }

    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name).map_err(|e| format!("name: {e}"))?;
        let api = self.api();
        if !api.allowed_for(self.kind) {
            return Err(format!(
                "api: {api:?} does not serve kind {:?}",
                self.kind.as_str()
            ));
        }
        match (&self.url, &self.node, self.port) {
            (Some(u), _, _) => validate_url(u).map_err(|e| format!("url: {e}"))?,
            (None, Some(n), Some(p)) => {
                validate_node_selector(n).map_err(|e| format!("node: {e}"))?;
                if p == 0 {
                    return Err("port: must be 1 to 65535".into());
                }
            }
            _ => {
                return Err(
                    "give \"url\" (a base URL) or both \"node\" (id, name or #N) and \"port\""
                        .into(),
                );
            }
        }
        if let Some(c) = &self.container {
            spark_common::ops::validate_container_name(c).map_err(|e| format!("container: {e}"))?;
        }
        if let Some(h) = &self.health_path
            && (!h.starts_with('/') || h.len() > 200 || !h.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!(
                "health_path: {h:?} must be a path starting with '/' (no spaces, at most 200 characters)"
            ));
        }
        if let Some(m) = &self.model
            && (m.is_empty() || m.len() > 200 || m.chars().any(char::is_control))
        {
            return Err("model: must be 1 to 200 printable characters".into());
        }
        Ok(())
    }
}

/// Service names: lower-case letters, digits, `-` and `_`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a service name (1-40 of a-z, 0-9, '-', '_', starting with a letter or digit)"
        ))
    }
}

/// A base URL: `http(s)://host[:port][/path]`, no credentials, query or fragment.
pub fn validate_url(u: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(u).map_err(|e| format!("{u:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{u:?} must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{u:?} has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{u:?} must not carry credentials"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{u:?} must not have a query or fragment"));
    }
    Ok(())
}

fn validate_node_selector(n: &str) -> Result<(), String> {
    if let Some(pos) = n.strip_prefix('#') {
        return match pos.parse::<usize>() {
            Ok(p) if p >= 1 => Ok(()),
            _ => Err(format!("{n:?}: #N needs a position from 1")),
        };
    }
    if n.is_empty() || n.len() > 64 || n.chars().any(|c| c.is_control() || c == '/') {
        return Err(format!("{n:?} is not a node id or name"));
    }
    Ok(())
}

/// The usual layout of a DGX Spark pair: speech, embeddings and the vector store on node 2.
pub fn defaults() -> Vec<ServiceConfig> {
    let on2 = |name: &str, kind, port, container: &str| ServiceConfig {
        name: name.into(),
        kind,
        api: None,
        node: Some("#2".into()),
        port: Some(port),
        url: None,
        container: Some(container.into()),
        health_path: None,
        enabled: true,
        model: None,
    };
    vec![
        on2("asr", Kind::Asr, 8000, "parakeet"),
        on2("tts", Kind::Tts, 8880, "kokoro"),
        on2("embeddings", Kind::Embeddings, 8080, "embeddings"),
        on2("qdrant", Kind::VectorStore, 6333, "qdrant"),
    ]
}

// ---------- storage ----------

/// Write the default services once, at the first start, so that an operator's removal of one
/// sticks.
pub fn seed_defaults(app: &App) -> Result<(), crate::db::DbError> {
    if app.db.meta("services_seeded")?.is_none() {
        for s in defaults() {
            store(app, &s)?;
        }
        app.db.set_meta("services_seeded", "1")?;
    }
    Ok(())
}

/// Every configured service, by name.
pub fn all(app: &App) -> Result<Vec<ServiceConfig>, crate::db::DbError> {
    let rows: Vec<(String, String)> = app.db.with(|c| {
        let mut st = c.prepare("SELECT name, body FROM services ORDER BY name")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    })?;
    Ok(rows
        .into_iter()
        .filter_map(
            |(name, body)| match serde_json::from_str::<ServiceConfig>(&body) {
                Ok(mut s) => {
                    s.name = name;
                    Some(s)
                }
                Err(e) => {
                    tracing::warn!(%name, error = %e, "stored service no longer parses; ignored");
                    None
                }
            },
        )
        .collect())
}

fn store(app: &App, s: &ServiceConfig) -> Result<(), crate::db::DbError> {
    let body = serde_json::to_string(s).unwrap_or_default();
    app.db.with(|c| {
        c.execute(
            "INSERT INTO services(name, body, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![s.name, body, crate::now_ms()],
        )
        .map(|_| ())
    })
}

// ---------- discovery ----------

/// What the controller last learned of a service.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    /// Where it is reached now (none while its node is unknown or not connected).
    pub base_url: Option<String>,
    /// The node it is on (id and name), when on a node.
    pub node_id: Option<String>,
    pub node_name: Option<String>,
    /// It answered at all.
    pub reachable: bool,
    /// Its health path answered 2xx.
    pub healthy: bool,
    /// Why not, in words.
    pub error: Option<String>,
    /// Model ids it serves (LLM, ASR, embeddings).
    pub models: Vec<String>,
    /// TTS voices.
    pub voices: Vec<String>,
    pub latency_ms: Option<u64>,
    pub checked_at: Option<String>,
    /// Since when `healthy` has had its current value (unix ms).
    #[serde(skip)]
    pub since: i64,
    /// The same, as text.
    pub healthy_since: Option<String>,
}

/// The discovery cache: service name -> (config, status).
#[derive(Debug, Default)]
pub struct Cache(RwLock<Arc<HashMap<String, (ServiceConfig, Status)>>>);

impl Cache {
    pub fn snapshot(&self) -> Arc<HashMap<String, (ServiceConfig, Status)>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, name: &str, entry: Option<(ServiceConfig, Status)>) {
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        let mut map = (**guard).clone();
        match entry {
            Some(e) => map.insert(name.to_string(), e),
            None => map.remove(name),
        };
        *guard = Arc::new(map);
    }

    /// A service by name, with its status.
    pub fn get(&self, name: &str) -> Option<(ServiceConfig, Status)> {
        self.snapshot().get(name).cloned()
    }

    /// Enabled services of one kind, by name.
    pub fn of_kind(&self, kind: Kind) -> Vec<(ServiceConfig, Status)> {
        let snap = self.snapshot();
        let mut out: Vec<_> = snap
            .values()
            .filter(|(c, _)| c.kind == kind && c.enabled)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn client() -> &'static reqwest::Client {
    static C: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        spark_agent::install_crypto_provider();
        reqwest::Client::builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .connect_timeout(PROBE_TIMEOUT)
            .build()
            .unwrap_or_default()
    })
}

/// Where a service is reached now, and its node.
fn locate(app: &App, s: &ServiceConfig, nodes: &[crate::db::NodeRow]) -> Locate {
    if let Some(u) = &s.url {
        return Locate {
            base: Some(u.trim_end_matches('/').to_string()),
            ..Default::default()
        };
    }
    let (Some(sel), Some(port)) = (&s.node, s.port) else {
        return Locate::default();
    };
    let row = match sel.strip_prefix('#').and_then(|p| p.parse::<usize>().ok()) {
        Some(pos) => nodes.get(pos.saturating_sub(1)).or(nodes.last()),
        None => nodes.iter().find(|n| &n.id == sel || &n.name == sel),
    };
    let Some(row) = row else {
        return Locate {
            why: Some(format!("no node {sel:?} (GET /api/nodes lists them)")),
            ..Default::default()
        };
    };
    let base = app.registry.get(&row.id).map(|live| {
        format!(
            "http://{}:{port}",
            crate::preflight::node_address(live.remote_ip)
        )
    });
    Locate {
        why: base
            .is_none()
            .then(|| format!("its node {} is not connected", row.name)),
        base,
        node: Some((row.id.clone(), row.name.clone())),
    }
}

#[derive(Default)]
struct Locate {
    base: Option<String>,
    node: Option<(String, String)>,
    why: Option<String>,
}

/// Ask one service for its health and what it serves.
async fn probe(s: &ServiceConfig, loc: Locate) -> Status {
    let mut st = Status {
        base_url: loc.base.clone(),
        node_id: loc.node.as_ref().map(|n| n.0.clone()),
        node_name: loc.node.as_ref().map(|n| n.1.clone()),
        checked_at: Some(crate::rfc3339(crate::now_ms())),
        ..Default::default()
    };
    if !s.enabled {
        st.error = Some("disabled".into());
        return st;
    }
    let Some(base) = loc.base else {
        st.error = loc.why.or(Some("no address".into()));
        return st;
    };
    let t = Instant::now();
    match client()
        .get(format!("{base}{}", s.health_path()))
        .send()
        .await
    {
        Ok(r) => {
            st.reachable = true;
            st.healthy = r.status().is_success();
            if !st.healthy {
                st.error = Some(format!(
                    "{} answered {} (loading or unhealthy)",
                    s.health_path(),
                    r.status()
                ));
            }
        }
        Err(e) => {
            st.error = Some(format!("unreachable at {base}: {}", short_error(&e)));
        }
    }
    st.latency_ms = Some(t.elapsed().as_millis() as u64);
    if st.healthy {
        discover(s, &base, &mut st).await;
    }
    if st.models.is_empty()
        && let Some(m) = &s.model
    {
        st.models.push(m.clone());
    }
    st
}

/// The shortest honest description of a client error (reqwest's Display hides the cause).
pub fn short_error(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    if e.is_timeout() {
        format!("timed out ({msg})")
    } else if e.is_connect() {
        format!("connection failed ({msg})")
    } else {
        msg
    }
}

async fn get_json(url: String) -> Option<Value> {
    let r = client().get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn discover(s: &ServiceConfig, base: &str, st: &mut Status) {
    match s.api() {
        Api::Openai => {
            if let Some(v) = get_json(format!("{base}/v1/models")).await {
                st.models = v["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect();
            }
        }
        Api::Tei => {
            if let Some(id) = get_json(format!("{base}/info"))
                .await
                .and_then(|v| v["model_id"].as_str().map(str::to_string))
            {
                st.models = vec![id];
            }
        }
        Api::Kokoro => {
            if let Some(v) = get_json(format!("{base}/v1/audio/voices")).await {
                // Current shape [{"id","name"}], legacy ["af_heart", …].
                st.voices = v["voices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().or_else(|| x["id"].as_str()).map(str::to_string))
                    .collect();
            }
            if st.models.is_empty() {
                st.models = vec!["kokoro".into()];
            }
        }
        Api::Magpie => {
            if let Some(Value::Object(map)) = get_json(format!("{base}/v1/audio/list_voices")).await
            {
                for entry in map.values() {
                    st.voices.extend(
                        entry["voices"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|x| x.as_str().map(str::to_string)),
                    );
                }
                st.voices.sort();
                st.voices.dedup();
            }
        }
        Api::Qdrant | Api::Http => {}
    }
}

/// Probe every service now and replace the cache.
pub async fn refresh_all(app: &App) {
    let Ok(configs) = all(app) else { return };
    let nodes = app.db.nodes(false).unwrap_or_default();
    let probes = configs.into_iter().map(|s| {
        let loc = locate(app, &s, &nodes);
        async move {
            let st = probe(&s, loc).await;
            (s, st)
        }
    });
    let results = futures_util::future::join_all(probes).await;
    let before = app.services.snapshot();
    let map: HashMap<_, _> = results
        .into_iter()
        .map(|(s, mut st)| {
            transition(app, &s, before.get(&s.name).map(|e| &e.1), &mut st);
            (s.name.clone(), (s, st))
        })
        .collect();
    *app.services.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
}

/// Probe one service now and update its cache entry.
pub async fn refresh_one(app: &App, s: ServiceConfig) -> Status {
    let nodes = app.db.nodes(false).unwrap_or_default();
    let mut st = probe(&s, locate(app, &s, &nodes)).await;
    let before = app.services.get(&s.name);
    transition(app, &s, before.as_ref().map(|e| &e.1), &mut st);
    app.services.replace(&s.name.clone(), Some((s, st.clone())));
    st
}

/// Carry `since` over, or log the service going up or down with how long it was the other way.
fn transition(app: &App, s: &ServiceConfig, before: Option<&Status>, st: &mut Status) {
    let now = crate::now_ms();
    match before {
        Some(b) if b.healthy == st.healthy => st.since = b.since,
        Some(b) if s.enabled => {
            st.since = now;
            let (kind, words) = if st.healthy {
                ("service_up", "up".to_string())
            } else {
                (
                    "service_down",
                    format!("down ({})", st.error.as_deref().unwrap_or("unhealthy")),
                )
            };
            let _ = app.db.add_subject_event(
                kind,
                Some(&format!("service:{}", s.name)),
                st.node_id.as_deref(),
                None,
                &format!(
                    "{} is {words} after {} {}",
                    s.name,
                    crate::human_duration(now - b.since),
                    if b.healthy { "up" } else { "down" }
                ),
            );
        }
        _ => st.since = now,
    }
    st.healthy_since = Some(crate::rfc3339(st.since));
}

/// The discovery loop: every `discovery_interval` until shutdown.
pub fn spawn_discovery(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(app.config.discovery_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = app.shutdown.cancelled() => break,
                _ = tick.tick() => refresh_all(&app).await,
            }
        }
    })
}

// ---------- API ----------

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/services", get(list)).route(
        "/services/{name}",
        get(show).put(put_service).delete(delete_service),
    )
}

fn view(app: &App, cfg: &ServiceConfig, st: Option<&Status>) -> Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    let container = st
        .and_then(|s| s.node_id.as_deref())
        .zip(cfg.container.as_deref())
        .and_then(|(node, name)| crate::health::container_info(app, node, name));
    if let Value::Object(o) = &mut v {
        o.insert("api".into(), json!(cfg.api()));
        o.insert("health_path".into(), json!(cfg.health_path()));
        o.insert("status".into(), json!(st));
        o.insert(
            "container_state".into(),
            json!(container.map(|c| json!({
                "state": c.state, "status": c.status, "health": c.health,
                "started_at": c.started_at, "exit_code": c.exit_code, "oom_killed": c.oom_killed,
                "docker_restart_count": c.restart_count,
            }))),
        );
        o.insert(
            "restart_count".into(),
            json!(app.health.restart_count(&cfg.name)),
        );
        o.insert("last_probe".into(), json!(app.health.last(&cfg.name)));
    }
    v
}

pub(crate) async fn list(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let configs = all(&app)?;
    let snap = app.services.snapshot();
    Ok(Json(Value::Array(
        configs
            .iter()
            .map(|c| view(&app, c, snap.get(&c.name).map(|e| &e.1)))
            .collect(),
    )))
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no service {name:?}; GET /api/services lists them"),
    )
}

async fn show(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cfg = all(&app)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| not_found(&name))?;
    let st = refresh_one(&app, cfg.clone()).await;
    Ok(Json(view(&app, &cfg, Some(&st))))
}

async fn put_service(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body must be a JSON service: {e}")))?;
    let mut cfg: ServiceConfig = serde_path_to_error::deserialize(v).map_err(|e| {
        ApiError::bad_request(format!(
            "{}: {} (a service is {{\"kind\", \"node\"+\"port\" or \"url\", \"api\"?, \"container\"?, \"health_path\"?, \"enabled\"?, \"model\"?}})",
            e.path(),
            e.inner()
        ))
    })?;
    if !cfg.name.is_empty() && cfg.name != name {
        return Err(ApiError::bad_request(format!(
            "name: the body says {:?} but the path says {name:?}",
            cfg.name
        )));
    }
    cfg.name = name;
    cfg.validate().map_err(ApiError::bad_request)?;
    store(&app, &cfg)?;
    let _ = app.db.add_event(
        "service_configured",
        None,
        Some(&actor.0),
        &format!("service {} configured ({})", cfg.name, cfg.kind.as_str()),
    );
    let st = refresh_one(&app, cfg.clone()).await;
    app.routes.invalidate();
    Ok(Json(view(&app, &cfg, Some(&st))))
}

async fn delete_service(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let n = app
        .db
        .with(|c| c.execute("DELETE FROM services WHERE name = ?1", [&name]))?;
    if n == 0 {
        return Err(not_found(&name));
    }
    app.services.replace(&name, None);
    app.routes.invalidate();
    let _ = app.db.add_event(
        "service_removed",
        None,
        Some(&actor.0),
        &format!("service {name} removed"),
    );
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(v: Value) -> Result<(), String> {
        let mut c: ServiceConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        if c.name.is_empty() {
            c.name = "svc".into();
        }
        c.validate()
    }

    #[test]
    fn service_configs_are_checked() {
        assert!(cfg(json!({"kind": "embeddings", "url": "http://10.0.0.2:8080"})).is_ok());
        assert!(cfg(json!({"kind": "asr", "node": "#2", "port": 8000})).is_ok());
        let bad = [
            (json!({"kind": "asr"}), "give \"url\""),
            (json!({"kind": "asr", "node": "#0", "port": 1}), "node"),
            (json!({"kind": "asr", "url": "file:///etc"}), "url"),
            (json!({"kind": "asr", "url": "http://u:p@h"}), "credentials"),
            (
                json!({"kind": "tts", "api": "qdrant", "url": "http://h"}),
                "api",
            ),
            (
                json!({"kind": "tts", "url": "http://h", "container": "a b"}),
                "container",
            ),
            (
                json!({"kind": "tts", "url": "http://h", "health_path": "health"}),
                "health_path",
            ),
            (
                json!({"name": "Bad Name", "kind": "tts", "url": "http://h"}),
                "name",
            ),
        ];
        for (v, want) in bad {
            let err = cfg(v.clone()).unwrap_err();
            assert!(err.contains(want), "{v} -> {err}");
        }
        assert!(cfg(json!({"kind": "tts", "url": "http://h", "extra": 1})).is_err());
    }

    #[test]
    fn defaults_are_valid() {
        for d in defaults() {
            d.validate().unwrap();
        }
    }
}
