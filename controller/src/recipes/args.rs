//! vLLM arguments: knobs that replace flags, the flags the planner owns, and the argv of a
//! launch or of a preflight argument check.
//!
//! Flags are matched the way vLLM's parser matches them: `--flag value` and `--flag=value`
//! are the same flag, and `--max_model_len` is `--max-model-len` (vLLM accepts underscores).

use super::{
    ClusterPlan, DEFAULT_GPU_MEMORY_UTILIZATION, DEFAULT_SERVE_COMMAND, Knobs, PLANNER_FLAGS,
    Recipe, Role, model_ref, port, served_name,
};

/// Largest `--max-model-len` / `--max-num-batched-tokens` a knob may set.
const MAX_TOKENS_KNOB: u32 = 10_000_000;

/// How many values follow a flag written without `=`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    None,
    One,
    /// `nargs="+"`: every following token up to the next flag.
    Many,
}

fn arity(name: &str) -> Arity {
    match name {
        "--headless" | "--enable-prefix-caching" | "--no-enable-prefix-caching" => Arity::None,
        "--served-model-name" => Arity::Many,
        _ => Arity::One,
    }
}

/// Whether a token is an option rather than a value ("-1" and "-0.5" are values).
fn is_flag(tok: &str) -> bool {
    let mut c = tok.chars();
    match (c.next(), c.next()) {
        (Some('-'), Some('-')) => tok.len() > 2,
        (Some('-'), Some(x)) => x.is_ascii_alphabetic(),
        _ => false,
    }
}

/// The normalised name of an option token and its inline value (`--a_b=1` -> `--a-b`, `1`).
pub(crate) fn flag_name(tok: &str) -> Option<(String, Option<&str>)> {
    if !is_flag(tok) {
        return None;
    }
    let (name, inline) = match tok.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (tok, None),
    };
    let name = if name.starts_with("--") {
        name.replace('_', "-")
    } else {
        name.to_string()
    };
    Some((name, inline))
}

/// Remove every occurrence of the flags `names` (with their values) from `args`. With
/// `only_value`, only occurrences whose value is exactly that are removed. Returns the
/// remaining args and the values of the removed occurrences, in order.
fn remove_flags(
    args: &[String],
    names: &[&str],
    only_value: Option<&str>,
) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::with_capacity(args.len());
    let mut values = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let tok = &args[i];
        let Some((name, inline)) = flag_name(tok) else {
            out.push(tok.clone());
            i += 1;
            continue;
        };
        if !names.contains(&name.as_str()) {
            out.push(tok.clone());
            i += 1;
            continue;
        }
        let (vals, used): (Vec<String>, usize) = match (inline, arity(&name)) {
            (Some(v), _) => (vec![v.to_string()], 1),
            (None, Arity::None) => (Vec::new(), 1),
            (None, Arity::One) => match args.get(i + 1) {
                Some(v) if !is_flag(v) => (vec![v.clone()], 2),
                _ => (Vec::new(), 1),
            },
            (None, Arity::Many) => {
                let vals: Vec<String> = args[i + 1..]
                    .iter()
                    .take_while(|v| !is_flag(v))
                    .cloned()
                    .collect();
                let n = vals.len();
                (vals, 1 + n)
            }
        };
        let matches = match only_value {
            None => true,
            Some(want) => vals.len() == 1 && vals[0] == want,
        };
        if matches {
            values.extend(vals);
        } else {
            out.extend(args[i..i + used].iter().cloned());
        }
        i += used;
    }
    (out, values)
}

/// The value of the last occurrence of a flag in `args`, if any.
pub(crate) fn last_flag_value(args: &[String], names: &[&str]) -> Option<String> {
    remove_flags(args, names, None).1.pop()
}

/// `args` without every occurrence of the flags `names` and their values.
pub(crate) fn remove_named(args: &[String], names: &[&str]) -> Vec<String> {
    remove_flags(args, names, None).0
}

/// Whether `args` holds the flag (in any form).
pub(crate) fn has_flag(args: &[String], name: &str) -> bool {
    args.iter()
        .any(|a| flag_name(a).is_some_and(|(n, _)| n == name))
}

/// `args` without any of the flags the planner owns ([`PLANNER_FLAGS`]), and the recipe's own
/// tensor-parallel value (last occurrence) if it had one.
pub(crate) fn strip_planner_flags(args: &[String]) -> (Vec<String>, Option<String>) {
    let tp = last_flag_value(args, &["--tensor-parallel-size", "-tp"]);
    let (rest, _) = remove_flags(args, PLANNER_FLAGS, None);
    (rest, tp)
}

fn fmt_f64(v: f64) -> String {
    format!("{v}")
}

/// Check knob values: `gpu_memory_utilization` in (0, 1]; `max_model_len` and
/// `max_num_batched_tokens` from 1 to 10,000,000.
pub fn validate_knobs(k: &Knobs) -> Result<(), String> {
    if let Some(g) = k.gpu_memory_utilization
        && !(g.is_finite() && g > 0.0 && g <= 1.0)
    {
        return Err(format!(
            "gpu_memory_utilization: {g} is not valid: expected a fraction above 0 and at most 1 \
             (e.g. 0.85)"
        ));
    }
    for (field, v) in [
        ("max_model_len", k.max_model_len),
        ("max_num_batched_tokens", k.max_num_batched_tokens),
    ] {
        if let Some(v) = v
            && !(1..=MAX_TOKENS_KNOB).contains(&v)
        {
            return Err(format!(
                "{field}: {v} is not valid: expected a number of tokens from 1 to {MAX_TOKENS_KNOB}"
            ));
        }
    }
    Ok(())
}

/// Apply knobs to vLLM arguments. Each knob that is set *replaces* its flag: every occurrence
/// (`--flag v` or `--flag=v`) is removed and the knob's value appended once. Unset knobs leave
/// the arguments alone.
///
/// - `fastsafetensors`: true -> `--load-format fastsafetensors` (replacing any load format);
///   false -> `--load-format fastsafetensors` removed, other load formats kept.
/// - `prefix_caching`: true -> `--enable-prefix-caching`, false -> `--no-enable-prefix-caching`
///   (either form removed first).
/// - `fp8_kv_cache`: true -> `--kv-cache-dtype fp8`; false -> any `--kv-cache-dtype` removed.
pub fn apply_knobs(args: &[String], k: &Knobs) -> Vec<String> {
    let mut out = args.to_vec();
    let replace = |out: &mut Vec<String>, flag: &str, value: Option<String>| {
        *out = remove_flags(out, &[flag], None).0;
        out.push(flag.to_string());
        if let Some(v) = value {
            out.push(v);
        }
    };
    if let Some(v) = k.max_model_len {
        replace(&mut out, "--max-model-len", Some(v.to_string()));
    }
    if let Some(v) = k.gpu_memory_utilization {
        replace(&mut out, "--gpu-memory-utilization", Some(fmt_f64(v)));
    }
    if let Some(v) = k.max_num_batched_tokens {
        replace(&mut out, "--max-num-batched-tokens", Some(v.to_string()));
    }
    match k.fastsafetensors {
        Some(true) => replace(&mut out, "--load-format", Some("fastsafetensors".into())),
        Some(false) => out = remove_flags(&out, &["--load-format"], Some("fastsafetensors")).0,
        None => {}
    }
    if let Some(on) = k.prefix_caching {
        out = remove_flags(
            &out,
            &["--enable-prefix-caching", "--no-enable-prefix-caching"],
            None,
        )
        .0;
        out.push(
            if on {
                "--enable-prefix-caching"
            } else {
                "--no-enable-prefix-caching"
            }
            .to_string(),
        );
    }
    match k.fp8_kv_cache {
        Some(true) => replace(&mut out, "--kv-cache-dtype", Some("fp8".into())),
        Some(false) => out = remove_flags(&out, &["--kv-cache-dtype"], None).0,
        None => {}
    }
    out
}

/// The GPU memory fraction a launch will use: the knob, else the recipe's
/// `--gpu-memory-utilization`, else vLLM's default 0.9.
pub fn effective_gpu_memory_utilization(r: &Recipe, k: &Knobs) -> f64 {
    k.gpu_memory_utilization
        .or_else(|| {
            last_flag_value(&r.args, &["--gpu-memory-utilization"])
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|g| g.is_finite() && *g > 0.0 && *g <= 1.0)
        })
        .unwrap_or(DEFAULT_GPU_MEMORY_UTILIZATION)
}

/// The flags after the model: the recipe's args without planner flags, knobs applied, then the
/// planner's own flags for this role.
fn serve_flags(r: &Recipe, k: &Knobs, role: &Role, cluster: Option<&ClusterPlan>) -> Vec<String> {
    let (rest, recipe_tp) = strip_planner_flags(&r.args);
    let mut v = apply_knobs(&rest, k);
    v.extend([
        "--host".to_string(),
        "0.0.0.0".to_string(),
        "--port".to_string(),
        port(r).to_string(),
        "--served-model-name".to_string(),
        served_name(r).to_string(),
    ]);
    let cluster_rank = match (role, cluster) {
        (Role::Head, Some(plan)) => Some((plan, 0)),
        (Role::Worker { rank }, Some(plan)) => Some((plan, *rank)),
        _ => None,
    };
    match cluster_rank {
        Some((plan, rank)) => {
            let n = plan.nodes.to_string();
            v.extend([
                "--tensor-parallel-size".to_string(),
                n.clone(),
                "--nnodes".to_string(),
                n,
                "--node-rank".to_string(),
                rank.to_string(),
                "--master-addr".to_string(),
                plan.master_addr.clone(),
                "--master-port".to_string(),
                plan.master_port.to_string(),
            ]);
            if matches!(role, Role::Worker { .. }) {
                v.push("--headless".to_string());
            }
        }
        None => {
            if let Some(tp) = recipe_tp {
                v.extend(["--tensor-parallel-size".to_string(), tp]);
            }
        }
    }
    v
}

/// The exact argv of one container of a swap:
/// `serve_command + [model] + knobs(args - planner flags) + --host 0.0.0.0 --port P
/// --served-model-name S`, then for a cluster head or worker (with a [`ClusterPlan`])
/// `--tensor-parallel-size N --nnodes N --node-rank R --master-addr A --master-port P`
/// (+ `--headless` on workers). Tensor parallelism across nodes is one GPU per node (DGX Spark),
/// so the size is the node count.
///
/// Solo keeps the recipe's own tensor-parallel value (`-tp`/`--tensor-parallel-size`, last
/// occurrence, written as `--tensor-parallel-size N` after the served name): that is how a
/// recipe uses several GPUs of one box. A cluster role drops it for the planner's. A head or
/// worker without a plan gets the solo flags (no multi-node flags can be made without one).
pub fn launch_argv(
    r: &Recipe,
    k: &Knobs,
    role: &Role,
    cluster: Option<&ClusterPlan>,
) -> Vec<String> {
    let mut argv: Vec<String> = match &r.runtime.serve_command {
        Some(cmd) if !cmd.is_empty() => cmd.clone(),
        _ => DEFAULT_SERVE_COMMAND
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    argv.push(model_ref(r).to_string());
    argv.extend(serve_flags(r, k, role, cluster));
    argv
}

/// The argv of a one-off container that only parses and validates the serve arguments with
/// the runtime's own parser: `check_command (default [`default_check_command`]) + --model M +`
/// the same flags [`launch_argv`] passes after the model.
pub fn check_argv(
    r: &Recipe,
    k: &Knobs,
    role: &Role,
    cluster: Option<&ClusterPlan>,
) -> Vec<String> {
    let mut argv = match &r.runtime.check_command {
        Some(cmd) if !cmd.is_empty() => cmd.clone(),
        _ => default_check_command(),
    };
    argv.push("--model".to_string());
    argv.push(model_ref(r).to_string());
    argv.extend(serve_flags(r, k, role, cluster));
    argv
}

/// Python run by [`default_check_command`]: builds `vllm serve`'s own argument parser, parses
/// the arguments, runs vLLM's pre-load checks, prints `arguments ok`. A parse error exits 2
/// with argparse's message; a missing vLLM exits 1 saying so. Works across vLLM versions (the
/// parser class moved from `vllm.utils` to `vllm.utils.argparse_utils`).
const CHECK_SNIPPET: &str = r#"import sys
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    try:
        from vllm.utils import FlexibleArgumentParser
    except ImportError as e:
        sys.exit("cannot import vLLM's argument parser: %s" % e)
try:
    from vllm.entrypoints.openai.cli_args import make_arg_parser
except ImportError as e:
    sys.exit("cannot import vLLM's serve arguments: %s" % e)
try:
    from vllm.entrypoints.openai.cli_args import validate_parsed_serve_args
except ImportError:
    validate_parsed_serve_args = None
args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(sys.argv[1:])
if validate_parsed_serve_args is not None:
    try:
        validate_parsed_serve_args(args)
    except (TypeError, ValueError) as e:
        print("vllm serve: error: %s" % e, file=sys.stderr)
        sys.exit(2)
print("arguments ok")
"#;

/// `["python3", "-c", SNIPPET]`: validates `vllm serve` arguments with vLLM's own parser
/// without loading a model (see the snippet's doc above).
pub fn default_check_command() -> Vec<String> {
    vec![
        "python3".to_string(),
        "-c".to_string(),
        CHECK_SNIPPET.to_string(),
    ]
}
