//! Live state of connected agents: who is connected, since when, last seen, latest snapshot.
//!
//! In memory only; the database keeps the durable facts (enrollment, last seen at disconnect).
//! Each connected node has exactly one current session; a newer session for the same node
//! replaces the older one, which is told to close.

use std::collections::HashMap;
use std::sync::Mutex;

use spark_common::host::HostSnapshot;
use spark_common::ops::{ContainerInfo, Op, OpError, OpOutput, StreamItem};
use spark_common::proto::ControllerMsg;
use spark_common::telemetry::{DockerStatus, Telemetry};
use tokio::sync::mpsc;

/// What the rest of the controller can ask of a live session.
#[derive(Debug)]
pub enum SessionCmd {
    /// Send this message to the agent.
    Send(ControllerMsg),
    /// Tell the agent it was refused for good, then close.
    Refuse(String),
    /// Close because a newer session for this node took over.
    Replaced,
}

#[derive(Debug, Clone)]
pub struct LiveNode {
    pub session: u64,
    pub connected_since: i64,
    pub last_seen: i64,
    pub agent_version: String,
    pub protocol: String,
    /// What the agent announced in its `Hello` (e.g. "ops": it performs operations).
    pub features: Vec<String>,
    /// The address the agent connected from: how the controller reaches the box's model
    /// servers (by IP, never by a `.local` name).
    pub remote_ip: std::net::IpAddr,
    pub host: Option<HostSnapshot>,
    /// The latest full telemetry (agents with the "telemetry" feature).
    pub telemetry: Option<Telemetry>,
    pub telemetry_at: Option<i64>,
    /// The latest container list the agent pushed, and when it arrived.
    pub containers: Option<ContainerList>,
}

/// A node's containers as last pushed by its agent.
#[derive(Debug, Clone)]
pub struct ContainerList {
    pub docker: DockerStatus,
    pub containers: Vec<ContainerInfo>,
    pub received_at: i64,
}

/// What an agent sends back for a request.
#[derive(Debug)]
pub enum Reply {
    Stream(StreamItem),
    Done(Result<OpOutput, OpError>),
}

struct Entry {
    live: LiveNode,
    tx: mpsc::UnboundedSender<SessionCmd>,
    /// Requests awaiting an answer from this session; dropped (and so failed) when it ends.
    pending: HashMap<u64, mpsc::UnboundedSender<Reply>>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_session: u64,
    next_request: u64,
    nodes: HashMap<String, Entry>,
}

/// A request in flight to an agent. Dropping it before the result arrives tells the agent to
/// cancel (a followed log whose client went away, say).
pub struct Pending<'a> {
    registry: &'a Registry,
    node_id: String,
    pub id: u64,
    rx: mpsc::UnboundedReceiver<Reply>,
    finished: bool,
}

impl Pending<'_> {
    /// The next reply; `None` when the node disconnected before answering.
    pub async fn next(&mut self) -> Option<Reply> {
        let r = self.rx.recv().await;
        if matches!(r, Some(Reply::Done(_)) | None) {
            self.finished = true;
        }
        r
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(e) = inner.nodes.get_mut(&self.node_id)
            && e.pending.remove(&self.id).is_some()
            && !self.finished
        {
            let _ =
                e.tx.send(SessionCmd::Send(ControllerMsg::Cancel { id: self.id }));
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a new session for `node_id`, replacing any older one. Returns the session number
    /// and the channel the session must obey.
    pub fn connect(
        &self,
        node_id: &str,
        agent_version: &str,
        protocol: &str,
        features: &[String],
        remote_ip: std::net::IpAddr,
    ) -> (u64, mpsc::UnboundedReceiver<SessionCmd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let now = crate::now_ms();
        let mut inner = self.lock();
        inner.next_session += 1;
        let session = inner.next_session;
        let entry = Entry {
            live: LiveNode {
                session,
                connected_since: now,
                last_seen: now,
                agent_version: agent_version.to_string(),
                protocol: protocol.to_string(),
                features: features.to_vec(),
                remote_ip,
                host: None,
                telemetry: None,
                telemetry_at: None,
                containers: None,
            },
            tx,
            pending: HashMap::new(),
        };
        if let Some(old) = inner.nodes.insert(node_id.to_string(), entry) {
            let _ = old.tx.send(SessionCmd::Replaced);
        }
        (session, rx)
    }

    /// Forget a session. Returns its record if it was still the node's current one.
    pub fn disconnect(&self, node_id: &str, session: u64) -> Option<LiveNode> {
        let mut inner = self.lock();
        match inner.nodes.get(node_id) {
            Some(e) if e.live.session == session => inner.nodes.remove(node_id).map(|e| e.live),
            _ => None,
        }
    }

    /// A frame arrived from the node.
    pub fn seen(&self, node_id: &str, session: u64, host: Option<HostSnapshot>) {
        let mut inner = self.lock();
        if let Some(e) = inner.nodes.get_mut(node_id)
            && e.live.session == session
        {
            e.live.last_seen = crate::now_ms();
            if host.is_some() {
                e.live.host = host;
            }
        }
    }

    /// Telemetry arrived from the node.
    pub fn telemetry(&self, node_id: &str, session: u64, telemetry: Telemetry) {
        let mut inner = self.lock();
        if let Some(e) = inner.nodes.get_mut(node_id)
            && e.live.session == session
        {
            let now = crate::now_ms();
            e.live.last_seen = now;
            e.live.host = Some(telemetry.host.clone());
            e.live.telemetry = Some(telemetry);
            e.live.telemetry_at = Some(now);
        }
    }

    /// A container list arrived from the node.
    pub fn containers(
        &self,
        node_id: &str,
        session: u64,
        docker: DockerStatus,
        containers: Vec<ContainerInfo>,
    ) {
        let mut inner = self.lock();
        if let Some(e) = inner.nodes.get_mut(node_id)
            && e.live.session == session
        {
            let now = crate::now_ms();
            e.live.last_seen = now;
            e.live.containers = Some(ContainerList {
                docker,
                containers,
                received_at: now,
            });
        }
    }

    /// Send `op` to the node's current session. `None` if the node is not connected.
    pub fn request(&self, node_id: &str, op: Op) -> Option<Pending<'_>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        inner.next_request += 1;
        let id = inner.next_request;
        let entry = inner.nodes.get_mut(node_id)?;
        if !entry.live.features.iter().any(|f| f == "ops") {
            return None;
        }
        entry
            .tx
            .send(SessionCmd::Send(ControllerMsg::Request { id, op }))
            .ok()?;
        entry.pending.insert(id, tx);
        Some(Pending {
            registry: self,
            node_id: node_id.to_string(),
            id,
            rx,
            finished: false,
        })
    }

    /// A reply arrived from the node's session.
    pub fn deliver(&self, node_id: &str, session: u64, id: u64, reply: Reply) {
        let mut inner = self.lock();
        let Some(e) = inner.nodes.get_mut(node_id) else {
            return;
        };
        if e.live.session != session {
            return;
        }
        e.live.last_seen = crate::now_ms();
        let done = matches!(reply, Reply::Done(_));
        if let Some(tx) = e.pending.get(&id) {
            let _ = tx.send(reply);
        }
        if done {
            e.pending.remove(&id);
        }
    }

    pub fn get(&self, node_id: &str) -> Option<LiveNode> {
        self.lock().nodes.get(node_id).map(|e| e.live.clone())
    }

    pub fn all(&self) -> HashMap<String, LiveNode> {
        self.lock()
            .nodes
            .iter()
            .map(|(k, e)| (k.clone(), e.live.clone()))
            .collect()
    }

    /// Send a command to a node's current session; false if it is not connected.
    pub fn command(&self, node_id: &str, cmd: SessionCmd) -> bool {
        self.lock()
            .nodes
            .get(node_id)
            .map(|e| e.tx.send(cmd).is_ok())
            .unwrap_or(false)
    }
}
