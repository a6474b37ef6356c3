//! Swaps: changing the cluster's model.
//!
//! One arbiter owns every swap decision: a single task reading one event enum ([`Event`]), so
//! two requests can never both start a swap, and the lock is checked at the moment of decision.
//! A swap is a job that runs through phases — preflight, stopping, starting, loading, then ready
//! or failed — in its own task, streaming phase changes and the model server's log lines as
//! numbered events. Jobs and their events are persisted: a client that reconnects re-attaches
//! (from any event number), and after a controller restart the arbiter reconciles each
//! unfinished job with what the agents report (containers carry the job in a label): it
//! re-attaches to a model still loading, or fails the job and removes its containers. A job
//! never hangs: every phase has a deadline, the whole job the recipe's timeout.
//!
//! Readiness is `/health` 200, then `/v1/models` listing the served name, then a one-token
//! completion (an embedding for embedding models), probed every 200 ms.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spark_common::ops::{ContainerInfo, Op, OpOutput, StreamItem};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{Actor, ApiError, JsonBody};
use crate::preflight::{self, Check, LABEL_JOB, Plan, ROLE_LLM, ROLE_LLM_WORKER};
use crate::recipes::{self, Knobs, Recipe};
use crate::registry::Reply;
use crate::{App, boxes, catalog};

const PROBE_EVERY: Duration = Duration::from_millis(200);
const OP_LIMIT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT_SECS: u32 = 30;
/// How long a restarted controller waits for a job's nodes to reconnect.
const RECONNECT_GRACE: Duration = Duration::from_secs(30);
/// Log events kept per job (memory and database); the rest are streamed only.
const MAX_LOG_EVENTS: usize = 5000;
const LOG_TAIL: usize = 40;
/// Finished jobs kept in memory.
const KEEP_FINISHED: usize = 20;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Preflight,
    Stopping,
    Starting,
    Loading,
    Ready,
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Stopping => "stopping",
            Phase::Starting => "starting",
            Phase::Loading => "loading",
            Phase::Ready => "ready",
            Phase::Failed => "failed",
        }
    }

    fn finished(self) -> bool {
        matches!(self, Phase::Ready | Phase::Failed)
    }
}

/// One numbered event of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwapEvent {
    pub seq: u64,
    pub at: i64,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    Phase {
        phase: Phase,
        message: String,
    },
    Check {
        check: Check,
    },
    Log {
        node: String,
        container: String,
        stream: String,
        line: String,
    },
    Done {
        phase: Phase,
        error: Option<String>,
        elapsed_seconds: f64,
    },
}

impl EventBody {
    fn kind(&self) -> &'static str {
        match self {
            EventBody::Phase { .. } => "phase",
            EventBody::Check { .. } => "check",
            EventBody::Log { .. } => "log",
            EventBody::Done { .. } => "done",
        }
    }
}

/// The durable record of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub key: String,
    pub served_model_name: String,
    pub phase: Phase,
    pub actor: String,
    pub plan: Option<Plan>,
    pub checks: Vec<Check>,
    pub error: Option<String>,
    pub log_tail: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub ready_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub expected_ready_seconds: u64,
    pub timeout_seconds: u64,
    /// Queued by a gateway request for a model that was not loaded.
    #[serde(default)]
    pub on_demand: bool,
}

impl JobRecord {
    pub fn status(&self) -> &'static str {
        match self.phase {
            Phase::Ready => "ready",
            Phase::Failed => "failed",
            _ => "running",
        }
    }

    /// The API's view of the job.
    pub fn view(&self) -> Value {
        let end = self.finished_at.unwrap_or_else(crate::now_ms);
        json!({
            "id": self.id,
            "model": self.key,
            "served_model_name": self.served_model_name,
            "status": self.status(),
            "phase": self.phase,
            "actor": self.actor,
            "on_demand": self.on_demand,
            "created_at": crate::rfc3339(self.created_at),
            "updated_at": crate::rfc3339(self.updated_at),
            "ready_at": self.ready_at.map(crate::rfc3339),
            "finished_at": self.finished_at.map(crate::rfc3339),
            "elapsed_seconds": (end - self.created_at).max(0) as f64 / 1000.0,
            "expected_ready_seconds": self.expected_ready_seconds,
            "timeout_seconds": self.timeout_seconds,
            "nodes": self.plan.as_ref().map(|p| p.nodes.clone()).unwrap_or_default(),
            "mode": self.plan.as_ref().map(|p| p.mode),
            "port": self.plan.as_ref().map(|p| p.port),
            "checks": self.checks,
            "error": self.error,
            "log_tail": self.log_tail,
            "status_url": format!("/api/swap/{}", self.id),
            "stream_url": format!("/api/swap/{}/stream", self.id),
        })
    }
}

/// A job in memory: its record, its events, and a signal for listeners.
pub struct Job {
    pub id: String,
    state: Mutex<JobState>,
    seq: watch::Sender<u64>,
}

struct JobState {
    record: JobRecord,
    events: Vec<SwapEvent>,
    log_events: usize,
    tail: VecDeque<String>,
    next_seq: u64,
}

impl Job {
    fn new(record: JobRecord, events: Vec<SwapEvent>) -> Arc<Job> {
        let next_seq = events.last().map(|e| e.seq + 1).unwrap_or(1);
        let log_events = events
            .iter()
            .filter(|e| matches!(e.body, EventBody::Log { .. }))
            .count();
        let tail = record.log_tail.iter().cloned().collect();
        Arc::new(Job {
            id: record.id.clone(),
            state: Mutex::new(JobState {
                record,
                events,
                log_events,
                tail,
                next_seq,
            }),
            seq: watch::channel(next_seq.saturating_sub(1)).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self) -> JobRecord {
        self.lock().record.clone()
    }

    /// Events with `seq > after`, and whether the job has finished.
    pub fn events_after(&self, after: u64) -> (Vec<SwapEvent>, bool) {
        let st = self.lock();
        let start = st.events.partition_point(|e| e.seq <= after);
        (st.events[start..].to_vec(), st.record.phase.finished())
    }

    /// Append an event; persisted unless it is a log line past the cap.
    fn push(&self, app: &App, body: EventBody) {
        let ev = {
            let mut st = self.lock();
            if let EventBody::Log { line, node, .. } = &body {
                st.tail.push_back(format!("[{node}] {line}"));
                while st.tail.len() > LOG_TAIL {
                    st.tail.pop_front();
                }
            }
            let is_log = matches!(body, EventBody::Log { .. });
            let ev = SwapEvent {
                seq: st.next_seq,
                at: crate::now_ms(),
                body,
            };
            st.next_seq += 1;
            let keep = !is_log || st.log_events < MAX_LOG_EVENTS;
            if keep {
                if is_log {
                    st.log_events += 1;
                }
                st.events.push(ev.clone());
            }
            keep.then_some(ev)
        };
        if let Some(ev) = ev {
            persist_event(app, &self.id, &ev);
            self.seq.send_replace(ev.seq);
        }
    }

    fn phase(&self, app: &App, phase: Phase, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(job = %self.id, phase = phase.as_str(), %message, "swap");
        self.update(app, |r| r.phase = phase);
        self.push(app, EventBody::Phase { phase, message });
    }

    fn update(&self, app: &App, f: impl FnOnce(&mut JobRecord)) {
        let record = {
            let mut st = self.lock();
            f(&mut st.record);
            st.record.updated_at = crate::now_ms();
            st.record.clone()
        };
        persist_job(app, &record);
    }

    fn tail(&self) -> Vec<String> {
        self.lock().tail.iter().cloned().collect()
    }
}

/// A request to swap.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapBody {
    /// Recipe key.
    pub key: String,
    /// Nodes to use (ids or names, head first); default: chosen by where the weights are.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// The swap lock's token, when the caller holds the lock (or send `X-Spark-Lock-Token`).
    #[serde(default)]
    pub lock_token: Option<String>,
}

enum Event {
    Request {
        body: SwapBody,
        actor: String,
        on_demand: bool,
        reply: oneshot::Sender<Result<Arc<Job>, ApiError>>,
    },
    Ended {
        id: String,
    },
    /// A gateway request needs `key` loaded (on-demand loading).
    OnDemand {
        key: String,
        reply: oneshot::Sender<Result<Demand, ApiError>>,
    },
    /// Unload an idle on-demand model (from the idle monitor).
    Unload {
        key: String,
    },
}

/// Where an on-demand request stands.
#[derive(Clone)]
pub enum Demand {
    /// A job for the model is running (or has just finished).
    Loading(Arc<Job>),
    /// Waiting behind other swaps: 1-based position in the queue.
    Queued(usize),
}

/// The swap arbiter's handle and the jobs it knows.
pub struct Swaps {
    tx: mpsc::UnboundedSender<Event>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    active: Mutex<Option<String>>,
    http: OnceLock<reqwest::Client>,
    /// Readiness of running model servers by container name, from the monitor.
    readiness: Mutex<HashMap<String, (bool, i64)>>,
    /// Recipe keys waiting for an on-demand swap, in order.
    queue: Mutex<VecDeque<String>>,
    /// When each model last served a gateway request (for idle unload).
    last_used: Mutex<HashMap<String, Instant>>,
}

impl Default for Swaps {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Swaps {
            tx,
            rx: Mutex::new(Some(rx)),
            jobs: Mutex::new(HashMap::new()),
            active: Mutex::new(None),
            http: OnceLock::new(),
            readiness: Mutex::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            last_used: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Swaps {
    fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            spark_agent::install_crypto_provider();
            reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default()
        })
    }

    /// The job running now, if any.
    pub fn active(&self) -> Option<Arc<Job>> {
        let id = lock(&self.active).clone()?;
        lock(&self.jobs).get(&id).cloned()
    }

    /// A job by id, from memory or the database.
    pub fn job(&self, app: &App, id: &str) -> Option<Arc<Job>> {
        if let Some(j) = lock(&self.jobs).get(id) {
            return Some(j.clone());
        }
        let (record, events) = load_job(app, id)?;
        let job = Job::new(record, events);
        lock(&self.jobs).insert(id.to_string(), job.clone());
        Some(job)
    }

    fn remember(&self, job: Arc<Job>) {
        let mut jobs = lock(&self.jobs);
        jobs.insert(job.id.clone(), job);
        if jobs.len() > KEEP_FINISHED {
            let mut finished: Vec<(i64, String)> = jobs
                .values()
                .filter_map(|j| {
                    let r = j.record();
                    r.phase.finished().then_some((r.created_at, r.id))
                })
                .collect();
            finished.sort();
            let excess = jobs.len() - KEEP_FINISHED;
            for (_, id) in finished.into_iter().take(excess) {
                jobs.remove(&id);
            }
        }
    }

    /// Whether the monitor last found this container's server ready.
    pub fn ready(&self, container: &str) -> Option<bool> {
        lock(&self.readiness).get(container).map(|(r, _)| *r)
    }

    /// Note that a model served a request now.
    pub fn used(&self, key: &str) {
        lock(&self.last_used).insert(key.to_string(), Instant::now());
    }

    /// Ask the arbiter to have `key` loaded for a gateway request.
    pub async fn demand(&self, key: &str) -> Result<Demand, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::OnDemand {
                key: key.to_string(),
                reply,
            })
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }

    /// Ask the arbiter for a swap.
    pub async fn request(
        &self,
        body: SwapBody,
        actor: String,
        on_demand: bool,
    ) -> Result<Arc<Job>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::Request {
                body,
                actor,
                on_demand,
                reply,
            })
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the controller is shutting down; try again when it is back",
    )
}

// ---------- persistence ----------

fn persist_job(app: &App, r: &JobRecord) {
    let body = serde_json::to_string(r).unwrap_or_default();
    let tail = serde_json::to_string(&r.log_tail).unwrap_or_default();
    let res = app.db.with(|c| {
        c.execute(
            "INSERT INTO swap_jobs(id, key, state, phase, actor, plan, error, log_tail, created_at, updated_at, ready_at, finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, phase = excluded.phase, plan = excluded.plan,
               error = excluded.error, log_tail = excluded.log_tail, updated_at = excluded.updated_at,
               ready_at = excluded.ready_at, finished_at = excluded.finished_at",
            params![
                r.id,
                r.key,
                r.status(),
                r.phase.as_str(),
                r.actor,
                body,
                r.error,
                tail,
                r.created_at,
                r.updated_at,
                r.ready_at,
                r.finished_at
            ],
        )
    });
    if let Err(e) = res {
        tracing::warn!(job = %r.id, error = %e, "could not persist the swap job");
    }
}

fn persist_event(app: &App, job: &str, ev: &SwapEvent) {
    let body = serde_json::to_string(&ev.body).unwrap_or_default();
    let res = app.db.with(|c| {
        c.execute(
            "INSERT OR REPLACE INTO swap_events(job_id, seq, at, body) VALUES (?1, ?2, ?3, ?4)",
            params![job, ev.seq as i64, ev.at, body],
        )
    });
    if let Err(e) = res {
        tracing::warn!(%job, error = %e, "could not persist a swap event");
    }
}

fn load_job(app: &App, id: &str) -> Option<(JobRecord, Vec<SwapEvent>)> {
    let body: String = app
        .db
        .with(|c| {
            c.query_row("SELECT plan FROM swap_jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })
        .ok()
        .flatten()?;
    let record: JobRecord = serde_json::from_str(&body).ok()?;
    let rows: Vec<(i64, i64, String)> = app
        .db
        .with(|c| {
            let mut st =
                c.prepare("SELECT seq, at, body FROM swap_events WHERE job_id = ?1 ORDER BY seq")?;
            let rows = st
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .unwrap_or_default();
    let events = rows
        .into_iter()
        .filter_map(|(seq, at, body)| {
            Some(SwapEvent {
                seq: seq as u64,
                at,
                body: serde_json::from_str(&body).ok()?,
            })
        })
        .collect();
    Some((record, events))
}

fn unfinished_jobs(app: &App) -> Vec<String> {
    app.db
        .with(|c| {
            let mut st =
                c.prepare("SELECT id FROM swap_jobs WHERE state = 'running' ORDER BY created_at")?;
            let rows = st
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
        .unwrap_or_default()
}

fn recent_jobs(app: &App, limit: u32) -> Vec<JobRecord> {
    app.db
        .with(|c| {
            let mut st =
                c.prepare("SELECT plan FROM swap_jobs ORDER BY created_at DESC LIMIT ?1")?;
            let rows = st
                .query_map([limit], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| serde_json::from_str(&b).ok())
        .collect()
}

fn job_phase_failed(app: &App, id: &str) -> bool {
    app.db
        .with(|c| {
            c.query_row("SELECT state FROM swap_jobs WHERE id = ?1", [id], |r| {
                r.get::<_, String>(0)
            })
            .optional()
        })
        .ok()
        .flatten()
        .is_some_and(|s| s == "failed")
}

// ---------- the arbiter ----------

/// Start the arbiter (and its readiness monitor). Reconciles unfinished jobs first.
pub fn spawn(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    let rx = lock(&app.swaps.rx).take();
    tokio::spawn(async move {
        let Some(mut rx) = rx else { return };
        // Jobs a previous controller left unfinished: re-attach or fail them, one at a time in
        // the arbiter's order (the last one is the one that can still be loading).
        let unfinished = unfinished_jobs(&app);
        let last = unfinished.last().cloned();
        for id in &unfinished {
            if let Some(job) = app.swaps.job(&app, id) {
                if Some(id) == last.as_ref() {
                    *lock(&app.swaps.active) = Some(id.clone());
                    spawn_runner(app.clone(), job, Run::Resume);
                } else {
                    fail_without_cleanup(&app, &job, "superseded by a later swap");
                }
            }
        }
        let janitor = tokio::spawn(janitor(app.clone()));
        let monitor = tokio::spawn(monitor(app.clone()));
        let idle = tokio::spawn(idle_unloader(app.clone()));
        loop {
            let ev = tokio::select! {
                _ = app.shutdown.cancelled() => break,
                ev = rx.recv() => ev,
            };
            let Some(ev) = ev else { break };
            match ev {
                Event::Request {
                    body,
                    actor,
                    on_demand,
                    reply,
                } => {
                    let _ = reply.send(decide(&app, body, actor, on_demand));
                }
                Event::Ended { id } => {
                    {
                        let mut active = lock(&app.swaps.active);
                        if active.as_deref() == Some(id.as_str()) {
                            *active = None;
                        }
                    }
                    start_queued(&app);
                }
                Event::OnDemand { key, reply } => {
                    let _ = reply.send(on_demand(&app, key));
                }
                Event::Unload { key } => {
                    if app.swaps.active().is_none() && crate::lock::check(&app, None).is_ok() {
                        let app = app.clone();
                        tokio::spawn(async move { unload(&app, &key).await });
                    }
                }
            }
        }
        janitor.abort();
        monitor.abort();
        idle.abort();
    })
}

/// The arbiter's answer to an on-demand request: join the running job for this model, queue
/// behind another one, or start a swap now (the lock applies: a held lock is a 423 the gateway
/// turns into 503 + Retry-After).
fn on_demand(app: &Arc<App>, key: String) -> Result<Demand, ApiError> {
    if let Some(active) = app.swaps.active() {
        if active.record().key == key {
            return Ok(Demand::Loading(active));
        }
        let mut q = lock(&app.swaps.queue);
        if !q.contains(&key) {
            q.push_back(key.clone());
        }
        let pos = q.iter().position(|k| *k == key).unwrap_or(0) + 1;
        return Ok(Demand::Queued(pos));
    }
    // Nothing running: the queue goes first, in order.
    let front = lock(&app.swaps.queue).front().cloned();
    if let Some(front) = front
        && front != key
    {
        start_queued(app);
        let mut q = lock(&app.swaps.queue);
        if !q.contains(&key) {
            q.push_back(key.clone());
        }
        let pos = q.iter().position(|k| *k == key).unwrap_or(0) + 1;
        return Ok(Demand::Queued(pos));
    }
    lock(&app.swaps.queue).retain(|k| *k != key);
    let body = SwapBody {
        key,
        nodes: None,
        lock_token: None,
    };
    decide(app, body, "on-demand".into(), true).map(Demand::Loading)
}

/// Start the first queued on-demand swap, if nothing runs and the lock allows.
fn start_queued(app: &Arc<App>) {
    if app.swaps.active().is_some() {
        return;
    }
    let Some(key) = lock(&app.swaps.queue).pop_front() else {
        return;
    };
    let body = SwapBody {
        key: key.clone(),
        nodes: None,
        lock_token: None,
    };
    if let Err(e) = decide(app, body, "on-demand".into(), true) {
        if e.code == "locked" {
            // Try again when someone asks after the lock is gone.
            lock(&app.swaps.queue).push_front(key);
        } else {
            tracing::warn!(%key, error = %e.message, "queued on-demand swap refused");
        }
    }
}

/// A model server container (role llm or llm-worker) as its node last reported it.
pub struct ModelContainer {
    pub node_id: String,
    /// The node's address (where its model servers are reached).
    pub address: String,
    pub info: ContainerInfo,
}

impl ModelContainer {
    /// A running solo or head server (it serves the API).
    pub fn serving(&self) -> bool {
        self.info.role.as_deref() == Some(ROLE_LLM) && self.info.state == "running"
    }
}

/// Every model server container on every connected node.
pub fn model_containers(app: &App) -> Vec<ModelContainer> {
    let mut out = Vec::new();
    for (node_id, live) in app.registry.all() {
        let Some(list) = &live.containers else {
            continue;
        };
        for c in &list.containers {
            if c.managed && matches!(c.role.as_deref(), Some(ROLE_LLM | ROLE_LLM_WORKER)) {
                out.push(ModelContainer {
                    node_id: node_id.clone(),
                    address: preflight::node_address(live.remote_ip),
                    info: c.clone(),
                });
            }
        }
    }
    out
}

/// Every 1 s: unload on-demand models idle past their recipe's `idle_unload_seconds`.
async fn idle_unloader(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut keys: Vec<String> = model_containers(&app)
            .into_iter()
            .filter(ModelContainer::serving)
            .filter_map(|c| c.info.recipe)
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let Some(entry) = catalog::get(&app, &key) else {
                continue;
            };
            let Some(ttl) = entry
                .recipe
                .idle_unload_seconds
                .filter(|_| entry.recipe.on_demand)
            else {
                continue;
            };
            let idle = {
                let mut used = lock(&app.swaps.last_used);
                used.entry(key.clone())
                    .or_insert_with(Instant::now)
                    .elapsed()
            };
            if idle >= Duration::from_secs(ttl) {
                lock(&app.swaps.last_used).remove(&key);
                let _ = app.swaps.tx.send(Event::Unload { key });
            }
        }
    }
}

/// Stop and remove an idle model's containers.
async fn unload(app: &App, key: &str) {
    for c in model_containers(app)
        .into_iter()
        .filter(|c| c.info.recipe.as_deref() == Some(key))
    {
        let _ = boxes::call(
            app,
            &c.node_id,
            Op::StopContainer {
                name: c.info.name.clone(),
                timeout_secs: STOP_TIMEOUT_SECS,
            },
            Duration::from_secs(u64::from(STOP_TIMEOUT_SECS) + 15),
        )
        .await;
        remove(app, &c.node_id, &c.info.name).await;
    }
    let _ = app.db.add_event(
        "model_unloaded",
        None,
        Some("idle-unload"),
        &format!("'{key}' unloaded after its idle time"),
    );
}

/// The arbiter's decision on a swap request.
fn decide(
    app: &Arc<App>,
    body: SwapBody,
    actor: String,
    on_demand: bool,
) -> Result<Arc<Job>, ApiError> {
    if let Some(active) = app.swaps.active() {
        let r = active.record();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "swap_in_progress",
            format!(
                "a swap to '{}' is in progress (job {}, phase {}); wait for it or follow /api/swap/{}/stream",
                r.key,
                r.id,
                r.phase.as_str(),
                r.id
            ),
        ));
    }
    crate::lock::check(app, body.lock_token.as_deref())?;
    let entry = catalog::get(app, &body.key).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no recipe '{}'; GET /api/models lists them", body.key),
        )
    })?;
    let recipe = entry.recipe;
    let now = crate::now_ms();
    let id = format!("swap-{}-{:06x}", now, rand::random::<u32>() & 0x00ff_ffff);
    let record = JobRecord {
        id: id.clone(),
        key: recipe.key.clone(),
        served_model_name: recipes::served_name(&recipe).to_string(),
        phase: Phase::Preflight,
        actor: actor.clone(),
        plan: None,
        checks: Vec::new(),
        error: None,
        log_tail: Vec::new(),
        created_at: now,
        updated_at: now,
        ready_at: None,
        finished_at: None,
        expected_ready_seconds: recipe.expected_ready_seconds,
        timeout_seconds: recipes::timeout(&recipe).as_secs(),
        on_demand,
    };
    persist_job(app, &record);
    let job = Job::new(record, Vec::new());
    app.swaps.remember(job.clone());
    *lock(&app.swaps.active) = Some(id.clone());
    let _ = app.db.add_subject_event(
        "swap_started",
        Some(&format!("swap:{}", recipe.key)),
        None,
        Some(&actor),
        &format!("swap to '{}' started (job {id})", recipe.key),
    );
    spawn_runner(
        app.clone(),
        job.clone(),
        Run::Fresh {
            recipe: Box::new(recipe),
            nodes: body.nodes,
        },
    );
    Ok(job)
}

enum Run {
    Fresh {
        recipe: Box<Recipe>,
        nodes: Option<Vec<String>>,
    },
    Resume,
}

/// Why a job failed.
struct Failure {
    message: String,
    /// Remove the attempt's containers (false when a node is gone and cannot be asked).
    cleanup: bool,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            cleanup: true,
        }
    }
}

fn spawn_runner(app: Arc<App>, job: Arc<Job>, run: Run) {
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = tokio::select! {
            // A controller that stops leaves the job as it is: the next one reconciles it.
            _ = app.shutdown.cancelled() => None,
            r = execute(&app, &job, run) => Some(r),
        };
        match outcome {
            Some(Ok(())) => {
                let r = job.record();
                let elapsed = (crate::now_ms() - r.created_at).max(0) as f64 / 1000.0;
                job.update(&app, |r| {
                    r.ready_at = Some(crate::now_ms());
                    r.finished_at = r.ready_at;
                    r.log_tail = Vec::new();
                });
                job.phase(
                    &app,
                    Phase::Ready,
                    format!(
                        "'{}' is ready as '{}' after {elapsed:.1} s (expected about {} s)",
                        r.key, r.served_model_name, r.expected_ready_seconds
                    ),
                );
                job.push(
                    &app,
                    EventBody::Done {
                        phase: Phase::Ready,
                        error: None,
                        elapsed_seconds: elapsed,
                    },
                );
                if let Some(plan) = &r.plan {
                    for n in &plan.nodes {
                        if n.role != "worker" {
                            lock(&app.swaps.readiness)
                                .insert(n.container.clone(), (true, crate::now_ms()));
                        }
                    }
                }
                app.swaps.used(&r.key);
                let _ = app.db.add_subject_event(
                    "swap_complete",
                    Some(&format!("swap:{}", r.key)),
                    None,
                    Some(&r.actor),
                    &format!("'{}' ready after {elapsed:.1} s (job {})", r.key, r.id),
                );
                app.metrics.swap(&r.key, "ready", elapsed);
                app.routes.invalidate();
                crate::webhooks::notify(&app, "swap_complete", webhook_payload(&job.record()));
            }
            Some(Err(f)) => fail(&app, &job, f).await,
            None => {
                tracing::info!(job = %job.id, elapsed = ?started.elapsed(), "controller stopping; swap left for reconciliation")
            }
        }
        let _ = app.swaps.tx.send(Event::Ended { id: job.id.clone() });
    });
}

fn webhook_payload(r: &JobRecord) -> Value {
    let end = r.finished_at.unwrap_or_else(crate::now_ms);
    json!({
        "job_id": r.id,
        "model": r.key,
        "served_model_name": r.served_model_name,
        "status": r.status(),
        "phase_reached": r.phase,
        "nodes": r.plan.as_ref().map(|p| p.nodes.iter().map(|n| json!({
            "node_id": n.node_id, "name": n.node_name, "role": n.role, "address": n.address,
            "container": n.container,
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "port": r.plan.as_ref().map(|p| p.port),
        "started_at": crate::rfc3339(r.created_at),
        "finished_at": crate::rfc3339(end),
        "elapsed_seconds": (end - r.created_at).max(0) as f64 / 1000.0,
        "error": r.error,
        "log_tail": r.log_tail,
        "actor": r.actor,
    })
}

async fn fail(app: &Arc<App>, job: &Arc<Job>, f: Failure) {
    // Let the last log lines of an exited server arrive before taking the tail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tail = job.tail();
    let plan = job.record().plan;
    if tail.is_empty()
        && let Some(head) = plan.as_ref().and_then(|p| p.head())
        && let Ok(OpOutput::Logs(lines)) = boxes::call(
            app,
            &head.node_id,
            Op::Logs {
                name: head.container.clone(),
                tail: LOG_TAIL as u32,
                follow: false,
                timestamps: false,
            },
            OP_LIMIT,
        )
        .await
    {
        tail = lines
            .into_iter()
            .map(|l| format!("[{}] {}", head.node_name, l.text.trim_end()))
            .collect();
    }
    let phase_at_failure = job.record().phase;
    if f.cleanup {
        cleanup(app, &job.id).await;
    }
    job.update(app, |r| {
        r.error = Some(f.message.clone());
        r.log_tail = tail.clone();
        r.finished_at = Some(crate::now_ms());
    });
    job.phase(
        app,
        Phase::Failed,
        format!("failed during {}: {}", phase_at_failure.as_str(), f.message),
    );
    let r = job.record();
    job.push(
        app,
        EventBody::Done {
            phase: Phase::Failed,
            error: Some(f.message.clone()),
            elapsed_seconds: (crate::now_ms() - r.created_at).max(0) as f64 / 1000.0,
        },
    );
    let _ = app.db.add_subject_event(
        "swap_failed",
        Some(&format!("swap:{}", r.key)),
        None,
        Some(&r.actor),
        &format!("swap to '{}' failed (job {}): {}", r.key, r.id, f.message),
    );
    app.metrics.swap(
        &r.key,
        "failed",
        (crate::now_ms() - r.created_at).max(0) as f64 / 1000.0,
    );
    crate::webhooks::notify(app, "swap_failed", webhook_payload(&r));
}

/// Mark a job failed without touching containers (used for jobs superseded while the
/// controller was down).
fn fail_without_cleanup(app: &App, job: &Arc<Job>, message: &str) {
    job.update(app, |r| {
        r.error = Some(message.to_string());
        r.finished_at = Some(crate::now_ms());
    });
    job.phase(app, Phase::Failed, message);
    job.push(
        app,
        EventBody::Done {
            phase: Phase::Failed,
            error: Some(message.to_string()),
            elapsed_seconds: 0.0,
        },
    );
}

/// Remove every container labelled with this job, on every connected node.
async fn cleanup(app: &App, job_id: &str) {
    for (node_id, live) in app.registry.all() {
        let Some(list) = &live.containers else {
            continue;
        };
        for c in list.containers.iter().filter(|c| labelled(c, job_id)) {
            remove(app, &node_id, &c.name).await;
        }
    }
}

fn labelled(c: &ContainerInfo, job_id: &str) -> bool {
    c.managed && c.labels.iter().any(|(k, v)| k == LABEL_JOB && v == job_id)
}

/// Remove a container (forced); a container already gone is fine.
pub(crate) async fn remove(app: &App, node_id: &str, name: &str) {
    if let Err(e) = boxes::call(
        app,
        node_id,
        Op::RemoveContainer {
            name: name.to_string(),
            force: true,
        },
        OP_LIMIT,
    )
    .await
        && e.code != "not_found"
    {
        tracing::warn!(%node_id, container = %name, error = %e.message, "could not remove a swap container");
    }
}

async fn execute(app: &Arc<App>, job: &Arc<Job>, run: Run) -> Result<(), Failure> {
    let (recipe, plan) = match run {
        Run::Fresh { recipe, nodes } => {
            let knobs = catalog::knobs(app, &recipe.key);
            let plan = prepare(app, job, &recipe, &knobs, nodes.as_deref()).await?;
            stop_current(app, job).await?;
            start(app, job, &recipe, &knobs, &plan).await?;
            (*recipe, plan)
        }
        Run::Resume => reattach(app, job).await?,
    };
    wait_ready(app, job, &recipe, &plan).await
}

/// Phase preflight: plan the nodes and run the quick checks.
async fn prepare(
    app: &App,
    job: &Arc<Job>,
    recipe: &Recipe,
    knobs: &Knobs,
    nodes: Option<&[String]>,
) -> Result<Plan, Failure> {
    job.phase(app, Phase::Preflight, format!("checking '{}'", recipe.key));
    let facts = preflight::node_facts(app).await;
    let plan = preflight::plan(recipe, &facts, nodes).map_err(Failure::new)?;
    job.update(app, |r| r.plan = Some(plan.clone()));
    let checks = preflight::checks(app, recipe, knobs, &plan, &facts, false).await;
    for c in &checks {
        job.push(app, EventBody::Check { check: c.clone() });
    }
    job.update(app, |r| r.checks = checks.clone());
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| match &c.node {
            Some(n) => format!("{} on {n}: {}", c.name, c.detail),
            None => format!("{}: {}", c.name, c.detail),
        })
        .collect();
    if !failed.is_empty() {
        return Err(Failure::new(format!(
            "preflight failed: {}",
            failed.join("; ")
        )));
    }
    Ok(plan)
}

/// Phase stopping: stop and remove every model container on every node.
async fn stop_current(app: &App, job: &Arc<Job>) -> Result<(), Failure> {
    let found: Vec<(String, String, String)> = model_containers(app)
        .into_iter()
        .map(|c| (c.node_id, c.info.name, c.info.state))
        .collect();
    if found.is_empty() {
        job.phase(app, Phase::Stopping, "no model is running");
        return Ok(());
    }
    job.phase(
        app,
        Phase::Stopping,
        format!(
            "stopping {}",
            found
                .iter()
                .map(|(_, n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let stops = found.iter().map(|(node_id, name, state)| async move {
        if state == "running" || state == "restarting" {
            boxes::call(
                app,
                node_id,
                Op::StopContainer {
                    name: name.clone(),
                    timeout_secs: STOP_TIMEOUT_SECS,
                },
                Duration::from_secs(u64::from(STOP_TIMEOUT_SECS) + 15),
            )
            .await
            .map_err(|e| format!("could not stop {name}: {}", e.message))?;
        }
        match boxes::call(
            app,
            node_id,
            Op::RemoveContainer {
                name: name.clone(),
                force: true,
            },
            OP_LIMIT,
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == "not_found" => Ok(()),
            Err(e) => Err(format!("could not remove {name}: {}", e.message)),
        }
    });
    let results = futures_util::future::join_all(stops).await;
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if !errors.is_empty() {
        return Err(Failure::new(errors.join("; ")));
    }
    for (_, name, _) in &found {
        lock(&app.swaps.readiness).remove(name);
    }
    Ok(())
}

/// Phase starting: one container per plan node, head first.
async fn start(
    app: &App,
    job: &Arc<Job>,
    recipe: &Recipe,
    knobs: &Knobs,
    plan: &Plan,
) -> Result<(), Failure> {
    job.phase(
        app,
        Phase::Starting,
        format!(
            "starting {} on {}",
            plan.image,
            plan.nodes
                .iter()
                .map(|n| format!("{} ({})", n.node_name, n.role))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    for node in &plan.nodes {
        // The hub cache of this node (its scan said where it is).
        let hf_cache = match boxes::call(app, &node.node_id, Op::ScanModels, OP_LIMIT).await {
            Ok(OpOutput::Models(inv)) if recipe.repo.is_some() => Some(inv.hf_cache),
            _ => None,
        };
        // Ask for GPUs only where the node reports some: Docker refuses a GPU request on a
        // box without the NVIDIA runtime, and such a box has nothing to give.
        let gpus = app
            .registry
            .get(&node.node_id)
            .and_then(|l| l.telemetry)
            .is_some_and(|t| !t.gpu.devices.is_empty());
        if !gpus {
            job.push(
                app,
                EventBody::Phase {
                    phase: Phase::Starting,
                    message: format!(
                        "{} reports no GPU; {} starts without GPU access",
                        node.node_name, node.container
                    ),
                },
            );
        }
        let spec = preflight::container_spec(
            recipe,
            knobs,
            plan,
            node,
            hf_cache.as_deref(),
            &job.id,
            gpus,
        );
        boxes::call(
            app,
            &node.node_id,
            Op::RunContainer(Box::new(spec)),
            OP_LIMIT,
        )
        .await
        .map_err(|e| {
            Failure::new(format!(
                "could not start {} on {}: {}",
                node.container, node.node_name, e.message
            ))
        })?;
        job.push(
            app,
            EventBody::Phase {
                phase: Phase::Starting,
                message: format!("{} started on {}", node.container, node.node_name),
            },
        );
    }
    Ok(())
}

/// After a controller restart: find the job's containers and decide.
async fn reattach(app: &App, job: &Arc<Job>) -> Result<(Recipe, Plan), Failure> {
    let r = job.record();
    let deadline = Instant::now() + RECONNECT_GRACE;
    let Some(plan) = r
        .plan
        .clone()
        .filter(|_| matches!(r.phase, Phase::Starting | Phase::Loading))
    else {
        // Nothing may have started; wait for the nodes so leftovers can be removed.
        wait_for_nodes(app, None, deadline).await;
        return Err(Failure::new(format!(
            "the controller restarted during {}; the swap was abandoned",
            r.phase.as_str()
        )));
    };
    let ids: Vec<String> = plan.nodes.iter().map(|n| n.node_id.clone()).collect();
    if !wait_for_nodes(app, Some(&ids), deadline).await {
        return Err(Failure::new(
            "the controller restarted and the swap's nodes did not reconnect within 30 s",
        ));
    }
    let entry = catalog::get(app, &r.key)
        .ok_or_else(|| Failure::new(format!("recipe '{}' no longer exists", r.key)))?;
    for n in &plan.nodes {
        let c = app
            .registry
            .get(&n.node_id)
            .and_then(|l| l.containers)
            .and_then(|l| l.containers.into_iter().find(|c| c.name == n.container));
        match c {
            Some(c) if c.state == "running" && labelled(&c, &job.id) => {}
            Some(c) => {
                return Err(Failure::new(format!(
                    "after the controller restarted, {} on {} was {}{}",
                    n.container,
                    n.node_name,
                    c.state,
                    c.exit_code
                        .map(|x| format!(" (exit code {x})"))
                        .unwrap_or_default()
                )));
            }
            None => {
                return Err(Failure::new(format!(
                    "after the controller restarted, {} was gone from {}",
                    n.container, n.node_name
                )));
            }
        }
    }
    job.phase(
        app,
        Phase::Loading,
        "the controller restarted; re-attached to the loading model",
    );
    Ok((entry.recipe, plan))
}

/// Wait until the given nodes (or every enrolled node) are connected with a container list.
async fn wait_for_nodes(app: &App, ids: Option<&[String]>, deadline: Instant) -> bool {
    loop {
        let wanted: Vec<String> = match ids {
            Some(ids) => ids.to_vec(),
            None => app
                .db
                .nodes(false)
                .unwrap_or_default()
                .into_iter()
                .map(|n| n.id)
                .collect(),
        };
        let all = wanted
            .iter()
            .all(|id| app.registry.get(id).is_some_and(|l| l.containers.is_some()));
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Phase loading: follow the logs, watch the containers, probe readiness.
async fn wait_ready(
    app: &Arc<App>,
    job: &Arc<Job>,
    recipe: &Recipe,
    plan: &Plan,
) -> Result<(), Failure> {
    let r = job.record();
    if r.phase != Phase::Loading {
        job.phase(
            app,
            Phase::Loading,
            format!(
                "loading; expected ready in about {} s (timeout {} s)",
                r.expected_ready_seconds, r.timeout_seconds
            ),
        );
    }
    let followers: Vec<_> = plan
        .nodes
        .iter()
        .map(|n| tokio::spawn(follow_logs(app.clone(), job.clone(), n.clone())))
        .collect();
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for h in &self.0 {
                h.abort();
            }
        }
    }
    let _followers = AbortOnDrop(followers);
    let head = plan
        .head()
        .ok_or_else(|| Failure::new("the plan has no nodes"))?;
    let deadline_ms = r.created_at + (r.timeout_seconds as i64) * 1000;
    let probe = Probe::new(recipe, head, plan.port);
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    loop {
        // The containers must stay up.
        for n in &plan.nodes {
            let Some(live) = app.registry.get(&n.node_id) else {
                return Err(Failure {
                    message: format!("node {} disconnected during the load", n.node_name),
                    cleanup: true,
                });
            };
            let c = live
                .containers
                .as_ref()
                .and_then(|l| l.containers.iter().find(|c| c.name == n.container));
            match c {
                Some(c) if c.state == "exited" || c.state == "dead" => {
                    return Err(Failure::new(format!(
                        "the model server {} on {} exited during the load{}{}",
                        n.container,
                        n.node_name,
                        c.exit_code
                            .map(|x| format!(" with code {x}"))
                            .unwrap_or_default(),
                        if c.oom_killed {
                            " (killed: out of memory)"
                        } else {
                            ""
                        }
                    )));
                }
                Some(_) => {
                    missing_since.remove(&n.container);
                }
                None => {
                    let since = *missing_since
                        .entry(n.container.clone())
                        .or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(3) {
                        return Err(Failure::new(format!(
                            "the model server {} disappeared from {}",
                            n.container, n.node_name
                        )));
                    }
                }
            }
        }
        if probe.ready(app.swaps.http()).await {
            return Ok(());
        }
        if crate::now_ms() > deadline_ms {
            return Err(Failure::new(format!(
                "not ready after {} s (the recipe's timeout; expected about {} s)",
                r.timeout_seconds, r.expected_ready_seconds
            )));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

async fn follow_logs(app: Arc<App>, job: Arc<Job>, node: preflight::PlanNode) {
    let Some(mut pending) = app.registry.request(
        &node.node_id,
        Op::Logs {
            name: node.container.clone(),
            tail: 1000,
            follow: true,
            timestamps: false,
        },
    ) else {
        return;
    };
    while let Some(reply) = pending.next().await {
        match reply {
            Reply::Stream(StreamItem::Log(l)) => job.push(
                &app,
                EventBody::Log {
                    node: node.node_name.clone(),
                    container: node.container.clone(),
                    stream: l.stream,
                    line: l.text.trim_end().to_string(),
                },
            ),
            Reply::Stream(_) => {}
            Reply::Done(_) => break,
        }
    }
}

/// The readiness probe of a model server.
struct Probe {
    base: String,
    served: String,
    embedding: bool,
    api_key: Option<String>,
}

impl Probe {
    fn new(recipe: &Recipe, head: &preflight::PlanNode, port: u16) -> Probe {
        let host = if head.address.contains(':') {
            format!("[{}]", head.address)
        } else {
            head.address.clone()
        };
        let api_key = crate::proxy::api_key(recipe);
        let embedding = recipe.capabilities.iter().any(|c| c == "embedding")
            || recipe.args.windows(2).any(|w| {
                (w[0] == "--task" && w[1] == "embed") || (w[0] == "--runner" && w[1] == "pooling")
            });
        Probe {
            base: format!("http://{host}:{port}"),
            served: recipes::served_name(recipe).to_string(),
            embedding,
            api_key,
        }
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    async fn ready(&self, http: &reqwest::Client) -> bool {
        let ok = |r: Result<reqwest::Response, reqwest::Error>| {
            r.ok().filter(|r| r.status().is_success())
        };
        if ok(http.get(format!("{}/health", self.base)).send().await).is_none() {
            return false;
        }
        let Some(models) = ok(self
            .auth(http.get(format!("{}/v1/models", self.base)))
            .send()
            .await)
        else {
            return false;
        };
        let listed = models
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| {
                v.get("data")?.as_array().map(|d| {
                    d.iter()
                        .any(|m| m.get("id").and_then(Value::as_str) == Some(&self.served))
                })
            })
            .unwrap_or(false);
        if !listed {
            return false;
        }
        let req = if self.embedding {
            http.post(format!("{}/v1/embeddings", self.base))
                .json(&json!({"model": self.served, "input": "hi"}))
        } else {
            http.post(format!("{}/v1/completions", self.base))
                .json(&json!({"model": self.served, "prompt": "hi", "max_tokens": 1}))
        };
        ok(self.auth(req).send().await).is_some()
    }
}

/// Once agents are back after a start: remove model containers left by failed jobs.
async fn janitor(app: Arc<App>) {
    wait_for_nodes(&app, None, Instant::now() + RECONNECT_GRACE).await;
    for c in model_containers(&app) {
        let job = c
            .info
            .labels
            .iter()
            .find(|(k, _)| k == LABEL_JOB)
            .map(|(_, v)| v.clone());
        if let Some(job) = job
            && job_phase_failed(&app, &job)
        {
            tracing::info!(container = %c.info.name, %job, "removing a container left by a failed swap");
            remove(&app, &c.node_id, &c.info.name).await;
        }
    }
}

/// Every 2 s, probe the health of each running model server (solo or head).
async fn monitor(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let mut seen = Vec::new();
        for c in model_containers(&app)
            .into_iter()
            .filter(ModelContainer::serving)
        {
            let Some(entry) = c.info.recipe.as_deref().and_then(|k| catalog::get(&app, k)) else {
                continue;
            };
            let url = format!(
                "http://{}:{}/health",
                c.address,
                recipes::port(&entry.recipe)
            );
            let ok = app
                .swaps
                .http()
                .get(url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            lock(&app.swaps.readiness).insert(c.info.name.clone(), (ok, crate::now_ms()));
            seen.push(c.info.name);
        }
        lock(&app.swaps.readiness).retain(|k, _| seen.contains(k));
    }
}

// ---------- HTTP ----------

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/swap", post(swap))
        .route("/swap/jobs", get(list_jobs))
        .route("/swap/{id}", get(get_job))
        .route("/swap/{id}/stream", get(stream))
        .route("/swap/{id}/validate", post(validate))
        .route("/status", get(status))
}

async fn swap(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<SwapBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if body.key.trim().is_empty() {
        return Err(ApiError::bad_request(
            "body must be {\"key\": \"<recipe key>\"}; GET /api/models lists the keys".into(),
        ));
    }
    // The header wins over the body.
    if let Some(t) = crate::lock::token_from_headers(&headers) {
        body.lock_token = Some(t.to_string());
    }
    let job = app.swaps.request(body, actor.0, false).await?;
    Ok((StatusCode::ACCEPTED, Json(job.record().view())))
}

#[derive(Deserialize)]
struct JobsQuery {
    limit: Option<u32>,
}

async fn list_jobs(State(app): State<Arc<App>>, Query(q): Query<JobsQuery>) -> Json<Value> {
    let limit = q.limit.unwrap_or(20).clamp(1, 200);
    let jobs: Vec<Value> = recent_jobs(&app, limit)
        .into_iter()
        .map(|r| match app.swaps.job(&app, &r.id) {
            Some(j) => j.record().view(),
            None => r.view(),
        })
        .collect();
    Json(json!({ "jobs": jobs }))
}

fn no_job(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no swap job '{id}'; GET /api/swap/jobs lists recent ones"),
    )
}

async fn get_job(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = app.swaps.job(&app, &id).ok_or_else(|| no_job(&id))?;
    Ok(Json(job.record().view()))
}

#[derive(Deserialize)]
struct StreamQuery {
    after: Option<u64>,
}

/// SSE: every event after `Last-Event-ID` (or `?after=`), then live ones; ends after `done`.
async fn stream(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let job = app.swaps.job(&app, &id).ok_or_else(|| no_job(&id))?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.after)
        .unwrap_or(0);
    let rx = job.seq.subscribe();
    struct St {
        job: Arc<Job>,
        rx: watch::Receiver<u64>,
        after: u64,
        buf: VecDeque<SwapEvent>,
        done: bool,
    }
    let st = St {
        job,
        rx,
        after,
        buf: VecDeque::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.buf.pop_front() {
                st.after = ev.seq;
                if matches!(ev.body, EventBody::Done { .. }) {
                    st.done = true;
                }
                let data = serde_json::to_string(&ev).unwrap_or_default();
                let sse = SseEvent::default()
                    .id(ev.seq.to_string())
                    .event(ev.body.kind())
                    .data(data);
                return Some((Ok(sse), st));
            }
            if st.done {
                return None;
            }
            st.rx.borrow_and_update();
            let (events, finished) = st.job.events_after(st.after);
            if !events.is_empty() {
                st.buf.extend(events);
                continue;
            }
            if finished {
                return None;
            }
            if st.rx.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn validate(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct ValidateBody {
        #[serde(default)]
        nodes: Option<Vec<String>>,
    }
    let req: ValidateBody = crate::api::optional_body(&body, r#"{"nodes": ["spark-1"]}"#)?;
    let entry = catalog::get(&app, &key).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no recipe '{key}'; GET /api/models lists them"),
        )
    })?;
    let knobs = catalog::knobs(&app, &key);
    let facts = preflight::node_facts(&app).await;
    let (plan, checks) = match preflight::plan(&entry.recipe, &facts, req.nodes.as_deref()) {
        Ok(plan) => {
            let checks = preflight::checks(&app, &entry.recipe, &knobs, &plan, &facts, true).await;
            (Some(plan), checks)
        }
        Err(e) => (
            None,
            vec![Check {
                name: "nodes".into(),
                node: None,
                ok: false,
                detail: e,
            }],
        ),
    };
    let ok = checks.iter().all(|c| c.ok);
    Ok(Json(json!({
        "model": key,
        "ok": ok,
        "checks": checks,
        "nodes": plan.as_ref().map(|p| p.nodes.clone()).unwrap_or_default(),
        "argv": plan.as_ref().and_then(|p| p.head().map(|h| recipes::launch_argv(&entry.recipe, &knobs, &h.role(), p.cluster().as_ref()))),
    })))
}

/// `GET /api/status`: the model loaded on each node, its readiness, the active job.
pub(crate) async fn status(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let mut nodes = Vec::new();
    let mut loaded: HashMap<String, Vec<Value>> = HashMap::new();
    let mut rows = app.db.nodes(false)?;
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    for row in rows {
        let live = app.registry.get(&row.id);
        let mut models = Vec::new();
        if let Some(list) = live.as_ref().and_then(|l| l.containers.as_ref()) {
            for c in &list.containers {
                if !c.managed || !matches!(c.role.as_deref(), Some(ROLE_LLM | ROLE_LLM_WORKER)) {
                    continue;
                }
                let key = c.recipe.clone().unwrap_or_default();
                let recipe = catalog::get(&app, &key).map(|e| e.recipe);
                let worker = c.role.as_deref() == Some(ROLE_LLM_WORKER);
                let ready = if worker {
                    None
                } else {
                    app.swaps.ready(&c.name).map(|r| r && c.state == "running")
                };
                let m = json!({
                    "key": key,
                    "served_model_name": recipe.as_ref().map(|r| recipes::served_name(r).to_string()),
                    "container": c.name,
                    "state": c.state,
                    "role": if worker { "worker" } else { "server" },
                    "ready": ready,
                    "port": recipe.as_ref().map(recipes::port),
                    "address": live.as_ref().map(|l| preflight::node_address(l.remote_ip)),
                });
                loaded.entry(key).or_default().push(json!({
                    "node_id": row.id, "name": row.name, "container": c.name,
                    "state": c.state, "ready": ready,
                }));
                models.push(m);
            }
        }
        nodes.push(json!({
            "id": row.id,
            "name": row.name,
            "connected": live.is_some(),
            "models": models,
        }));
    }
    let active = app.swaps.active().map(|j| j.record().view());
    Ok(Json(json!({
        "nodes": nodes,
        "loaded": loaded.into_iter().map(|(k, n)| json!({"key": k, "nodes": n})).collect::<Vec<_>>(),
        "active_job": active,
    })))
}
