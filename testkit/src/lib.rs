//! Test harness: the real controller and real agents on loopback, ephemeral ports, temporary
//! data directories. Nothing here is a mock: the controller is `spark_control::start`, agents
//! are `spark_agent::enroll::join` + `spark_agent::link::run`, TLS is real.

pub mod browser;
pub mod docker;
pub mod models;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use spark_agent::link::{LinkError, LinkOptions, LinkState};
use spark_agent::runtime::{Runtime, RuntimeConfig};
use spark_agent::state::Identity;
use spark_control::{ControllerConfig, Listeners, Running};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Call first in every test: crypto provider and test logging.
pub fn init() {
    spark_agent::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// 127.0.0.1 with a port chosen by the OS.
pub const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A controller running in this process.
pub struct TestController {
    pub running: Option<Running>,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub gateway: SocketAddr,
    pub admin_token: String,
    pub client: reqwest::Client,
}

impl TestController {
    /// Start on ephemeral loopback ports.
    pub async fn start(data_dir: &Path) -> TestController {
        Self::start_with(data_dir, LOOPBACK_ANY_PORT, LOOPBACK_ANY_PORT, |_| {}).await
    }

    /// Start on given addresses with a config tweak.
    pub async fn start_with(
        data_dir: &Path,
        http: SocketAddr,
        gateway: SocketAddr,
        tweak: impl FnOnce(&mut ControllerConfig),
    ) -> TestController {
        let mut config = ControllerConfig::new(data_dir);
        tweak(&mut config);
        let listeners = Listeners::bind(http, gateway).await.expect("bind");
        let running = spark_control::start(config, listeners)
            .await
            .expect("controller starts");
        TestController {
            http: running.http_addr,
            gateway: running.gateway_addr,
            admin_token: running.app.admin_token.clone(),
            data_dir: data_dir.to_path_buf(),
            running: Some(running),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    /// Start with service discovery left to the test: services are asked only when configured
    /// or shown one by one, so a test controls exactly what the gateway believes.
    pub async fn start_manual_discovery(data_dir: &Path) -> TestController {
        Self::start_with(data_dir, LOOPBACK_ANY_PORT, LOOPBACK_ANY_PORT, |c| {
            c.discovery_interval = Duration::from_secs(3600)
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.client.get(self.url(path)).send().await.expect("GET");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A request to a control endpoint with the admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.admin_token)
    }

    /// A fresh join token, made through the API.
    pub async fn token(&self) -> String {
        self.token_with_ttl(None).await
    }

    pub async fn token_with_ttl(&self, ttl_seconds: Option<u64>) -> String {
        let body = match ttl_seconds {
            Some(t) => serde_json::json!({ "ttl_seconds": t }),
            None => serde_json::json!({}),
        };
        let resp = self
            .admin(reqwest::Method::POST, "/api/nodes/tokens")
            .json(&body)
            .send()
            .await
            .expect("POST token");
        assert_eq!(resp.status(), StatusCode::CREATED);
        let v: Value = resp.json().await.expect("json");
        v["token"].as_str().expect("token").to_string()
    }

    /// Enroll a box into `state_dir` with a fresh token, without running its agent.
    pub async fn enroll(&self, state_dir: &Path, name: &str) -> Identity {
        spark_agent::enroll::join(&self.token().await, state_dir, name)
            .await
            .expect("join")
    }

    /// Open a raw link for `identity` (see [`raw_link`]).
    pub async fn raw_link(&self, identity: &Identity) -> Result<RawLink, String> {
        raw_link(
            self.gateway,
            &identity.ca_pem,
            &identity.cert_pem,
            &identity.key_pem,
        )
        .await
    }

    pub async fn nodes(&self) -> Vec<Value> {
        let (status, v) = self.get_json("/api/nodes").await;
        assert_eq!(status, StatusCode::OK);
        v.as_array().cloned().unwrap_or_default()
    }

    pub async fn node(&self, id: &str) -> Option<Value> {
        self.nodes().await.into_iter().find(|n| n["id"] == id)
    }

    /// Wait until node `id` is listed with `connected == connected`; returns it.
    pub async fn wait_node_connected(&self, id: &str, connected: bool, limit: Duration) -> Value {
        let what = format!("node {id} connected == {connected}");
        wait_until(limit, &what, || async {
            self.node(id).await.filter(|n| n["connected"] == connected)
        })
        .await
    }

    pub async fn events(&self) -> Vec<Value> {
        let (_, v) = self.get_json("/api/events").await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Stop the controller (agents see the link drop).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// An agent running in this process.
pub struct TestAgent {
    pub identity: Identity,
    pub state_dir: PathBuf,
    pub status: watch::Receiver<LinkState>,
    pub task: JoinHandle<Result<(), LinkError>>,
    pub shutdown: CancellationToken,
}

impl TestAgent {
    /// Enroll with `token` into `state_dir` under `name`, then run.
    pub async fn join_and_run(token: &str, state_dir: &Path, name: &str) -> TestAgent {
        let identity = spark_agent::enroll::join(token, state_dir, name)
            .await
            .expect("join");
        Self::run(identity, state_dir)
    }

    /// Run with no Docker engine (a socket that does not exist) and an empty model store
    /// under `state_dir`.
    pub fn run(identity: Identity, state_dir: &Path) -> TestAgent {
        Self::run_with(identity, state_dir, offline_runtime(state_dir))
    }

    /// Run with a given runtime configuration (Docker endpoint, model store, ...).
    pub fn run_with(identity: Identity, state_dir: &Path, config: RuntimeConfig) -> TestAgent {
        let (tx, rx) = watch::channel(LinkState::Connecting);
        let shutdown = CancellationToken::new();
        let runtime = Runtime::new(config);
        runtime.start(shutdown.clone());
        let task = tokio::spawn(spark_agent::link::run(
            identity.clone(),
            state_dir.to_path_buf(),
            LinkOptions::default(),
            runtime,
            shutdown.clone(),
            tx,
        ));
        TestAgent {
            identity,
            state_dir: state_dir.to_path_buf(),
            status: rx,
            task,
            shutdown,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// A runtime configuration for an agent with no Docker engine and an empty model store under
/// `dir`; Wake-on-LAN packets go to 127.0.0.1:9.
pub fn offline_runtime(dir: &Path) -> RuntimeConfig {
    RuntimeConfig::isolated(dir)
}

/// One simulated GPU box: its own private Docker engine and an agent using it, enrolled with
/// `ctl` under `name`. Several of these make a cluster of boxes that do not share an engine.
pub struct DockerBox {
    pub dockerd: docker::Dockerd,
    pub agent: TestAgent,
    pub node_id: String,
    /// The agent's mount root (bind-mount sources must lie under it).
    pub root: PathBuf,
    /// The agent's Hugging Face hub cache (its parent is a mount root, as in a real config).
    pub hf_cache: PathBuf,
}

impl DockerBox {
    /// `None` (after a loud notice) when the Docker prerequisites are missing outside CI.
    pub async fn start(ctl: &TestController, dir: &Path, name: &str) -> Option<DockerBox> {
        Self::start_with_services(ctl, dir, name, &[]).await
    }

    /// As [`DockerBox::start`], with containers the agent may manage although it did not create
    /// them (its `services`).
    pub async fn start_with_services(
        ctl: &TestController,
        dir: &Path,
        name: &str,
        services: &[&str],
    ) -> Option<DockerBox> {
        let dockerd = docker::Dockerd::start().await?;
        let state = dir.join(name);
        let identity = ctl.enroll(&state, name).await;
        let root = dir.join(format!("{name}-roots"));
        std::fs::create_dir_all(&root).expect("mount root");
        let mut config = offline_runtime(&state);
        config.engine.endpoint = dockerd.endpoint();
        let hf_cache = config.hf_cache.clone();
        std::fs::create_dir_all(&hf_cache).expect("hub cache");
        let hf_home = hf_cache.parent().unwrap_or(&hf_cache).to_path_buf();
        config.engine.mount_roots = vec![root.clone(), hf_home];
        config.engine.services = services.iter().map(|s| s.to_string()).collect();
        let node_id = identity.node_id.clone();
        let agent = TestAgent::run_with(identity, &state, config);
        ctl.wait_node_connected(&node_id, true, Duration::from_secs(5))
            .await;
        Some(DockerBox {
            dockerd,
            agent,
            node_id,
            root,
            hf_cache,
        })
    }
}

/// Poll `check` until it returns `Some`, or panic after `limit` naming `what`.
pub async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A link websocket driven by the test itself.
pub type RawLink =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Do the agent's side of the handshake on a raw link: send `hello`, return the controller's
/// `Hello` frame and the frame after it (the `Welcome`, or a close).
pub async fn raw_handshake(
    ws: &mut RawLink,
    hello: &spark_common::proto::Hello,
) -> (
    tokio_tungstenite::tungstenite::Message,
    tokio_tungstenite::tungstenite::Message,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Binary(spark_common::proto::encode(hello).into()))
        .await
        .expect("send hello");
    let mut next = async || {
        ws.next()
            .await
            .expect("link open")
            .expect("frame from the controller")
    };
    let first = next().await;
    let second = next().await;
    (first, second)
}

/// Open a raw link websocket with an agent identity, without the agent's session logic, so a
/// test can misbehave on purpose.
pub async fn raw_link(
    gateway: SocketAddr,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<RawLink, String> {
    let config =
        spark_agent::tls::link_config(ca_pem, cert_pem, key_pem).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(gateway)
        .await
        .map_err(|e| e.to_string())?;
    let name = spark_agent::tls::server_name(&gateway.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let url = format!("wss://{gateway}{}", spark_common::enroll::LINK_PATH);
    tokio_tungstenite::client_async(url, tls)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => format!(
                "HTTP {}: {}",
                resp.status(),
                resp.body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
            ),
            other => other.to_string(),
        })
}

/// Put a complete model into a Hugging Face hub cache as `huggingface_hub` lays it out (blobs,
/// a snapshot of links, `refs/main`): a `config.json` with `config` and a weights file of
/// `weights_len` bytes.
pub fn plant_hf_model(hub: &Path, repo: &str, config: &str, weights_len: usize) {
    use sha2::Digest;
    let dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let commit = hex::encode(&sha2::Sha256::digest(repo.as_bytes())[..20]);
    let files: [(&str, Vec<u8>); 2] = [
        ("config.json", config.as_bytes().to_vec()),
        ("model.safetensors", vec![0x5a; weights_len]),
    ];
    for (name, bytes) in files {
        let blob = hex::encode(sha2::Sha256::digest(&bytes));
        let blob_path = dir.join("blobs").join(&blob);
        std::fs::create_dir_all(blob_path.parent().expect("parent")).expect("blobs dir");
        std::fs::write(&blob_path, &bytes).expect("blob");
        let link = dir.join("snapshots").join(&commit).join(name);
        std::fs::create_dir_all(link.parent().expect("parent")).expect("snapshot dir");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), &link).expect("link");
    }
    std::fs::create_dir_all(dir.join("refs")).expect("refs");
    std::fs::write(dir.join("refs/main"), &commit).expect("ref");
}

/// Read a server-sent event stream until an event named `until` (included) or the end;
/// returns (event name, JSON data) pairs. Panics if the stream stalls for `stall`.
pub async fn read_sse(
    mut resp: reqwest::Response,
    until: &str,
    stall: Duration,
) -> Vec<(String, Value)> {
    let mut buf = String::new();
    let mut events = Vec::new();
    loop {
        let chunk = tokio::time::timeout(stall, resp.chunk())
            .await
            .expect("SSE stalled")
            .expect("SSE read");
        let Some(chunk) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                    data.push_str(d);
                }
            }
            if event.is_empty() {
                continue;
            }
            let last = event == until;
            events.push((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
            if last {
                return events;
            }
        }
    }
    events
}
