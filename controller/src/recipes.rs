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
//!
//! Layout: this file holds validation, YAML parsing, directories, the bundled catalog and the
//! small accessors; `args` the knobs, planner-owned flags and launch/check argv; `svd` the
//! spark-vllm-docker import; `infer` inference from config.json, [`key_for`] and the
//! architecture check.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod args;
mod infer;
mod svd;
#[cfg(test)]
mod tests;

pub use args::{
    apply_knobs, check_argv, default_check_command, effective_gpu_memory_utilization, launch_argv,
    validate_knobs,
};
pub use infer::{check_architecture, infer, key_for};
pub use svd::from_spark_vllm_docker;

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

/// The default vLLM `--gpu-memory-utilization` when neither a knob nor the recipe sets one.
pub const DEFAULT_GPU_MEMORY_UTILIZATION: f64 = 0.9;
/// The default runtime image: the tag spark-vllm-docker's `build-and-copy.sh` builds.
pub const DEFAULT_RUNTIME_IMAGE: &str = "vllm-node";
/// Largest recipe file read from a directory (bytes).
const MAX_RECIPE_FILE_BYTES: u64 = 1024 * 1024;
/// Most nodes a cluster recipe may ask for.
const MAX_CLUSTER_NODES: u32 = 64;

/// The bundled catalog, compiled in: (file name, text).
const BUNDLED: &[(&str, &str)] = &[
    (
        "qwen3-30b-a3b-instruct-2507-fp8.yaml",
        include_str!("../recipes/qwen3-30b-a3b-instruct-2507-fp8.yaml"),
    ),
    (
        "gpt-oss-120b.yaml",
        include_str!("../recipes/gpt-oss-120b.yaml"),
    ),
    (
        "qwen2.5-vl-7b-instruct.yaml",
        include_str!("../recipes/qwen2.5-vl-7b-instruct.yaml"),
    ),
    (
        "llama-3.3-70b-instruct-fp8.yaml",
        include_str!("../recipes/llama-3.3-70b-instruct-fp8.yaml"),
    ),
    (
        "nemotron-nano-9b-v2.yaml",
        include_str!("../recipes/nemotron-nano-9b-v2.yaml"),
    ),
    (
        "qwen3-next-80b-a3b-instruct-fp8.yaml",
        include_str!("../recipes/qwen3-next-80b-a3b-instruct-fp8.yaml"),
    ),
    (
        "qwen3-235b-a22b-instruct-2507-awq.yaml",
        include_str!("../recipes/qwen3-235b-a22b-instruct-2507-awq.yaml"),
    ),
    ("bge-m3.yaml", include_str!("../recipes/bge-m3.yaml")),
];

/// Whether `key` matches `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn is_valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// Whether `name` is a usable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_argv_field(field: &str, argv: &[String]) -> Result<(), String> {
    if argv.is_empty() || argv[0].trim().is_empty() {
        return Err(format!(
            "{field}: expected a non-empty list whose first item is the program (e.g. [\"vllm\", \"serve\"])"
        ));
    }
    if let Some(bad) = argv.iter().find(|a| a.contains('\0')) {
        return Err(format!("{field}: item {bad:?} contains a NUL character"));
    }
    Ok(())
}

/// Check a recipe. Every message names the field and says what is expected.
pub fn validate(r: &Recipe) -> Result<(), String> {
    validate_fields(r).map_err(|e| {
        if is_valid_key(&r.key) {
            format!("recipe '{}': {e}", r.key)
        } else {
            e
        }
    })
}

fn validate_fields(r: &Recipe) -> Result<(), String> {
    if !is_valid_key(&r.key) {
        return Err(format!(
            "key: {:?} is not valid: expected 1-64 characters of lowercase letters, digits, '.', '_' \
             or '-', starting with a letter or digit (e.g. \"qwen3-30b-a3b\")",
            r.key
        ));
    }
    match (&r.repo, &r.path) {
        (Some(_), Some(_)) => {
            return Err(
                "repo/path: give exactly one of repo (a Hugging Face id) and path (a local directory), not both"
                    .into(),
            );
        }
        (None, None) => {
            return Err(
                "repo/path: give exactly one of repo (a Hugging Face id such as \"Qwen/Qwen3-8B\") \
                 and path (an absolute directory on the node)"
                    .into(),
            );
        }
        (Some(repo), None) => {
            spark_common::models::validate_repo_id(repo).map_err(|e| format!("repo: {e}"))?;
        }
        (None, Some(path)) => validate_model_path(path)?,
    }
    if let Some(rev) = &r.revision {
        spark_common::models::validate_revision(rev).map_err(|e| format!("revision: {e}"))?;
    }
    spark_common::ops::validate_image_ref(&r.runtime.image)
        .map_err(|e| format!("runtime.image: {e}"))?;
    if let Some(cmd) = &r.runtime.serve_command {
        check_argv_field("runtime.serve_command", cmd)?;
    }
    if let Some(cmd) = &r.runtime.check_command {
        check_argv_field("runtime.check_command", cmd)?;
    }
    if let Some(shm) = r.runtime.shm_gb
        && !(shm.is_finite() && shm > 0.0 && shm <= 1024.0)
    {
        return Err(format!(
            "runtime.shm_gb: {shm} is not valid: expected a number of GiB above 0 and at most 1024"
        ));
    }
    if r.port == Some(0) {
        return Err("port: expected a TCP port from 1 to 65535, not 0".into());
    }
    for (name, value) in &r.env {
        if !is_env_name(name) {
            return Err(format!(
                "env: {name:?} is not an environment variable name: expected letters, digits and '_', \
                 not starting with a digit"
            ));
        }
        if value.contains('\0') {
            return Err(format!("env: the value of {name} contains a NUL character"));
        }
    }
    if let Some(size) = r.size_gb
        && !(size.is_finite() && size > 0.0)
    {
        return Err(format!(
            "size_gb: {size} is not valid: expected the size of the weights in GB, above 0"
        ));
    }
    if r.mode == Mode::Cluster {
        let n = r.nodes.unwrap_or(2);
        if !(2..=MAX_CLUSTER_NODES).contains(&n) {
            return Err(format!(
                "nodes: {n} is not valid for cluster mode: expected 2 to {MAX_CLUSTER_NODES} nodes \
                 (use mode: solo for one node)"
            ));
        }
    }
    if r.expected_ready_seconds == 0 {
        return Err("expected_ready_seconds: expected a number of seconds above 0".into());
    }
    if r.timeout_seconds == Some(0) {
        return Err(
            "timeout_seconds: expected a number of seconds above 0 (or leave it out)".into(),
        );
    }
    if r.idle_unload_seconds == Some(0) {
        return Err(
            "idle_unload_seconds: expected a number of seconds above 0 (or leave it out)".into(),
        );
    }
    for a in &r.args {
        if a.contains('\0') {
            return Err(format!("args: {a:?} contains a NUL character"));
        }
        if a.contains('\n') || a.contains('\r') {
            return Err(format!(
                "args: {a:?} contains a line break: each item must be one argument on one line"
            ));
        }
    }
    if let Some(name) = &r.served_model_name
        && (name.is_empty()
            || name.len() > 256
            || name.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(format!(
            "served_model_name: {name:?} is not valid: expected 1-256 characters without spaces \
             (the id applications send as \"model\")"
        ));
    }
    Ok(())
}

fn validate_model_path(path: &str) -> Result<(), String> {
    if path.contains('\0') {
        return Err("path: contains a NUL character".into());
    }
    if !path.starts_with('/') {
        return Err(format!(
            "path: {path:?} is not absolute: expected a directory such as /models/my-finetune"
        ));
    }
    if Path::new(path)
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("path: {path:?} must not contain '..' components"));
    }
    if path.len() > 4096 {
        return Err("path: longer than 4096 characters".into());
    }
    Ok(())
}

/// Parse a YAML file: one recipe (a mapping) or a list of recipes in this format, or a
/// spark-vllm-docker recipe (recognised by its top-level `recipe_version` key). Errors name
/// `origin` and, for YAML problems, the line and column. Every recipe returned passes
/// [`validate`].
pub fn parse_yaml(text: &str, origin: &str) -> Result<Vec<Recipe>, String> {
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("{origin}: not valid YAML: {e}"))?;
    let recipes = match &value {
        serde_yaml_ng::Value::Mapping(m) => {
            if m.contains_key("recipe_version") {
                return from_spark_vllm_docker(text, origin).map(|r| vec![r]);
            }
            vec![
                serde_yaml_ng::from_str::<Recipe>(text)
                    .map_err(|e| format!("{origin}: not a recipe: {e}"))?,
            ]
        }
        serde_yaml_ng::Value::Sequence(_) => serde_yaml_ng::from_str::<Vec<Recipe>>(text)
            .map_err(|e| format!("{origin}: not a list of recipes: {e}"))?,
        serde_yaml_ng::Value::Null => {
            return Err(format!(
                "{origin}: the file is empty: expected a recipe (a mapping) or a list of recipes"
            ));
        }
        _ => {
            return Err(format!(
                "{origin}: expected a recipe (a mapping with key, name, repo or path, runtime, ...) \
                 or a list of recipes"
            ));
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for r in &recipes {
        validate(r).map_err(|e| format!("{origin}: {e}"))?;
        if !seen.insert(r.key.as_str()) {
            return Err(format!(
                "{origin}: the key '{}' is used by more than one recipe in this file",
                r.key
            ));
        }
    }
    Ok(recipes)
}

/// Read every `*.yaml` / `*.yml` file of a directory (not recursive), in file-name order. A
/// file that does not load becomes a warning (file and reason) and never stops the others; a
/// key defined again by a later file replaces the earlier one (with a warning). A missing
/// directory means no recipes and no warning.
pub fn load_dir(dir: &Path) -> (Vec<Recipe>, Vec<String>) {
    let mut warnings = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), warnings),
        Err(e) => {
            warnings.push(format!(
                "recipe directory {} cannot be read: {e}",
                dir.display()
            ));
            return (Vec::new(), warnings);
        }
    };
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| x.eq_ignore_ascii_case("yaml") || x.eq_ignore_ascii_case("yml"))
        })
        .collect();
    files.sort();
    let mut out: Vec<(Recipe, String)> = Vec::new();
    for path in files {
        let origin = path.display().to_string();
        match std::fs::metadata(&path) {
            Ok(m) if !m.is_file() => continue,
            Ok(m) if m.len() > MAX_RECIPE_FILE_BYTES => {
                warnings.push(format!(
                    "{origin}: larger than {} KiB; not a recipe file",
                    MAX_RECIPE_FILE_BYTES / 1024
                ));
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                warnings.push(format!("{origin}: cannot be read: {e}"));
                continue;
            }
        }
        let text = match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    warnings.push(format!("{origin}: not UTF-8 text"));
                    continue;
                }
            },
            Err(e) => {
                warnings.push(format!("{origin}: cannot be read: {e}"));
                continue;
            }
        };
        match parse_yaml(&text, &origin) {
            Ok(recipes) => {
                for r in recipes {
                    if let Some(i) = out.iter().position(|(o, _)| o.key == r.key) {
                        let (_, earlier) = out.remove(i);
                        warnings.push(format!(
                            "{origin}: recipe '{}' replaces the one in {earlier}",
                            r.key
                        ));
                    }
                    out.push((r, origin.clone()));
                }
            }
            Err(e) => warnings.push(e),
        }
    }
    (out.into_iter().map(|(r, _)| r).collect(), warnings)
}

/// The bundled catalog (`controller/recipes/*.yaml`, compiled in). A unit test guarantees
/// every file parses and validates and that keys are unique.
pub fn bundled() -> Vec<Recipe> {
    let mut out: Vec<Recipe> = Vec::new();
    for (file, text) in BUNDLED {
        match parse_yaml(text, &format!("bundled recipe {file}")) {
            Ok(recipes) => {
                for r in recipes {
                    out.retain(|o| o.key != r.key);
                    out.push(r);
                }
            }
            Err(e) => tracing::error!(error = %e, "bundled recipe does not load"),
        }
    }
    out
}

/// The name applications use: `served_model_name`, else the key.
pub fn served_name(r: &Recipe) -> &str {
    r.served_model_name.as_deref().unwrap_or(&r.key)
}

/// The model server's API port.
pub fn port(r: &Recipe) -> u16 {
    r.port.unwrap_or(DEFAULT_PORT)
}

/// How long a swap waits for readiness: `timeout_seconds`, else 3 x expected, at least 600 s.
pub fn timeout(r: &Recipe) -> Duration {
    Duration::from_secs(
        r.timeout_seconds
            .unwrap_or_else(|| r.expected_ready_seconds.saturating_mul(3).max(600)),
    )
}

/// Nodes a launch uses: 1 for solo, `nodes` (default 2) for cluster.
pub fn cluster_nodes(r: &Recipe) -> u32 {
    match r.mode {
        Mode::Solo => 1,
        Mode::Cluster => r.nodes.unwrap_or(2),
    }
}

/// What vLLM is told to load: the repo id, else the path.
pub fn model_ref(r: &Recipe) -> &str {
    r.repo.as_deref().or(r.path.as_deref()).unwrap_or_default()
}
