//! The Spark Control controller: cluster state, the agent gateway, the REST API and the
//! dashboard.
//!
//! Entry point: [`start`] takes a [`ControllerConfig`] and two bound listeners and returns a
//! [`Running`] handle, so `main`, `spark-control up` and the tests all run the same thing on
//! whatever ports they chose.
//!
//! Invariants: the controller never dials agents (they dial in); a node is identified by the
//! fingerprint of its client certificate *and* a database row that is not revoked; secrets (the
//! admin token, token secrets, keys) never appear in logs, events or API responses.
#![forbid(unsafe_code)]

pub mod api;
pub mod audio;
pub mod audit;
pub mod boxes;
pub mod ca;
pub mod catalog;
pub mod config;
pub mod db;
pub mod embed;
pub mod endpoints;
pub mod gateway;
pub mod health;
pub mod keys;
pub mod live;
pub mod lock;
pub mod menu;
pub mod metrics;
pub mod nodes;
pub mod policy;
pub mod preflight;
pub mod proxy;
pub mod recipes;
pub mod registry;
pub mod schedules;
pub mod search;
pub mod services;
pub mod settings;
pub mod swap;
pub mod up;
pub mod wake;
pub mod web;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
pub use config::ControllerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Features the controller announces in its `Hello`.
pub const FEATURES: &[&str] = &["host-snapshot", "telemetry", "ops"];

/// Shared state of a running controller.
pub struct App {
    pub config: ControllerConfig,
    pub db: db::Db,
    pub ca: ca::Ca,
    pub registry: registry::Registry,
    /// Bearer token for control endpoints (also in `<data-dir>/admin.token`).
    pub admin_token: String,
    /// Gateway addresses written into join tokens.
    pub gateway_addrs: Vec<String>,
    pub shutdown: CancellationToken,
    /// Model downloads in progress and recently finished.
    pub downloads: boxes::Downloads,
    /// The wakeable interfaces last recorded per node (to write the database only on change).
    pub nics_seen: std::sync::Mutex<std::collections::HashMap<String, Vec<wake::KnownNic>>>,
    /// The swap arbiter's handle and its jobs.
    pub swaps: swap::Swaps,
    /// Run-time settings (applied live).
    pub settings: settings::Live,
    /// What each configured service last said of itself.
    pub services: services::Cache,
    /// API keys for the application endpoints.
    pub keys: keys::Keys,
    /// Where each model is served (the gateway's routing table).
    pub routes: proxy::Routes,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Deep health: last probes, restarts.
    pub health: health::Health,
    /// When this controller started (unix ms).
    pub started_at: i64,
    /// `host:port` of the HTTP listener, for URLs when a request carries no `Host`.
    pub http_addr_hint: String,
}

/// The two listening sockets, bound by the caller.
pub struct Listeners {
    pub http: TcpListener,
    pub gateway: TcpListener,
}

impl Listeners {
    pub async fn bind(http: SocketAddr, gateway: SocketAddr) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            http: TcpListener::bind(http)
                .await
                .with_context(|| format!("cannot listen for HTTP on {http}"))?,
            gateway: TcpListener::bind(gateway)
                .await
                .with_context(|| format!("cannot listen for agents on {gateway}"))?,
        })
    }
}

/// A running controller.
pub struct Running {
    pub app: Arc<App>,
    pub http_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop serving: agent sessions are closed (agents will reconnect to the next controller),
    /// listeners released, state flushed.
    pub async fn stop(self) {
        self.app.shutdown.cancel();
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        flush_last_seen(&self.app);
    }

    /// Create a join token as the local operator would.
    pub fn create_join_token(&self, ttl: Duration) -> anyhow::Result<(String, i64)> {
        Ok(nodes::create_token(
            &self.app.db,
            &self.app.ca.fingerprint(),
            &self.app.gateway_addrs,
            ttl,
            "local",
        )?)
    }
}

/// Open (or create) the data directory's contents: database, CA, admin token.
pub fn open_data_dir(data_dir: &Path) -> anyhow::Result<(db::Db, ca::Ca, String)> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let db = db::Db::open(&data_dir.join("spark-control.db"))?;
    let ca = ca::Ca::load_or_create(&data_dir.join("ca"))?;
    let admin_token = load_or_create_admin_token(data_dir)?;
    Ok((db, ca, admin_token))
}

fn load_or_create_admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin.token");
    if path.exists() {
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim()
            .to_string();
        if token.len() >= 16 {
            return Ok(token);
        }
        anyhow::bail!(
            "{} holds no usable token (at least 16 characters); delete it to have a new one made",
            path.display()
        );
    }
    use rand::distr::{Alphanumeric, SampleString};
    let token = format!(
        "sc-admin-{}",
        Alphanumeric.sample_string(&mut rand::rng(), 40)
    );
    ca::write_private(&path, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// Start the controller on the given listeners.
pub async fn start(config: ControllerConfig, listeners: Listeners) -> anyhow::Result<Running> {
    let (db, ca, admin_token) = open_data_dir(&config.data_dir)?;
    let gateway_addr = listeners.gateway.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let gateway_addrs = if config.advertise.is_empty() {
        config::default_advertise(gateway_addr)
    } else {
        config.advertise.clone()
    };
    // `spark-control token create` runs offline and needs to know what to advertise.
    db.set_meta("gateway_advertise", &serde_json::to_string(&gateway_addrs)?)?;
    let app = Arc::new(App {
        config,
        db,
        ca,
        registry: registry::Registry::default(),
        admin_token,
        gateway_addrs,
        shutdown: CancellationToken::new(),
        downloads: Default::default(),
        nics_seen: Default::default(),
        swaps: Default::default(),
        settings: Default::default(),
        services: Default::default(),
        keys: Default::default(),
        routes: Default::default(),
        metrics: metrics::Metrics::new(),
        health: Default::default(),
        started_at: now_ms(),
        http_addr_hint: http_addr.to_string(),
    });
    settings::load(&app);
    keys::reload(&app)?;
    services::seed_defaults(&app)?;
    services::refresh_all(&app).await;
    let _ = app.db.add_event(
        "controller_started",
        None,
        None,
        &format!(
            "controller {} started (HTTP {http_addr}, agent gateway {gateway_addr})",
            spark_common::SOFTWARE_VERSION
        ),
    );

    let tls = gateway::server_config(&app)?;
    let gw_listener = gateway::TlsListener::new(listeners.gateway, tls)?;
    let gw_router =
        gateway::router(app.clone()).into_make_service_with_connect_info::<gateway::PeerInfo>();
    let shutdown = app.shutdown.clone();
    let gw_task = tokio::spawn(async move {
        let serve = axum::serve(gw_listener, gw_router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "agent gateway stopped");
        }
    });

    let http_router = api::router(app.clone());
    let shutdown = app.shutdown.clone();
    // TCP_NODELAY: a streamed event must leave at once, not wait for the client's delayed ACK
    // (Nagle), or every SSE chunk of the gateway gains up to 40 ms.
    let http_listener = axum::serve::ListenerExt::tap_io(listeners.http, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http_task = tokio::spawn(async move {
        let serve = axum::serve(
            http_listener,
            http_router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });

    // Persist last-seen times now and then, so a crash loses little.
    let flusher_app = app.clone();
    let flusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = flusher_app.shutdown.cancelled() => break,
                _ = tick.tick() => flush_last_seen(&flusher_app),
            }
        }
    });

    let webhook_worker = webhooks::spawn_worker(app.clone());
    let arbiter = swap::spawn(app.clone());
    let discovery = services::spawn_discovery(app.clone());
    let prober = health::spawn(app.clone());

    Ok(Running {
        app,
        http_addr,
        gateway_addr,
        tasks: vec![
            gw_task,
            http_task,
            flusher,
            webhook_worker,
            arbiter,
            discovery,
            prober,
        ],
    })
}

fn flush_last_seen(app: &App) {
    for (id, live) in app.registry.all() {
        let _ = app.db.touch_node(&id, live.last_seen);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC text for a unix-ms time.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// "3m 12s"-style text for a duration in ms.
pub fn human_duration(ms: i64) -> String {
    let secs = (ms.max(0) as u64) / 1000;
    if secs == 0 {
        return format!("{}ms", ms.max(0));
    }
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}
