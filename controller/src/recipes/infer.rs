//! Recipes inferred from a model's config.json, keys derived from model names, and the
//! preflight architecture check.

use serde_json::{Map, Value};

use super::{
    DEFAULT_GPU_MEMORY_UTILIZATION, Inferred, Mode, Recipe, RuntimeSpec, default_ready_seconds,
    validate,
};

/// `--max-num-batched-tokens` multimodal and Mamba-hybrid models need to start at all.
const RAISED_BATCHED_TOKENS: &str = "16384";
/// Context cap an inferred recipe starts with (the knob raises it).
const INFERRED_MAX_MODEL_LEN: u64 = 32768;
/// Weights above this share of one node's memory go to a cluster when there is one.
const SOLO_MEMORY_SHARE: f64 = 0.7;

/// A valid key (`[a-z0-9][a-z0-9._-]{0,63}`) from a repo id, a path or a display name:
/// lowercase, `/` and every other character outside the pattern become `-` (runs collapsed),
/// leading and trailing separators trimmed, at most 64 characters. "model" when nothing is
/// left.
pub fn key_for(model_ref: &str) -> String {
    let mut out = String::with_capacity(model_ref.len());
    for c in model_ref.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c) {
            c
        } else {
            '-'
        };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    let trimmed: &str = out.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut key: String = trimmed.chars().take(64).collect();
    while key.ends_with(['-', '.', '_']) {
        key.pop();
    }
    if key.is_empty() {
        "model".to_string()
    } else {
        key
    }
}

/// What a checkpoint is for, judged from its architecture name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Vision,
    Speech,
    TextToSpeech,
    Embedding,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Vision => "vision-language",
            Kind::Speech => "speech",
            Kind::TextToSpeech => "text-to-speech",
            Kind::Embedding => "embedding",
        }
    }
}

const TTS_MARKERS: &[&str] = &[
    "texttospeech",
    "tts",
    "vits",
    "bark",
    "kokoro",
    "magpie",
    "vocoder",
    "hifigan",
    "fastpitch",
    "tacotron",
];
const SPEECH_MARKERS: &[&str] = &[
    "forctc",
    "whisper",
    "parakeet",
    "speech",
    "wav2vec",
    "hubert",
    "wavlm",
    "conformer",
    "canary",
    "sortformer",
    "titanet",
    "audio",
];
const VISION_MARKERS: &[&str] = &[
    "vlfor",
    "vlchat",
    "vlmodel",
    "internvl",
    "vlv2",
    "vision",
    "llava",
    "idefics",
    "pixtral",
    "paligemma",
    "minicpmv",
    "phi3v",
    "phi4mm",
    "molmo",
    "glm4v",
    "mllama",
    "smolvlm",
    "gemma3forconditionalgeneration",
    "mistral3forconditionalgeneration",
    "llama4forconditionalgeneration",
    "ovis",
    "nvlm",
];
const EMBEDDING_MARKERS: &[&str] = &[
    "forsequenceclassification",
    "formaskedlm",
    "fortextencoding",
    "embedding",
];

/// Classify an architecture (or model_type) name.
pub(crate) fn kind_of(arch: &str) -> Kind {
    let a = arch.to_ascii_lowercase();
    let has = |markers: &[&str]| markers.iter().any(|m| a.contains(m));
    if has(TTS_MARKERS) {
        Kind::TextToSpeech
    } else if has(SPEECH_MARKERS) {
        Kind::Speech
    } else if has(EMBEDDING_MARKERS) || (a.ends_with("model") && !a.contains("for")) {
        Kind::Embedding
    } else if has(VISION_MARKERS) {
        Kind::Vision
    } else {
        Kind::Text
    }
}

/// Preflight: does config.json's `architectures` hold the one the recipe expects?
/// `Ok(detail)` when the recipe names none ("not checked") or it is listed; `Err` naming both
/// otherwise, and saying so when the weights look like a different kind of model (speech,
/// text-to-speech, embedding, vision-language) than the recipe's.
pub fn check_architecture(r: &Recipe, architectures: &[String]) -> Result<String, String> {
    let Some(expected) = r.architecture.as_deref().filter(|a| !a.is_empty()) else {
        return Ok("architecture not checked: the recipe names no expected architecture".into());
    };
    if architectures.iter().any(|a| a == expected) {
        return Ok(format!("architecture {expected} as the recipe expects"));
    }
    let Some(found) = architectures.first() else {
        return Ok(format!(
            "architecture not checked: config.json lists no architectures (the recipe expects \
             {expected})"
        ));
    };
    let mut msg = format!(
        "config.json says the weights are {} but recipe '{}' expects {expected}",
        architectures.join(", "),
        r.key
    );
    let (fk, ek) = (kind_of(found), kind_of(expected));
    if fk != ek {
        msg.push_str(&format!(
            ": this looks like a {} model, not the {} model the recipe expects (a wrong variant \
             downloaded?)",
            fk.noun(),
            ek.noun()
        ));
    }
    Err(msg)
}

fn non_null<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Lookups over config.json with the language model's nested config first
/// (`text_config`, `llm_config`, `language_config`), then the top level.
struct Config<'a> {
    top: &'a Map<String, Value>,
    text: Option<&'a Map<String, Value>>,
}

impl<'a> Config<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.text
            .and_then(|t| non_null(t, key))
            .or_else(|| non_null(self.top, key))
    }
    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
    fn u64(&self, keys: &[&str]) -> Option<u64> {
        keys.iter().find_map(|k| self.get(k).and_then(as_u64))
    }
    fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(Value::as_str)
    }
}

fn last_component(model_ref: &str) -> &str {
    model_ref
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(model_ref)
}

fn push_arg(args: &mut Vec<String>, items: &[&str]) {
    args.extend(items.iter().map(|s| s.to_string()));
}

fn cap(caps: &mut Vec<String>, c: &str) {
    if !caps.iter().any(|x| x == c) {
        caps.push(c.to_string());
    }
}

const HYBRID_FAMILIES: &[&str] = &[
    "nemotronh",
    "qwen3next",
    "jamba",
    "falconh1",
    "granitemoehybrid",
    "zamba",
    "bamba",
    "plamo2",
    "mamba",
    "lfm2",
];

/// A recipe for an on-disk model that has none, from its config.json (nested
/// `text_config`/`llm_config` handled), with one note per decision:
///
/// - architecture = `architectures[0]`; the kind of model (text, vision, speech, TTS,
///   embedding) from it; embeddings get `--runner pooling` (vLLM removed `--task embed`);
/// - MoE (experts in the config or "Moe" in the architecture) is noted (vLLM picks the kernels);
/// - vision and Mamba-hybrid models get `--max-num-batched-tokens 16384` (vLLM refuses to start
///   otherwise, and the argument parser does not catch it);
/// - reasoning / tool-call parsers for families whose parser names are stable in vLLM
///   (gpt-oss, Qwen3, DeepSeek-R1, Qwen2.5 and Llama 3 instruct);
/// - `--max-model-len 32768` when the model allows more (the knob raises it);
/// - cluster of 2 when the weights exceed 70% of one node's memory and two nodes exist,
///   else solo (noting when it likely will not fit);
/// - expected ready time 60 s + 4 s per GB (+60 s for a cluster).
///
/// Never panics, whatever the JSON holds.
pub fn infer(
    model_ref: &str,
    is_repo: bool,
    config: &Value,
    size_bytes: u64,
    node_memory_bytes: Option<u64>,
    node_count: usize,
    runtime_image: &str,
) -> Inferred {
    let mut notes: Vec<String> = Vec::new();
    let empty = Map::new();
    let top = match config.as_object() {
        Some(m) => m,
        None => {
            notes.push(
                "config.json is not a JSON object: nothing could be read from it; review every \
                 setting"
                    .into(),
            );
            &empty
        }
    };
    let text = ["text_config", "llm_config", "language_config"]
        .iter()
        .find_map(|k| top.get(*k).and_then(Value::as_object));
    let cfg = Config { top, text };

    let architectures: Vec<&str> = top
        .get("architectures")
        .or_else(|| text.and_then(|t| t.get("architectures")))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let arch = architectures.first().copied().filter(|a| !a.is_empty());
    let model_type = non_null(top, "model_type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let text_model_type = text
        .and_then(|t| t.get("model_type"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let lname = model_ref.to_ascii_lowercase();
    let display = last_component(model_ref).to_string();
    let arch_lc = arch.unwrap_or_default().to_ascii_lowercase();

    match arch {
        Some(a) => notes.push(format!(
            "architecture {a} (config.json architectures[0]): preflight checks it"
        )),
        None => notes.push(
            "config.json names no architecture: preflight cannot check the weights against the \
             recipe"
                .into(),
        ),
    }

    let mut args: Vec<String> = Vec::new();
    let mut caps: Vec<String> = Vec::new();

    // What kind of model this is.
    let mut kind = match arch {
        Some(a) => kind_of(a),
        None if ["bert", "xlm-roberta", "roberta", "nomic_bert", "modernbert"]
            .contains(&model_type.as_str()) =>
        {
            Kind::Embedding
        }
        None if !model_type.is_empty() => kind_of(&model_type),
        None => Kind::Text,
    };
    let has_vision_tower = ["vision_config", "vision_tower", "mm_vision_tower", "visual"]
        .iter()
        .any(|k| non_null(top, k).is_some());
    if kind == Kind::Text && has_vision_tower {
        kind = Kind::Vision;
    }
    if kind == Kind::Text && (lname.contains("embedding") || lname.contains("-embed")) {
        kind = Kind::Embedding;
    }
    let family = arch.unwrap_or(if model_type.is_empty() {
        "this model"
    } else {
        model_type.as_str()
    });
    match kind {
        Kind::Text => notes.push(format!(
            "{family} is a text generation model: served on /v1/chat/completions and /v1/completions"
        )),
        Kind::Vision => {
            cap(&mut caps, "vision");
            push_arg(&mut args, &["--max-num-batched-tokens", RAISED_BATCHED_TOKENS]);
            notes.push(format!(
                "vision: {family} has a vision tower: capability \"vision\"; \
                 --max-num-batched-tokens {RAISED_BATCHED_TOKENS} because multimodal models need \
                 room for image tokens or vLLM refuses to start (the argument parser does not catch \
                 this; only a real start does); --limit-mm-per-prompt left at vLLM's default"
            ));
        }
        Kind::Embedding => {
            cap(&mut caps, "embedding");
            push_arg(&mut args, &["--runner", "pooling"]);
            notes.push(format!(
                "embedding: {family} is an encoder/embedding model: --runner pooling (serves \
                 /v1/embeddings; vLLM removed the older --task embed)"
            ));
        }
        Kind::Speech => {
            if arch_lc.contains("whisper") || model_type == "whisper" {
                cap(&mut caps, "transcription");
            }
            notes.push(format!(
                "{family} looks like a speech-recognition model, not a text LLM: vLLM serves only \
                 some of these (Whisper-style, through /v1/audio/transcriptions); NeMo checkpoints \
                 such as Parakeet need their own server: check before launching"
            ));
        }
        Kind::TextToSpeech => notes.push(format!(
            "{family} looks like a text-to-speech model: vLLM does not serve it; run it as a \
             speech service (Kokoro, Magpie) instead"
        )),
    }
    let generative = matches!(kind, Kind::Text | Kind::Vision);

    // Mixture of experts.
    let experts = cfg
        .u64(&[
            "num_experts",
            "num_local_experts",
            "n_routed_experts",
            "moe_num_experts",
        ])
        .filter(|n| *n > 0);
    let moe_name = arch.is_some_and(|a| a.contains("Moe") || a.contains("MoE"));
    if experts.is_some() || moe_name {
        let active = cfg.u64(&["num_experts_per_tok", "moe_topk", "num_experts_per_token"]);
        let detail = match (experts, active) {
            (Some(e), Some(k)) => format!("{e} experts, {k} active per token"),
            (Some(e), None) => format!("{e} experts"),
            _ => "experts".to_string(),
        };
        notes.push(format!(
            "MoE: {family} ({detail}): only the active experts are read per token, so it decodes \
             fast for its size; vLLM picks the fused MoE kernels itself, no flag needed"
        ));
    } else if generative {
        notes.push("dense model (no experts in config.json)".into());
    }

    // Mamba hybrids.
    let layer_types_hybrid = cfg
        .get("layer_types")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter().filter_map(Value::as_str).any(|t| {
                let t = t.to_ascii_lowercase();
                t.contains("mamba") || t.contains("linear_attention") || t == "conv"
            })
        });
    let family_lc = format!("{arch_lc} {model_type} {text_model_type}").replace(['_', '-'], "");
    let hybrid = HYBRID_FAMILIES.iter().any(|f| family_lc.contains(f))
        || cfg.has("layers_block_type")
        || cfg.has("hybrid_override_pattern")
        || layer_types_hybrid;
    if hybrid && generative {
        if !args.iter().any(|a| a == "--max-num-batched-tokens") {
            push_arg(
                &mut args,
                &["--max-num-batched-tokens", RAISED_BATCHED_TOKENS],
            );
        }
        notes.push(format!(
            "Mamba hybrid: {family} mixes state-space and attention layers: \
             --max-num-batched-tokens {RAISED_BATCHED_TOKENS} or vLLM refuses to start (the \
             argument parser does not catch this; only a real start does)"
        ));
    }

    // Reasoning and tool-call parsers.
    if generative {
        let is_qwen3 = model_type.starts_with("qwen3")
            || text_model_type.starts_with("qwen3")
            || arch.is_some_and(|a| a.starts_with("Qwen3"));
        if model_type == "gpt_oss" || arch == Some("GptOssForCausalLM") {
            push_arg(
                &mut args,
                &[
                    "--reasoning-parser",
                    "openai_gptoss",
                    "--enable-auto-tool-choice",
                    "--tool-call-parser",
                    "openai",
                ],
            );
            cap(&mut caps, "reasoning");
            cap(&mut caps, "tools");
            notes.push(
                "gpt-oss (harmony format): --reasoning-parser openai_gptoss, tool calls with \
                 --tool-call-parser openai"
                    .into(),
            );
        } else if lname.contains("deepseek-r1") || lname.contains("deepseek_r1") {
            push_arg(&mut args, &["--reasoning-parser", "deepseek_r1"]);
            cap(&mut caps, "reasoning");
            notes.push(
                "DeepSeek-R1 family: --reasoning-parser deepseek_r1 (the thinking goes to \
                 reasoning_content); no tool-call parser set"
                    .into(),
            );
        } else if is_qwen3 {
            let tool_parser = if lname.contains("coder") {
                "qwen3_coder"
            } else {
                "hermes"
            };
            push_arg(
                &mut args,
                &[
                    "--enable-auto-tool-choice",
                    "--tool-call-parser",
                    tool_parser,
                ],
            );
            cap(&mut caps, "tools");
            if lname.contains("instruct") && !lname.contains("thinking") {
                notes.push(format!(
                    "Qwen3 instruct variant: tool calls with --tool-call-parser {tool_parser}; no \
                     reasoning parser (it does not think, and the qwen3 parser would file its \
                     whole answer as reasoning)"
                ));
            } else {
                push_arg(&mut args, &["--reasoning-parser", "qwen3"]);
                cap(&mut caps, "reasoning");
                notes.push(format!(
                    "Qwen3 thinking model: --reasoning-parser qwen3, tool calls with \
                     --tool-call-parser {tool_parser}"
                ));
            }
        } else if (model_type == "qwen2" || model_type == "qwen2_moe") && lname.contains("instruct")
        {
            push_arg(
                &mut args,
                &["--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
            );
            cap(&mut caps, "tools");
            notes.push("Qwen2.5 instruct: tool calls with --tool-call-parser hermes".into());
        } else if model_type == "llama" && lname.contains("llama-3") && lname.contains("instruct") {
            push_arg(
                &mut args,
                &[
                    "--enable-auto-tool-choice",
                    "--tool-call-parser",
                    "llama3_json",
                ],
            );
            cap(&mut caps, "tools");
            notes.push("Llama 3 instruct: tool calls with --tool-call-parser llama3_json".into());
        } else if family_lc.contains("nemotronh") {
            notes.push(
                "Nemotron-H: it thinks by default (/no_think in the system prompt turns it off); \
                 NVIDIA's reasoning and tool parsers are plugins, not set here"
                    .into(),
            );
        } else {
            notes.push(format!(
                "no reasoning or tool-call parser is known for {family}: chat works; add \
                 --enable-auto-tool-choice --tool-call-parser <name> for tool calls"
            ));
        }
    }

    // Quantization.
    let quant = cfg
        .get("quantization_config")
        .or_else(|| cfg.get("compression_config"))
        .and_then(Value::as_object)
        .and_then(|q| {
            q.get("quant_method")
                .or_else(|| q.get("format"))
                .and_then(Value::as_str)
        })
        .map(str::to_ascii_lowercase);
    match quant.as_deref() {
        Some("fp8") => notes.push(
            "quantization: FP8 weights; vLLM reads the scheme from config.json, nothing to set \
             (the FP8 KV cache knob can halve the KV cache as well)"
                .into(),
        ),
        Some("mxfp4") => notes.push(
            "quantization: MXFP4 weights; vLLM reads the scheme from config.json, nothing to set"
                .into(),
        ),
        Some(q) => notes.push(format!(
            "quantization: {q} weights; vLLM reads the scheme from config.json, nothing to set"
        )),
        None => {
            let dtype = cfg
                .str("torch_dtype")
                .or_else(|| cfg.str("dtype"))
                .unwrap_or("unknown dtype");
            notes.push(format!(
                "quantization: none ({dtype} weights); vLLM loads them as they are"
            ));
        }
    }

    // Context length.
    if generative {
        match cfg.u64(&[
            "max_position_embeddings",
            "max_sequence_length",
            "seq_length",
            "n_positions",
        ]) {
            Some(n) if n > INFERRED_MAX_MODEL_LEN => {
                push_arg(
                    &mut args,
                    &["--max-model-len", &INFERRED_MAX_MODEL_LEN.to_string()],
                );
                notes.push(format!(
                    "context: the model allows {n} tokens; --max-model-len {INFERRED_MAX_MODEL_LEN} \
                     keeps the KV cache modest (raise it with the max model length knob)"
                ));
            }
            Some(n) => notes.push(format!(
                "context: {n} tokens (the model's own limit, vLLM's default)"
            )),
            None => notes.push(
                "context: config.json gives no maximum; vLLM derives it (set the max model length \
                 knob if the start runs out of memory)"
                    .into(),
            ),
        }
    }

    if non_null(top, "auto_map").is_some() {
        notes.push(
            "config.json declares custom code (auto_map): not trusted by default; if the runtime \
             does not support this architecture natively, review the repository and add \
             --trust-remote-code"
                .into(),
        );
    }

    // Solo or cluster.
    let gb = size_bytes as f64 / 1e9;
    let mut mode = Mode::Solo;
    match node_memory_bytes.filter(|m| *m > 0) {
        None => notes.push(format!(
            "solo: node memory unknown; {gb:.1} GB of weights on one node"
        )),
        Some(mem) => {
            let node_gb = mem as f64 / 1e9;
            let limit = SOLO_MEMORY_SHARE * node_gb;
            if gb <= limit {
                notes.push(format!(
                    "solo: {gb:.1} GB of weights fit one node ({node_gb:.0} GB, limit {limit:.0} GB \
                     = 70%)"
                ));
            } else if node_count >= 2 {
                mode = Mode::Cluster;
                let mut note = format!(
                    "cluster of 2 nodes: {gb:.1} GB of weights exceed 70% of one node's \
                     {node_gb:.0} GB; tensor parallel across 2 nodes"
                );
                if gb > 2.0 * limit {
                    note.push_str(
                        " (it likely will not fit even on two nodes: consider a quantized variant)",
                    );
                }
                notes.push(note);
            } else {
                notes.push(format!(
                    "solo: {gb:.1} GB of weights exceed 70% of the node's {node_gb:.0} GB and only \
                     {node_count} node(s) are known: it likely will not fit; consider a quantized \
                     variant or a second node"
                ));
            }
        }
    }

    let mut ready = 60u64.saturating_add((4.0 * gb).ceil().max(0.0) as u64);
    if mode == Mode::Cluster {
        ready = ready.saturating_add(60);
    }
    notes.push(format!(
        "expected ready in about {ready} s (60 s + 4 s per GB{})",
        if mode == Mode::Cluster {
            " + 60 s for the cluster"
        } else {
            ""
        }
    ));
    notes.push(format!(
        "runtime image {runtime_image}; GPU memory fraction left at vLLM's default {DEFAULT_GPU_MEMORY_UTILIZATION} \
         (the knob changes it)"
    ));
    notes.push("license unknown: check the model card before use".into());

    let (repo, path) = if is_repo {
        (Some(model_ref.to_string()), None)
    } else {
        (None, Some(model_ref.to_string()))
    };
    let description = match arch {
        Some(a) => {
            format!("Inferred from config.json ({a}); review the settings before the first launch.")
        }
        None => "Inferred from config.json; review the settings before the first launch.".into(),
    };
    let recipe = Recipe {
        key: key_for(model_ref),
        name: display,
        repo,
        path,
        revision: None,
        size_gb: (size_bytes > 0).then(|| (gb * 10.0).round().max(1.0) / 10.0),
        mode,
        nodes: (mode == Mode::Cluster).then_some(2),
        runtime: RuntimeSpec {
            image: runtime_image.to_string(),
            serve_command: None,
            check_command: None,
            shm_gb: None,
        },
        served_model_name: None,
        port: None,
        args,
        env: Default::default(),
        capabilities: caps,
        description,
        expected_ready_seconds: if ready > 0 {
            ready
        } else {
            default_ready_seconds()
        },
        timeout_seconds: None,
        architecture: arch.map(str::to_string),
        license: None,
        on_demand: false,
        idle_unload_seconds: None,
    };
    if let Err(e) = validate(&recipe) {
        notes.push(format!(
            "this recipe does not validate yet: {e}; fix it before confirming"
        ));
    }
    Inferred { recipe, notes }
}
