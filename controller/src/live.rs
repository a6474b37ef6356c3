//! `GET /api/live`: the dashboard's live feed, as server-sent events.
//!
//! `event: state` carries the whole picture the dashboard draws — nodes with their telemetry and
//! containers, services with container state, health and last probe, the swap status and the
//! lock, downloads, schedules, deep health — sent when it changes (checked every 250 ms, so a
//! container killed on a box shows within a second of its agent's report) and at least every
//! 15 s. `event: log` carries new event-log rows (oldest first) as they are written. Each
//! `state` is complete: a client that reconnects needs nothing else.
//!
//! The state is made by the same handlers as the REST endpoints, so the two never disagree.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use serde_json::{Value, json};

use crate::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/live", get(live))
}

fn ok_or_error<T: serde::Serialize>(r: Result<axum::Json<T>, crate::api::ApiError>) -> Value {
    match r {
        Ok(axum::Json(v)) => serde_json::to_value(v).unwrap_or(Value::Null),
        Err(e) => json!({"error": {"code": e.code, "message": e.message}}),
    }
}

/// The whole picture, as the REST endpoints give it.
pub async fn snapshot(app: &Arc<App>) -> Value {
    let nodes: Vec<Value> = app
        .db
        .nodes(false)
        .unwrap_or_default()
        .into_iter()
        .map(|row| {
            let id = row.id.clone();
            let mut v = serde_json::to_value(crate::api::node_view(app, row)).unwrap_or_default();
            let containers = app.registry.get(&id).and_then(|l| l.containers);
            v["containers"] = json!(containers.as_ref().map(|c| &c.containers));
            v["docker"] = json!(containers.as_ref().map(|c| &c.docker));
            // Stored as the wakeable interfaces ({"mac", "ips"}) in JSON text; older rows hold
            // bare MACs.
            let macs: Vec<String> = app
                .db
                .node_macs(&id)
                .unwrap_or_default()
                .into_iter()
                .map(|m| {
                    serde_json::from_str::<crate::wake::KnownNic>(&m)
                        .map(|n| n.mac)
                        .unwrap_or(m)
                })
                .collect();
            v["macs"] = json!(macs);
            v
        })
        .collect();
    let s = State(app.clone());
    json!({
        "nodes": nodes,
        "hardware": ok_or_error(crate::boxes::hardware(State(app.clone())).await),
        "services": ok_or_error(crate::services::list(State(app.clone())).await),
        "status": ok_or_error(crate::swap::status(State(app.clone())).await),
        "lock": ok_or_error(crate::lock::get_route(State(app.clone())).await),
        "schedules": ok_or_error(crate::schedules::list_route(State(app.clone())).await),
        "downloads": crate::boxes::list_downloads(State(app.clone())).await.0,
        "deep_health": crate::health::list(s).await.0,
        "settings": crate::settings::masked(&app.settings.get()),
    })
}

async fn live(State(app): State<Arc<App>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let last_event = app
        .db
        .events(1, None)
        .ok()
        .and_then(|v| v.first().map(|e| e.id))
        .unwrap_or(0);
    let stream = futures_util::stream::unfold(
        (app, String::new(), Instant::now(), last_event, true),
        |(app, last, sent_at, last_event, first)| async move {
            if !first {
                tokio::select! {
                    _ = app.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            // New event-log rows first (they explain the state that follows).
            let rows = app
                .db
                .with(|c| {
                    let mut st = c.prepare(
                        "SELECT id, at, kind, subject, node_id, actor, message FROM events WHERE id > ?1 ORDER BY id LIMIT 200",
                    )?;
                    let rows = st
                        .query_map([last_event], |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                json!({
                                    "id": r.get::<_, i64>(0)?,
                                    "at": crate::rfc3339(r.get(1)?),
                                    "kind": r.get::<_, String>(2)?,
                                    "subject": r.get::<_, Option<String>>(3)?,
                                    "node_id": r.get::<_, Option<String>>(4)?,
                                    "actor": r.get::<_, Option<String>>(5)?,
                                    "message": r.get::<_, String>(6)?,
                                }),
                            ))
                        })?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    Ok(rows)
                })
                .unwrap_or_default();
            let mut events = Vec::new();
            let mut newest = last_event;
            if !rows.is_empty() {
                newest = rows.last().map(|r| r.0).unwrap_or(last_event);
                let list: Vec<Value> = rows.into_iter().map(|r| r.1).collect();
                events.push(
                    Event::default()
                        .event("log")
                        .data(Value::Array(list).to_string()),
                );
            }
            let state = snapshot(&app).await.to_string();
            let (last, sent_at) = if state != last || sent_at.elapsed() >= Duration::from_secs(15) {
                events.push(Event::default().event("state").data(state.clone()));
                (state, Instant::now())
            } else {
                (last, sent_at)
            };
            let items: Vec<Result<Event, Infallible>> = events.into_iter().map(Ok).collect();
            Some((
                futures_util::stream::iter(items),
                (app, last, sent_at, newest, false),
            ))
        },
    );
    use futures_util::StreamExt;
    Sse::new(stream.flatten()).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
