//! spark-vllm-docker recipes (`recipes/*.yaml` of eugr/spark-vllm-docker, `recipe_version`
//! format) mapped to [`Recipe`]s.
//!
//! Their `command` is a template for a shell script line (`vllm serve <model> \` ...) with
//! Python `str.format` placeholders filled from `defaults`. We fill the placeholders the same
//! way, split the words with shell-words (no shell is ever run), and keep the flags; the ones
//! the planner owns are dropped, as is `--distributed-executor-backend` (the planner runs
//! multi-node vLLM without Ray, like `launch-cluster.sh --no-ray`; solo needs none).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::args::{flag_name, has_flag, last_flag_value, remove_named, strip_planner_flags};
use super::{DEFAULT_PORT, DEFAULT_RUNTIME_IMAGE, Mode, Recipe, RuntimeSpec, key_for, validate};

/// The fields of a spark-vllm-docker recipe we read; others (mods, build_args, ...) are
/// tolerated.
#[derive(Deserialize)]
struct SvdRecipe {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    solo_only: Option<bool>,
    #[serde(default)]
    cluster_only: Option<bool>,
    #[serde(default)]
    defaults: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    env: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    mods: Option<serde_yaml_ng::Value>,
}

/// Python's `str()` of a YAML scalar, as `str.format` would write it.
fn scalar_text(v: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(true) => Some("True".into()),
        Value::Bool(false) => Some("False".into()),
        Value::Null => Some("None".into()),
        Value::Tagged(t) => scalar_text(&t.value),
        Value::Sequence(_) | Value::Mapping(_) => None,
    }
}

fn mapping_text(
    m: Option<&serde_yaml_ng::Mapping>,
    field: &str,
    origin: &str,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in m.into_iter().flatten() {
        let key =
            scalar_text(k).ok_or_else(|| format!("{origin}: {field}: keys must be plain names"))?;
        let val = scalar_text(v).ok_or_else(|| {
            format!("{origin}: {field}.{key}: expected a plain value (text or number), not a list or mapping")
        })?;
        out.insert(key, val);
    }
    Ok(out)
}

/// Fill `{name}` placeholders like Python's `str.format(**params)`: `{{`/`}}` are literal
/// braces; an unknown name is an error.
fn fill_placeholders(
    template: &str,
    params: &BTreeMap<String, String>,
    origin: &str,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed {
                    return Err(format!(
                        "{origin}: command: a '{{' is never closed (write '{{{{' for a literal brace)"
                    ));
                }
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!(
                        "{origin}: command: placeholder {{{name}}} is not supported: expected {{name}} \
                         with a key of defaults"
                    ));
                }
                match params.get(&name) {
                    Some(v) => out.push_str(v),
                    None => {
                        let known: Vec<&str> = params.keys().map(String::as_str).collect();
                        return Err(format!(
                            "{origin}: command uses {{{name}}} but defaults has no '{name}' \
                             (defaults: {})",
                            known.join(", ")
                        ));
                    }
                }
            }
            '}' => {
                return Err(format!(
                    "{origin}: command: a single '}}' (write '}}}}' for a literal brace)"
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Split a script into its commands' words: lines joined at backslash continuations (trailing
/// spaces after the backslash forgiven), a quoted string may span lines, comments and blank
/// lines dropped.
fn split_commands(script: &str, origin: &str) -> Result<Vec<Vec<String>>, String> {
    let mut commands = Vec::new();
    let mut cur = String::new();
    let lines: Vec<&str> = script.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_end();
        if let Some(head) = t.strip_suffix('\\')
            && !head.ends_with('\\')
        {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        match shell_words::split(&cur) {
            Ok(words) => {
                if !words.is_empty() {
                    commands.push(words);
                }
                cur.clear();
            }
            Err(_) if i + 1 < lines.len() => cur.push('\n'),
            Err(_) => {
                return Err(format!("{origin}: command: a quote is never closed"));
            }
        }
    }
    if !cur.trim().is_empty() {
        let words = shell_words::split(&cur)
            .map_err(|_| format!("{origin}: command: a quote is never closed"))?;
        if !words.is_empty() {
            commands.push(words);
        }
    }
    Ok(commands)
}

const SHELL_OPERATORS: &[&str] = &[";", "&&", "||", "|", "&", ">", ">>", "<", "2>&1", "|&"];

fn check_no_shell(words: &[String], origin: &str) -> Result<(), String> {
    for w in words {
        if SHELL_OPERATORS.contains(&w.as_str()) {
            return Err(format!(
                "{origin}: command uses the shell operator '{w}': only a single `vllm serve ...` \
                 command can be imported (no shell runs)"
            ));
        }
        let expands = w.contains("$(")
            || w.contains('`')
            || w.char_indices().any(|(i, c)| {
                c == '$'
                    && w[i + 1..]
                        .chars()
                        .next()
                        .is_some_and(|n| n.is_ascii_alphabetic() || n == '_' || n == '{')
            });
        if expands {
            return Err(format!(
                "{origin}: command: {w:?} relies on shell expansion, but no shell runs: write the \
                 value itself (or put it in defaults)"
            ));
        }
    }
    Ok(())
}

/// Map a spark-vllm-docker recipe (the `recipe_version` format) to a [`Recipe`]:
///
/// - placeholders (`{port}`, `{host}`, `{tensor_parallel}`, `{gpu_memory_utilization}`,
///   `{max_model_len}`, any other `defaults` key) are filled from `defaults` (`port`, `host` and
///   `tensor_parallel` have fallbacks 8000, 0.0.0.0 and 1, since the planner owns them anyway);
/// - the command is split into words (backslash continuations, quotes), `VAR=value` words in
///   front of it become environment, a leading `exec` is skipped; it must then be
///   `vllm serve [model] ...` (or `python3 -m vllm.entrypoints.openai.api_server ...`);
/// - the model is the positional after `vllm serve`, else `--model`, else the file's `model`;
///   an absolute path becomes `path`, anything else `repo`;
/// - port from the command's `--port`, else `defaults.port`, else 8000; the served name from
///   `--served-model-name` (first value) if present, else the model as written (what vLLM
///   itself would list, so existing applications keep their model id);
/// - mode cluster when `cluster_only`, or when tensor parallelism (`-tp` in the command, else
///   `defaults.tensor_parallel`) is above 1 and not `solo_only`; nodes = that parallelism (at
///   least 2); otherwise solo;
/// - args keep every other flag in order, minus the planner's ([`super::PLANNER_FLAGS`]) and
///   `--distributed-executor-backend`;
/// - key from the file's `name` (else the model) via [`key_for`]; capabilities from the parser
///   flags (reasoning, tools) and `--runner pooling` (embedding); `mods` the runtime needs are
///   named in the description (we cannot apply them).
pub fn from_spark_vllm_docker(text: &str, origin: &str) -> Result<Recipe, String> {
    let svd: SvdRecipe = serde_yaml_ng::from_str(text)
        .map_err(|e| format!("{origin}: not a spark-vllm-docker recipe: {e}"))?;
    let command = svd
        .command
        .as_deref()
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            format!("{origin}: command: missing; expected the `vllm serve ...` command template")
        })?;
    let defaults = mapping_text(svd.defaults.as_ref(), "defaults", origin)?;
    let mut env = mapping_text(svd.env.as_ref(), "env", origin)?;

    let mut params = defaults.clone();
    for (k, v) in [
        ("port", "8000"),
        ("host", "0.0.0.0"),
        ("tensor_parallel", "1"),
    ] {
        params.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    let script = fill_placeholders(command, &params, origin)?;
    let mut commands = split_commands(&script, origin)?;
    let mut words = match commands.len() {
        0 => {
            return Err(format!(
                "{origin}: command: empty; expected `vllm serve <model> ...`"
            ));
        }
        1 => commands.remove(0),
        n => {
            return Err(format!(
                "{origin}: command holds {n} commands: only a single `vllm serve ...` command can \
                 be imported (join lines with a trailing backslash)"
            ));
        }
    };
    check_no_shell(&words, origin)?;

    // Leading `VAR=value` words are environment; a leading `exec` is noise.
    let mut start = 0;
    while let Some(w) = words.get(start) {
        match w.split_once('=') {
            Some((k, v)) if super::is_env_name(k) => {
                env.insert(k.to_string(), v.to_string());
                start += 1;
            }
            _ if w == "exec" => start += 1,
            _ => break,
        }
    }
    words.drain(..start);

    let program: Vec<&str> = words.iter().map(String::as_str).take(3).collect();
    let mut rest: Vec<String> = match program.as_slice() {
        ["vllm", "serve", ..] => words.split_off(2),
        [py, "-m", "vllm.entrypoints.openai.api_server"] if py.starts_with("python") => {
            words.split_off(3)
        }
        _ => {
            return Err(format!(
                "{origin}: command must start with `vllm serve` (found {:?})",
                words.iter().take(2).cloned().collect::<Vec<_>>().join(" ")
            ));
        }
    };
    let positional = match rest.first() {
        Some(first) if !first.starts_with('-') => Some(rest.remove(0)),
        _ => None,
    };
    let model = positional
        .or_else(|| last_flag_value(&rest, &["--model"]))
        .or_else(|| svd.model.clone())
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| {
            format!("{origin}: no model: expected `vllm serve <model>` or a `model:` field")
        })?;

    let port = match last_flag_value(&rest, &["--port"]).or_else(|| defaults.get("port").cloned()) {
        Some(p) => p
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("{origin}: port: {p:?} is not a TCP port (expected 1-65535)"))?,
        None => DEFAULT_PORT,
    };
    // Without --served-model-name vLLM lists the model as given: keep that name, so
    // applications configured against the spark-vllm-docker setup keep working.
    let served_model_name = first_served_name(&rest).or_else(|| {
        (!model.chars().any(char::is_whitespace) && model.len() <= 256).then(|| model.clone())
    });
    let tp_text = last_flag_value(&rest, &["--tensor-parallel-size", "-tp"])
        .or_else(|| defaults.get("tensor_parallel").cloned());
    let tp = match tp_text {
        Some(t) => t
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("{origin}: tensor_parallel: {t:?} is not a whole number"))?,
        None => 1,
    };
    let solo_only = svd.solo_only.unwrap_or(false);
    let cluster_only = svd.cluster_only.unwrap_or(false);
    if solo_only && cluster_only {
        return Err(format!(
            "{origin}: solo_only and cluster_only are both true; expected at most one"
        ));
    }
    let mode = if cluster_only || (tp > 1 && !solo_only) {
        Mode::Cluster
    } else {
        Mode::Solo
    };

    let (args, _) = strip_planner_flags(&rest);
    let args = remove_named(&args, &["--distributed-executor-backend"]);

    let mut capabilities = Vec::new();
    if has_flag(&args, "--reasoning-parser") {
        capabilities.push("reasoning".to_string());
    }
    if has_flag(&args, "--enable-auto-tool-choice") {
        capabilities.push("tools".to_string());
    }
    let runner = last_flag_value(&args, &["--runner"]);
    let task = last_flag_value(&args, &["--task"]);
    if runner.as_deref() == Some("pooling") || task.as_deref() == Some("embed") {
        capabilities.push("embedding".to_string());
    }

    let name = svd
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| model.clone());
    let mut description = svd.description.clone().unwrap_or_default();
    let mods: Vec<String> = match &svd.mods {
        Some(serde_yaml_ng::Value::Sequence(items)) => {
            items.iter().filter_map(scalar_text).collect()
        }
        _ => Vec::new(),
    };
    if !mods.is_empty() {
        if !description.is_empty() {
            description.push(' ');
        }
        description.push_str(&format!(
            "(spark-vllm-docker applies mods to the container that Spark Control does not: {}; \
             use an image that already has them)",
            mods.join(", ")
        ));
    }
    let (repo, path) = if model.starts_with('/') {
        (None, Some(model.clone()))
    } else {
        (Some(model.clone()), None)
    };
    let recipe = Recipe {
        key: key_for(&name),
        name,
        repo,
        path,
        revision: None,
        size_gb: None,
        mode,
        nodes: (mode == Mode::Cluster).then_some(tp.max(2)),
        runtime: RuntimeSpec {
            image: svd
                .container
                .clone()
                .filter(|c| !c.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_RUNTIME_IMAGE.to_string()),
            serve_command: None,
            check_command: None,
            shm_gb: None,
        },
        served_model_name,
        port: (port != DEFAULT_PORT).then_some(port),
        args,
        env,
        capabilities,
        description,
        expected_ready_seconds: super::default_ready_seconds(),
        timeout_seconds: None,
        architecture: None,
        license: None,
        on_demand: false,
        idle_unload_seconds: None,
    };
    validate(&recipe).map_err(|e| format!("{origin}: {e}"))?;
    Ok(recipe)
}

/// The first `--served-model-name` value, if any.
fn first_served_name(args: &[String]) -> Option<String> {
    for (i, a) in args.iter().enumerate() {
        if let Some((name, inline)) = flag_name(a)
            && name == "--served-model-name"
        {
            return match inline {
                Some(v) => Some(v.to_string()),
                None => args.get(i + 1).filter(|v| !v.starts_with('-')).cloned(),
            };
        }
    }
    None
}
