//! Settings the operator changes at run time: stored as one JSON document in the database,
//! validated as a whole, applied live (readers take the current `Arc<Settings>` per request).
//!
//! `GET /api/settings` shows every value; `PUT /api/settings` takes a partial document (only the
//! fields given change) and answers 400 naming the field when a value is wrong; nothing is
//! stored then.

use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::App;
use crate::api::{Actor, ApiError};

const META_KEY: &str = "settings";

/// Everything adjustable without a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Application endpoints (`/v1/*`, `/api/search`, …) require an API key. Off on a fresh
    /// install, so the first application works without setup.
    pub api_keys_required: bool,
    /// Request body limits of the application endpoints.
    pub limits: Limits,
    /// Hybrid search over the vector store.
    pub search: SearchSettings,
    /// Deep health probes and the auto-restart policy.
    pub health: HealthSettings,
    /// Write-only: shown masked, never logged.
    pub secrets: Secrets,
    /// How long a gateway request for an on-demand model waits for it to load before 503 +
    /// `Retry-After` (unset: the controller's start-up value, 120 s by default).
    pub on_demand_wait_seconds: Option<u64>,
}

/// Credentials the controller passes on (as typed secrets, never on a command line).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Secrets {
    /// Hugging Face token for gated repositories: sent with downloads that carry none.
    pub huggingface_token: Option<String>,
    /// NVIDIA NGC API key (registry login for NIM images).
    pub ngc_api_key: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field(
                "huggingface_token",
                &self.huggingface_token.as_ref().map(|_| MASK),
            )
            .field("ngc_api_key", &self.ngc_api_key.as_ref().map(|_| MASK))
            .finish()
    }
}

/// What a set secret reads as. Sending it back in a `PUT` keeps the stored value.
pub const MASK: &str = "********";

/// The settings as the API shows them: secrets masked.
pub fn masked(s: &Settings) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(secrets) = v.get_mut("secrets").and_then(Value::as_object_mut) {
        for val in secrets.values_mut() {
            if !val.is_null() {
                *val = Value::String(MASK.into());
            }
        }
    }
    v
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// Seconds between deep probe rounds.
    pub probe_interval_seconds: u64,
    /// A probe that takes longer fails (as a timeout).
    pub probe_timeout_seconds: u64,
    /// Restart wedged services (else only report).
    pub auto_restart: bool,
    /// At most this many restarts per service within `window_seconds`.
    pub max_restarts: u32,
    pub window_seconds: u64,
    /// At least this long between two restarts of a service.
    pub cooldown_seconds: u64,
    /// No restart this soon after the controller or the service started.
    pub grace_seconds: u64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            probe_interval_seconds: 300,
            probe_timeout_seconds: 30,
            auto_restart: true,
            max_restarts: 3,
            window_seconds: 1800,
            cooldown_seconds: 120,
            grace_seconds: 60,
        }
    }
}

impl HealthSettings {
    pub fn limits(&self) -> crate::policy::Limits {
        let ms = |s: u64| (s as i64).saturating_mul(1000);
        crate::policy::Limits {
            max_restarts: self.max_restarts,
            window_ms: ms(self.window_seconds),
            cooldown_ms: ms(self.cooldown_seconds),
            grace_ms: ms(self.grace_seconds),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// JSON bodies of the LLM routes (vision requests carry images inline).
    pub llm_json_bytes: u64,
    /// JSON bodies of the other application routes (embeddings, rerank, search).
    pub json_bytes: u64,
    /// Audio uploads.
    pub audio_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSettings {
    /// The service (kind `embeddings`) that makes the dense query vector.
    pub embeddings_service: String,
    /// The service (kind `vector_store`, Qdrant) searched.
    pub vector_store_service: String,
    /// Where sparse query vectors come from.
    pub sparse: SparseProvider,
    /// Named vectors of the collections.
    pub dense_vector: String,
    pub sparse_vector: String,
    /// Candidates each prefetch contributes to the fusion.
    pub prefetch_limit: u32,
}

/// The sparse encoder for hybrid search (pluggable: TEI serves bge-m3 dense only, so sparse
/// vectors often come from another server with TEI's `/embed_sparse` shape).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SparseProvider {
    /// Dense only (requests may still pass their own `sparse` vector).
    None,
    /// `POST <base>/embed_sparse {"inputs": [text]}` -> `[[{"index", "value"}]]`, at a configured
    /// service (by name) or a URL of such a server.
    Tei {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            llm_json_bytes: 32 << 20,
            json_bytes: 4 << 20,
            audio_bytes: 200 << 20,
        }
    }
}

impl Default for SearchSettings {
    fn default() -> Self {
        SearchSettings {
            embeddings_service: "embeddings".into(),
            vector_store_service: "qdrant".into(),
            sparse: SparseProvider::Tei {
                service: Some("embeddings".into()),
                url: None,
            },
            dense_vector: "dense".into(),
            sparse_vector: "sparse".into(),
            prefetch_limit: 20,
        }
    }
}

impl Settings {
    /// Values serde cannot check: ranges and names. The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        for (field, v, min) in [
            ("limits.llm_json_bytes", l.llm_json_bytes, 1024),
            ("limits.json_bytes", l.json_bytes, 1024),
            ("limits.audio_bytes", l.audio_bytes, 1024),
        ] {
            if v < min || v > (4 << 30) {
                return Err(format!(
                    "{field}: {v} is out of range ({min} bytes to 4 GiB)"
                ));
            }
        }
        if let Some(w) = self.on_demand_wait_seconds
            && w > 3_600
        {
            return Err(format!(
                "on_demand_wait_seconds: {w} is out of range (0 to 3600)"
            ));
        }
        let h = &self.health;
        for (field, v, lo, hi) in [
            (
                "health.probe_interval_seconds",
                h.probe_interval_seconds,
                5,
                86_400,
            ),
            (
                "health.probe_timeout_seconds",
                h.probe_timeout_seconds,
                1,
                600,
            ),
            ("health.max_restarts", u64::from(h.max_restarts), 0, 100),
            ("health.window_seconds", h.window_seconds, 60, 604_800),
            ("health.cooldown_seconds", h.cooldown_seconds, 0, 86_400),
            ("health.grace_seconds", h.grace_seconds, 0, 3_600),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(format!("{field}: {v} is out of range ({lo} to {hi})"));
            }
        }
        let s = &self.search;
        for (field, v) in [
            ("search.embeddings_service", &s.embeddings_service),
            ("search.vector_store_service", &s.vector_store_service),
        ] {
            crate::services::validate_name(v).map_err(|e| format!("{field}: {e}"))?;
        }
        for (field, v) in [
            ("search.dense_vector", &s.dense_vector),
            ("search.sparse_vector", &s.sparse_vector),
        ] {
            crate::search::validate_identifier(v).map_err(|e| format!("{field}: {e}"))?;
        }
        if !(1..=1000).contains(&s.prefetch_limit) {
            return Err(format!(
                "search.prefetch_limit: {} is out of range (1 to 1000)",
                s.prefetch_limit
            ));
        }
        if let SparseProvider::Tei { service, url } = &s.sparse {
            match (service, url) {
                (Some(name), None) => crate::services::validate_name(name)
                    .map_err(|e| format!("search.sparse.service: {e}"))?,
                (None, Some(u)) => crate::services::validate_url(u)
                    .map_err(|e| format!("search.sparse.url: {e}"))?,
                _ => {
                    return Err(
                        "search.sparse: give exactly one of \"service\" (a service name) or \"url\""
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Parse a whole document; the error names the field that is wrong.
    pub fn from_value(v: Value) -> Result<Settings, String> {
        let s: Settings = serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })?;
        s.validate()?;
        Ok(s)
    }
}

/// The live settings.
#[derive(Debug, Default)]
pub struct Live(RwLock<Arc<Settings>>, tokio::sync::Notify);

impl Live {
    pub fn get(&self) -> Arc<Settings> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, s: Settings) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
        self.1.notify_waiters();
    }

    /// Resolves at the next change of the settings.
    pub async fn changed(&self) {
        self.1.notified().await
    }
}

/// Load the stored settings at start. A stored document that no longer parses (written by a
/// newer build, or edited by hand) is reported and the defaults are used for it.
pub fn load(app: &App) {
    let stored = match app.db.meta(META_KEY) {
        Ok(Some(text)) => text,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "settings could not be read; using defaults");
            return;
        }
    };
    match serde_json::from_str::<Value>(&stored)
        .map_err(|e| e.to_string())
        .and_then(Settings::from_value)
    {
        Ok(s) => app.settings.set(s),
        Err(e) => tracing::warn!(error = %e, "stored settings are invalid; using defaults"),
    }
}

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/settings", get(show).put(update))
}

async fn show(State(app): State<Arc<App>>) -> Json<Value> {
    Json(masked(&app.settings.get()))
}

/// Merge `patch` into `base`: objects merge key by key, anything else replaces.
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    // A tagged enum (e.g. `search.sparse`) given with its tag is replaced whole.
                    Some(slot) if slot.is_object() && v.is_object() && v.get("kind").is_none() => {
                        merge(slot, v)
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, p) => *b = p,
    }
}

async fn update(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "body must be a JSON object of settings to change (GET /api/settings shows them all): {e}"
        ))
    })?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "body must be a JSON object of settings to change, e.g. {\"api_keys_required\": true}"
                .into(),
        ));
    }
    let mut patch = patch;
    // A masked secret sent back (a GET's document PUT whole) keeps the stored value.
    if let Some(secrets) = patch.get_mut("secrets").and_then(Value::as_object_mut) {
        secrets.retain(|_, v| v.as_str() != Some(MASK));
        for v in secrets.values_mut() {
            if v.as_str().is_some_and(|s| s.trim().is_empty()) {
                *v = Value::Null;
            }
        }
    }
    let changed: Vec<String> = patch
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let mut doc = serde_json::to_value(&*app.settings.get())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    merge(&mut doc, patch);
    let new = Settings::from_value(doc.clone()).map_err(ApiError::bad_request)?;
    app.db.set_meta(META_KEY, &doc.to_string())?;
    let shown = masked(&new);
    app.settings.set(new);
    let _ = app.db.add_event(
        "settings_changed",
        None,
        Some(&actor.0),
        &format!("settings changed: {}", changed.join(", ")),
    );
    Ok(Json(shown))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn check_err(patch: Value, expected: &str) {
        let mut doc = serde_json::to_value(Settings::default()).unwrap();
        merge(&mut doc, patch);
        let err = Settings::from_value(doc).unwrap_err();
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        check_err(json!({"api_keys_required": "yes"}), "api_keys_required");
        check_err(json!({"limits": {"json_bytes": 3}}), "limits.json_bytes");
        check_err(json!({"limits": {"audio_bytez": 3}}), "limits");
        check_err(
            json!({"search": {"dense_vector": "a b"}}),
            "search.dense_vector",
        );
        check_err(
            json!({"search": {"sparse": {"kind": "tei"}}}),
            "search.sparse",
        );
        check_err(
            json!({"search": {"sparse": {"kind": "tei", "url": "ftp://x"}}}),
            "search.sparse.url",
        );
        check_err(
            json!({"search": {"prefetch_limit": 0}}),
            "search.prefetch_limit",
        );
        check_err(json!({"nope": 1}), "nope");
    }

    #[test]
    fn partial_documents_merge() {
        let mut doc = serde_json::to_value(Settings::default()).unwrap();
        merge(
            &mut doc,
            json!({"api_keys_required": true, "search": {"sparse": {"kind": "none"}}}),
        );
        let s = Settings::from_value(doc).unwrap();
        assert!(s.api_keys_required);
        assert_eq!(s.search.sparse, SparseProvider::None);
        assert_eq!(s.search.dense_vector, "dense");
        assert_eq!(s.limits, Limits::default());
        // A tagged value given with its tag replaces the old one whole.
        let mut doc = serde_json::to_value(Settings::default()).unwrap();
        merge(
            &mut doc,
            json!({"search": {"sparse": {"kind": "tei", "url": "http://10.0.0.2:9000"}}}),
        );
        let s = Settings::from_value(doc).unwrap();
        assert_eq!(
            s.search.sparse,
            SparseProvider::Tei {
                service: None,
                url: Some("http://10.0.0.2:9000".into())
            }
        );
    }
}
