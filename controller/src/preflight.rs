//! Planning a swap (which nodes, which roles, which containers) and checking it without
//! disturbing the running model: nodes connected, weights present, runtime image present,
//! config.json architecture as the recipe expects, memory fit, and the vLLM arguments checked by
//! the runtime image's own parser in a one-off container.
//!
//! `POST /api/swap/{key}/validate` runs every check; a swap runs the quick ones (all but the
//! argument check, which starts a Python interpreter in the runtime image and would cost a real
//! vLLM image 10-20 s).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use spark_common::models::{ModelEntry, ModelInventory, ModelTarget};
use spark_common::ops::{ContainerSpec, GpuRequest, Op, OpOutput, RestartPolicy};
use spark_common::telemetry::Telemetry;

use crate::App;
use crate::boxes;
use crate::recipes::{self, ClusterPlan, Knobs, Mode, Recipe, Role};

/// Role label of a model server container (solo or cluster head).
pub const ROLE_LLM: &str = "llm";
/// Role label of a cluster worker container.
pub const ROLE_LLM_WORKER: &str = "llm-worker";
/// Where a model server container finds the node's Hugging Face home (the path vLLM images and
/// spark-vllm-docker use inside the container, not a path of any machine).
pub const CONTAINER_HF_HOME: &str = "/root/.cache/huggingface";
/// Label carrying the swap job that created a container (not under the reserved prefix).
pub const LABEL_JOB: &str = "spark-control.swap-job";

const SCAN_LIMIT: Duration = Duration::from_secs(30);
const OP_LIMIT: Duration = Duration::from_secs(30);
const ARG_CHECK_LIMIT: Duration = Duration::from_secs(180);

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    /// The node it concerns, when it concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(name: &str, node: Option<&str>, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            node: node.map(str::to_string),
            ok,
            detail: detail.into(),
        }
    }
}

/// One container of a swap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanNode {
    pub node_id: String,
    pub node_name: String,
    /// The IP the controller reaches the node at (and workers reach the head at).
    pub address: String,
    /// "solo", "head" or "worker".
    pub role: String,
    pub rank: u32,
    pub container: String,
}

/// What a swap will do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub key: String,
    pub served_model_name: String,
    pub port: u16,
    pub mode: Mode,
    pub image: String,
    pub nodes: Vec<PlanNode>,
}

impl Plan {
    /// The node serving the API (solo or head).
    pub fn head(&self) -> Option<&PlanNode> {
        self.nodes.first()
    }

    pub fn cluster(&self) -> Option<ClusterPlan> {
        (self.mode == Mode::Cluster).then(|| ClusterPlan {
            nodes: self.nodes.len() as u32,
            master_addr: self.head().map(|h| h.address.clone()).unwrap_or_default(),
            master_port: recipes::DEFAULT_MASTER_PORT,
        })
    }
}

impl PlanNode {
    pub fn role(&self) -> Role {
        match self.role.as_str() {
            "head" => Role::Head,
            "worker" => Role::Worker { rank: self.rank },
            _ => Role::Solo,
        }
    }
}

/// What the controller knows about one candidate node while planning.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub node_id: String,
    pub name: String,
    pub address: String,
    pub inventory: Result<ModelInventory, String>,
    pub telemetry: Option<Telemetry>,
    /// Running model containers (role llm / llm-worker): name and id.
    pub model_containers: Vec<(String, String)>,
}

impl NodeFacts {
    /// The model's entry in this node's store, if scanned and present.
    pub fn weights(&self, recipe: &Recipe) -> Option<&ModelEntry> {
        let inv = self.inventory.as_ref().ok()?;
        inv.models
            .iter()
            .find(|m| match (&recipe.repo, &recipe.path) {
                (Some(repo), _) => m.repo_id.as_deref() == Some(repo.as_str()),
                (None, Some(path)) => m.path == *path,
                _ => false,
            })
    }
}

/// Connected nodes that perform operations, with their model stores scanned (in parallel).
pub async fn node_facts(app: &App) -> Vec<NodeFacts> {
    let mut rows = app.db.nodes(false).unwrap_or_default();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let live: Vec<_> = rows
        .into_iter()
        .filter_map(|row| {
            let l = app.registry.get(&row.id)?;
            l.features.iter().any(|f| f == "ops").then_some((row, l))
        })
        .collect();
    let scans = live.iter().map(|(row, _)| async move {
        match boxes::call(app, &row.id, Op::ScanModels, SCAN_LIMIT).await {
            Ok(OpOutput::Models(inv)) => Ok(inv),
            Ok(_) => Err("the agent answered the scan with something else".to_string()),
            Err(e) => Err(e.message),
        }
    });
    let results = futures_util::future::join_all(scans).await;
    live.into_iter()
        .zip(results)
        .map(|((row, l), inventory)| NodeFacts {
            address: node_address(l.remote_ip),
            model_containers: l
                .containers
                .as_ref()
                .map(|c| {
                    c.containers
                        .iter()
                        .filter(|c| {
                            c.managed
                                && matches!(c.role.as_deref(), Some(ROLE_LLM | ROLE_LLM_WORKER))
                        })
                        .map(|c| (c.name.clone(), c.id.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            telemetry: l.telemetry,
            node_id: row.id,
            name: row.name,
            inventory,
        })
        .collect()
}

/// The address a node is reached at: the IP its agent connected from (IPv4-mapped addresses
/// unwrapped). Model servers bind IPv4; names are never used.
pub fn node_address(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        v4 => v4.to_string(),
    }
}

/// Container name for one role of a recipe.
pub fn container_name(key: &str, role: &Role) -> String {
    match role {
        Role::Solo | Role::Head => format!("sc-llm-{key}"),
        Role::Worker { rank } => format!("sc-llm-{key}-w{rank}"),
    }
}

/// Choose the nodes: the requested ones (ids or names, head first) or, by default, nodes that
/// hold the weights, preferring one already serving a model (a solo swap replaces it in place),
/// then by name. Nodes without the weights fill in only when too few have them (the weights
/// check then says so).
pub fn plan(
    recipe: &Recipe,
    facts: &[NodeFacts],
    requested: Option<&[String]>,
) -> Result<Plan, String> {
    let needed = recipes::cluster_nodes(recipe) as usize;
    let chosen: Vec<&NodeFacts> = match requested {
        Some(req) if !req.is_empty() => {
            let mut out = Vec::new();
            for r in req {
                let f = facts
                    .iter()
                    .find(|f| f.node_id == *r || f.name == *r)
                    .ok_or_else(|| {
                        format!(
                            "node '{r}' is not connected (or its agent cannot perform operations); connected: {}",
                            names(facts)
                        )
                    })?;
                if out.iter().any(|o: &&NodeFacts| o.node_id == f.node_id) {
                    return Err(format!("node '{r}' is named twice"));
                }
                out.push(f);
            }
            if out.len() != needed {
                return Err(format!(
                    "recipe '{}' runs on {needed} node(s) ({:?} mode) but {} were named",
                    recipe.key,
                    recipe.mode,
                    out.len()
                ));
            }
            out
        }
        _ => {
            let mut ranked: Vec<&NodeFacts> = facts.iter().collect();
            ranked.sort_by_key(|f| {
                (
                    f.weights(recipe).is_none_or(|w| !w.complete),
                    f.model_containers.is_empty(),
                    f.name.clone(),
                )
            });
            if ranked.len() < needed {
                return Err(format!(
                    "recipe '{}' needs {needed} connected node(s) that perform operations; {} connected ({})",
                    recipe.key,
                    ranked.len(),
                    names(facts)
                ));
            }
            ranked.truncate(needed);
            ranked
        }
    };
    let cluster = recipe.mode == Mode::Cluster;
    let nodes = chosen
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let role = match (cluster, i) {
                (false, _) => Role::Solo,
                (true, 0) => Role::Head,
                (true, r) => Role::Worker { rank: r as u32 },
            };
            PlanNode {
                node_id: f.node_id.clone(),
                node_name: f.name.clone(),
                address: f.address.clone(),
                role: match role {
                    Role::Solo => "solo",
                    Role::Head => "head",
                    Role::Worker { .. } => "worker",
                }
                .into(),
                rank: i as u32,
                container: container_name(&recipe.key, &role),
            }
        })
        .collect();
    Ok(Plan {
        key: recipe.key.clone(),
        served_model_name: recipes::served_name(recipe).to_string(),
        port: recipes::port(recipe),
        mode: recipe.mode,
        image: recipe.runtime.image.clone(),
        nodes,
    })
}

fn names(facts: &[NodeFacts]) -> String {
    if facts.is_empty() {
        return "none".into();
    }
    facts
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The container spec for one node of a plan.
pub fn container_spec(
    recipe: &Recipe,
    knobs: &Knobs,
    plan: &Plan,
    node: &PlanNode,
    hf_cache: Option<&str>,
    job_id: &str,
    gpus: bool,
) -> ContainerSpec {
    let argv = recipes::launch_argv(recipe, knobs, &node.role(), plan.cluster().as_ref());
    let mut spec = spec_for(recipe, node, argv, hf_cache, &node.container, job_id, true);
    if !gpus {
        spec.gpus = GpuRequest::None;
    }
    spec
}

fn spec_for(
    recipe: &Recipe,
    node: &PlanNode,
    argv: Vec<String>,
    hf_cache: Option<&str>,
    name: &str,
    job_id: &str,
    serving: bool,
) -> ContainerSpec {
    use spark_common::ops::{EnvVar, Mount, Secret};
    let (entrypoint, command) = match argv.split_first() {
        Some((first, rest)) => (Some(vec![first.clone()]), rest.to_vec()),
        None => (None, Vec::new()),
    };
    let mut env: Vec<EnvVar> = Vec::new();
    let mut mounts = Vec::new();
    if let Some(cache) = hf_cache {
        // The hub cache's parent is the HF home: mount it where the image expects it and never
        // let a swap download behind the operator's back.
        let home = std::path::Path::new(cache)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| cache.to_string());
        mounts.push(Mount {
            source: home,
            target: CONTAINER_HF_HOME.into(),
            read_only: false,
        });
        env.push(EnvVar {
            name: "HF_HOME".into(),
            value: Secret(CONTAINER_HF_HOME.into()),
        });
        env.push(EnvVar {
            name: "HF_HUB_OFFLINE".into(),
            value: Secret(String::from("1")),
        });
    }
    if let Some(path) = &recipe.path {
        mounts.push(Mount {
            source: path.clone(),
            target: path.clone(),
            read_only: true,
        });
    }
    if serving {
        env.push(EnvVar {
            name: "VLLM_HOST_IP".into(),
            value: Secret(node.address.clone()),
        });
    }
    for (k, v) in &recipe.env {
        env.retain(|e| e.name != *k);
        env.push(EnvVar {
            name: k.clone(),
            value: Secret(v.clone()),
        });
    }
    let role = match node.role.as_str() {
        "worker" => ROLE_LLM_WORKER,
        _ => ROLE_LLM,
    };
    ContainerSpec {
        name: name.to_string(),
        image: recipe.runtime.image.clone(),
        entrypoint,
        command,
        env,
        mounts,
        ports: Vec::new(),
        host_network: serving,
        host_ipc: serving,
        gpus: if serving {
            GpuRequest::All
        } else {
            GpuRequest::None
        },
        shm_size_bytes: recipe
            .runtime
            .shm_gb
            .filter(|g| g.is_finite() && *g > 0.0)
            .map(|g| (g * 1024.0 * 1024.0 * 1024.0) as u64),
        restart: RestartPolicy::No,
        role: if serving {
            role.into()
        } else {
            "preflight".into()
        },
        recipe: Some(recipe.key.clone()),
        labels: vec![(LABEL_JOB.into(), job_id.into())],
    }
}

/// Memory figures of a node, as the fit check sees them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryFacts {
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Memory held by the model containers a swap would stop first.
    pub freed_by_stop_bytes: u64,
    pub unified: bool,
    /// No GPU reported: host RAM stands in.
    pub host_ram: bool,
}

/// A node's memory from its telemetry; `model_container_ids` are the running model containers
/// (their GPU memory is freed by the swap).
pub fn memory_facts(t: &Telemetry, model_container_ids: &[String]) -> MemoryFacts {
    let devices = &t.gpu.devices;
    if devices.is_empty() {
        let total = t.host.mem_total_bytes;
        return MemoryFacts {
            total_bytes: total,
            used_bytes: total.saturating_sub(t.host.mem_available_bytes),
            freed_by_stop_bytes: 0,
            unified: true,
            host_ram: true,
        };
    }
    let unified = devices.iter().any(|d| d.memory.unified);
    let freed: u64 = devices
        .iter()
        .flat_map(|d| d.processes.iter())
        .filter(|p| {
            p.container_id
                .as_ref()
                .is_some_and(|c| model_container_ids.iter().any(|m| m == c))
        })
        .filter_map(|p| p.used_bytes)
        .sum();
    // Unified devices all report the same system memory: count it once.
    let (total, used) = if unified {
        (devices[0].memory.total_bytes, devices[0].memory.used_bytes)
    } else {
        (
            devices.iter().map(|d| d.memory.total_bytes).sum(),
            devices.iter().map(|d| d.memory.used_bytes).sum(),
        )
    };
    MemoryFacts {
        total_bytes: total,
        used_bytes: used,
        freed_by_stop_bytes: freed.min(used),
        unified,
        host_ram: false,
    }
}

/// Bytes of KV cache one token needs, from config.json (standard attention only; `None` for
/// architectures this estimate does not cover, such as MLA).
pub fn kv_bytes_per_token(config: &Value, fp8_kv: bool) -> Option<u64> {
    let c = ["text_config", "llm_config", "language_config"]
        .iter()
        .find_map(|k| config.get(*k).filter(|v| v.is_object()))
        .unwrap_or(config);
    if c.get("kv_lora_rank").is_some_and(|v| !v.is_null()) {
        return None;
    }
    let num = |k: &str| c.get(k).and_then(Value::as_u64);
    let layers = num("num_hidden_layers")?;
    let heads = num("num_attention_heads")?;
    let kv_heads = num("num_key_value_heads").unwrap_or(heads);
    let head_dim = num("head_dim").or_else(|| num("hidden_size").map(|h| h / heads.max(1)))?;
    let bytes = if fp8_kv { 1 } else { 2 };
    Some(2 * layers * kv_heads * head_dim * bytes)
}

const GB: f64 = 1e9;

/// The memory fit check for one node: the model's share of the weights plus a working margin
/// must fit in its memory budget (fraction x total), the KV cache left must hold one sequence
/// of the context length (when it can be estimated), and the budget must fit beside what else
/// runs on the node (the model being replaced does not count).
pub fn memory_fit(
    node: &str,
    weights_share_bytes: u64,
    fraction: f64,
    facts: MemoryFacts,
    kv_needed_bytes: Option<u64>,
) -> Check {
    let budget = fraction * facts.total_bytes as f64;
    let others = facts.used_bytes.saturating_sub(facts.freed_by_stop_bytes) as f64;
    let free = facts.total_bytes as f64 - others;
    let weights = weights_share_bytes as f64;
    // Activations, CUDA graphs and the load-time peak: 10% of the weights plus 1 GB.
    let working = weights * 1.1 + 1.0 * GB;
    let what = if facts.host_ram {
        "no GPU reported; host RAM stands in, as on a unified-memory box"
    } else if facts.unified {
        "unified memory: the fraction is of the whole system memory, shared with the OS and services"
    } else {
        "GPU memory"
    };
    let head = format!(
        "budget {:.1} GB = {:.2} x {:.1} GB ({what}); weights {:.1} GB on this node",
        budget / GB,
        fraction,
        facts.total_bytes as f64 / GB,
        weights / GB
    );
    if working > budget {
        return Check::new(
            "memory",
            Some(node),
            false,
            format!(
                "{head}: the weights with their working margin ({:.1} GB) do not fit the budget; raise the GPU memory fraction or use a smaller variant",
                working / GB
            ),
        );
    }
    if budget > free {
        let max_fraction = (free / facts.total_bytes.max(1) as f64).max(0.0);
        return Check::new(
            "memory",
            Some(node),
            false,
            format!(
                "{head}: other processes and services use {:.1} GB, leaving {:.1} GB; lower the GPU memory fraction to {:.2} or less, or stop something",
                others / GB,
                free / GB,
                (max_fraction * 100.0).floor() / 100.0
            ),
        );
    }
    let kv = budget - working;
    if let Some(need) = kv_needed_bytes
        && (need as f64) > kv
    {
        return Check::new(
            "memory",
            Some(node),
            false,
            format!(
                "{head}: {:.1} GB is left for the KV cache but one sequence of the full context needs {:.1} GB; lower --max-model-len or raise the fraction",
                kv / GB,
                need as f64 / GB
            ),
        );
    }
    Check::new(
        "memory",
        Some(node),
        true,
        format!(
            "{head}; {:.1} GB left for the KV cache; {:.1} GB free beside other work",
            kv / GB,
            free / GB
        ),
    )
}

/// The `--max-model-len` a launch will use (knob, recipe args, else config.json).
fn max_model_len(recipe: &Recipe, knobs: &Knobs, config: Option<&Value>) -> Option<u64> {
    if let Some(v) = knobs.max_model_len {
        return Some(v.into());
    }
    let mut it = recipe.args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--max-model-len=") {
            return parse_len(v);
        }
        if a == "--max-model-len" {
            return it.next().and_then(|v| parse_len(v));
        }
    }
    let c = config?;
    let c = c.get("text_config").filter(|v| v.is_object()).unwrap_or(c);
    c.get("max_position_embeddings").and_then(Value::as_u64)
}

fn parse_len(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last() {
        Some((i, 'k')) => (&v[..i], 1000),
        Some((i, 'K')) => (&v[..i], 1024),
        Some((i, 'm')) => (&v[..i], 1_000_000),
        Some((i, 'M')) => (&v[..i], 1024 * 1024),
        _ => (v, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

fn fp8_kv(recipe: &Recipe, knobs: &Knobs) -> bool {
    if let Some(v) = knobs.fp8_kv_cache {
        return v;
    }
    recipe
        .args
        .windows(2)
        .any(|w| w[0] == "--kv-cache-dtype" && w[1].starts_with("fp8"))
        || recipe
            .args
            .iter()
            .any(|a| a.starts_with("--kv-cache-dtype=fp8"))
}

/// Run the checks for `plan`. `arguments` adds the one-off parser container.
pub async fn checks(
    app: &App,
    recipe: &Recipe,
    knobs: &Knobs,
    plan: &Plan,
    facts: &[NodeFacts],
    arguments: bool,
) -> Vec<Check> {
    let mut out = Vec::new();
    let by_id: HashMap<&str, &NodeFacts> = facts.iter().map(|f| (f.node_id.as_str(), f)).collect();
    out.push(Check::new(
        "nodes",
        None,
        true,
        format!(
            "{} on {}",
            match plan.mode {
                Mode::Solo => "solo".to_string(),
                Mode::Cluster => format!("cluster of {}", plan.nodes.len()),
            },
            plan.nodes
                .iter()
                .map(|n| format!("{} ({}, {})", n.node_name, n.role, n.address))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    let mut config: Option<Value> = None;
    for node in &plan.nodes {
        let Some(f) = by_id.get(node.node_id.as_str()) else {
            out.push(Check::new(
                "weights",
                Some(&node.node_name),
                false,
                "the node is not connected",
            ));
            continue;
        };
        // Weights.
        let weights = f.weights(recipe);
        let weights_bytes = match (&f.inventory, weights) {
            (Err(e), _) => {
                out.push(Check::new(
                    "weights",
                    Some(&node.node_name),
                    false,
                    format!("the model store could not be scanned: {e}"),
                ));
                None
            }
            (Ok(_), Some(w)) if w.complete => {
                out.push(Check::new(
                    "weights",
                    Some(&node.node_name),
                    true,
                    format!("{} ({:.1} GB)", w.path, w.size_bytes as f64 / GB),
                ));
                Some(w.size_bytes)
            }
            (Ok(_), Some(w)) => {
                out.push(Check::new(
                    "weights",
                    Some(&node.node_name),
                    false,
                    format!(
                        "{} is incomplete ({:.1} GB in unfinished downloads); finish the download first",
                        w.path,
                        w.incomplete_bytes as f64 / GB
                    ),
                ));
                None
            }
            (Ok(_), None) => {
                out.push(Check::new(
                    "weights",
                    Some(&node.node_name),
                    false,
                    match (&recipe.repo, &recipe.path) {
                        (Some(repo), _) => format!(
                            "{repo} is not on this node; download it (POST /api/models/download)"
                        ),
                        (_, Some(path)) => {
                            format!("{path} is not a model directory under this node's model roots")
                        }
                        _ => "the recipe names no weights".into(),
                    },
                ));
                None
            }
        };
        // Architecture (once, from the first node holding the weights).
        if config.is_none()
            && let Some(w) = weights.filter(|w| w.complete)
        {
            let target = match &w.repo_id {
                Some(r) => ModelTarget::Repo(r.clone()),
                None => ModelTarget::Path(w.path.clone()),
            };
            let live = app.registry.get(&node.node_id);
            let full = if live.is_some_and(|l| l.features.iter().any(|f| f == "model-config")) {
                match boxes::call(app, &node.node_id, Op::ReadModelConfig(target), OP_LIMIT).await {
                    Ok(OpOutput::ModelConfig { json, .. }) => {
                        serde_json::from_str::<Value>(&json).ok()
                    }
                    _ => None,
                }
            } else {
                None
            };
            let architectures = match (&full, &w.config) {
                (Some(v), _) => v
                    .get("architectures")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                (None, Some(s)) => s.architectures.clone(),
                (None, None) => Vec::new(),
            };
            let check = if architectures.is_empty() && recipe.architecture.is_some() {
                Check::new(
                    "architecture",
                    Some(&node.node_name),
                    false,
                    "config.json is missing or names no architectures, so the weights cannot be checked against the recipe",
                )
            } else {
                match recipes::check_architecture(recipe, &architectures) {
                    Ok(d) => Check::new("architecture", Some(&node.node_name), true, d),
                    Err(d) => Check::new("architecture", Some(&node.node_name), false, d),
                }
            };
            out.push(check);
            config = full.or(Some(Value::Null));
        }
        // Memory.
        match &f.telemetry {
            Some(t) => {
                let ids: Vec<String> = f
                    .model_containers
                    .iter()
                    .map(|(_, id)| id.clone())
                    .collect();
                let facts = memory_facts(t, &ids);
                let share = weights_bytes
                    .or_else(|| recipe.size_gb.map(|g| (g * GB) as u64))
                    .unwrap_or(0)
                    / plan.nodes.len().max(1) as u64;
                let fraction = recipes::effective_gpu_memory_utilization(recipe, knobs);
                let kv = config.as_ref().and_then(|c| {
                    let per_token = kv_bytes_per_token(c, fp8_kv(recipe, knobs))?;
                    let len = max_model_len(recipe, knobs, Some(c))?;
                    Some(per_token * len / plan.nodes.len().max(1) as u64)
                });
                out.push(memory_fit(&node.node_name, share, fraction, facts, kv));
            }
            None => out.push(Check::new(
                "memory",
                Some(&node.node_name),
                false,
                "no telemetry from this node yet, so memory cannot be checked",
            )),
        }
        // Image.
        out.push(image_check(app, &node.node_id, &node.node_name, &recipe.runtime.image).await);
    }
    if arguments {
        out.push(argument_check(app, recipe, knobs, plan).await);
    }
    out
}

/// Whether the runtime image is on the node.
async fn image_check(app: &App, node_id: &str, node: &str, image: &str) -> Check {
    let images = match boxes::call(app, node_id, Op::ListImages, OP_LIMIT).await {
        Ok(OpOutput::Images(i)) => i,
        Ok(_) => return Check::new("image", Some(node), false, "unexpected answer"),
        Err(e) => {
            return Check::new(
                "image",
                Some(node),
                false,
                format!("images could not be listed: {}", e.message),
            );
        }
    };
    if image.contains('@') {
        return Check::new(
            "image",
            Some(node),
            true,
            format!(
                "{image} is pinned by digest; the engine checks it when the container is created"
            ),
        );
    }
    let wanted = normalize_ref(image);
    match images
        .iter()
        .find(|i| i.tags.iter().any(|t| normalize_ref(t) == wanted))
    {
        Some(i) => Check::new(
            "image",
            Some(node),
            true,
            format!(
                "{image} present ({:.1} GB)",
                i.size_bytes.max(0) as f64 / GB
            ),
        ),
        None => Check::new(
            "image",
            Some(node),
            false,
            format!("{image} is not on this node; pull or build it there first"),
        ),
    }
}

/// "name" and "name:latest" are the same image; "docker.io/library/x" is "x".
fn normalize_ref(r: &str) -> String {
    let r = r
        .strip_prefix("docker.io/library/")
        .or_else(|| r.strip_prefix("docker.io/"))
        .unwrap_or(r);
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') {
        r.to_string()
    } else {
        format!("{r}:latest")
    }
}

/// Run the runtime image's own argument parser on the head's argv in a one-off container.
async fn argument_check(app: &App, recipe: &Recipe, knobs: &Knobs, plan: &Plan) -> Check {
    let Some(head) = plan.head() else {
        return Check::new("arguments", None, false, "no node to run the check on");
    };
    let argv = recipes::check_argv(recipe, knobs, &head.role(), plan.cluster().as_ref());
    let name = format!(
        "sc-check-{}-{}",
        recipe.key,
        rand::random::<u32>() & 0x00ff_ffff
    );
    let spec = spec_for(recipe, head, argv, None, &name, "preflight", false);
    let node_id = head.node_id.as_str();
    let node = head.node_name.as_str();
    if let Err(e) = boxes::call(app, node_id, Op::RunContainer(Box::new(spec)), OP_LIMIT).await {
        return Check::new(
            "arguments",
            Some(node),
            false,
            format!("the check container could not start: {}", e.message),
        );
    }
    let outcome = async {
        let started = std::time::Instant::now();
        loop {
            match boxes::call(
                app,
                node_id,
                Op::InspectContainer { name: name.clone() },
                OP_LIMIT,
            )
            .await
            {
                Ok(OpOutput::Container(c)) if c.state == "exited" || c.state == "dead" => {
                    return Ok(c.exit_code.unwrap_or(-1));
                }
                Ok(_) => {}
                Err(e) => return Err(e.message),
            }
            if started.elapsed() > ARG_CHECK_LIMIT {
                return Err(format!(
                    "the parser did not finish within {} s",
                    ARG_CHECK_LIMIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    let logs = match boxes::call(
        app,
        node_id,
        Op::Logs {
            name: name.clone(),
            tail: 20,
            follow: false,
            timestamps: false,
        },
        OP_LIMIT,
    )
    .await
    {
        Ok(OpOutput::Logs(lines)) => lines
            .into_iter()
            .map(|l| l.text.trim_end().to_string())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    crate::swap::remove(app, node_id, &name).await;
    let tail = logs
        .iter()
        .rev()
        .take(6)
        .rev()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    match outcome {
        Ok(0) => Check::new(
            "arguments",
            Some(node),
            true,
            format!("accepted by the parser in {}", recipe.runtime.image),
        ),
        Ok(code) => Check::new(
            "arguments",
            Some(node),
            false,
            format!("the runtime's parser refused the arguments (exit {code}):\n{tail}"),
        ),
        Err(e) => Check::new("arguments", Some(node), false, e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GIB: u64 = 1 << 30;

    fn facts(total: u64, used: u64, freed: u64) -> MemoryFacts {
        MemoryFacts {
            total_bytes: total,
            used_bytes: used,
            freed_by_stop_bytes: freed,
            unified: true,
            host_ram: false,
        }
    }

    #[test]
    fn a_70b_fp8_fits_a_spark_only_when_the_old_model_is_counted_as_freed() {
        // 128 GB unified; 70 GB of weights; 0.85 fraction; a 60 GB model running now.
        let w = 70_000_000_000;
        let busy = facts(128 * GIB, 75 * GIB, 60 * GIB);
        let c = memory_fit("spark-1", w, 0.85, busy, None);
        assert!(c.ok, "{}", c.detail);
        assert!(c.detail.contains("unified memory"), "{}", c.detail);
        // Without the old model's memory freed there is no room.
        let c = memory_fit("spark-1", w, 0.85, facts(128 * GIB, 75 * GIB, 0), None);
        assert!(!c.ok);
        assert!(
            c.detail.contains("lower the GPU memory fraction"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn weights_larger_than_the_budget_fail_with_advice() {
        let c = memory_fit(
            "n",
            120_000_000_000,
            0.5,
            facts(128 * GIB, 10 * GIB, 0),
            None,
        );
        assert!(!c.ok);
        assert!(c.detail.contains("do not fit the budget"), "{}", c.detail);
    }

    #[test]
    fn context_longer_than_the_kv_cache_fails() {
        let c = memory_fit(
            "n",
            8_000_000_000,
            0.2,
            facts(128 * GIB, 4 * GIB, 0),
            Some(30_000_000_000),
        );
        assert!(!c.ok);
        assert!(c.detail.contains("--max-model-len"), "{}", c.detail);
    }

    #[test]
    fn kv_estimate_for_a_llama_8b() {
        let cfg = serde_json::json!({
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "hidden_size": 4096
        });
        // 2 (k,v) x 32 layers x 8 heads x 128 dims x 2 bytes = 131072 bytes per token.
        assert_eq!(kv_bytes_per_token(&cfg, false), Some(131_072));
        assert_eq!(kv_bytes_per_token(&cfg, true), Some(65_536));
        let mla = serde_json::json!({"kv_lora_rank": 512, "num_hidden_layers": 61});
        assert_eq!(kv_bytes_per_token(&mla, false), None);
        assert_eq!(kv_bytes_per_token(&serde_json::json!([1, 2]), false), None);
    }

    #[test]
    fn image_references_normalize() {
        assert_eq!(normalize_ref("vllm-node"), "vllm-node:latest");
        assert_eq!(normalize_ref("docker.io/library/x:1"), "x:1");
        assert_eq!(
            normalize_ref("localhost:5000/a/b"),
            "localhost:5000/a/b:latest"
        );
        assert_eq!(parse_len("32k"), Some(32_000));
        assert_eq!(parse_len("1K"), Some(1024));
    }
}
