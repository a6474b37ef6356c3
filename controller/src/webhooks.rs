//! Webhooks (stub, being written).
use std::sync::Arc;

use axum::Router;
use tokio::task::JoinHandle;

use crate::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
}

/// Queue `event` (e.g. "swap_complete") with `payload` for every webhook subscribed to it.
pub fn notify(_app: &App, _event: &str, _payload: serde_json::Value) {}

/// The delivery worker; ends at shutdown.
pub fn spawn_worker(_app: Arc<App>) -> JoinHandle<()> {
    tokio::spawn(async {})
}
