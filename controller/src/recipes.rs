//! Launch recipes: what to run for a model, and how.
//!
//! A [`Recipe`] says which weights (a Hugging Face repo or a local directory), which runtime
//! image, solo or cluster, the vLLM arguments, and what to expect (architecture, ready time).
//! Sources, later ones overriding earlier ones by key: the bundled catalog
//! (`controller/recipes/*.yaml`, compiled in), operator files in `<data-dir>/recipes/*.yaml`
//! (either this format or spark-vllm-docker's `recipe_version` format), and recipes added or
//! confirmed through the API (stored in the database).
//!
//! [`Knobs`] are per-model overrides that *replace* the matching vLLM flags, never duplicate
//! them. [`launch_argv`] builds the exact argv for one container of a swap (solo, cluster head
//! or cluster worker); it owns the flags the planner decides (host, port, served name,
//! parallelism, multi-node addresses), so a recipe cannot contradict them.
//!
//! Everything here is pure (no network, no Docker) apart from reading recipe directories.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default vLLM port.
pub const DEFAULT_PORT: u16 = 8000;
/// Default master port for multi-node vLLM without Ray (as spark-vllm-docker uses).
pub const DEFAULT_MASTER_PORT: u16 = 29501;
/// The serve command of a vLLM image when a recipe names none.
pub const DEFAULT_SERVE_COMMAND: &[&str] = &["vllm", "serve"];

/// Solo (one node) or cluster (head + workers, tensor parallel across nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Solo,
    Cluster,
}

/// The container image a recipe runs and how to invoke it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Image reference; may be pinned by digest (`repo@sha256:...`).
    pub image: String,
    /// argv prefix that serves a model: `<serve_command> <model> <args...>`.
    /// Default [`DEFAULT_SERVE_COMMAND`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve_command: Option<Vec<String>>,
    /// argv prefix that only parses and validates serve arguments (preflight), given
    /// `--model <model> <args...>`. Default: vLLM's own parser through `python3 -c`
    /// ([`default_check_command`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_command: Option<Vec<String>>,
    /// Shared memory size for the container, in GiB (vLLM wants a large /dev/shm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_gb: Option<f64>,
}

/// A launch recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Stable identifier: `[a-z0-9][a-z0-9._-]{0,63}`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Hugging Face repository id ("org/name"). Exactly one of `repo` and `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Absolute path of a local model directory on the node(s) (fine-tuned, converted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Revision to download when the weights are absent (default "main").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Declared size of the weights in GB (10^9 bytes); the disk size wins when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gb: Option<f64>,
    #[serde(default)]
    pub mode: Mode,
    /// Number of nodes in cluster mode (default 2); ignored for solo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    pub runtime: RuntimeSpec,
    /// Name applications use (`--served-model-name`); default: the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model_name: Option<String>,
    /// API port of the model server (default [`DEFAULT_PORT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// vLLM arguments other than the ones the planner owns (see [`PLANNER_FLAGS`]).
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment for the model server.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// e.g. "vision", "reasoning", "tools", "embedding".
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub description: String,
    /// How long a load normally takes; the swap shows elapsed against it.
    #[serde(default = "default_ready_seconds")]
    pub expected_ready_seconds: u64,
    /// A swap that is not ready after this long fails (default: 3 x expected, at least 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Expected `architectures[0]` of config.json (preflight refuses a mismatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// License note shown before download/launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// A request through the gateway naming this model may load it on demand.
    #[serde(default)]
    pub on_demand: bool,
    /// Unload after this many idle seconds (on-demand models only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_unload_seconds: Option<u64>,
}

fn default_ready_seconds() -> u64 {
    300
}

/// Flags [`launch_argv`] decides; a recipe's or knob's copy of them is dropped.
pub const PLANNER_FLAGS: &[&str] = &[
    "--host",
    "--port",
    "--served-model-name",
    "--model",
    "--tensor-parallel-size",
    "-tp",
    "--nnodes",
    "--node-rank",
    "--master-addr",
    "--master-port",
    "--headless",
];

/// Per-model overrides. Each one set replaces the matching flag in the recipe's args.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    /// `--max-model-len`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
    /// `--gpu-memory-utilization`, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_utilization: Option<f64>,
    /// `--load-format fastsafetensors` when true; the flag removed when false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastsafetensors: Option<bool>,
    /// `--enable-prefix-caching` / `--no-enable-prefix-caching`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_caching: Option<bool>,
    /// `--kv-cache-dtype fp8` when true; the flag removed when false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp8_kv_cache: Option<bool>,
    /// `--max-num-batched-tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_num_batched_tokens: Option<u32>,
}

/// Which container of a swap an argv is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The only container (solo mode).
    Solo,
    /// Rank 0 of a cluster: serves the API.
    Head,
    /// Rank >= 1 of a cluster: headless.
    Worker { rank: u32 },
}

/// Where the cluster meets: the head's address and master port, and the node count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    pub nodes: u32,
    pub master_addr: String,
    pub master_port: u16,
}

/// A recipe inferred from a model's config.json, with the reasons for each decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inferred {
    pub recipe: Recipe,
    /// One line per decision ("MoE architecture Qwen3MoeForCausalLM: ...").
    pub notes: Vec<String>,
}
