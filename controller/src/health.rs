//! Deep health: synthetic probes of every service, the auto-restart policy applied to their
//! failures, and the transitions they cause in the event log.
//!
//! A probe does what an application does, on a tiny scale, with bodies built in memory: one
//! second of silence as a WAV file to the ASR's transcription route, "hi" to the TTS (Kokoro's
//! JSON, or Magpie's multipart form), a one-token completion to each loaded LLM (none loaded is
//! *idle*, never a failure), a one-word embedding, Qdrant's readiness. Rounds run every
//! `health.probe_interval_seconds` (a settings change applies at once) and on demand; the ASR
//! relay runs one at once when it sees a 500.
//!
//! A failed probe whose failure is a wedge (see [`crate::policy`]) restarts the service's
//! container through its node's agent — within the policy's limits. Every failure, restart,
//! withheld restart and recovery is an event with the subject `service:<name>`; restarts are
//! audited with the actor `policy`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde_json::{Value, json};
use spark_common::ops::{ContainerInfo, Op};

use crate::App;
use crate::api::{Actor, ApiError};
use crate::policy::{self, Failure, Verdict};
use crate::services::{Api, Kind, ServiceConfig, Status};

/// The pseudo-service of swap-managed LLMs (whatever the arbiter has loaded).
pub const LOADED_LLM: &str = "llm";

/// One probe's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub service: String,
    pub at: String,
    /// `ok`, `failed`, `idle` (nothing to probe: no model loaded) or `skipped` (disabled, no
    /// address).
    pub outcome: &'static str,
    pub ms: u64,
    pub detail: String,
    /// The wedge the failure shows, if it is one.
    pub wedge: Option<String>,
    /// What the policy did: `restarted`, `withheld: …`, `restart failed: …`.
    pub action: Option<String>,
}

/// What the controller remembers of each service's health.
#[derive(Debug, Default, Clone)]
struct Memory {
    last: Option<Report>,
    /// Times (unix ms) of restarts: the policy's and the operator's.
    restarts: Vec<i64>,
    restart_count: u64,
    /// When the controller last started the service (for the grace period).
    started_by_us: Option<i64>,
}

/// Deep-health state shared by the loop, the API and the relays.
#[derive(Debug, Default)]
pub struct Health {
    memory: Mutex<HashMap<String, Memory>>,
    /// Serializes probes of one service (an on-demand run and the loop do not overlap).
    running: tokio::sync::Mutex<()>,
    next_round: Mutex<Option<i64>>,
    wake: tokio::sync::Notify,
}

impl Health {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Memory>) -> T) -> T {
        f(&mut self.memory.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A service was (re)started by the operator or the policy.
    pub fn note_restart(&self, service: &str, now: i64) {
        self.with(|m| {
            let e = m.entry(service.to_string()).or_default();
            e.restarts.push(now);
            e.restarts.retain(|t| now - t < 7 * 24 * 3_600_000);
            e.restart_count += 1;
            e.started_by_us = Some(now);
        });
    }

    /// How many restarts the controller made of this service since it started.
    pub fn restart_count(&self, service: &str) -> u64 {
        self.with(|m| m.get(service).map(|e| e.restart_count).unwrap_or(0))
    }

    pub fn last(&self, service: &str) -> Option<Report> {
        self.with(|m| m.get(service).and_then(|e| e.last.clone()))
    }

    /// Ask for a probe of the ASR soon (the relay saw a 500).
    pub fn probe_soon(&self) {
        self.wake.notify_one();
    }
}

// ---------- probe bodies ----------

/// One second of silence: 16 kHz, mono, 16-bit PCM, as a RIFF/WAVE file (what Parakeet expects).
pub fn silence_wav() -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::with_capacity(32_044));
    if let Ok(mut w) = hound::WavWriter::new(&mut out, spec) {
        for _ in 0..16_000 {
            let _ = w.write_sample(0i16);
        }
        let _ = w.finalize();
    }
    out.into_inner()
}

/// The language of a Magpie voice (`Magpie-Multilingual.EN-US.Aria` -> `en-US`).
pub fn magpie_language(voice: &str) -> String {
    voice
        .split('.')
        .nth(1)
        .and_then(|loc| {
            let (lang, region) = loc.split_once('-')?;
            Some(format!(
                "{}-{}",
                lang.to_ascii_lowercase(),
                region.to_ascii_uppercase()
            ))
        })
        .unwrap_or_else(|| "en-US".into())
}

fn client() -> &'static reqwest::Client {
    crate::proxy::client()
}

/// A probe request's answer, reduced to what the policy needs.
struct Answer {
    status: u16,
    text: String,
    bytes: usize,
    starts_riff: bool,
}

async fn answer(rb: reqwest::RequestBuilder, timeout: Duration) -> Result<Answer, Failure> {
    let sent = rb.timeout(timeout).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Err(Failure {
                status: None,
                text: crate::services::short_error(&e),
                timed_out: e.is_timeout(),
                model_loaded: false,
            });
        }
    };
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(b) => Ok(Answer {
            status,
            starts_riff: b.starts_with(b"RIFF"),
            bytes: b.len(),
            text: String::from_utf8_lossy(&b[..b.len().min(2000)]).into_owned(),
        }),
        Err(e) => Err(Failure {
            status: Some(status),
            text: crate::services::short_error(&e),
            timed_out: e.is_timeout(),
            model_loaded: false,
        }),
    }
}

/// The probe of one configured service. `Ok(detail)`, or `Err` with the failure.
async fn probe_service(
    cfg: &ServiceConfig,
    st: &Status,
    base: &str,
    timeout: Duration,
) -> Result<String, Failure> {
    let fail = |a: &Answer, what: &str| Failure {
        status: Some(a.status),
        text: format!("{what}: {}", a.text.trim()),
        timed_out: false,
        model_loaded: false,
    };
    match (cfg.kind, cfg.api()) {
        (Kind::Asr, _) => {
            let model = st
                .models
                .first()
                .cloned()
                .or(cfg.model.clone())
                .unwrap_or_else(|| "parakeet".into());
            let part = reqwest::multipart::Part::bytes(silence_wav())
                .file_name("probe.wav")
                .mime_str("audio/wav")
                .map_err(|e| Failure {
                    text: e.to_string(),
                    ..Default::default()
                })?;
            let form = reqwest::multipart::Form::new()
                .part("file", part)
                .text("model", model)
                .text("response_format", "json");
            let a = answer(
                client()
                    .post(format!("{base}/v1/audio/transcriptions"))
                    .multipart(form),
                timeout,
            )
            .await?;
            if a.status == 200
                && serde_json::from_str::<Value>(&a.text).is_ok_and(|v| v["text"].is_string())
            {
                Ok(format!(
                    "transcribed 1 s of silence ({} bytes back)",
                    a.bytes
                ))
            } else {
                Err(fail(&a, "transcription"))
            }
        }
        (Kind::Tts, Api::Magpie) => {
            let voice = st
                .voices
                .first()
                .cloned()
                .unwrap_or_else(|| "Magpie-Multilingual.EN-US.Aria".into());
            let form = reqwest::multipart::Form::new()
                .text("text", "hi")
                .text("language", magpie_language(&voice))
                .text("voice", voice)
                .text("sample_rate_hz", "22050")
                .text("encoding", "LINEAR_PCM");
            let a = answer(
                client()
                    .post(format!("{base}/v1/audio/synthesize"))
                    .multipart(form),
                timeout,
            )
            .await?;
            if a.status == 200 && a.starts_riff {
                Ok(format!("synthesized \"hi\" ({} bytes of WAV)", a.bytes))
            } else {
                Err(fail(&a, "synthesis"))
            }
        }
        (Kind::Tts, _) => {
            let voice = st
                .voices
                .first()
                .cloned()
                .unwrap_or_else(|| "af_heart".into());
            let body = json!({"model": "kokoro", "input": "hi", "voice": voice, "response_format": "wav", "stream": false});
            let a = answer(
                client().post(format!("{base}/v1/audio/speech")).json(&body),
                timeout,
            )
            .await?;
            if a.status == 200 && a.bytes > 44 {
                Ok(format!("synthesized \"hi\" ({} bytes of audio)", a.bytes))
            } else {
                Err(fail(&a, "speech"))
            }
        }
        (Kind::Embeddings, Api::Tei) => {
            let a = answer(
                client()
                    .post(format!("{base}/embed"))
                    .json(&json!({"inputs": "hi"})),
                timeout,
            )
            .await?;
            match serde_json::from_str::<Vec<Vec<f32>>>(&a.text) {
                Ok(v) if a.status == 200 && v.first().is_some_and(|e| !e.is_empty()) => {
                    Ok(format!("embedded \"hi\" ({} dimensions)", v[0].len()))
                }
                _ if a.status == 200 && a.bytes > 2000 => Ok("embedded \"hi\"".into()),
                _ => Err(fail(&a, "embedding")),
            }
        }
        (Kind::Embeddings, _) => {
            let body = json!({"input": "hi", "model": st.models.first().or(cfg.model.as_ref())});
            let a = answer(
                client().post(format!("{base}/v1/embeddings")).json(&body),
                timeout,
            )
            .await?;
            if a.status == 200 {
                Ok("embedded \"hi\"".into())
            } else {
                Err(fail(&a, "embedding"))
            }
        }
        (Kind::Llm, _) => {
            let Some(model) = st.models.first() else {
                return Ok("idle: no model served".into());
            };
            completion(base, model, None, timeout).await
        }
        (Kind::VectorStore, _) | (Kind::Custom, _) => {
            let a = answer(
                client().get(format!("{base}{}", cfg.health_path())),
                timeout,
            )
            .await?;
            if (200..300).contains(&a.status) {
                Ok(format!("{} answered {}", cfg.health_path(), a.status))
            } else {
                Err(fail(&a, cfg.health_path()))
            }
        }
    }
}

/// A one-token completion to a loaded model.
async fn completion(
    base: &str,
    model: &str,
    api_key: Option<&str>,
    timeout: Duration,
) -> Result<String, Failure> {
    let mut rb = client().post(format!("{base}/v1/chat/completions")).json(
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    );
    if let Some(k) = api_key {
        rb = rb.bearer_auth(k);
    }
    match answer(rb, timeout).await {
        Ok(a) if a.status == 200 => Ok(format!("`{model}` answered a one-token completion")),
        Ok(a) => Err(Failure {
            status: Some(a.status),
            text: format!("completion: {}", a.text.trim()),
            timed_out: false,
            model_loaded: true,
        }),
        Err(mut f) => {
            f.model_loaded = true;
            Err(f)
        }
    }
}

// ---------- rounds ----------

/// Where a service's container runs: node id and container name.
fn container_of(app: &App, cfg: &ServiceConfig, st: &Status) -> Option<(String, String)> {
    Some((st.node_id.clone()?, cfg.container.clone()?)).filter(|_| {
        app.registry
            .get(st.node_id.as_deref().unwrap_or_default())
            .is_some()
    })
}

/// The container as its agent last reported it.
pub fn container_info(app: &App, node_id: &str, name: &str) -> Option<ContainerInfo> {
    app.registry
        .get(node_id)?
        .containers?
        .containers
        .into_iter()
        .find(|c| c.name == name)
}

fn started_ms(c: &ContainerInfo) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(c.started_at.as_deref()?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// Probe one service now, apply the policy, record what happened.
pub async fn run_one(app: &Arc<App>, name: &str) -> Result<Report, ApiError> {
    if name == LOADED_LLM {
        return Ok(run_loaded_llm(app).await);
    }
    let (cfg, _) = app.services.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no service {name:?}; GET /api/services lists them (and \"llm\" is the loaded model)"),
        )
    })?;
    let _one_at_a_time = app.health.running.lock().await;
    let st = crate::services::refresh_one(app, cfg.clone()).await;
    let settings = app.settings.get();
    let timeout = Duration::from_secs(settings.health.probe_timeout_seconds);
    let started = Instant::now();
    let result = match (&st.base_url, cfg.enabled) {
        (_, false) => Err(None),
        (None, _) => Err(Some(Failure {
            text: st.error.clone().unwrap_or_else(|| "no address".into()),
            ..Default::default()
        })),
        (Some(base), true) => probe_service(&cfg, &st, base, timeout).await.map_err(Some),
    };
    let ms = started.elapsed().as_millis() as u64;
    let mut report = Report {
        service: cfg.name.clone(),
        at: crate::rfc3339(crate::now_ms()),
        outcome: "ok",
        ms,
        detail: String::new(),
        wedge: None,
        action: None,
    };
    match result {
        Ok(detail) => {
            report.outcome = if detail.starts_with("idle") {
                "idle"
            } else {
                "ok"
            };
            report.detail = detail;
        }
        Err(None) => {
            report.outcome = "skipped";
            report.detail = "disabled".into();
        }
        Err(Some(f)) => {
            report.outcome = "failed";
            report.detail = f.text.clone();
            report.wedge = policy::wedge_signature(&f);
            if report.wedge.is_some() {
                report.action = Some(act_on_wedge(app, &cfg, &st).await);
            }
        }
    }
    remember(app, &report);
    Ok(report)
}

/// Restart the service's container if the policy allows; returns what was done.
async fn act_on_wedge(app: &Arc<App>, cfg: &ServiceConfig, st: &Status) -> String {
    let settings = app.settings.get();
    if !settings.health.auto_restart {
        return "withheld: auto_restart is off in settings".into();
    }
    let Some((node_id, container)) = container_of(app, cfg, st) else {
        return "withheld: the service has no container on a connected node to restart".into();
    };
    let now = crate::now_ms();
    let info = container_info(app, &node_id, &container);
    let service_started = app
        .health
        .with(|m| m.get(&cfg.name).and_then(|e| e.started_by_us))
        .into_iter()
        .chain(info.as_ref().and_then(started_ms))
        .max();
    let restarts = app.health.with(|m| {
        m.get(&cfg.name)
            .map(|e| e.restarts.clone())
            .unwrap_or_default()
    });
    match policy::decide(
        &settings.health.limits(),
        &restarts,
        now,
        app.started_at,
        service_started,
    ) {
        Verdict::Withhold(why) => format!("withheld: {why}"),
        Verdict::Restart => {
            let op = Op::RestartContainer {
                name: container.clone(),
                timeout_secs: 10,
            };
            let result = crate::boxes::call(app, &node_id, op, Duration::from_secs(40)).await;
            app.health.note_restart(&cfg.name, crate::now_ms());
            let (status, outcome) = match &result {
                Ok(_) => (200, "restarted".to_string()),
                Err(e) => (e.status.as_u16(), format!("restart failed: {}", e.message)),
            };
            crate::audit::record(
                app,
                "policy",
                "restart",
                &format!("service {} (container {container})", cfg.name),
                status,
                &outcome,
            );
            let _ = app.db.add_subject_event(
                if result.is_ok() {
                    "service_restarted"
                } else {
                    "service_restart_failed"
                },
                Some(&format!("service:{}", cfg.name)),
                Some(&node_id),
                Some("policy"),
                &format!("{} (container {container}): {outcome}", cfg.name),
            );
            outcome
        }
    }
}

/// Keep the report and log the transitions it shows.
fn remember(app: &App, report: &Report) {
    let prev = app.health.with(|m| {
        let e = m.entry(report.service.clone()).or_default();
        e.last.replace(report.clone())
    });
    let subject = format!("service:{}", report.service);
    let was_failing = prev.as_ref().is_some_and(|p| p.outcome == "failed");
    let msg = match (report.outcome, was_failing) {
        ("failed", _) => Some((
            "probe_failed",
            format!(
                "deep probe of {} failed after {} ms: {}{}{}",
                report.service,
                report.ms,
                report.detail,
                report
                    .wedge
                    .as_ref()
                    .map(|w| format!(" (wedge: {w})"))
                    .unwrap_or_default(),
                report
                    .action
                    .as_ref()
                    .map(|a| format!("; {a}"))
                    .unwrap_or_default()
            ),
        )),
        ("ok" | "idle", true) => Some((
            "probe_recovered",
            format!(
                "deep probe of {} passes again ({}), after failing since {}",
                report.service,
                report.detail,
                prev.as_ref().map(|p| p.at.as_str()).unwrap_or("?")
            ),
        )),
        _ => None,
    };
    if let Some((kind, message)) = msg {
        let _ = app
            .db
            .add_subject_event(kind, Some(&subject), None, Some("probe"), &message);
    }
}

/// Probe the swap-managed models (the pseudo-service `llm`).
async fn run_loaded_llm(app: &Arc<App>) -> Report {
    let started = Instant::now();
    let timeout = Duration::from_secs(app.settings.get().health.probe_timeout_seconds);
    let targets: Vec<_> = app
        .routes
        .fresh(app)
        .targets
        .iter()
        .filter(|t| t.key.is_some() && !t.pooling)
        .cloned()
        .collect();
    let mut report = Report {
        service: LOADED_LLM.into(),
        at: crate::rfc3339(crate::now_ms()),
        outcome: "idle",
        ms: 0,
        detail: "idle: no model is loaded".into(),
        wedge: None,
        action: None,
    };
    if let Some(job) = app.swaps.active() {
        report.detail = format!("idle: `{}` is being loaded", job.record().key);
    }
    let mut details = Vec::new();
    for t in &targets {
        report.outcome = "ok";
        match completion(&t.base, &t.model, t.api_key.as_deref(), timeout).await {
            Ok(d) => details.push(d),
            Err(f) => {
                report.outcome = "failed";
                report.wedge = report.wedge.take().or(policy::wedge_signature(&f));
                details.push(format!("`{}` on {}: {}", t.model, t.node, f.text));
            }
        }
    }
    if !details.is_empty() {
        report.detail = details.join("; ");
    }
    report.ms = started.elapsed().as_millis() as u64;
    remember(app, &report);
    report
}

/// One round: every enabled service and the loaded LLM.
pub async fn round(app: &Arc<App>) {
    let names: Vec<String> = {
        let snap = app.services.snapshot();
        let mut v: Vec<String> = snap
            .values()
            .filter(|(c, _)| c.enabled)
            .map(|(c, _)| c.name.clone())
            .collect();
        v.sort();
        v
    };
    for name in names {
        let _ = run_one(app, &name).await;
    }
    run_loaded_llm(app).await;
}

/// The probe loop: a round every `health.probe_interval_seconds` (re-read when settings
/// change), and a probe of the ASR services when the relay asks.
pub fn spawn(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_round = Instant::now();
        loop {
            let interval = Duration::from_secs(app.settings.get().health.probe_interval_seconds);
            let due = last_round + interval;
            *app.health
                .next_round
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(
                crate::now_ms() + due.saturating_duration_since(Instant::now()).as_millis() as i64,
            );
            tokio::select! {
                _ = app.shutdown.cancelled() => break,
                _ = app.settings.changed() => continue,
                _ = app.health.wake.notified() => {
                    for (cfg, _) in app.services.of_kind(Kind::Asr) {
                        let _ = run_one(&app, &cfg.name).await;
                    }
                }
                _ = tokio::time::sleep_until(due.into()) => {
                    last_round = Instant::now();
                    round(&app).await;
                }
            }
        }
    })
}

// ---------- API ----------

/// Application routes (outside `/api`'s control guard; API keys apply).
pub fn app_routes() -> Router<Arc<App>> {
    Router::new().route("/api/health-event", post(health_event))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthEvent {
    service: String,
    ok: bool,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    ms: Option<u64>,
}

fn printable(field: &str, v: &str, max: usize) -> Result<(), String> {
    if v.chars().count() > max || v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!("{field}: at most {max} printable characters"));
    }
    Ok(())
}

/// `POST /api/health-event {service, ok, source?, error?, ms?}`: an application reports how a
/// call to a service went. Recorded in the event log; a failure of a configured ASR service
/// triggers a deep probe at once.
async fn health_event(
    State(app): State<Arc<App>>,
    actor: Option<Extension<Actor>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let bad = |msg: String| {
        crate::proxy::error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            msg,
        )
    };
    let ev: HealthEvent = match serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_slice(&body),
    ) {
        Ok(e) => e,
        Err(e) => {
            return bad(format!(
                "{}: {} (a report is {{\"service\": \"asr\", \"ok\": false, \"source\"?: \"my-app\", \"error\"?: \"…\", \"ms\"?: 1234}})",
                e.path(),
                e.inner()
            ));
        }
    };
    let checks = [
        (ev.service.trim().is_empty()).then(|| "service: must not be empty".to_string()),
        printable("service", &ev.service, 80).err(),
        ev.source
            .as_deref()
            .and_then(|s| printable("source", s, 80).err()),
        ev.error
            .as_deref()
            .and_then(|s| printable("error", s, 2000).err()),
    ];
    if let Some(msg) = checks.into_iter().flatten().next() {
        return bad(msg);
    }
    let actor = actor.map(|a| a.0.0).unwrap_or_else(|| "application".into());
    let source = ev.source.clone().unwrap_or_else(|| actor.clone());
    let message = format!(
        "{source} reports {} {}{}{}",
        ev.service,
        if ev.ok { "ok" } else { "failing" },
        ev.ms.map(|m| format!(" ({m} ms)")).unwrap_or_default(),
        ev.error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    let _ = app.db.add_subject_event(
        if ev.ok {
            "health_report_ok"
        } else {
            "health_report_failed"
        },
        Some(&format!("service:{}", ev.service)),
        None,
        Some(&actor),
        &message,
    );
    let mut probing = false;
    if !ev.ok
        && app
            .services
            .get(&ev.service)
            .is_some_and(|(c, _)| c.kind == Kind::Asr && c.enabled)
    {
        app.health.probe_soon();
        probing = true;
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"recorded": true, "message": message, "deep_probe_started": probing})),
    )
        .into_response()
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/deep-health", get(list))
        .route("/deep-health/{service}/run", post(run_route))
        .route("/services/{name}/{action}", post(service_action))
}

pub(crate) async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let settings = app.settings.get();
    let mut names: Vec<String> = app.services.snapshot().keys().cloned().collect();
    names.sort();
    names.push(LOADED_LLM.into());
    let services: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({
                "service": n,
                "last_probe": app.health.last(n),
                "restart_count": app.health.restart_count(n),
            })
        })
        .collect();
    let next = *app
        .health
        .next_round
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    Json(json!({
        "interval_seconds": settings.health.probe_interval_seconds,
        "next_round_at": next.map(crate::rfc3339),
        "policy": {
            "auto_restart": settings.health.auto_restart,
            "max_restarts": settings.health.max_restarts,
            "window_seconds": settings.health.window_seconds,
            "cooldown_seconds": settings.health.cooldown_seconds,
            "grace_seconds": settings.health.grace_seconds,
        },
        "services": services,
    }))
}

async fn run_route(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
) -> Result<Json<Report>, ApiError> {
    Ok(Json(run_one(&app, &service).await?))
}

/// `POST /api/services/{name}/{start|stop|restart}`: the service's container, through its
/// node's agent.
async fn service_action(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (cfg, st) = app.services.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no service {name:?}; GET /api/services lists them"),
        )
    })?;
    let Some(container) = cfg.container.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_container",
            format!(
                "the service {name} names no container; set \"container\" with PUT /api/services/{name}"
            ),
        ));
    };
    let Some(node_id) = st.node_id.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_node",
            format!(
                "the service {name} is not on a node ({}); only services on a node can be started or stopped",
                st.error.clone().unwrap_or_else(|| "reached by URL".into())
            ),
        ));
    };
    let op = match action.as_str() {
        "start" => Op::StartContainer {
            name: container.clone(),
        },
        "stop" => Op::StopContainer {
            name: container.clone(),
            timeout_secs: 10,
        },
        "restart" => Op::RestartContainer {
            name: container.clone(),
            timeout_secs: 10,
        },
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown service action {other:?}: use start, stop or restart"),
            ));
        }
    };
    let result = crate::boxes::call(&app, &node_id, op, Duration::from_secs(40)).await;
    let outcome = match &result {
        Ok(_) => "done".to_string(),
        Err(e) => format!("failed: {}", e.message),
    };
    let _ = app.db.add_subject_event(
        &format!("service_{action}"),
        Some(&format!("service:{name}")),
        Some(&node_id),
        Some(&actor.0),
        &format!(
            "{action} of service {name} (container {container}) by {}: {outcome}",
            actor.0
        ),
    );
    result?;
    if action != "stop" {
        app.health.note_restart(&name, crate::now_ms());
    }
    let st = crate::services::refresh_one(&app, cfg.clone()).await;
    Ok(Json(json!({
        "service": name,
        "action": action,
        "container": container,
        "status": st,
        "container_state": container_info(&app, &node_id, &container).map(|c| json!({"state": c.state, "status": c.status})),
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_silence_probe_is_a_valid_wav() {
        let wav = silence_wav();
        // The header, byte for byte: RIFF, WAVE, a 16-byte PCM fmt chunk, then data.
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes(wav[4..8].try_into().unwrap()) as usize,
            wav.len() - 8
        );
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u32::from_le_bytes(wav[16..20].try_into().unwrap()), 16);
        assert_eq!(
            u16::from_le_bytes(wav[20..22].try_into().unwrap()),
            1,
            "PCM"
        );
        assert_eq!(
            u16::from_le_bytes(wav[22..24].try_into().unwrap()),
            1,
            "mono"
        );
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 16_000);
        assert_eq!(
            u32::from_le_bytes(wav[28..32].try_into().unwrap()),
            32_000,
            "byte rate"
        );
        assert_eq!(
            u16::from_le_bytes(wav[34..36].try_into().unwrap()),
            16,
            "bits"
        );
        assert_eq!(&wav[36..40], b"data");
        assert_eq!(u32::from_le_bytes(wav[40..44].try_into().unwrap()), 32_000);
        assert_eq!(wav.len(), 44 + 32_000);
        assert!(wav[44..].iter().all(|b| *b == 0));
        let reader = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
        assert_eq!(reader.duration(), 16_000);
    }

    #[test]
    fn magpie_language_comes_from_the_voice() {
        assert_eq!(magpie_language("Magpie-Multilingual.EN-US.Aria"), "en-US");
        assert_eq!(
            magpie_language("Magpie-Multilingual.ES-US.Diego.Happy"),
            "es-US"
        );
        assert_eq!(magpie_language("de-DE"), "en-US");
    }
}
