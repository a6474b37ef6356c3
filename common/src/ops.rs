//! Typed operations the controller asks an agent to perform, and their results.
//!
//! Every operation is data: a container is named, a command is an argv vector, a path is a
//! string the agent re-validates against its roots. Nothing here is ever handed to a shell.
//! Postcard-positional like every wire type (see [`crate::proto`]); also served as JSON.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::models::{ModelInventory, ModelTarget};

/// Labels on every container the agent creates.
pub const LABEL_MANAGED: &str = "io.spark-control.managed";
pub const LABEL_ROLE: &str = "io.spark-control.role";
pub const LABEL_RECIPE: &str = "io.spark-control.recipe";
/// Prefix reserved for Spark Control's own labels; user labels may not use it.
pub const LABEL_PREFIX: &str = "io.spark-control.";

/// A request from the controller.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Every container on the engine (unmanaged ones are listed, marked not controllable).
    ListContainers,
    InspectContainer {
        name: String,
    },
    StartContainer {
        name: String,
    },
    /// Stop, giving the process `timeout_secs` after SIGTERM before SIGKILL.
    StopContainer {
        name: String,
        timeout_secs: u32,
    },
    RestartContainer {
        name: String,
        timeout_secs: u32,
    },
    /// Create and start a container. The image must be present (pull it first).
    RunContainer(Box<ContainerSpec>),
    RemoveContainer {
        name: String,
        force: bool,
    },
    /// The last `tail` lines; with `follow`, then every new line as a stream until cancelled.
    Logs {
        name: String,
        tail: u32,
        follow: bool,
        timestamps: bool,
    },
    /// Run an argv inside a running container; returns exit code and output.
    Exec {
        name: String,
        argv: Vec<String>,
        timeout_secs: u32,
    },
    ListImages,
    /// Pull an image, streaming progress.
    PullImage {
        image: String,
        auth: Option<RegistryAuth>,
    },
    /// Write files into a container (tar upload into `dir`).
    CopyInto {
        name: String,
        dir: String,
        files: Vec<UploadFile>,
    },
    /// SHA-256 of files inside a container.
    HashFiles {
        name: String,
        paths: Vec<String>,
    },
    /// Scan the model store.
    ScanModels,
    DeleteModel(ModelTarget),
    /// Download a repository into the Hugging Face cache, streaming progress.
    DownloadModel(DownloadRequest),
    /// Send a Wake-on-LAN magic packet on the local segment.
    WakeOnLan {
        mac: String,
    },
    /// The full `config.json` of a model in the store (newest complete snapshot of a cached
    /// repository, or a local model directory). Agents announcing "model-config" perform it.
    ReadModelConfig(ModelTarget),
}

impl Op {
    /// A short name for logs and the event log. Never includes secrets or file contents.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::ListContainers => "list_containers",
            Op::InspectContainer { .. } => "inspect_container",
            Op::StartContainer { .. } => "start_container",
            Op::StopContainer { .. } => "stop_container",
            Op::RestartContainer { .. } => "restart_container",
            Op::RunContainer(_) => "run_container",
            Op::RemoveContainer { .. } => "remove_container",
            Op::Logs { .. } => "logs",
            Op::Exec { .. } => "exec",
            Op::ListImages => "list_images",
            Op::PullImage { .. } => "pull_image",
            Op::CopyInto { .. } => "copy_into",
            Op::HashFiles { .. } => "hash_files",
            Op::ScanModels => "scan_models",
            Op::DeleteModel(_) => "delete_model",
            Op::DownloadModel(_) => "download_model",
            Op::WakeOnLan { .. } => "wake_on_lan",
            Op::ReadModelConfig(_) => "read_model_config",
        }
    }
}

// Debug by kind and target only: specs carry environment values and downloads carry tokens.
impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::RunContainer(spec) => write!(f, "run_container({})", spec.name),
            Op::StartContainer { name }
            | Op::StopContainer { name, .. }
            | Op::RestartContainer { name, .. }
            | Op::InspectContainer { name }
            | Op::RemoveContainer { name, .. }
            | Op::Logs { name, .. }
            | Op::Exec { name, .. }
            | Op::CopyInto { name, .. }
            | Op::HashFiles { name, .. } => write!(f, "{}({name})", self.kind()),
            Op::PullImage { image, .. } => write!(f, "pull_image({image})"),
            Op::DownloadModel(d) => write!(f, "download_model({})", d.repo),
            Op::DeleteModel(t) => write!(f, "delete_model({t:?})"),
            Op::WakeOnLan { mac } => write!(f, "wake_on_lan({mac})"),
            _ => f.write_str(self.kind()),
        }
    }
}

/// A secret string (token, password, environment value). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Registry credentials for a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub server: String,
    pub username: String,
    pub password: Secret,
}

/// A model download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRequest {
    pub repo: String,
    /// Branch, tag or commit; "main" when `None`.
    pub revision: Option<String>,
    /// Hugging Face-compatible endpoint; the agent's configured one when `None`.
    pub endpoint: Option<String>,
    /// Access token for gated repositories; the agent's configured one when `None`.
    pub token: Option<Secret>,
}

/// Everything needed to create a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// The command argv; the image's default when empty.
    pub command: Vec<String>,
    pub env: Vec<EnvVar>,
    pub mounts: Vec<Mount>,
    pub ports: Vec<PortBinding>,
    pub host_network: bool,
    pub host_ipc: bool,
    pub gpus: GpuRequest,
    pub shm_size_bytes: Option<u64>,
    pub restart: RestartPolicy,
    /// Stored as `io.spark-control.role` (e.g. "llm", "asr", "service").
    pub role: String,
    /// Stored as `io.spark-control.recipe`.
    pub recipe: Option<String>,
    /// Extra labels; keys under `io.spark-control.` are reserved.
    pub labels: Vec<(String, String)>,
}

/// An environment variable. The value is a [`Secret`] because tokens travel this way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: Secret,
}

/// A bind mount. The agent refuses a source outside its configured mount roots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    pub container_port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
    pub host_ip: Option<String>,
    pub host_port: u16,
}

/// Which GPUs a container gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GpuRequest {
    None,
    All,
    /// Device indexes or UUIDs.
    Devices(Vec<String>),
}

/// Docker's restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    OnFailure { max_retries: u32 },
}

/// A file to write into a container.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadFile {
    /// Relative to the target directory; no `..`.
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

impl fmt::Debug for UploadFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UploadFile({}, {} bytes)",
            self.path,
            self.contents.len()
        )
    }
}

/// A container as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    /// created | running | paused | restarting | removing | exited | dead
    pub state: String,
    /// Docker's words, e.g. "Up 3 minutes (healthy)".
    pub status: String,
    /// healthy | unhealthy | starting, when the image has a health check.
    pub health: Option<String>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// Seconds since the Unix epoch.
    pub created: i64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Created by Spark Control (`io.spark-control.managed=true`).
    pub managed: bool,
    /// Managed, or named in the agent's configuration: the agent will act on it.
    pub controllable: bool,
    pub role: Option<String>,
    pub recipe: Option<String>,
    pub labels: Vec<(String, String)>,
    pub ports: Vec<PortBinding>,
    pub restart_count: i64,
}

/// An image on the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub id: String,
    pub tags: Vec<String>,
    pub size_bytes: i64,
    pub created: i64,
}

/// The SHA-256 of one file inside a container, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    pub path: String,
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    pub error: Option<String>,
}

/// A successful result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpOutput {
    Done,
    Containers(Vec<ContainerInfo>),
    Container(Box<ContainerInfo>),
    Logs(Vec<LogLine>),
    Exec {
        exit_code: i64,
        stdout: String,
        stderr: String,
    },
    Images(Vec<ImageInfo>),
    Pulled {
        image: String,
    },
    Hashes(Vec<FileHash>),
    Models(ModelInventory),
    Deleted {
        path: String,
        freed_bytes: u64,
    },
    Downloaded {
        repo: String,
        commit: String,
        files: u32,
        bytes: u64,
    },
    /// A model's `config.json` text and the file it was read from.
    ModelConfig {
        path: String,
        json: String,
    },
}

/// A failed operation: a kind the controller maps to an HTTP status, and a message that says
/// what was wrong in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    pub kind: OpErrorKind,
    pub message: String,
}

impl OpError {
    pub fn new(kind: OpErrorKind, message: impl Into<String>) -> Self {
        OpError {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpErrorKind {
    /// The request itself is invalid.
    BadRequest,
    NotFound,
    /// Not allowed: an unmanaged container, a path outside the roots.
    Refused,
    /// Conflicts with the current state (name taken, container not running).
    Conflict,
    /// The Docker engine cannot be reached.
    DockerUnavailable,
    /// The upstream (registry, Hugging Face endpoint) said no: gated repo or bad token.
    Unauthorized,
    /// The upstream failed.
    Upstream,
    /// The operation was cancelled or the agent is shutting down.
    Cancelled,
    /// The operation did not finish in time.
    Timeout,
    Internal,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// "stdout" or "stderr".
    pub stream: String,
    pub text: String,
}

/// Progress of a long operation (pull, download).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// What is happening, e.g. "Downloading", "listing files", "verifying".
    pub status: String,
    /// The file or layer concerned.
    pub item: Option<String>,
    pub current_bytes: u64,
    pub total_bytes: Option<u64>,
}

/// An element of a streamed operation, before its final result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamItem {
    Log(LogLine),
    Progress(Progress),
}

/// Check a Docker container name. Pure.
pub fn validate_container_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a container name: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        ))
    }
}

/// Check an image reference ("repo[:tag][@digest]", optionally with a registry host). Pure.
pub fn validate_image_ref(image: &str) -> Result<(), String> {
    let ok = !image.is_empty()
        && image.len() <= 255
        && !image.starts_with(['-', '.', '/', ':', '@'])
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{image}' is not an image reference: expected e.g. 'vllm-node' or 'nvcr.io/nim/org/image:1.0'"
        ))
    }
}

/// Check a MAC address written "aa:bb:cc:dd:ee:ff" (or with '-'), returning its bytes. Pure.
pub fn parse_mac(mac: &str) -> Result<[u8; 6], String> {
    let bad =
        || format!("'{mac}' is not a MAC address: expected six hex pairs like aa:bb:cc:dd:ee:ff");
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The Wake-on-LAN magic packet for a MAC: six 0xFF bytes, then the MAC sixteen times.
pub fn magic_packet(mac: [u8; 6]) -> [u8; 102] {
    let mut packet = [0xFFu8; 102];
    for chunk in packet[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac);
    }
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_images_macs() {
        assert!(validate_container_name("vllm_node").is_ok());
        assert!(validate_container_name("a.b-c_1").is_ok());
        for bad in ["", "-x", "a b", "a/b", "a;b", "_x"] {
            assert!(validate_container_name(bad).is_err(), "{bad}");
        }
        assert!(validate_image_ref("vllm-node").is_ok());
        assert!(validate_image_ref("nvcr.io/nim/nvidia/parakeet:1.0@sha256:ab12").is_ok());
        for bad in ["", "-x", "a b", "a;b", "$(x)"] {
            assert!(validate_image_ref(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_mac("AA:bb:0c:dd:ee:0F"),
            Ok([0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x0f])
        );
        assert!(parse_mac("aa:bb:cc:dd:ee").is_err());
        assert!(parse_mac("aa:bb:cc:dd:ee:gg").is_err());
        assert!(parse_mac("aab:b:cc:dd:ee:ff").is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let op = Op::DownloadModel(DownloadRequest {
            repo: "a/b".into(),
            revision: None,
            endpoint: None,
            token: Some(Secret("hf_topsecret".into())),
        });
        assert!(!format!("{op:?}").contains("topsecret"));
        let env = EnvVar {
            name: "HF_TOKEN".into(),
            value: Secret("hf_topsecret".into()),
        };
        assert!(!format!("{env:?}").contains("topsecret"));
    }
}
