//! Speech through the gateway: `/v1/audio/transcriptions` to the ASR service and
//! `/v1/audio/speech` to the TTS service, in OpenAI's shapes.
//!
//! Transcriptions are relayed as they come (the multipart body untouched). An ASR that answers
//! 500 — the known CUDA / cuFFT wedge — becomes 503 with `Retry-After`, and a deep probe of the
//! ASR runs at once (the health policy restarts it if it is wedged). Speech goes to Kokoro (or
//! any OpenAI-shaped TTS) untouched; to Magpie it is translated into its multipart
//! `/v1/audio/synthesize` call, the language taken from the voice name.

// Helpers return a ready HTTP response as their error, as handlers do.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;

use crate::App;
use crate::proxy::{error, read_body, service_of_kind};
use crate::services::{Api, Kind};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/v1/audio/speech", post(speech))
}

async fn transcriptions(State(app): State<Arc<App>>, req: Request) -> Response {
    let arrived = Instant::now();
    let (headers, body) = match read_body(req, app.settings.get().limits.audio_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let target = match service_of_kind(&app, Kind::Asr, None) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let (cfg, st) = (&target.cfg, &target.status);
    let up = target.upstream("/v1/audio/transcriptions");
    let resp = up.send(&headers, body, arrived).await;
    if resp.status() == StatusCode::INTERNAL_SERVER_ERROR {
        // The known wedge: tell the client to come back, and let the policy look at once.
        app.health.probe_soon();
        let _ = app.db.add_subject_event(
            "asr_error",
            Some(&format!("service:{}", cfg.name)),
            st.node_id.as_deref(),
            None,
            &format!(
                "{} answered 500 to a transcription; deep probe started",
                cfg.name
            ),
        );
        let routed = resp.extensions().get::<crate::proxy::Routed>().cloned();
        let mut out = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "asr_failed",
            format!(
                "the speech-to-text service {} failed on this request (HTTP 500, often a GPU wedge); it is being checked and restarted if needed — retry in a few seconds",
                cfg.name
            ),
        );
        out.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        if let Some(r) = routed {
            out.extensions_mut().insert(r);
        }
        return out;
    }
    resp
}

#[derive(Deserialize)]
struct SpeechRequest {
    input: String,
    #[serde(default)]
    voice: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
}

async fn speech(State(app): State<Arc<App>>, req: Request) -> Response {
    let arrived = Instant::now();
    let (headers, body) = match read_body(req, app.settings.get().limits.json_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let target = match service_of_kind(&app, Kind::Tts, None) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let (cfg, st) = (&target.cfg, &target.status);
    if cfg.api() != Api::Magpie {
        return target
            .upstream("/v1/audio/speech")
            .send(&headers, body, arrived)
            .await;
    }
    let parsed: SpeechRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                format!("speech takes {{\"input\", \"voice\"?, \"response_format\"?}}: {e}"),
            );
        }
    };
    let encoding = match parsed.response_format.as_deref().unwrap_or("wav") {
        "wav" => "LINEAR_PCM",
        "opus" => "OGGOPUS",
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported_format",
                format!(
                    "response_format {other:?} is not available from the Magpie TTS service {}: use \"wav\" or \"opus\"",
                    cfg.name
                ),
            );
        }
    };
    let voice = parsed
        .voice
        .or(st.voices.first().cloned())
        .unwrap_or_else(|| "Magpie-Multilingual.EN-US.Aria".into());
    let form = [
        ("text", parsed.input),
        ("language", crate::health::magpie_language(&voice)),
        ("voice", voice),
        ("encoding", encoding.to_string()),
    ];
    let mut multipart = reqwest::multipart::Form::new();
    for (k, v) in form {
        multipart = multipart.text(k, v);
    }
    let up = target.upstream("/v1/audio/synthesize");
    let dispatched = Instant::now();
    match crate::proxy::client()
        .post(&up.url)
        .multipart(multipart)
        .send()
        .await
    {
        Ok(r) => {
            let head = dispatched.elapsed();
            up.relay_response(r, dispatched - arrived, head, dispatched)
                .await
        }
        Err(e) => up.unreachable(&e),
    }
}
