//! The agent gateway: HTTPS + websocket, client certificates verified against the CA.
//!
//! - `POST /v1/enroll` — no client certificate yet; authorised by a join token.
//! - `GET /v1/link` — websocket; requires a client certificate that chains to the CA *and*
//!   whose fingerprint belongs to a node that is not revoked.
//!
//! TLS handshakes run in their own tasks with a deadline, so one slow or hostile client cannot
//! block the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use spark_common::enroll::{ENROLL_PATH, EnrollError, EnrollRequest, EnrollResponse, LINK_PATH};
use spark_common::proto::{self, AgentMsg, CLOSE_REFUSED, ControllerMsg, Hello, MAX_FRAME_BYTES};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::db::NodeRow;
use crate::registry::{Reply, SessionCmd};
use crate::{App, now_ms};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a gateway connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// SHA-256 of the client certificate, if one was presented (it has been verified against
    /// the CA by then).
    pub fingerprint: Option<String>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener that hands axum only connections whose TLS handshake completed.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, PeerInfo)>,
    local: SocketAddr,
    accept_task: JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let accept_task = tokio::spawn(async move {
            loop {
                let (stream, remote) = match tcp.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "gateway accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let fingerprint = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| spark_common::sha256_hex(c));
                            let _ = tx
                                .send((
                                    tls,
                                    PeerInfo {
                                        remote,
                                        fingerprint,
                                    },
                                ))
                                .await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "gateway TLS handshake refused")
                        }
                        Err(_) => tracing::info!(%remote, "gateway TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            accept_task,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends when aborted on drop; park until then.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(PeerInfo {
            remote: self.local,
            fingerprint: None,
        })
    }
}

/// The gateway's TLS config: our server certificate chain, client certificates verified
/// against the CA but optional (enrollment happens before the agent has one).
pub fn server_config(app: &App) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(app.ca.cert_der().clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let (dns, ips) = crate::config::server_names(&app.gateway_addrs);
    let (chain, key) = app.ca.server_cert(&dns, &ips)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(ENROLL_PATH, post(enroll))
        .route(LINK_PATH, get(link))
        .with_state(app)
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(EnrollError {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn enroll(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    body: Result<axum::Json<EnrollRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let axum::Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("bad enrollment request: {}", e.body_text()),
            );
        }
    };
    match crate::nodes::enroll(&app, &req, &peer.remote.to_string()) {
        Ok(resp) => axum::Json::<EnrollResponse>(resp).into_response(),
        Err(e) => refuse(e.status(), e.to_string()),
    }
}

async fn link(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(fingerprint) = peer.fingerprint else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "a client certificate is required: enroll this box with `spark-agent join TOKEN` first",
        );
    };
    let node = match app.db.node_by_fingerprint(&fingerprint) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return refuse(
                StatusCode::FORBIDDEN,
                "this certificate does not belong to any node of this controller; join again with a new token",
            );
        }
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    if let Some(at) = node.revoked_at {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "node '{}' ({}) was revoked at {}; to use this box again, join it with a new token",
                node.name,
                node.id,
                crate::rfc3339(at)
            ),
        );
    }
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            let remote = peer.remote;
            session(app, node, socket, remote).await
        })
}

/// Why a session ended, for the event log.
enum End {
    Shutdown,
    Refused(String),
    Lost(String),
    Replaced,
}

async fn session(app: Arc<App>, node: NodeRow, mut socket: WebSocket, remote: SocketAddr) {
    let hello_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    // 1. The agent's Hello.
    let theirs: Hello = loop {
        match tokio::time::timeout_at(hello_deadline, socket.recv()).await {
            Ok(Some(Ok(Message::Binary(b)))) => match proto::decode(&b) {
                Ok(h) => break h,
                Err(e) => {
                    tracing::info!(node = %node.id, %remote, error = %e, "bad hello");
                    close(&mut socket, 1002, &format!("bad hello: {e}")).await;
                    return;
                }
            },
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return,
            Ok(Some(Ok(_))) => {}
        }
    };
    // 2. Ours, then the compatibility verdict.
    let ours = Hello::current(crate::FEATURES);
    if socket
        .send(Message::Binary(proto::encode(&ours).into()))
        .await
        .is_err()
    {
        return;
    }
    if let Err(mismatch) = ours.check_compatible(&theirs, "agent") {
        let _ = app.db.add_event(
            "node_refused",
            Some(&node.id),
            None,
            &format!("node '{}' refused: {}", node.name, mismatch.message),
        );
        close(&mut socket, CLOSE_REFUSED, &mismatch.message).await;
        return;
    }
    let protocol = format!("{}.{}", theirs.proto_major, theirs.proto_minor);
    let (session_id, mut commands) = app.registry.connect(
        &node.id,
        &theirs.software_version,
        &protocol,
        &theirs.features,
        remote.ip(),
    );
    let _ = app
        .db
        .node_connected(&node.id, &theirs.software_version, &protocol);
    let _ = app.db.add_event(
        "node_connected",
        Some(&node.id),
        None,
        &format!(
            "node '{}' connected from {} (agent {}){}",
            node.name,
            remote.ip(),
            theirs.software_version,
            node.last_seen
                .map(|t| format!(" after {} offline", crate::human_duration(now_ms() - t)))
                .unwrap_or_default()
        ),
    );
    tracing::info!(node = %node.id, name = %node.name, %remote, "agent connected");

    // The name may have changed while the node was away.
    let name = app
        .db
        .node(&node.id)
        .ok()
        .flatten()
        .map(|n| n.name)
        .unwrap_or(node.name.clone());
    let welcome = ControllerMsg::Welcome {
        node_id: node.id.clone(),
        node_name: name.clone(),
    };
    let end = if socket
        .send(Message::Binary(proto::encode(&welcome).into()))
        .await
        .is_err()
    {
        End::Lost("send failed".into())
    } else {
        run_session(&app, &node.id, session_id, &mut socket, &mut commands).await
    };

    let reason = match &end {
        End::Shutdown => {
            close(&mut socket, 1001, "controller shutting down").await;
            "controller shutting down".to_string()
        }
        End::Refused(r) => {
            let _ = socket
                .send(Message::Binary(
                    proto::encode(&ControllerMsg::Revoked { reason: r.clone() }).into(),
                ))
                .await;
            close(&mut socket, CLOSE_REFUSED, r).await;
            r.clone()
        }
        End::Lost(r) => r.clone(),
        End::Replaced => {
            close(&mut socket, 1000, "replaced by a newer connection").await;
            "replaced by a newer connection from the same node".to_string()
        }
    };
    if let Some(live) = app.registry.disconnect(&node.id, session_id) {
        let now = now_ms();
        let _ = app.db.touch_node(&node.id, live.last_seen);
        let _ = app.db.add_event(
            "node_disconnected",
            Some(&node.id),
            None,
            &format!(
                "node '{}' disconnected after {} ({})",
                name,
                crate::human_duration(now - live.connected_since),
                reason
            ),
        );
    }
    tracing::info!(node = %node.id, %reason, "agent session ended");
}

async fn run_session(
    app: &App,
    node_id: &str,
    session_id: u64,
    socket: &mut WebSocket,
    commands: &mut mpsc::UnboundedReceiver<SessionCmd>,
) -> End {
    let mut ping = tokio::time::interval(app.config.heartbeat_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dead_after = app.config.heartbeat_interval * 3;
    let mut last_rx = Instant::now();
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return End::Shutdown,
            cmd = commands.recv() => match cmd {
                Some(SessionCmd::Send(msg)) => {
                    if socket.send(Message::Binary(proto::encode(&msg).into())).await.is_err() {
                        return End::Lost("send failed".into());
                    }
                }
                Some(SessionCmd::Refuse(reason)) => return End::Refused(reason),
                Some(SessionCmd::Replaced) | None => return End::Replaced,
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return End::Lost("send failed".into());
                }
            }
            next = tokio::time::timeout_at(last_rx + dead_after, socket.recv()) => {
                let msg = match next {
                    Err(_) => return End::Lost(format!("no frame from the agent for {}", crate::human_duration(dead_after.as_millis() as i64))),
                    Ok(None) => return End::Lost("connection closed".into()),
                    Ok(Some(Err(e))) => return End::Lost(e.to_string()),
                    Ok(Some(Ok(m))) => m,
                };
                last_rx = Instant::now();
                match msg {
                    Message::Binary(bytes) => match proto::decode::<AgentMsg>(&bytes) {
                        Ok(AgentMsg::HostSnapshot(snap)) => app.registry.seen(node_id, session_id, Some(snap)),
                        Ok(AgentMsg::Telemetry(t)) => {
                            crate::wake::remember_macs(app, node_id, &t.nics);
                            app.registry.telemetry(node_id, session_id, *t);
                        }
                        Ok(AgentMsg::Containers { docker, containers }) => {
                            app.registry.containers(node_id, session_id, docker, containers);
                        }
                        Ok(AgentMsg::OpResult { id, result }) => {
                            app.registry.deliver(node_id, session_id, id, Reply::Done(result));
                        }
                        Ok(AgentMsg::OpStream { id, item }) => {
                            app.registry.deliver(node_id, session_id, id, Reply::Stream(item));
                        }
                        // A newer agent may send variants we do not know: drop the frame,
                        // keep the link.
                        Err(e) => {
                            tracing::debug!(node = %node_id, error = %e, "dropping undecodable frame");
                            app.registry.seen(node_id, session_id, None);
                        }
                    },
                    Message::Close(_) => return End::Lost("agent closed the link".into()),
                    _ => app.registry.seen(node_id, session_id, None),
                }
            }
        }
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    // A close reason is limited to 123 bytes; cut on a char boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason[..end].into(),
        })))
        .await;
}
