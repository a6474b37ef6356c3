//! The API of what happens on the boxes: hardware, containers, logs, models on disk, downloads,
//! Wake-on-LAN. Every request to a box travels as a typed operation over the agent link
//! ([`call`]); the box's answer comes back typed and is served as JSON.
//!
//! Invariants: user input (container names, repo ids, paths, MACs) is validated here before it
//! reaches a box, and the agent validates again; an operation error keeps the agent's message
//! and maps its kind to an HTTP status.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spark_common::models::{ModelTarget, validate_repo_id, validate_revision};
use spark_common::ops::{
    DownloadRequest, Op, OpError, OpErrorKind, OpOutput, StreamItem, validate_container_name,
};
use tokio::sync::broadcast;

use crate::App;
use crate::api::{Actor, ApiError, JsonBody, optional_body};
use crate::registry::Reply;

/// How long a quick operation may take before the API gives up on the box.
const QUICK: Duration = Duration::from_secs(30);
/// Stop/restart wait for the container's own grace period plus this.
const STOP_SLACK: Duration = Duration::from_secs(15);

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/hardware", get(hardware))
        .route("/nodes/{id}/containers", get(containers))
        .route("/nodes/{id}/containers/{name}/logs", get(logs))
        .route(
            "/nodes/{id}/containers/{name}/{action}",
            post(container_action),
        )
        .route("/nodes/{id}/wake", post(wake))
        .route("/models/disk", get(models_disk).delete(delete_model))
        .route("/models/download", post(start_download))
        .route("/models/downloads", get(list_downloads))
        .route("/models/downloads/{id}", get(get_download))
        .route("/models/downloads/{id}/events", get(download_events))
}

// ---------- calling a box ----------

fn op_api_error(e: OpError) -> ApiError {
    let (status, code) = match e.kind {
        OpErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
        OpErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        OpErrorKind::Refused => (StatusCode::FORBIDDEN, "refused"),
        OpErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        OpErrorKind::DockerUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "docker_unavailable"),
        OpErrorKind::Unauthorized => (StatusCode::BAD_GATEWAY, "upstream_unauthorized"),
        OpErrorKind::Upstream => (StatusCode::BAD_GATEWAY, "upstream_error"),
        OpErrorKind::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
        OpErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        OpErrorKind::Internal => (StatusCode::BAD_GATEWAY, "agent_error"),
    };
    ApiError::new(status, code, e.message)
}

fn not_connected(app: &App, node_id: &str) -> ApiError {
    if let Some(live) = app.registry.get(node_id) {
        // Connected, but its agent predates operations (protocol 1.0).
        return ApiError::new(
            StatusCode::CONFLICT,
            "agent_too_old",
            format!(
                "the agent on this node (version {}, protocol {}) cannot perform operations; \
                 upgrade it to {} or later",
                live.agent_version,
                live.protocol,
                spark_common::SOFTWARE_VERSION
            ),
        );
    }
    match app.db.node(node_id) {
        Ok(Some(n)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_offline",
            format!(
                "node '{}' is not connected; it was last seen {}",
                n.name,
                n.last_seen
                    .map(crate::rfc3339)
                    .unwrap_or_else(|| "never".into())
            ),
        ),
        _ => unknown_node(node_id),
    }
}

fn unknown_node(node_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no node with id {node_id:?}; GET /api/nodes lists them"),
    )
}

/// Resolve a node by id or by name.
fn node_id(app: &App, key: &str) -> Result<(String, String), ApiError> {
    if let Some(n) = app.db.node(key)? {
        return Ok((n.id, n.name));
    }
    app.db
        .nodes(false)?
        .into_iter()
        .find(|n| n.name == key)
        .map(|n| (n.id, n.name))
        .ok_or_else(|| unknown_node(key))
}

/// Perform `op` on a node and wait for its result (stream items are ignored).
pub async fn call(app: &App, node_id: &str, op: Op, limit: Duration) -> Result<OpOutput, ApiError> {
    let kind = op.kind();
    let mut pending = app
        .registry
        .request(node_id, op)
        .ok_or_else(|| not_connected(app, node_id))?;
    let wait = async {
        loop {
            match pending.next().await {
                Some(Reply::Stream(_)) => continue,
                Some(Reply::Done(r)) => return r.map_err(op_api_error),
                None => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "node_offline",
                        format!("the node disconnected before answering {kind}"),
                    ));
                }
            }
        }
    };
    tokio::time::timeout(limit, wait).await.map_err(|_| {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the node did not answer {kind} within {} s",
                limit.as_secs()
            ),
        )
    })?
}

fn audit(app: &App, kind: &str, node: Option<&str>, actor: &Actor, message: &str) {
    let _ = app.db.add_event(kind, node, Some(&actor.0), message);
}

// ---------- hardware ----------

#[derive(Serialize)]
struct HardwareNode {
    id: String,
    name: String,
    connected: bool,
    /// When the telemetry was received (RFC 3339).
    updated_at: Option<String>,
    #[serde(flatten)]
    telemetry: Value,
}

pub(crate) async fn hardware(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for row in app.db.nodes(false)? {
        let live = app.registry.get(&row.id);
        let telemetry = live
            .as_ref()
            .and_then(|l| l.telemetry.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| {
                json!({"host": live.as_ref().and_then(|l| l.host.clone()), "gpu": null, "nics": [], "store": [], "docker": null})
            });
        out.push(HardwareNode {
            connected: live.is_some(),
            updated_at: live
                .as_ref()
                .and_then(|l| l.telemetry_at)
                .map(crate::rfc3339),
            id: row.id,
            name: row.name,
            telemetry,
        });
    }
    Ok(Json(json!({ "nodes": out })))
}

// ---------- containers ----------

async fn containers(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (id, name) = node_id(&app, &id)?;
    let live = app
        .registry
        .get(&id)
        .ok_or_else(|| not_connected(&app, &id))?;
    let Some(list) = live.containers else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("node '{name}' has not reported its containers yet"),
        ));
    };
    Ok(Json(json!({
        "node": {"id": id, "name": name},
        "docker": list.docker,
        "containers": list.containers,
        "updated_at": crate::rfc3339(list.received_at),
    })))
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<u32>,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    timestamps: bool,
}

async fn logs(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let (id, _) = node_id(&app, &id)?;
    validate_container_name(&name).map_err(ApiError::bad_request)?;
    let tail = q.tail.unwrap_or(200).min(100_000);
    let op = Op::Logs {
        name: name.clone(),
        tail,
        follow: q.follow,
        timestamps: q.timestamps,
    };
    if !q.follow {
        let out = call(&app, &id, op, QUICK).await?;
        let OpOutput::Logs(lines) = out else {
            return Err(unexpected());
        };
        return Ok(Json(json!({"container": name, "lines": lines})).into_response());
    }
    // Follow: an SSE stream of `log` events; the request to the agent is cancelled when the
    // client goes away (the stream, and with it the pending request, is dropped).
    let app2 = app.clone();
    // Check the container first so an error is a proper HTTP error, not a broken stream.
    call(
        &app,
        &id,
        Op::Logs {
            name: name.clone(),
            tail: 0,
            follow: false,
            timestamps: false,
        },
        QUICK,
    )
    .await?;
    let stream = async_stream(move |tx| async move {
        let Some(mut pending) = app2.registry.request(&id, op) else {
            let _ = tx.send(error_event("the node is not connected")).await;
            return;
        };
        loop {
            let ev = match pending.next().await {
                Some(Reply::Stream(StreamItem::Log(line))) => {
                    Event::default().event("log").json_data(&line).ok()
                }
                Some(Reply::Stream(_)) => None,
                Some(Reply::Done(Ok(_))) => {
                    let _ = tx
                        .send(Event::default().event("end").data("the log stream ended"))
                        .await;
                    return;
                }
                Some(Reply::Done(Err(e))) => {
                    let _ = tx.send(error_event(&e.message)).await;
                    return;
                }
                None => {
                    let _ = tx.send(error_event("the node disconnected")).await;
                    return;
                }
            };
            if let Some(ev) = ev
                && tx.send(ev).await.is_err()
            {
                return; // client gone: dropping `pending` cancels the follow on the agent
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn error_event(message: &str) -> Event {
    Event::default()
        .event("error")
        .json_data(json!({"message": message}))
        .unwrap_or_default()
}

fn unexpected() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "agent_error",
        "the agent answered with an unexpected result",
    )
}

/// An SSE stream fed by a task; the task ends when the client disconnects.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    let task = tokio::spawn(f(tx));
    let guard = AbortOnDrop(task);
    futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|ev| (Ok(ev), (rx, guard)))
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    timeout_secs: Option<u32>,
}

async fn container_action(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((id, name, action)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let (id, node_name) = node_id(&app, &id)?;
    validate_container_name(&name).map_err(ApiError::bad_request)?;
    let body: ActionBody = optional_body(&body, "{\"timeout_secs\": 10}")?;
    let timeout_secs = body.timeout_secs.unwrap_or(10).min(600);
    let (op, limit) = match action.as_str() {
        "start" => (Op::StartContainer { name: name.clone() }, QUICK),
        "stop" => (
            Op::StopContainer {
                name: name.clone(),
                timeout_secs,
            },
            Duration::from_secs(u64::from(timeout_secs)) + STOP_SLACK,
        ),
        "restart" => (
            Op::RestartContainer {
                name: name.clone(),
                timeout_secs,
            },
            Duration::from_secs(u64::from(timeout_secs)) + STOP_SLACK,
        ),
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown container action '{other}': use start, stop or restart"),
            ));
        }
    };
    let result = call(&app, &id, op, limit).await;
    let outcome = match &result {
        Ok(_) => "done".to_string(),
        Err(e) => format!("failed: {}", e.message),
    };
    audit(
        &app,
        &format!("container_{action}"),
        Some(&id),
        &actor,
        &format!("{action} container '{name}' on '{node_name}': {outcome}"),
    );
    result?;
    Ok(Json(
        json!({"node": id, "container": name, "action": action, "ok": true}),
    ))
}

// ---------- models ----------

async fn models_disk(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let rows = app.db.nodes(false)?;
    let scans = rows.into_iter().map(|row| {
        let app = app.clone();
        async move {
            if app.registry.get(&row.id).is_none() {
                return json!({"id": row.id, "name": row.name, "connected": false, "models": [],
                    "error": "node is not connected"});
            }
            match call(&app, &row.id, Op::ScanModels, Duration::from_secs(60)).await {
                Ok(OpOutput::Models(inv)) => {
                    let total: u64 = inv.models.iter().map(|m| m.size_bytes).sum();
                    json!({"id": row.id, "name": row.name, "connected": true,
                        "hf_cache": inv.hf_cache, "local_roots": inv.local_roots,
                        "models": inv.models, "warnings": inv.warnings, "total_bytes": total})
                }
                Ok(_) => json!({"id": row.id, "name": row.name, "connected": true, "models": [],
                    "error": "unexpected answer from the agent"}),
                Err(e) => json!({"id": row.id, "name": row.name, "connected": true, "models": [],
                    "error": e.message}),
            }
        }
    });
    let nodes = futures_util::future::join_all(scans).await;
    Ok(Json(json!({ "nodes": nodes })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteModelBody {
    node: String,
    repo: Option<String>,
    path: Option<String>,
}

async fn delete_model(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    JsonBody(body): JsonBody<DeleteModelBody>,
) -> Result<Json<Value>, ApiError> {
    let bad = ApiError::bad_request;
    let (id, node_name) = node_id(&app, &body.node)?;
    let target = match (body.repo, body.path) {
        (Some(repo), None) => {
            validate_repo_id(&repo).map_err(bad)?;
            ModelTarget::Repo(repo)
        }
        (None, Some(path)) => {
            if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
                return Err(bad(format!(
                    "path '{path}' must be absolute and must not contain '..'"
                )));
            }
            ModelTarget::Path(path)
        }
        _ => return Err(bad("give exactly one of \"repo\" or \"path\"".into())),
    };
    if let ModelTarget::Repo(repo) = &target
        && app.downloads.active_for(&id, repo)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "download_running",
            format!("'{repo}' is being downloaded to '{node_name}'; wait for it to finish"),
        ));
    }
    let what = match &target {
        ModelTarget::Repo(r) => r.clone(),
        ModelTarget::Path(p) => p.clone(),
    };
    let result = call(&app, &id, Op::DeleteModel(target), Duration::from_secs(300)).await;
    match result {
        Ok(OpOutput::Deleted { path, freed_bytes }) => {
            audit(
                &app,
                "model_deleted",
                Some(&id),
                &actor,
                &format!(
                    "deleted '{what}' on '{node_name}' ({path}), freed {:.1} GB",
                    freed_bytes as f64 / 1e9
                ),
            );
            Ok(Json(
                json!({"node": id, "path": path, "freed_bytes": freed_bytes}),
            ))
        }
        Ok(_) => Err(unexpected()),
        Err(e) => {
            audit(
                &app,
                "model_delete_failed",
                Some(&id),
                &actor,
                &format!("deleting '{what}' on '{node_name}' failed: {}", e.message),
            );
            Err(e)
        }
    }
}

// ---------- downloads ----------

/// Downloads in progress and recently finished, in memory.
#[derive(Default)]
pub struct Downloads {
    inner: Mutex<DownloadsInner>,
}

#[derive(Default)]
struct DownloadsInner {
    next: u64,
    jobs: HashMap<String, Arc<Job>>,
}

struct Job {
    id: String,
    seq: u64,
    repo: String,
    revision: Option<String>,
    started_at: i64,
    state: Mutex<JobState>,
    events: broadcast::Sender<(String, Value)>,
}

#[derive(Clone, Serialize)]
struct NodeProgress {
    node: String,
    name: String,
    status: String,
    current_bytes: u64,
    total_bytes: Option<u64>,
    files: HashMap<String, (u64, Option<u64>)>,
    error: Option<String>,
    result: Option<Value>,
}

struct JobState {
    nodes: Vec<NodeProgress>,
    finished_at: Option<i64>,
    history: Vec<(String, Value)>,
}

impl Downloads {
    fn active_for(&self, node: &str, repo: &str) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.jobs.values().any(|j| {
            j.repo == repo && {
                let st = j.state.lock().unwrap_or_else(|p| p.into_inner());
                st.finished_at.is_none()
                    && st
                        .nodes
                        .iter()
                        .any(|n| n.node == node && n.status == "downloading")
            }
        })
    }

    fn get(&self, id: &str) -> Option<Arc<Job>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.jobs.get(id).cloned()
    }
}

impl Job {
    fn view(&self) -> Value {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let status = if st.finished_at.is_none() {
            "running"
        } else if st.nodes.iter().all(|n| n.status == "done") {
            "done"
        } else {
            "failed"
        };
        json!({
            "id": self.id,
            "repo": self.repo,
            "revision": self.revision,
            "status": status,
            "started_at": crate::rfc3339(self.started_at),
            "finished_at": st.finished_at.map(crate::rfc3339),
            "nodes": st.nodes.iter().map(|n| json!({
                "node": n.node, "name": n.name, "status": n.status,
                "current_bytes": n.current_bytes, "total_bytes": n.total_bytes,
                "error": n.error, "result": n.result,
            })).collect::<Vec<_>>(),
        })
    }

    fn publish(&self, event: &str, data: Value) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Keep the history small: progress events replace each other per node.
        if event == "progress"
            && let Some(last) = st
                .history
                .iter()
                .rposition(|(e, d)| e == "progress" && d.get("node") == data.get("node"))
        {
            st.history.remove(last);
        }
        st.history.push((event.to_string(), data.clone()));
        drop(st);
        let _ = self.events.send((event.to_string(), data));
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownloadBody {
    repo: String,
    revision: Option<String>,
    nodes: Vec<String>,
}

async fn start_download(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    JsonBody(body): JsonBody<DownloadBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let bad = ApiError::bad_request;
    validate_repo_id(&body.repo).map_err(bad)?;
    if let Some(r) = &body.revision {
        validate_revision(r).map_err(bad)?;
    }
    if body.nodes.is_empty() {
        return Err(bad("\"nodes\" must name at least one node".into()));
    }
    let mut targets = Vec::new();
    for key in &body.nodes {
        let (id, name) = node_id(&app, key)?;
        if app.registry.get(&id).is_none() {
            return Err(not_connected(&app, &id));
        }
        if app.downloads.active_for(&id, &body.repo) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "download_running",
                format!("'{}' is already being downloaded to '{name}'", body.repo),
            ));
        }
        if !targets.iter().any(|(i, _): &(String, String)| *i == id) {
            targets.push((id, name));
        }
    }
    let job = {
        let mut inner = app
            .downloads
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        inner.next += 1;
        let id = format!("dl-{}", inner.next);
        let job = Arc::new(Job {
            id: id.clone(),
            seq: inner.next,
            repo: body.repo.clone(),
            revision: body.revision.clone(),
            started_at: crate::now_ms(),
            state: Mutex::new(JobState {
                nodes: targets
                    .iter()
                    .map(|(id, name)| NodeProgress {
                        node: id.clone(),
                        name: name.clone(),
                        status: "downloading".into(),
                        current_bytes: 0,
                        total_bytes: None,
                        files: HashMap::new(),
                        error: None,
                        result: None,
                    })
                    .collect(),
                finished_at: None,
                history: Vec::new(),
            }),
            events: broadcast::channel(1024).0,
        });
        inner.jobs.insert(id, job.clone());
        job
    };
    audit(
        &app,
        "model_download_started",
        None,
        &actor,
        &format!(
            "download of '{}' to {} started ({})",
            body.repo,
            targets
                .iter()
                .map(|(_, n)| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", "),
            job.id
        ),
    );
    // The download runs on its own: closing the page does not stop it.
    tokio::spawn(run_download(app.clone(), job.clone(), targets, actor));
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": job.id,
            "status_url": format!("/api/models/downloads/{}", job.id),
            "events_url": format!("/api/models/downloads/{}/events", job.id),
            "download": job.view(),
        })),
    ))
}

async fn run_download(app: Arc<App>, job: Arc<Job>, targets: Vec<(String, String)>, actor: Actor) {
    let per_node = targets.into_iter().map(|(node, name)| {
        let app = app.clone();
        let job = job.clone();
        let actor = actor.clone();
        async move {
            let req = DownloadRequest {
                repo: job.repo.clone(),
                revision: job.revision.clone(),
                endpoint: None,
                token: app
                    .settings
                    .get()
                    .secrets
                    .huggingface_token
                    .clone()
                    .map(spark_common::ops::Secret),
            };
            let outcome = match app.registry.request(&node, Op::DownloadModel(req)) {
                None => Err(format!("node '{name}' is not connected")),
                Some(mut pending) => loop {
                    match pending.next().await {
                        Some(Reply::Stream(StreamItem::Progress(p))) => {
                            let data = {
                                let mut st = job.state.lock().unwrap_or_else(|p| p.into_inner());
                                let Some(n) = st.nodes.iter_mut().find(|n| n.node == node) else {
                                    continue;
                                };
                                if let Some(item) = &p.item {
                                    n.files.insert(item.clone(), (p.current_bytes, p.total_bytes));
                                }
                                n.current_bytes = n.files.values().map(|(c, _)| c).sum();
                                let totals: Option<u64> =
                                    n.files.values().map(|(_, t)| *t).sum::<Option<u64>>();
                                n.total_bytes = totals;
                                json!({"node": node, "name": name, "status": p.status, "item": p.item,
                                    "file_bytes": p.current_bytes, "file_total": p.total_bytes,
                                    "current_bytes": n.current_bytes, "total_bytes": n.total_bytes})
                            };
                            job.publish("progress", data);
                        }
                        Some(Reply::Stream(_)) => {}
                        Some(Reply::Done(Ok(out))) => {
                            break Ok(serde_json::to_value(out).unwrap_or(Value::Null));
                        }
                        Some(Reply::Done(Err(e))) => break Err(e.message),
                        None => break Err(format!("node '{name}' disconnected during the download")),
                    }
                },
            };
            {
                let mut st = job.state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(n) = st.nodes.iter_mut().find(|n| n.node == node) {
                    match &outcome {
                        Ok(v) => {
                            n.status = "done".into();
                            n.result = Some(v.clone());
                        }
                        Err(e) => {
                            n.status = "failed".into();
                            n.error = Some(e.clone());
                        }
                    }
                }
            }
            match &outcome {
                Ok(v) => job.publish("node_done", json!({"node": node, "name": name, "result": v})),
                Err(e) => job.publish("node_failed", json!({"node": node, "name": name, "message": e})),
            }
            let _ = app.db.add_event(
                if outcome.is_ok() { "model_downloaded" } else { "model_download_failed" },
                Some(&node),
                Some(&actor.0),
                &match &outcome {
                    Ok(_) => format!("'{}' downloaded to '{name}' ({})", job.repo, job.id),
                    Err(e) => format!("download of '{}' to '{name}' failed: {e}", job.repo),
                },
            );
        }
    });
    futures_util::future::join_all(per_node).await;
    job.state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .finished_at = Some(crate::now_ms());
    job.publish("finished", job.view());
}

pub(crate) async fn list_downloads(State(app): State<Arc<App>>) -> Json<Value> {
    let jobs: Vec<Arc<Job>> = {
        let inner = app
            .downloads
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        inner.jobs.values().cloned().collect()
    };
    let mut jobs = jobs;
    // Newest first.
    jobs.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.seq.cmp(&a.seq)));
    let views: Vec<Value> = jobs.iter().map(|j| j.view()).collect();
    Json(json!({ "downloads": views }))
}

fn unknown_download(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no download {id:?}; GET /api/models/downloads lists them"),
    )
}

async fn get_download(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = app
        .downloads
        .get(&id)
        .ok_or_else(|| unknown_download(&id))?;
    Ok(Json(job.view()))
}

/// SSE: the events so far (the latest progress per node), then live ones, ending with
/// `finished`. Reconnecting replays, so a reopened page re-attaches.
async fn download_events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = app
        .downloads
        .get(&id)
        .ok_or_else(|| unknown_download(&id))?;
    let stream = async_stream(move |tx| async move {
        let (history, mut rx, finished) = {
            let st = job.state.lock().unwrap_or_else(|p| p.into_inner());
            (
                st.history.clone(),
                job.events.subscribe(),
                st.finished_at.is_some(),
            )
        };
        for (event, data) in history {
            let ev = Event::default()
                .event(&event)
                .json_data(&data)
                .unwrap_or_default();
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        if finished {
            return;
        }
        loop {
            match rx.recv().await {
                Ok((event, data)) => {
                    let last = event == "finished";
                    let ev = Event::default()
                        .event(&event)
                        .json_data(&data)
                        .unwrap_or_default();
                    if tx.send(ev).await.is_err() || last {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

// ---------- Wake-on-LAN ----------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WakeBody {
    mac: Option<String>,
}

async fn wake(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let (id, name) = node_id(&app, &id)?;
    let body: WakeBody = optional_body(&body, "{\"mac\": \"aa:bb:cc:dd:ee:ff\"}")?;
    let outcome = crate::wake::wake(&app, &id, body.mac).await;
    let message = match &outcome {
        Ok(v) => format!(
            "Wake-on-LAN for '{name}' sent by {} to {}",
            v["sent_by"].as_str().unwrap_or("?"),
            v["mac"].as_str().unwrap_or("?")
        ),
        Err(e) => format!("Wake-on-LAN for '{name}' failed: {}", e.message),
    };
    audit(&app, "node_wake", Some(&id), &actor, &message);
    outcome.map(Json)
}
