//! What the agent does on request: one dispatcher from typed operations to the Docker engine,
//! the model store and the network, and the per-second telemetry sample.
//!
//! The link ([`crate::link`]) owns the connection; this module owns the box. Operations run as
//! their own tasks, so a slow pull or a followed log never holds up the link or each other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use spark_common::ops::{Op, OpError, OpErrorKind, OpOutput, Secret, StreamItem};
use spark_common::telemetry::{StoreDisk, Telemetry};
use tokio_util::sync::CancellationToken;

use crate::docker::{Engine, EngineConfig};
use crate::gpu::GpuSampler;
use crate::host::HostSampler;
use crate::models::ModelStore;
use crate::nics::NicSampler;

/// Everything the runtime needs to know about the box, resolved from the agent's config.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub engine: EngineConfig,
    pub hf_cache: PathBuf,
    pub model_dirs: Vec<PathBuf>,
    pub hf_endpoint: String,
    pub hf_token: Option<Secret>,
    /// Where Wake-on-LAN packets go (normally the broadcast address, port 9).
    pub wol_target: SocketAddr,
}

impl RuntimeConfig {
    /// A configuration touching nothing outside `dir`: no Docker engine (a socket path that does
    /// not exist), an empty model store under `dir`, Wake-on-LAN packets to 127.0.0.1:9. For
    /// tests and tools.
    pub fn isolated(dir: &std::path::Path) -> RuntimeConfig {
        RuntimeConfig {
            engine: EngineConfig {
                endpoint: format!("unix://{}", dir.join("no-docker.sock").display()),
                mount_roots: vec![dir.to_path_buf()],
                services: Vec::new(),
            },
            hf_cache: dir.join("hf/hub"),
            model_dirs: Vec::new(),
            hf_endpoint: "http://127.0.0.1:9".into(),
            hf_token: None,
            wol_target: SocketAddr::from(([127, 0, 0, 1], 9)),
        }
    }
}

/// Emits intermediate results of a streamed operation.
pub type Emit = Arc<dyn Fn(StreamItem) + Send + Sync>;

pub struct Runtime {
    pub config: RuntimeConfig,
    pub engine: Arc<Engine>,
    pub store: Arc<ModelStore>,
    samplers: Arc<Mutex<Samplers>>,
}

struct Samplers {
    host: HostSampler,
    gpu: GpuSampler,
    nics: NicSampler,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Arc<Runtime> {
        let engine = Engine::new(config.engine.clone());
        let store = Arc::new(ModelStore::new(
            config.hf_cache.clone(),
            config.model_dirs.clone(),
        ));
        Arc::new(Runtime {
            engine,
            store,
            samplers: Arc::new(Mutex::new(Samplers {
                host: HostSampler::new(),
                gpu: GpuSampler::system(),
                nics: NicSampler::new(),
            })),
            config,
        })
    }

    /// Start the background work (the Docker watcher) until `shutdown`.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(self.engine.clone().watch(shutdown));
    }

    /// One telemetry sample, taken on a blocking thread. `None` if the previous sample is still
    /// running (a hung mount must not pile up threads).
    pub async fn telemetry(&self) -> Option<Telemetry> {
        let samplers = self.samplers.clone();
        let roots: Vec<PathBuf> = std::iter::once(self.config.hf_cache.clone())
            .chain(self.config.model_dirs.iter().cloned())
            .collect();
        let docker = self.engine.status();
        tokio::task::spawn_blocking(move || {
            let mut s = samplers.try_lock().ok()?;
            let host = s.host.sample();
            let gpu = s.gpu.sample();
            let nics = s.nics.sample();
            // The host sample has just refreshed the disks: no second pass over them.
            let store = roots
                .iter()
                .filter_map(|r| store_disk(&s.host, r))
                .collect();
            Some(Telemetry {
                host,
                gpu,
                nics,
                store,
                docker,
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// Perform one operation. `emit` receives stream items (log lines, progress) before the
    /// result; `cancel` stops a long operation.
    pub async fn handle(
        &self,
        op: Op,
        emit: Emit,
        cancel: CancellationToken,
    ) -> Result<OpOutput, OpError> {
        let e = &self.engine;
        match op {
            Op::ListContainers => e.list().await.map(OpOutput::Containers),
            Op::InspectContainer { name } => e
                .inspect(&name)
                .await
                .map(|c| OpOutput::Container(Box::new(c))),
            Op::StartContainer { name } => e.start(&name).await.map(|_| OpOutput::Done),
            Op::StopContainer { name, timeout_secs } => {
                e.stop(&name, timeout_secs).await.map(|_| OpOutput::Done)
            }
            Op::RestartContainer { name, timeout_secs } => {
                e.restart(&name, timeout_secs).await.map(|_| OpOutput::Done)
            }
            Op::RunContainer(spec) => e.run(&spec).await.map(|c| OpOutput::Container(Box::new(c))),
            Op::RemoveContainer { name, force } => {
                e.remove(&name, force).await.map(|_| OpOutput::Done)
            }
            Op::Logs {
                name,
                tail,
                follow,
                timestamps,
            } => e
                .logs(&name, tail, follow, timestamps, emit.as_ref(), &cancel)
                .await
                .map(OpOutput::Logs),
            Op::Exec {
                name,
                argv,
                timeout_secs,
            } => e
                .exec(&name, &argv, timeout_secs)
                .await
                .map(|(exit_code, stdout, stderr)| OpOutput::Exec {
                    exit_code,
                    stdout,
                    stderr,
                }),
            Op::ListImages => e.images().await.map(OpOutput::Images),
            Op::PullImage { image, auth } => e
                .pull(&image, auth.as_ref(), emit.as_ref(), &cancel)
                .await
                .map(|_| OpOutput::Pulled { image }),
            Op::CopyInto { name, dir, files } => e
                .copy_into(&name, &dir, &files)
                .await
                .map(|_| OpOutput::Done),
            Op::HashFiles { name, paths } => {
                e.hash_files(&name, &paths).await.map(OpOutput::Hashes)
            }
            Op::ScanModels => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.scan())
                    .await
                    .map(OpOutput::Models)
                    .map_err(|e| OpError::new(OpErrorKind::Internal, format!("scan failed: {e}")))
            }
            Op::DeleteModel(target) => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.delete(&target))
                    .await
                    .map_err(|e| {
                        OpError::new(OpErrorKind::Internal, format!("delete failed: {e}"))
                    })?
                    .map(|(path, freed_bytes)| OpOutput::Deleted {
                        path: path.display().to_string(),
                        freed_bytes,
                    })
            }
            Op::DownloadModel(req) => {
                let progress = {
                    let emit = emit.clone();
                    move |p| emit(StreamItem::Progress(p))
                };
                self.store
                    .download(
                        &req,
                        &self.config.hf_endpoint,
                        self.config.hf_token.as_ref(),
                        &progress,
                        &cancel,
                    )
                    .await
            }
            Op::ReadModelConfig(target) => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.config_json(&target))
                    .await
                    .map_err(|e| {
                        OpError::new(OpErrorKind::Internal, format!("config read failed: {e}"))
                    })?
                    .map(|(path, json)| OpOutput::ModelConfig { path, json })
            }
            Op::WakeOnLan { mac } => {
                let bytes = spark_common::ops::parse_mac(&mac)
                    .map_err(|m| OpError::new(OpErrorKind::BadRequest, m))?;
                crate::wol::send(bytes, self.config.wol_target)
                    .await
                    .map(|_| OpOutput::Done)
                    .map_err(|e| {
                        OpError::new(
                            OpErrorKind::Upstream,
                            format!(
                                "could not send the Wake-on-LAN packet to {}: {e}",
                                self.config.wol_target
                            ),
                        )
                    })
            }
        }
    }
}

/// Space on the file system holding `root` (the nearest existing ancestor if it does not exist
/// yet, so a fresh box still shows its disk).
fn store_disk(host: &HostSampler, root: &std::path::Path) -> Option<StoreDisk> {
    let mut probe = root.to_path_buf();
    while !probe.exists() {
        probe = probe.parent()?.to_path_buf();
    }
    let (total_bytes, available_bytes) = host.disk_space(&probe)?;
    Some(StoreDisk {
        root: root.display().to_string(),
        total_bytes,
        available_bytes,
    })
}
