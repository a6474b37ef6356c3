//! Webhooks (F13): `swap_complete` / `swap_failed` (and `ping`) POSTed to configured URLs,
//! HMAC-SHA256 signed, retried with backoff, persisted so nothing is lost to a restart.
//!
//! [`notify`] only writes delivery rows (the exact bytes to send) and wakes the worker, so it
//! never blocks a swap. The worker ([`spawn_worker`]) polls `webhook_deliveries` every 500 ms
//! and on every wake-up, claims due rows with a lease (`next_attempt_at` pushed 30 s ahead, so a
//! crash mid-attempt only delays a retry), sends up to 16 at a time, and records the outcome:
//! 2xx is delivered; anything else is retried after 1 s, 2 s, 4 s, ... (capped at 5 min) up to 8
//! attempts, then failed (with a `webhook_failed` event). Several controllers in one process each
//! run their own worker on their own database; the wake-up is one process-wide `Notify`, which
//! at worst wakes a worker that finds nothing to do.
//!
//! Invariants: the secret is write-only — it signs bodies and never appears in a response, a
//! log line or an event; events and logs name a webhook's origin (scheme, host, port) only,
//! since a URL path can itself be a credential; redirects are not followed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use hmac::{Hmac, Mac};
use rusqlite::{OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use crate::api::{Actor, ApiError, JsonBody};
use crate::db::{Db, DbError};
use crate::{App, now_ms, rfc3339};

/// Events a webhook can subscribe to (`ping` is sent on request only).
pub const EVENTS: &[&str] = &["swap_complete", "swap_failed"];
/// Attempts before a delivery is given up as failed.
pub const MAX_ATTEMPTS: i64 = 8;
/// Per-attempt limit (connect, send, answer).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two attempts.
const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;
/// How long a claimed delivery is reserved for the attempt in progress.
const LEASE_MS: i64 = 30_000;
const POLL: Duration = Duration::from_millis(500);
const MAX_IN_FLIGHT: usize = 16;
/// Finished deliveries kept per webhook.
const KEEP_FINISHED: i64 = 200;
const MIN_SECRET_CHARS: usize = 16;
const MAX_SECRET_CHARS: usize = 256;
const MAX_URL_CHARS: usize = 2048;

/// Wakes the workers when deliveries are queued.
static WAKE: Notify = Notify::const_new();

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/webhooks", post(create_route).get(list_route))
        .route("/webhooks/{id}", delete(delete_route).get(get_route))
        .route("/webhooks/{id}/deliveries", get(deliveries_route))
        .route("/webhooks/{id}/test", post(test_route))
}

/// Queue `event` (e.g. "swap_complete") with `payload` for every webhook subscribed to it.
/// Synchronous and quick (one insert per webhook); delivery happens in the worker.
pub fn notify(app: &App, event: &str, payload: Value) {
    match enqueue(&app.db, event, &payload, None, now_ms()) {
        Ok(ids) if !ids.is_empty() => WAKE.notify_waiters(),
        Ok(_) => {}
        Err(e) => tracing::warn!(event, error = %e, "cannot queue webhook deliveries"),
    }
}

/// The delivery worker; ends at shutdown.
pub fn spawn_worker(app: Arc<App>) -> JoinHandle<()> {
    tokio::spawn(worker(app))
}

// ---------- storage ----------

fn random_id(prefix: &str, bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    format!("{prefix}{}", hex::encode(raw))
}

/// Insert a delivery for each webhook subscribed to `event` (or just for webhook `only`,
/// whatever it subscribes to); returns their ids. Rows become due at `due_at`.
fn enqueue(
    db: &Db,
    event: &str,
    payload: &Value,
    only: Option<&str>,
    due_at: i64,
) -> Result<Vec<String>, DbError> {
    let now = now_ms();
    db.with(|c| {
        let tx = c.transaction()?;
        let hooks: Vec<(String, String)> = {
            let mut stmt =
                tx.prepare("SELECT id, events FROM webhooks WHERE (?1 IS NULL OR id = ?1)")?;
            stmt.query_map(params![only], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut ids = Vec::new();
        for (hook_id, events) in hooks {
            let subscribed: Vec<String> = serde_json::from_str(&events).unwrap_or_default();
            if only.is_none() && !subscribed.iter().any(|e| e == event) {
                continue;
            }
            let id = random_id("dlv_", 12);
            let body = json!({
                "event": event,
                "delivery_id": id,
                "sent_at": rfc3339(now),
                "data": payload,
            })
            .to_string();
            tx.execute(
                "INSERT INTO webhook_deliveries(id, webhook_id, event, body, attempts, state, next_attempt_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, 0, 'pending', ?5, ?6)",
                params![id, hook_id, event, body, due_at, now],
            )?;
            ids.push(id);
        }
        tx.commit()?;
        Ok(ids)
    })
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
struct Due {
    id: String,
    webhook_id: String,
    event: String,
    body: String,
    attempts: i64,
    url: String,
    secret: String,
}

/// Claim up to `limit` due deliveries (pushing their due time a lease ahead).
fn claim_due(db: &Db, now: i64, limit: usize) -> Result<Vec<Due>, DbError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    db.with(|c| {
        let tx = c.transaction()?;
        let due: Vec<Due> = {
            let mut stmt = tx.prepare(
                "SELECT d.id, d.webhook_id, d.event, d.body, d.attempts, w.url, w.secret
                 FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                 WHERE d.state = 'pending' AND d.next_attempt_at <= ?1
                 ORDER BY d.next_attempt_at, d.created_at LIMIT ?2",
            )?;
            stmt.query_map(params![now, limit as i64], |r| {
                Ok(Due {
                    id: r.get(0)?,
                    webhook_id: r.get(1)?,
                    event: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                    url: r.get(5)?,
                    secret: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        for d in &due {
            tx.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = ?2 WHERE id = ?1",
                params![d.id, now + LEASE_MS],
            )?;
        }
        // Deliveries whose webhook is gone can never be sent.
        tx.execute(
            "UPDATE webhook_deliveries SET state = 'failed', last_error = 'the webhook was deleted'
             WHERE state = 'pending' AND webhook_id NOT IN (SELECT id FROM webhooks)",
            [],
        )?;
        tx.commit()?;
        Ok(due)
    })
}

/// Load one delivery for an attempt made right away (the test ping), already leased.
fn load_due(db: &Db, id: &str) -> Result<Option<Due>, DbError> {
    db.with(|c| {
        c.query_row(
            "SELECT d.id, d.webhook_id, d.event, d.body, d.attempts, w.url, w.secret
             FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id WHERE d.id = ?1",
            [id],
            |r| {
                Ok(Due {
                    id: r.get(0)?,
                    webhook_id: r.get(1)?,
                    event: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                    url: r.get(5)?,
                    secret: r.get(6)?,
                })
            },
        )
        .optional()
    })
}

/// The wait after the `attempts`-th failed attempt: 1 s, 2 s, 4 s, ... capped at 5 min.
fn backoff_ms(attempts: i64) -> i64 {
    let exp = (attempts - 1).clamp(0, 20) as u32;
    (1000_i64 << exp).min(MAX_BACKOFF_MS)
}

/// What one attempt gave.
#[derive(Debug)]
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Record an attempt's outcome; returns the new state.
fn record(db: &Db, d: &Due, outcome: &Outcome) -> Result<&'static str, DbError> {
    let now = now_ms();
    let attempts = d.attempts + 1;
    let state = if outcome.ok() {
        "delivered"
    } else if attempts >= MAX_ATTEMPTS {
        "failed"
    } else {
        "pending"
    };
    db.with(|c| {
        c.execute(
            "UPDATE webhook_deliveries SET attempts = ?2, state = ?3, last_status = ?4, last_error = ?5,
                 next_attempt_at = ?6, delivered_at = ?7
             WHERE id = ?1",
            params![
                d.id,
                attempts,
                state,
                outcome.status,
                outcome.error,
                if state == "pending" {
                    now + backoff_ms(attempts)
                } else {
                    now
                },
                (state == "delivered").then_some(now),
            ],
        )?;
        if state != "pending" {
            // Keep the newest finished deliveries of this webhook.
            c.execute(
                "DELETE FROM webhook_deliveries WHERE id IN (
                     SELECT id FROM webhook_deliveries WHERE webhook_id = ?1 AND state != 'pending'
                     ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?2)",
                params![d.webhook_id, KEEP_FINISHED],
            )?;
        }
        Ok(())
    })?;
    if state == "failed" {
        let _ = db.add_event(
            "webhook_failed",
            None,
            None,
            &format!(
                "webhook {} ({}): delivery {} of {} failed after {attempts} attempts: {}",
                d.webhook_id,
                origin(&d.url),
                d.id,
                d.event,
                outcome.error.as_deref().unwrap_or("unknown error")
            ),
        );
    }
    Ok(state)
}

/// Move the leases of interrupted attempts back to now, so they resume at once next time.
fn release_leases(db: &Db, ids: &[String]) {
    let now = now_ms();
    let _ = db.with(|c| {
        for id in ids {
            c.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = ?2 WHERE id = ?1 AND state = 'pending'",
                params![id, now],
            )?;
        }
        Ok(())
    });
}

// ---------- sending ----------

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        // HMAC takes keys of any length; this arm is unreachable in practice.
        Err(_) => String::new(),
    }
}

fn client() -> Result<reqwest::Client, String> {
    // reqwest (built with `rustls-no-provider`) panics without a process-wide crypto provider;
    // install ring (a no-op when one is installed already).
    spark_agent::install_crypto_provider();
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        return Err("no TLS crypto provider is installed".into());
    }
    reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(format!("spark-control/{}", spark_common::SOFTWARE_VERSION))
        .build()
        .map_err(|e| error_text(&e))
}

/// An error and its causes, without the URL (which may hold a credential).
fn error_text(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
    } else {
        String::new()
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let first = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        ""
    } else {
        "request failed"
    };
    if text.is_empty() {
        text = first.to_string();
    }
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Text safe for a one-line error: control characters replaced, at most `max` characters.
fn clean(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

async fn attempt(client: &reqwest::Client, d: &Due) -> Outcome {
    let sent = client
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Spark-Event", &d.event)
        .header("X-Spark-Delivery", &d.id)
        .header("X-Spark-Signature", signature(&d.secret, d.body.as_bytes()))
        .body(d.body.clone())
        .send()
        .await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                status: None,
                error: Some(error_text(&e)),
            };
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Outcome {
            status: Some(status.as_u16()),
            error: None,
        };
    }
    // A little of the answer helps whoever debugs the receiver.
    let mut snippet = Vec::new();
    while snippet.len() < 512 {
        match resp.chunk().await {
            Ok(Some(chunk)) => snippet.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let snippet = clean(&String::from_utf8_lossy(&snippet), 200);
    let mut error = format!("HTTP {status}");
    if status.is_redirection() {
        error.push_str(" (redirects are not followed; configure the final URL)");
    }
    if !snippet.is_empty() {
        error.push_str(": ");
        error.push_str(&snippet);
    }
    Outcome {
        status: Some(status.as_u16()),
        error: Some(error),
    }
}

async fn attempt_and_record(app: Arc<App>, client: reqwest::Client, d: Due) -> String {
    let outcome = attempt(&client, &d).await;
    match record(&app.db, &d, &outcome) {
        Ok(state) => tracing::debug!(delivery = %d.id, event = %d.event, state, "webhook attempt"),
        Err(e) => tracing::warn!(delivery = %d.id, error = %e, "cannot record a webhook attempt"),
    }
    if let Some(err) = &outcome.error {
        tracing::info!(
            delivery = %d.id,
            webhook = %d.webhook_id,
            target = %origin(&d.url),
            attempt = d.attempts + 1,
            error = %err,
            "webhook delivery attempt failed"
        );
    }
    d.id
}

async fn worker(app: Arc<App>) {
    let mut client: Option<reqwest::Client> = None;
    let mut in_flight: JoinSet<String> = JoinSet::new();
    let mut in_flight_ids: Vec<String> = Vec::new();
    let mut warned = false;
    loop {
        let notified = WAKE.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        crate::lock::sweep_expired(&app);
        while let Some(done) = in_flight.try_join_next() {
            if let Ok(id) = done {
                in_flight_ids.retain(|i| *i != id);
            }
        }
        if client.is_none() {
            match self::client() {
                Ok(c) => client = Some(c),
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "webhook deliveries wait: cannot build an HTTP client");
                }
                Err(_) => {}
            }
        }
        if let Some(client) = &client {
            match claim_due(&app.db, now_ms(), MAX_IN_FLIGHT - in_flight.len()) {
                Ok(due) => {
                    for d in due {
                        in_flight_ids.push(d.id.clone());
                        in_flight.spawn(attempt_and_record(app.clone(), client.clone(), d));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read pending webhook deliveries"),
            }
        }

        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = &mut notified => {}
            _ = tokio::time::sleep(POLL) => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(id) = done {
                    in_flight_ids.retain(|i| *i != id);
                }
            }
        }
    }
    // Interrupted attempts resume right away at the next start.
    in_flight.abort_all();
    while in_flight.join_next().await.is_some() {}
    release_leases(&app.db, &in_flight_ids);
}

// ---------- validation ----------

/// scheme://host[:port] of a URL, for logs and events.
fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "(invalid URL)".into())
}

fn validate_url(url: &str) -> Result<String, ApiError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(ApiError::bad_request(
            "url is empty; give the http:// or https:// address that should receive the POSTs"
                .into(),
        ));
    }
    if url.chars().count() > MAX_URL_CHARS {
        return Err(ApiError::bad_request(format!(
            "url is longer than {MAX_URL_CHARS} characters"
        )));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::bad_request(format!("url {url:?} is not a valid URL: {e}")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(ApiError::bad_request(format!(
            "url must start with http:// or https://; {:?} is not supported",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!("url {url:?} has no host")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::bad_request(
            "url must not carry a user name or password (webhook URLs are listed by GET /api/webhooks); the receiver authenticates deliveries by the X-Spark-Signature HMAC".into(),
        ));
    }
    Ok(parsed.to_string())
}

fn validate_secret(secret: &str) -> Result<(), ApiError> {
    let n = secret.chars().count();
    if !(MIN_SECRET_CHARS..=MAX_SECRET_CHARS).contains(&n) {
        return Err(ApiError::bad_request(format!(
            "secret must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters long; the one given has {n}"
        )));
    }
    Ok(())
}

fn validate_events(events: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let Some(events) = events else {
        return Ok(EVENTS.iter().map(|e| e.to_string()).collect());
    };
    if events.is_empty() {
        return Err(ApiError::bad_request(format!(
            "events must name at least one of {} (or be left out for all)",
            EVENTS.join(", ")
        )));
    }
    for e in &events {
        if !EVENTS.contains(&e.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown event {e:?}; webhooks can subscribe to {}",
                EVENTS.join(", ")
            )));
        }
    }
    // In the canonical order, without duplicates.
    Ok(EVENTS
        .iter()
        .filter(|e| events.iter().any(|x| x == *e))
        .map(|e| e.to_string())
        .collect())
}

// ---------- routes ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    secret: String,
    #[serde(default)]
    events: Option<Vec<String>>,
}

struct HookRow {
    id: String,
    url: String,
    events: String,
    created_at: i64,
}

fn hook_view(h: &HookRow) -> Value {
    let events: Vec<String> = serde_json::from_str(&h.events).unwrap_or_default();
    json!({
        "id": h.id,
        "url": h.url,
        "events": events,
        "created_at": rfc3339(h.created_at),
    })
}

fn hooks(db: &Db, id: Option<&str>) -> Result<Vec<HookRow>, DbError> {
    db.with(|c| {
        let mut stmt = c.prepare(
            "SELECT id, url, events, created_at FROM webhooks WHERE (?1 IS NULL OR id = ?1)
             ORDER BY created_at, id",
        )?;
        stmt.query_map(params![id], |r| {
            Ok(HookRow {
                id: r.get(0)?,
                url: r.get(1)?,
                events: r.get(2)?,
                created_at: r.get(3)?,
            })
        })?
        .collect()
    })
}

fn hook(db: &Db, id: &str) -> Result<HookRow, ApiError> {
    hooks(db, Some(id))?.into_iter().next().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no webhook with id {id:?}; GET /api/webhooks lists them"),
        )
    })
}

async fn create_route(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let url = validate_url(&body.url)?;
    validate_secret(&body.secret)?;
    let events = validate_events(body.events)?;
    let row = HookRow {
        id: random_id("wh_", 8),
        url,
        events: serde_json::to_string(&events).unwrap_or_else(|_| "[]".into()),
        created_at: now_ms(),
    };
    app.db.with(|c| {
        c.execute(
            "INSERT INTO webhooks(id, url, secret, events, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.id, row.url, body.secret, row.events, row.created_at],
        )
    })?;
    let _ = app.db.add_event(
        "webhook_created",
        None,
        Some(&actor.0),
        &format!(
            "webhook {} added for {} (events: {})",
            row.id,
            origin(&row.url),
            events.join(", ")
        ),
    );
    Ok((StatusCode::CREATED, Json(hook_view(&row))))
}

async fn list_route(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let out: Vec<Value> = hooks(&app.db, None)?.iter().map(hook_view).collect();
    Ok(Json(json!(out)))
}

async fn get_route(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(hook_view(&hook(&app.db, &id)?)))
}

async fn delete_route(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let h = hook(&app.db, &id)?;
    app.db.with(|c| {
        let tx = c.transaction()?;
        tx.execute(
            "DELETE FROM webhook_deliveries WHERE webhook_id = ?1",
            [&id],
        )?;
        tx.execute("DELETE FROM webhooks WHERE id = ?1", [&id])?;
        tx.commit()
    })?;
    let _ = app.db.add_event(
        "webhook_deleted",
        None,
        Some(&actor.0),
        &format!("webhook {id} for {} deleted", origin(&h.url)),
    );
    Ok(StatusCode::NO_CONTENT)
}

fn delivery_views(db: &Db, webhook_id: &str, id: Option<&str>) -> Result<Vec<Value>, DbError> {
    db.with(|c| {
        let mut stmt = c.prepare(
            "SELECT id, event, state, attempts, last_status, last_error, created_at, delivered_at, next_attempt_at
             FROM webhook_deliveries WHERE webhook_id = ?1 AND (?2 IS NULL OR id = ?2)
             ORDER BY created_at DESC, rowid DESC LIMIT 50",
        )?;
        stmt.query_map(params![webhook_id, id], |r| {
            let state: String = r.get(2)?;
            let next: i64 = r.get(8)?;
            Ok(json!({
                "id": r.get::<_, String>(0)?,
                "event": r.get::<_, String>(1)?,
                "state": state,
                "attempts": r.get::<_, i64>(3)?,
                "last_status": r.get::<_, Option<i64>>(4)?,
                "last_error": r.get::<_, Option<String>>(5)?,
                "created_at": rfc3339(r.get(6)?),
                "delivered_at": r.get::<_, Option<i64>>(7)?.map(rfc3339),
                "next_attempt_at": (state == "pending").then(|| rfc3339(next)),
            }))
        })?
        .collect()
    })
}

async fn deliveries_route(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    hook(&app.db, &id)?;
    Ok(Json(json!(delivery_views(&app.db, &id, None)?)))
}

/// Send a `ping` now and answer with the delivery as it stands after the first attempt (a
/// failed ping is retried like any delivery).
async fn test_route(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let h = hook(&app.db, &id)?;
    let payload = json!({
        "webhook_id": id,
        "message": "test delivery from Spark Control",
        "requested_by": actor.0,
    });
    // Queued already leased, so the worker leaves it to this request.
    let ids = enqueue(&app.db, "ping", &payload, Some(&id), now_ms() + LEASE_MS)?;
    let Some(delivery_id) = ids.into_iter().next() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("webhook {id:?} was deleted during the test"),
        ));
    };
    let client = client().map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("cannot send webhooks now: {e}"),
        )
    })?;
    if let Some(d) = load_due(&app.db, &delivery_id)? {
        let outcome = attempt(&client, &d).await;
        record(&app.db, &d, &outcome)?;
    }
    WAKE.notify_waiters();
    let _ = app.db.add_event(
        "webhook_tested",
        None,
        Some(&actor.0),
        &format!("ping sent to webhook {id} ({})", origin(&h.url)),
    );
    delivery_views(&app.db, &id, Some(&delivery_id))?
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "the webhook was deleted during the test",
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let waits: Vec<i64> = (1..=MAX_ATTEMPTS).map(backoff_ms).collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000]);
        assert_eq!(backoff_ms(10), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(100), MAX_BACKOFF_MS);
    }

    #[test]
    fn deliveries_fail_after_the_last_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let secret = "0123456789abcdef-secret";
        db.with(|c| {
            c.execute(
                "INSERT INTO webhooks(id, url, secret, events, created_at) VALUES
                 ('wh_a', 'http://127.0.0.1:9/secret-path', ?1, '[\"swap_failed\"]', 0),
                 ('wh_b', 'http://127.0.0.1:9/', ?1, '[\"swap_complete\"]', 0)",
                [secret],
            )
        })
        .unwrap();
        // Only the subscribed webhook gets a row; `only` ignores subscriptions (ping).
        assert!(
            enqueue(&db, "swap_complete", &json!({}), Some("wh_a"), 0)
                .unwrap()
                .len()
                == 1
        );
        db.with(|c| c.execute("DELETE FROM webhook_deliveries", []))
            .unwrap();
        let ids = enqueue(&db, "swap_failed", &json!({"x": 1}), None, 0).unwrap();
        assert_eq!(ids.len(), 1);

        let mut t = now_ms();
        for n in 1..=MAX_ATTEMPTS {
            let due = claim_due(&db, t, 10).unwrap();
            assert_eq!(due.len(), 1, "attempt {n}");
            // Leased: not due again until the lease runs out.
            assert!(claim_due(&db, t, 10).unwrap().is_empty());
            let state = record(
                &db,
                &due[0],
                &Outcome {
                    status: None,
                    error: Some("cannot connect".into()),
                },
            )
            .unwrap();
            assert_eq!(
                state,
                if n < MAX_ATTEMPTS {
                    "pending"
                } else {
                    "failed"
                }
            );
            t = now_ms() + MAX_BACKOFF_MS + 1;
        }
        assert!(
            claim_due(&db, t + 10 * MAX_BACKOFF_MS, 10)
                .unwrap()
                .is_empty()
        );
        let views = delivery_views(&db, "wh_a", None).unwrap();
        assert_eq!(views[0]["state"], "failed");
        assert_eq!(views[0]["attempts"], MAX_ATTEMPTS);
        assert_eq!(views[0]["last_error"], "cannot connect");
        let events = db.events(10, None).unwrap();
        let failed = events.iter().find(|e| e.kind == "webhook_failed").unwrap();
        assert!(
            failed.message.contains("after 8 attempts"),
            "{}",
            failed.message
        );
        assert!(!failed.message.contains(secret) && !failed.message.contains("secret-path"));
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let msg = |r: Result<String, ApiError>| r.err().unwrap().message;
        assert!(msg(validate_url("ftp://x/y")).contains("http"));
        assert!(msg(validate_url("not a url")).contains("not a valid URL"));
        assert!(msg(validate_url("http://u:p@host/x")).contains("password"));
        assert!(msg(validate_url("")).contains("empty"));
        assert_eq!(
            validate_url(" https://Example.com:8443/h?x=1 ").unwrap(),
            "https://example.com:8443/h?x=1"
        );
        assert!(validate_secret("short").is_err());
        assert!(validate_secret(&"s".repeat(16)).is_ok());
        assert!(validate_secret(&"s".repeat(257)).is_err());
        let e = validate_events(Some(vec!["swap_done".into()]))
            .err()
            .unwrap()
            .message;
        assert!(e.contains("swap_complete, swap_failed"), "{e}");
        assert!(validate_events(Some(vec![])).is_err());
        assert_eq!(
            validate_events(Some(vec!["swap_failed".into(), "swap_failed".into()])).unwrap(),
            ["swap_failed"]
        );
        assert_eq!(validate_events(None).unwrap(), EVENTS);
        assert_eq!(
            origin("https://h.example:8443/secret/path"),
            "https://h.example:8443"
        );
    }
}
