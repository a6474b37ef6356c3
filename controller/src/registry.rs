//! Live state of connected agents: who is connected, since when, last seen, latest snapshot.
//!
//! In memory only; the database keeps the durable facts (enrollment, last seen at disconnect).
//! Each connected node has exactly one current session; a newer session for the same node
//! replaces the older one, which is told to close.

use std::collections::HashMap;
use std::sync::Mutex;

use spark_common::host::HostSnapshot;
use spark_common::proto::ControllerMsg;
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
    pub host: Option<HostSnapshot>,
}

struct Entry {
    live: LiveNode,
    tx: mpsc::UnboundedSender<SessionCmd>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_session: u64,
    nodes: HashMap<String, Entry>,
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
                host: None,
            },
            tx,
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
