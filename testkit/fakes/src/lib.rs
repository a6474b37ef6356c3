//! Test doubles of Spark Control's upstreams, faithful to `shared/reference/upstream-apis.md`.
//!
//! One module per upstream, each with a `Config` (with `Default`) and a `router(cfg)`:
//!
//! * [`vllm`]: the vLLM OpenAI-compatible server (health life cycle, models, chat/completions with
//!   SSE streaming, embeddings/rerank in embedding mode, Prometheus metrics).
//! * [`asr`]: a Parakeet-style OpenAI-shaped transcription server (with a CUDA "wedge" mode).
//! * [`tts`]: Kokoro-FastAPI (`/v1/audio/speech`) and the NVIDIA Magpie/Riva TTS NIM.
//! * [`tei`]: Hugging Face text-embeddings-inference (dense, sparse, rerank).
//! * [`qdrant`]: an in-memory Qdrant REST subset (collections, upsert, hybrid query with fusion).
//! * [`synth`]: the deterministic "model" functions the fakes use (embeddings, sparse vectors,
//!   rerank scores, WAV files), public so tests can compute expected outputs.
//!
//! Run a fake in-process with [`spawn`] (tests) or as a process with [`serve`] (the `spark-fake`
//! binary). A fake whose upstream binds its port only after loading (vLLM) is bound after its
//! load delay: [`spawn`] returns the address it will bind before binding it.
#![forbid(unsafe_code)]
// Handlers return early with a ready `Response` as their error: fine for test doubles.
#![allow(clippy::result_large_err)]

pub mod asr;
pub mod hf;
pub mod qdrant;
pub mod synth;
pub mod tei;
pub mod tts;
pub mod vllm;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a server that was told to stop waits for open connections (e.g. an SSE stream in
/// progress) before it returns anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// One fake upstream with its configuration.
pub enum Fake {
    Vllm(vllm::Config),
    Asr(asr::Config),
    Kokoro(tts::KokoroConfig),
    Magpie(tts::MagpieConfig),
    Tei(tei::Config),
    Qdrant(qdrant::Config),
    /// Any other router (a fake defined elsewhere), bound after `bind_delay`.
    Router {
        router: Router,
        bind_delay: Duration,
    },
}

impl Fake {
    /// Short name, as used by the `spark-fake` subcommands.
    pub fn name(&self) -> &'static str {
        match self {
            Fake::Vllm(_) => "vllm",
            Fake::Asr(_) => "asr",
            Fake::Kokoro(_) => "kokoro",
            Fake::Magpie(_) => "magpie",
            Fake::Tei(_) => "tei",
            Fake::Qdrant(_) => "qdrant",
            Fake::Router { .. } => "router",
        }
    }

    /// How long after start the port is bound (vLLM binds only after loading the model; the
    /// other upstreams bind at once and report loading through their health routes).
    pub fn bind_delay(&self) -> Duration {
        match self {
            Fake::Vllm(cfg) => cfg.load_delay,
            Fake::Router { bind_delay, .. } => *bind_delay,
            _ => Duration::ZERO,
        }
    }

    /// The fake's router. Building it starts the fake's clocks (load delays, `die_after`).
    pub fn into_router(self) -> Router {
        match self {
            Fake::Vllm(cfg) => vllm::router(cfg),
            Fake::Asr(cfg) => asr::router(cfg),
            Fake::Kokoro(cfg) => tts::kokoro_router(cfg),
            Fake::Magpie(cfg) => tts::magpie_router(cfg),
            Fake::Tei(cfg) => tei::router(cfg),
            Fake::Qdrant(cfg) => qdrant::router(cfg),
            Fake::Router { router, .. } => router,
        }
    }
}

/// An in-process fake started by [`spawn`]. Dropping it aborts the server.
pub struct Running {
    /// The address the fake is (or, during a bind delay, will be) listening on.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Running {
    /// `http://ADDR` without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether the server task has ended (it failed to bind, or was stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the fake: graceful shutdown, bounded by [`SHUTDOWN_GRACE`]. Returns the server's
    /// error if it failed (e.g. could not bind its port after the load delay).
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(io::Error::other(e)),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts `fake` in-process on `127.0.0.1` with an ephemeral port.
pub async fn spawn(fake: Fake) -> io::Result<Running> {
    spawn_at(fake, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
}

/// Starts `fake` in-process on `addr`. With a bind delay and port 0, a free port is chosen
/// (bound and released) so that the returned address is known before the fake binds it.
pub async fn spawn_at(fake: Fake, mut addr: SocketAddr) -> io::Result<Running> {
    let delay = fake.bind_delay();
    let router = fake.into_router();
    let prebound = if delay.is_zero() {
        let listener = TcpListener::bind(addr).await?;
        addr = listener.local_addr()?;
        Some(listener)
    } else {
        if addr.port() == 0 {
            addr = std::net::TcpListener::bind(addr)?.local_addr()?;
        }
        None
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stop_rx.await;
    };
    let task = tokio::spawn(run(router, addr, delay, prebound, shutdown, |_| {}));
    Ok(Running {
        addr,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

/// Serves `fake` on `addr` until `shutdown` resolves (then waits at most [`SHUTDOWN_GRACE`]
/// for open connections). Prints one line `listening on ADDR` to stdout once bound (after the
/// fake's bind delay). A shutdown during the bind delay returns at once.
pub async fn serve(
    fake: Fake,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let delay = fake.bind_delay();
    let router = fake.into_router();
    run(router, addr, delay, None, shutdown, |bound| {
        use std::io::Write;
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "listening on {bound}");
        let _ = out.flush();
    })
    .await
}

async fn run(
    router: Router,
    addr: SocketAddr,
    delay: Duration,
    prebound: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    let shutdown: Shared<BoxFuture<'static, ()>> = shutdown.boxed().shared();
    let listener = match prebound {
        Some(listener) => listener,
        None => {
            tokio::select! {
                () = shutdown.clone() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
            TcpListener::bind(addr).await?
        }
    };
    on_bound(listener.local_addr()?);
    // TCP_NODELAY, as vLLM's server has it (asyncio sets it on every TCP transport): without it
    // a streamed event written after the response head waits for the client's delayed ACK
    // (~40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown.clone());
    let deadline = async {
        shutdown.clone().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result,
        () = deadline => Ok(()),
    }
}

/// Shared plumbing of the fakes.
pub(crate) mod util {
    use std::time::{SystemTime, UNIX_EPOCH};

    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use serde_json::Value;

    /// Seconds since the Unix epoch.
    pub fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// A JSON response with the given status.
    pub fn json(status: StatusCode, body: Value) -> Response {
        (status, axum::Json(body)).into_response()
    }

    /// A plain-text response with the given status.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            body.into(),
        )
            .into_response()
    }

    /// An empty-bodied response with the given status.
    pub fn empty(status: StatusCode) -> Response {
        status.into_response()
    }

    /// A binary response with a content type.
    pub fn bytes(content_type: &str, body: Vec<u8>) -> Response {
        let ct = HeaderValue::from_str(content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
        (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response()
    }

    /// FastAPI's 422 for a missing required body field.
    pub fn fastapi_missing(field: &str) -> Response {
        json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"detail": [{
                "type": "missing",
                "loc": ["body", field],
                "msg": "Field required",
                "input": null,
            }]}),
        )
    }

    /// FastAPI's 422 for an invalid body field.
    pub fn fastapi_invalid(field: &str, kind: &str, msg: &str, input: Value) -> Response {
        json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"detail": [{
                "type": kind,
                "loc": ["body", field],
                "msg": msg,
                "input": input,
            }]}),
        )
    }
}
