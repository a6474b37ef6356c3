//! Unit tests for recipes: validation, parsing (both formats), directories, the bundled
//! catalog, knobs, argv building, inference from config.json fixtures and the architecture
//! check.

use super::*;
use serde_json::json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(rel: &str) -> String {
    let path = format!("{FIXTURES}/{rel}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read fixture {path}: {e}"))
}

fn config(name: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(&format!("configs/{name}"))).unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A minimal valid recipe.
fn recipe(key: &str) -> Recipe {
    Recipe {
        key: key.to_string(),
        name: key.to_string(),
        repo: Some("Org/Model-7B".into()),
        path: None,
        revision: None,
        size_gb: Some(15.0),
        mode: Mode::Solo,
        nodes: None,
        runtime: RuntimeSpec {
            image: "vllm-node".into(),
            serve_command: None,
            check_command: None,
            shm_gb: None,
        },
        served_model_name: None,
        port: None,
        args: Vec::new(),
        env: BTreeMap::new(),
        capabilities: Vec::new(),
        description: String::new(),
        expected_ready_seconds: 120,
        timeout_seconds: None,
        architecture: None,
        license: None,
        on_demand: false,
        idle_unload_seconds: None,
    }
}

const GB128: u64 = 128_000_000_000;

// ---------------------------------------------------------------- validation

#[test]
fn validate_accepts_a_minimal_recipe() {
    validate(&recipe("m")).unwrap();
    let mut r = recipe("local.ft_1-b");
    r.repo = None;
    r.path = Some("/models/my-finetune".into());
    validate(&r).unwrap();
}

#[test]
fn validate_messages_name_field_and_expectation() {
    type Edit = fn(&mut Recipe);
    let cases: Vec<(Edit, &str, &str)> = vec![
        (|r| r.key = "Bad Key".into(), "key:", "lowercase"),
        (|r| r.key = String::new(), "key:", "1-64"),
        (
            |r| r.key = "-lead".into(),
            "key:",
            "starting with a letter or digit",
        ),
        (|r| r.key = "a".repeat(65), "key:", "1-64"),
        (|r| r.path = Some("/m".into()), "repo/path", "not both"),
        (|r| r.repo = None, "repo/path", "exactly one"),
        (
            |r| r.repo = Some("not a repo".into()),
            "repo:",
            "Hugging Face",
        ),
        (
            |r| r.revision = Some("../x".into()),
            "revision:",
            "branch, tag or commit",
        ),
        (
            |r| {
                r.repo = None;
                r.path = Some("models/x".into())
            },
            "path:",
            "not absolute",
        ),
        (
            |r| {
                r.repo = None;
                r.path = Some("/models/../etc".into())
            },
            "path:",
            "'..'",
        ),
        (
            |r| {
                r.repo = None;
                r.path = Some("/models/a\0b".into())
            },
            "path:",
            "NUL",
        ),
        (
            |r| r.runtime.image = "bad image!".into(),
            "runtime.image:",
            "image reference",
        ),
        (
            |r| r.runtime.serve_command = Some(vec![]),
            "runtime.serve_command:",
            "non-empty",
        ),
        (
            |r| r.runtime.check_command = Some(s(&[""])),
            "runtime.check_command:",
            "non-empty",
        ),
        (|r| r.port = Some(0), "port:", "1 to 65535"),
        (
            |r| {
                r.env.insert("1BAD".into(), "x".into());
            },
            "env:",
            "environment variable name",
        ),
        (
            |r| {
                r.env.insert("A-B".into(), "x".into());
            },
            "env:",
            "environment variable name",
        ),
        (|r| r.size_gb = Some(f64::NAN), "size_gb:", "above 0"),
        (|r| r.size_gb = Some(0.0), "size_gb:", "above 0"),
        (|r| r.size_gb = Some(f64::INFINITY), "size_gb:", "above 0"),
        (
            |r| {
                r.mode = Mode::Cluster;
                r.nodes = Some(1)
            },
            "nodes:",
            "2 to 64",
        ),
        (
            |r| r.expected_ready_seconds = 0,
            "expected_ready_seconds:",
            "above 0",
        ),
        (|r| r.args = s(&["--a\0"]), "args:", "NUL"),
        (|r| r.args = s(&["--a\n--b"]), "args:", "line break"),
        (
            |r| r.served_model_name = Some(String::new()),
            "served_model_name:",
            "without spaces",
        ),
        (
            |r| r.served_model_name = Some("my model".into()),
            "served_model_name:",
            "without spaces",
        ),
    ];
    for (edit, field, expect) in cases {
        let mut r = recipe("m");
        edit(&mut r);
        let e = validate(&r).unwrap_err();
        assert!(e.contains(field), "{e:?} should name {field}");
        assert!(e.contains(expect), "{e:?} should say {expect}");
    }
}

#[test]
fn validate_cluster_defaults_to_two_nodes_and_solo_ignores_nodes() {
    let mut r = recipe("c");
    r.mode = Mode::Cluster;
    validate(&r).unwrap();
    assert_eq!(cluster_nodes(&r), 2);
    r.nodes = Some(3);
    assert_eq!(cluster_nodes(&r), 3);
    r.mode = Mode::Solo;
    r.nodes = Some(0);
    validate(&r).unwrap();
    assert_eq!(cluster_nodes(&r), 1);
}

#[test]
fn accessors() {
    let mut r = recipe("chat");
    assert_eq!(served_name(&r), "chat");
    assert_eq!(port(&r), 8000);
    assert_eq!(model_ref(&r), "Org/Model-7B");
    assert_eq!(timeout(&r), Duration::from_secs(600));
    r.expected_ready_seconds = 300;
    assert_eq!(timeout(&r), Duration::from_secs(900));
    r.timeout_seconds = Some(42);
    assert_eq!(timeout(&r), Duration::from_secs(42));
    r.served_model_name = Some("gpt".into());
    r.port = Some(8888);
    assert_eq!(served_name(&r), "gpt");
    assert_eq!(port(&r), 8888);
    r.repo = None;
    r.path = Some("/models/x".into());
    assert_eq!(model_ref(&r), "/models/x");
}

// ---------------------------------------------------------------- parse_yaml

const ONE: &str = "\
key: small
name: Small model
repo: Org/Small-1B
runtime:
  image: vllm-node
args: [--max-model-len, \"4096\"]
";

#[test]
fn parse_yaml_one_recipe_and_a_list() {
    let one = parse_yaml(ONE, "one.yaml").unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].key, "small");
    assert_eq!(one[0].args, s(&["--max-model-len", "4096"]));
    assert_eq!(one[0].expected_ready_seconds, 300);
    assert_eq!(one[0].mode, Mode::Solo);

    let list = "\
- key: a
  name: A
  repo: Org/A
  runtime: {image: vllm-node}
- key: b
  name: B
  path: /models/b
  mode: cluster
  nodes: 2
  runtime: {image: \"nvcr.io/nim/org/image:1.0\"}
";
    let got = parse_yaml(list, "list.yaml").unwrap();
    assert_eq!(
        got.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(got[1].mode, Mode::Cluster);
    assert_eq!(got[1].path.as_deref(), Some("/models/b"));
}

#[test]
fn parse_yaml_errors_name_the_file_and_line() {
    let bad_type =
        "key: small\nname: Small\nrepo: Org/Small\nport: eighty\nruntime: {image: vllm-node}\n";
    let e = parse_yaml(bad_type, "/data/recipes/small.yaml").unwrap_err();
    assert!(e.contains("/data/recipes/small.yaml"), "{e}");
    assert!(e.contains("line 4"), "{e}");
    assert!(e.contains("port"), "{e}");

    let unknown =
        "key: small\nname: Small\nrepo: Org/Small\nruntime: {image: vllm-node}\nargz: []\n";
    let e = parse_yaml(unknown, "u.yaml").unwrap_err();
    assert!(
        e.contains("u.yaml") && e.contains("argz") && e.contains("line 5"),
        "{e}"
    );

    let syntax = "key: [small\nname: x\n";
    let e = parse_yaml(syntax, "s.yaml").unwrap_err();
    assert!(e.contains("s.yaml") && e.contains("line"), "{e}");

    let e = parse_yaml("", "empty.yaml").unwrap_err();
    assert!(e.contains("empty.yaml") && e.contains("empty"), "{e}");

    let e = parse_yaml("just text", "t.yaml").unwrap_err();
    assert!(
        e.contains("t.yaml") && e.contains("expected a recipe"),
        "{e}"
    );
}

#[test]
fn parse_yaml_validates_and_refuses_duplicate_keys() {
    let invalid =
        "key: small\nname: Small\nrepo: Org/Small\nport: 0\nruntime: {image: vllm-node}\n";
    let e = parse_yaml(invalid, "p.yaml").unwrap_err();
    assert!(e.starts_with("p.yaml: recipe 'small': port:"), "{e}");

    let dup = "- {key: a, name: A, repo: Org/A, runtime: {image: vllm-node}}\n\
               - {key: a, name: B, repo: Org/B, runtime: {image: vllm-node}}\n";
    let e = parse_yaml(dup, "d.yaml").unwrap_err();
    assert!(
        e.contains("d.yaml") && e.contains("'a'") && e.contains("more than one"),
        "{e}"
    );
}

#[test]
fn parse_yaml_recognises_spark_vllm_docker_files() {
    let got = parse_yaml(
        &fixture("spark-vllm-docker/minimax-m2-awq.yaml"),
        "minimax-m2-awq.yaml",
    )
    .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, "minimax-m2-awq");
}

// ---------------------------------------------------------------- load_dir

#[test]
fn load_dir_skips_a_bad_file_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), ONE).unwrap();
    std::fs::write(dir.path().join("b.yml"), "key: [oops\n").unwrap();
    std::fs::write(dir.path().join("c.txt"), "not a recipe").unwrap();
    std::fs::write(
        dir.path().join("d.yaml"),
        fixture("spark-vllm-docker/glm-4.7-flash-awq.yaml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    std::fs::write(dir.path().join("e.YML"), [0xff, 0xfe, 0x00]).unwrap();
    let (recipes, warnings) = load_dir(dir.path());
    assert_eq!(
        recipes.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["small", "glm-4.7-flash-awq"]
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("b.yml") && warnings[0].contains("line"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("e.YML") && warnings[1].contains("UTF-8"),
        "{warnings:?}"
    );
}

#[test]
fn load_dir_missing_directory_is_silent_and_later_file_wins() {
    let (r, w) = load_dir(Path::new("/nonexistent/spark-control/recipes"));
    assert!(r.is_empty() && w.is_empty());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1.yaml"), ONE).unwrap();
    std::fs::write(
        dir.path().join("2.yaml"),
        ONE.replace("Small model", "Newer"),
    )
    .unwrap();
    let (r, w) = load_dir(dir.path());
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].name, "Newer");
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("2.yaml") && w[0].contains("replaces") && w[0].contains("1.yaml"));
}

// ---------------------------------------------------------------- bundled catalog

#[test]
fn bundled_recipes_parse_validate_and_have_unique_keys() {
    let mut keys = std::collections::BTreeSet::new();
    let mut total = 0;
    for (file, text) in BUNDLED {
        let got = parse_yaml(text, file).unwrap_or_else(|e| panic!("{e}"));
        for r in got {
            total += 1;
            assert!(keys.insert(r.key.clone()), "duplicate key {}", r.key);
            assert_eq!(r.runtime.image, DEFAULT_RUNTIME_IMAGE, "{}", r.key);
            assert!(r.architecture.is_some(), "{} names no architecture", r.key);
            assert!(r.size_gb.is_some(), "{} has no size", r.key);
            assert!(r.license.is_some(), "{} has no license note", r.key);
            assert!(!r.description.is_empty(), "{} has no description", r.key);
            // Recipes never carry planner flags: launch_argv would drop them silently.
            let (rest, tp) = args::strip_planner_flags(&r.args);
            assert_eq!(rest, r.args, "{} carries planner flags", r.key);
            assert!(tp.is_none());
            // Multimodal and Mamba-hybrid models need the raised batch or vLLM refuses to start.
            let arch = r.architecture.clone().unwrap_or_default();
            if r.capabilities.iter().any(|c| c == "vision")
                || arch.starts_with("NemotronH")
                || arch.starts_with("Qwen3Next")
            {
                assert_eq!(
                    args::last_flag_value(&r.args, &["--max-num-batched-tokens"]).as_deref(),
                    Some("16384"),
                    "{}",
                    r.key
                );
            }
        }
    }
    assert!((6..=8).contains(&total));
    let b = bundled();
    assert_eq!(b.len(), total);
    let keys: Vec<&str> = b.iter().map(|r| r.key.as_str()).collect();
    for k in [
        "qwen3-30b-a3b-instruct-2507-fp8",
        "gpt-oss-120b",
        "qwen2.5-vl-7b-instruct",
        "llama-3.3-70b-instruct-fp8",
        "nemotron-nano-9b-v2",
        "bge-m3",
        "qwen3-235b-a22b-instruct-2507-awq",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    let cluster: Vec<&str> = b
        .iter()
        .filter(|r| r.mode == Mode::Cluster)
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(
        cluster,
        [
            "llama-3.3-70b-instruct-fp8",
            "qwen3-235b-a22b-instruct-2507-awq"
        ]
    );
}

#[test]
fn bundled_recipes_agree_with_inference_on_their_fixtures() {
    let b = bundled();
    let find = |k: &str| b.iter().find(|r| r.key == k).unwrap().clone();
    for (key, cfg) in [
        ("gpt-oss-120b", "gpt-oss-120b.json"),
        ("qwen2.5-vl-7b-instruct", "qwen2.5-vl-7b-instruct.json"),
        ("nemotron-nano-9b-v2", "nemotron-nano-9b-v2.json"),
        ("bge-m3", "bge-m3.json"),
    ] {
        let r = find(key);
        let names = config(cfg)["architectures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        check_architecture(&r, &names).unwrap();
        let inf = infer(
            model_ref(&r),
            true,
            &config(cfg),
            1_000_000_000,
            Some(GB128),
            1,
            "vllm-node",
        );
        for c in &inf.recipe.capabilities {
            assert!(
                r.capabilities.contains(c),
                "{key}: inferred capability {c} missing"
            );
        }
    }
}

// ---------------------------------------------------------------- knobs

#[test]
fn knobs_replace_both_flag_forms_and_every_occurrence() {
    let args = s(&[
        "--max-model-len",
        "4096",
        "--trust-remote-code",
        "--max-model-len=8192",
        "--gpu-memory-utilization",
        "0.5",
        "--max_num_batched_tokens",
        "2048",
        "--gpu_memory_utilization=0.6",
    ]);
    let k = Knobs {
        max_model_len: Some(32768),
        gpu_memory_utilization: Some(0.85),
        max_num_batched_tokens: Some(16384),
        ..Default::default()
    };
    let got = apply_knobs(&args, &k);
    assert_eq!(
        got,
        s(&[
            "--trust-remote-code",
            "--max-model-len",
            "32768",
            "--gpu-memory-utilization",
            "0.85",
            "--max-num-batched-tokens",
            "16384",
        ])
    );
    // Applying again changes nothing: no duplicates accumulate.
    assert_eq!(apply_knobs(&got, &k), got);
    // Unset knobs leave everything alone.
    assert_eq!(apply_knobs(&args, &Knobs::default()), args);
}

#[test]
fn knob_fastsafetensors() {
    let on = Knobs {
        fastsafetensors: Some(true),
        ..Default::default()
    };
    let off = Knobs {
        fastsafetensors: Some(false),
        ..Default::default()
    };
    assert_eq!(
        apply_knobs(&s(&["--load-format", "safetensors", "--x"]), &on),
        s(&["--x", "--load-format", "fastsafetensors"])
    );
    assert_eq!(
        apply_knobs(
            &s(&[
                "--load-format=fastsafetensors",
                "--load-format",
                "fastsafetensors"
            ]),
            &on
        ),
        s(&["--load-format", "fastsafetensors"])
    );
    assert_eq!(
        apply_knobs(
            &s(&[
                "--load-format",
                "fastsafetensors",
                "--x",
                "--load-format=fastsafetensors"
            ]),
            &off
        ),
        s(&["--x"])
    );
    // Other load formats survive "off".
    assert_eq!(
        apply_knobs(&s(&["--load-format", "safetensors"]), &off),
        s(&["--load-format", "safetensors"])
    );
}

#[test]
fn knob_prefix_caching() {
    let args = s(&[
        "--no-enable-prefix-caching",
        "--max-num-seqs",
        "8",
        "--enable-prefix-caching",
        "--enable_prefix_caching",
    ]);
    let on = Knobs {
        prefix_caching: Some(true),
        ..Default::default()
    };
    let off = Knobs {
        prefix_caching: Some(false),
        ..Default::default()
    };
    assert_eq!(
        apply_knobs(&args, &on),
        s(&["--max-num-seqs", "8", "--enable-prefix-caching"])
    );
    assert_eq!(
        apply_knobs(&args, &off),
        s(&["--max-num-seqs", "8", "--no-enable-prefix-caching"])
    );
}

#[test]
fn knob_fp8_kv_cache() {
    let on = Knobs {
        fp8_kv_cache: Some(true),
        ..Default::default()
    };
    let off = Knobs {
        fp8_kv_cache: Some(false),
        ..Default::default()
    };
    assert_eq!(
        apply_knobs(
            &s(&[
                "--kv-cache-dtype",
                "auto",
                "--x",
                "--kv-cache-dtype=fp8_e5m2"
            ]),
            &on
        ),
        s(&["--x", "--kv-cache-dtype", "fp8"])
    );
    assert_eq!(
        apply_knobs(
            &s(&["--kv-cache-dtype=fp8", "--x", "--kv-cache-dtype", "fp8"]),
            &off
        ),
        s(&["--x"])
    );
}

#[test]
fn knob_validation() {
    validate_knobs(&Knobs::default()).unwrap();
    validate_knobs(&Knobs {
        gpu_memory_utilization: Some(1.0),
        max_model_len: Some(1),
        max_num_batched_tokens: Some(10_000_000),
        ..Default::default()
    })
    .unwrap();
    for (k, field) in [
        (
            Knobs {
                gpu_memory_utilization: Some(0.0),
                ..Default::default()
            },
            "gpu_memory_utilization",
        ),
        (
            Knobs {
                gpu_memory_utilization: Some(1.01),
                ..Default::default()
            },
            "gpu_memory_utilization",
        ),
        (
            Knobs {
                gpu_memory_utilization: Some(f64::NAN),
                ..Default::default()
            },
            "gpu_memory_utilization",
        ),
        (
            Knobs {
                max_model_len: Some(0),
                ..Default::default()
            },
            "max_model_len",
        ),
        (
            Knobs {
                max_num_batched_tokens: Some(10_000_001),
                ..Default::default()
            },
            "max_num_batched_tokens",
        ),
    ] {
        let e = validate_knobs(&k).unwrap_err();
        assert!(e.starts_with(field), "{e}");
    }
}

#[test]
fn effective_gpu_memory_utilization_prefers_knob_then_args_then_default() {
    let mut r = recipe("m");
    assert_eq!(effective_gpu_memory_utilization(&r, &Knobs::default()), 0.9);
    r.args = s(&[
        "--gpu-memory-utilization",
        "0.5",
        "--gpu-memory-utilization=0.6",
    ]);
    assert_eq!(effective_gpu_memory_utilization(&r, &Knobs::default()), 0.6);
    let k = Knobs {
        gpu_memory_utilization: Some(0.75),
        ..Default::default()
    };
    assert_eq!(effective_gpu_memory_utilization(&r, &k), 0.75);
    r.args = s(&["--gpu-memory-utilization", "lots"]);
    assert_eq!(effective_gpu_memory_utilization(&r, &Knobs::default()), 0.9);
}

// ---------------------------------------------------------------- argv

fn plan() -> ClusterPlan {
    ClusterPlan {
        nodes: 2,
        master_addr: "10.0.0.1".into(),
        master_port: DEFAULT_MASTER_PORT,
    }
}

#[test]
fn launch_argv_solo_drops_planner_flags() {
    let mut r = recipe("chat");
    r.served_model_name = Some("chat-model".into());
    r.port = Some(8001);
    r.args = s(&[
        "--max-model-len",
        "8192",
        "--port",
        "9999",
        "--host=127.0.0.1",
        "--served-model-name",
        "x",
        "y",
        "--model",
        "Other/Model",
        "--headless",
        "--nnodes",
        "3",
        "--enable-prefix-caching",
    ]);
    let k = Knobs {
        max_model_len: Some(16384),
        ..Default::default()
    };
    assert_eq!(
        launch_argv(&r, &k, &Role::Solo, None),
        s(&[
            "vllm",
            "serve",
            "Org/Model-7B",
            "--enable-prefix-caching",
            "--max-model-len",
            "16384",
            "--host",
            "0.0.0.0",
            "--port",
            "8001",
            "--served-model-name",
            "chat-model",
        ])
    );
}

#[test]
fn launch_argv_solo_keeps_the_recipes_tensor_parallel_value() {
    let mut r = recipe("multi-gpu");
    r.args = s(&[
        "-tp",
        "4",
        "--max-num-seqs",
        "16",
        "--tensor-parallel-size=2",
    ]);
    assert_eq!(
        launch_argv(&r, &Knobs::default(), &Role::Solo, None),
        s(&[
            "vllm",
            "serve",
            "Org/Model-7B",
            "--max-num-seqs",
            "16",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--served-model-name",
            "multi-gpu",
            "--tensor-parallel-size",
            "2",
        ])
    );
}

#[test]
fn launch_argv_cluster_head_and_worker() {
    let mut r = recipe("big");
    r.mode = Mode::Cluster;
    r.args = s(&[
        "--tensor-parallel-size",
        "4",
        "--nnodes",
        "3",
        "--headless",
        "--kv-cache-dtype",
        "fp8",
        "--master-port=1",
        "--node-rank",
        "7",
        "--master-addr",
        "1.2.3.4",
    ]);
    let k = Knobs::default();
    let p = plan();
    let head = launch_argv(&r, &k, &Role::Head, Some(&p));
    assert_eq!(
        head,
        s(&[
            "vllm",
            "serve",
            "Org/Model-7B",
            "--kv-cache-dtype",
            "fp8",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--served-model-name",
            "big",
            "--tensor-parallel-size",
            "2",
            "--nnodes",
            "2",
            "--node-rank",
            "0",
            "--master-addr",
            "10.0.0.1",
            "--master-port",
            "29501",
        ])
    );
    let worker = launch_argv(&r, &k, &Role::Worker { rank: 1 }, Some(&p));
    let mut expect = head.clone();
    let rank_at = expect.iter().position(|a| a == "--node-rank").unwrap() + 1;
    expect[rank_at] = "1".into();
    expect.push("--headless".into());
    assert_eq!(worker, expect);
}

#[test]
fn launch_argv_uses_the_runtimes_serve_command_and_a_path() {
    let mut r = recipe("local");
    r.repo = None;
    r.path = Some("/models/ft".into());
    r.runtime.serve_command = Some(s(&["python3", "-m", "myserver"]));
    assert_eq!(
        launch_argv(&r, &Knobs::default(), &Role::Solo, None)[..4],
        s(&["python3", "-m", "myserver", "/models/ft"])[..]
    );
}

#[test]
fn check_argv_matches_launch_flags() {
    let mut r = recipe("big");
    r.mode = Mode::Cluster;
    r.args = s(&[
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "-tp",
        "2",
    ]);
    let k = Knobs {
        fp8_kv_cache: Some(true),
        ..Default::default()
    };
    let p = plan();
    let role = Role::Worker { rank: 1 };
    let check = check_argv(&r, &k, &role, Some(&p));
    let launch = launch_argv(&r, &k, &role, Some(&p));
    let mut expect = default_check_command();
    expect.extend(s(&["--model", "Org/Model-7B"]));
    expect.extend(launch[3..].iter().cloned());
    assert_eq!(check, expect);
    assert_eq!(&check[..2], &s(&["python3", "-c"])[..]);
    assert!(check.ends_with(&s(&["--headless"])));

    r.runtime.check_command = Some(s(&["/bin/spark-fake", "vllm", "--check-args"]));
    let custom = check_argv(&r, &k, &Role::Solo, None);
    assert_eq!(
        custom,
        s(&[
            "/bin/spark-fake",
            "vllm",
            "--check-args",
            "--model",
            "Org/Model-7B",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
            "--kv-cache-dtype",
            "fp8",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--served-model-name",
            "big",
            "--tensor-parallel-size",
            "2",
        ])
    );
}

/// Run the check snippet against stand-in `vllm` packages (new and old module layouts) to
/// prove it parses argv[1:], runs the pre-load validation and reports through exit codes.
#[test]
fn default_check_snippet_runs_against_vllm_layouts() {
    let python = std::process::Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status();
    if !python.is_ok_and(|s| s.success()) {
        eprintln!("python3 not available; snippet not executed");
        return;
    }
    let cli_args = r#"
import argparse
def make_arg_parser(parser):
    parser.add_argument("model_tag", nargs="?")
    parser.add_argument("--model")
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--enable-auto-tool-choice", action="store_true")
    parser.add_argument("--tool-call-parser")
    parser.add_argument("--headless", action="store_true")
    return parser
def validate_parsed_serve_args(args):
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise TypeError("Error: --enable-auto-tool-choice requires --tool-call-parser")
"#;
    for layout in ["new", "old"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vllm");
        std::fs::create_dir_all(root.join("entrypoints/openai")).unwrap();
        std::fs::write(root.join("__init__.py"), "").unwrap();
        std::fs::write(root.join("entrypoints/__init__.py"), "").unwrap();
        std::fs::write(root.join("entrypoints/openai/__init__.py"), "").unwrap();
        std::fs::write(root.join("entrypoints/openai/cli_args.py"), cli_args).unwrap();
        let parser = "import argparse\nFlexibleArgumentParser = argparse.ArgumentParser\n";
        if layout == "new" {
            std::fs::create_dir_all(root.join("utils")).unwrap();
            std::fs::write(root.join("utils/__init__.py"), "").unwrap();
            std::fs::write(root.join("utils/argparse_utils.py"), parser).unwrap();
        } else {
            std::fs::write(root.join("utils.py"), parser).unwrap();
        }
        let run = |extra: &[&str]| {
            let argv = default_check_command();
            std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .args(extra)
                .env("PYTHONPATH", dir.path())
                .output()
                .unwrap()
        };
        let ok = run(&["--model", "Org/M", "--max-model-len", "4096", "--headless"]);
        assert_eq!(ok.status.code(), Some(0), "{layout}: {ok:?}");
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "arguments ok");
        let bad = run(&["--model", "Org/M", "--max-model-len", "lots"]);
        assert_eq!(bad.status.code(), Some(2), "{layout}: {bad:?}");
        assert!(String::from_utf8_lossy(&bad.stderr).contains("--max-model-len"));
        let unknown = run(&["--model", "Org/M", "--no-such-flag"]);
        assert_eq!(unknown.status.code(), Some(2), "{layout}: {unknown:?}");
        let invalid = run(&["--model", "Org/M", "--enable-auto-tool-choice"]);
        assert_eq!(invalid.status.code(), Some(2), "{layout}: {invalid:?}");
        assert!(String::from_utf8_lossy(&invalid.stderr).contains("requires --tool-call-parser"));
    }
    // No vLLM at all: a clear message, not a traceback.
    let empty = tempfile::tempdir().unwrap();
    let argv = default_check_command();
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("PYTHONPATH", empty.path())
        .env("PYTHONNOUSERSITE", "1")
        .output()
        .unwrap();
    if out.status.code() != Some(0) {
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot import vLLM"));
    }
}

// ---------------------------------------------------------------- spark-vllm-docker

#[test]
fn svd_glm_solo_fills_placeholders_and_keeps_flags() {
    let r = from_spark_vllm_docker(
        &fixture("spark-vllm-docker/glm-4.7-flash-awq.yaml"),
        "glm-4.7-flash-awq.yaml",
    )
    .unwrap();
    assert_eq!(r.key, "glm-4.7-flash-awq");
    assert_eq!(r.name, "GLM-4.7-Flash-AWQ");
    assert_eq!(r.repo.as_deref(), Some("cyankiwi/GLM-4.7-Flash-AWQ-4bit"));
    assert_eq!(r.runtime.image, "vllm-thor-tf5");
    assert_eq!(r.mode, Mode::Solo);
    assert_eq!(r.nodes, None);
    assert_eq!(r.served_model_name.as_deref(), Some("glm-4.7-flash"));
    assert_eq!(port(&r), 8000);
    assert!(r.env.is_empty());
    assert_eq!(
        r.args,
        s(&[
            "--tool-call-parser",
            "glm47",
            "--reasoning-parser",
            "glm45",
            "--enable-auto-tool-choice",
            "--max-model-len",
            "202752",
            "--max-num-batched-tokens",
            "4096",
            "--max-num-seqs",
            "64",
            "--gpu-memory-utilization",
            "0.7",
        ])
    );
    assert_eq!(r.capabilities, s(&["reasoning", "tools"]));
    assert!(
        r.description.contains("mods/fix-glm-4.7-flash-AWQ"),
        "{}",
        r.description
    );
}

#[test]
fn svd_minimax_cluster_drops_ray_and_unescapes_braces() {
    let r = from_spark_vllm_docker(
        &fixture("spark-vllm-docker/minimax-m2-awq.yaml"),
        "minimax-m2-awq.yaml",
    )
    .unwrap();
    assert_eq!(r.mode, Mode::Cluster);
    assert_eq!(r.nodes, Some(2));
    assert_eq!(port(&r), 8888);
    // No --served-model-name: the model id, as vLLM itself would list it.
    assert_eq!(
        r.served_model_name.as_deref(),
        Some("QuantTrio/MiniMax-M2-AWQ")
    );
    assert_eq!(
        r.env
            .get("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(r.env.get("NCCL_DEBUG").map(String::as_str), Some("WARN"));
    assert_eq!(
        r.args,
        s(&[
            "--gpu-memory-utilization",
            "0.7",
            "--max-model-len",
            "128000",
            "--load-format",
            "fastsafetensors",
            "--compilation-config",
            r#"{"cudagraph_mode":"FULL_AND_PIECEWISE"}"#,
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "minimax_m2",
            "--reasoning-parser",
            "minimax_m2",
        ])
    );
    // What the planner then launches on the head.
    let argv = launch_argv(&r, &Knobs::default(), &Role::Head, Some(&plan()));
    assert_eq!(argv.iter().filter(|a| *a == "--port").count(), 1);
    assert!(
        !argv
            .iter()
            .any(|a| a == "--distributed-executor-backend" || a == "-tp")
    );
}

#[test]
fn svd_solo_only_wins_over_tensor_parallel() {
    let r = from_spark_vllm_docker(
        &fixture("spark-vllm-docker/nemotron-3-nano-nvfp4.yaml"),
        "nemotron-3-nano-nvfp4.yaml",
    )
    .unwrap();
    assert_eq!(r.key, "nemotron-3-nano-nvfp4");
    assert_eq!(r.mode, Mode::Solo);
    assert_eq!(
        r.repo.as_deref(),
        Some("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-NVFP4")
    );
    assert_eq!(
        r.args,
        s(&[
            "--moe-backend",
            "cutlass",
            "--max-model-len",
            "262144",
            "--trust-remote-code",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "qwen3_coder",
            "--reasoning-parser-plugin",
            "nano_v3_reasoning_parser.py",
            "--reasoning-parser",
            "nano_v3",
            "--kv-cache-dtype",
            "fp8",
            "--enable-prefix-caching",
            "--load-format",
            "fastsafetensors",
            "--gpu-memory-utilization",
            "0.7",
        ])
    );
}

const SVD_MIN: &str = "recipe_version: \"1\"\nname: Tiny\ncontainer: vllm-node\n";

#[test]
fn svd_mode_from_tensor_parallel_and_flags() {
    let tp2 = format!(
        "{SVD_MIN}defaults:\n  tensor_parallel: 2\ncommand: |\n  vllm serve Org/Tiny --tensor-parallel-size {{tensor_parallel}} --port 9000\n"
    );
    let r = from_spark_vllm_docker(&tp2, "tp2.yaml").unwrap();
    assert_eq!((r.mode, r.nodes, port(&r)), (Mode::Cluster, Some(2), 9000));
    assert!(r.args.is_empty());

    let tp4 = tp2.replace("tensor_parallel: 2", "tensor_parallel: 4");
    let r = from_spark_vllm_docker(&tp4, "tp4.yaml").unwrap();
    assert_eq!(r.nodes, Some(4));

    let solo = format!("{SVD_MIN}command: vllm serve Org/Tiny --host {{host}} --port {{port}}\n");
    let r = from_spark_vllm_docker(&solo, "solo.yaml").unwrap();
    assert_eq!((r.mode, port(&r)), (Mode::Solo, 8000));
    assert_eq!(r.key, "tiny");
}

#[test]
fn svd_env_prefix_python_entrypoint_and_model_field() {
    let text = format!(
        "{SVD_MIN}model: Org/Fallback\ncommand: |\n  VLLM_USE_V1=1 exec python3 -m vllm.entrypoints.openai.api_server \\\n    --model Org/Real --served-model-name real a2 --runner pooling\n"
    );
    let r = from_spark_vllm_docker(&text, "py.yaml").unwrap();
    assert_eq!(r.repo.as_deref(), Some("Org/Real"));
    assert_eq!(r.env.get("VLLM_USE_V1").map(String::as_str), Some("1"));
    assert_eq!(r.served_model_name.as_deref(), Some("real"));
    assert_eq!(r.args, s(&["--runner", "pooling"]));
    assert_eq!(r.capabilities, s(&["embedding"]));

    let no_positional =
        format!("{SVD_MIN}model: /models/tiny\ncommand: vllm serve --max-num-seqs 4\n");
    let r = from_spark_vllm_docker(&no_positional, "p.yaml").unwrap();
    assert_eq!(r.path.as_deref(), Some("/models/tiny"));
    assert_eq!(r.repo, None);
}

#[test]
fn svd_errors_name_the_file_and_the_problem() {
    let cases = [
        (
            format!("{SVD_MIN}command: vllm serve Org/T --max-model-len {{max_model_len}}\n"),
            "defaults has no 'max_model_len'",
        ),
        (
            format!("{SVD_MIN}command: |\n  pip install x\n  vllm serve Org/T\n"),
            "holds 2 commands",
        ),
        (
            format!("{SVD_MIN}command: vllm serve Org/T && echo done\n"),
            "shell operator '&&'",
        ),
        (
            format!("{SVD_MIN}command: vllm serve Org/T --chat-template $TEMPLATE\n"),
            "shell expansion",
        ),
        (
            format!("{SVD_MIN}command: sglang serve Org/T\n"),
            "must start with `vllm serve`",
        ),
        (
            format!("{SVD_MIN}command: vllm serve Org/T --port 99999\n"),
            "port",
        ),
        (SVD_MIN.to_string(), "command: missing"),
        (
            format!("{SVD_MIN}command: vllm serve 'Org/T\n"),
            "quote is never closed",
        ),
        (
            format!("{SVD_MIN}command: vllm serve Org/T {{\n"),
            "never closed",
        ),
        (
            format!("{SVD_MIN}command: vllm serve Org/T }}\n"),
            "single '}'",
        ),
        (format!("{SVD_MIN}command: vllm serve\n"), "no model"),
        (
            format!("{SVD_MIN}solo_only: true\ncluster_only: true\ncommand: vllm serve Org/T\n"),
            "both true",
        ),
        (
            format!("{SVD_MIN}defaults:\n  port: [1]\ncommand: vllm serve Org/T\n"),
            "defaults.port",
        ),
        (
            format!("{SVD_MIN}command: vllm serve not/a/repo\n"),
            "repo:",
        ),
        (
            "recipe_version: 1\nsolo_only: maybe\n".to_string(),
            "line 2",
        ),
    ];
    for (text, expect) in cases {
        let e = from_spark_vllm_docker(&text, "x/svd.yaml").unwrap_err();
        assert!(e.starts_with("x/svd.yaml"), "{e}");
        assert!(e.contains(expect), "{e:?} should contain {expect:?}");
    }
}

// ---------------------------------------------------------------- key_for

#[test]
fn key_for_makes_valid_keys() {
    for (input, want) in [
        ("Qwen/Qwen3-30B-A3B", "qwen-qwen3-30b-a3b"),
        ("openai/gpt-oss-120b", "openai-gpt-oss-120b"),
        ("/models/My Fine Tune!!/", "models-my-fine-tune"),
        (
            "OpenAI GPT-OSS 120B abliterated",
            "openai-gpt-oss-120b-abliterated",
        ),
        ("GLM-4.7-Flash-AWQ", "glm-4.7-flash-awq"),
        ("", "model"),
        ("///", "model"),
        ("Ünïcode/Mödel", "n-code-m-del"),
    ] {
        let got = key_for(input);
        assert_eq!(got, want, "{input}");
        assert!(is_valid_key(&got));
    }
    let long = key_for(&format!("org/{}", "x".repeat(200)));
    assert_eq!(long.len(), 64);
    assert!(is_valid_key(&long));
    assert!(is_valid_key(&key_for(
        "a/b-----------------------------------------------------------------c"
    )));
}

// ---------------------------------------------------------------- inference

fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
    args.windows(2).any(|w| w[0] == flag && w[1] == value)
}

#[test]
fn infer_dense_llama() {
    let inf = infer(
        "meta-llama/Llama-3.1-8B-Instruct",
        true,
        &config("llama-3.1-8b-instruct.json"),
        16_060_000_000,
        Some(GB128),
        2,
        "vllm-node",
    );
    let r = &inf.recipe;
    validate(r).unwrap();
    assert_eq!(r.key, "meta-llama-llama-3.1-8b-instruct");
    assert_eq!(r.name, "Llama-3.1-8B-Instruct");
    assert_eq!(r.architecture.as_deref(), Some("LlamaForCausalLM"));
    assert_eq!(r.mode, Mode::Solo);
    assert_eq!(r.size_gb, Some(16.1));
    assert_eq!(r.expected_ready_seconds, 60 + 65);
    assert_eq!(
        r.args,
        s(&[
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "llama3_json",
            "--max-model-len",
            "32768",
        ])
    );
    assert_eq!(r.capabilities, s(&["tools"]));
    assert!(inf.notes.iter().any(|n| n.starts_with("dense model")));
    assert!(inf.notes.iter().any(|n| n.contains("131072")));
    assert!(inf.notes.iter().any(|n| n.starts_with("solo:")));
}

#[test]
fn infer_moe_qwen3_thinking_and_instruct() {
    let cfg = config("qwen3-30b-a3b.json");
    let inf = infer(
        "Qwen/Qwen3-30B-A3B",
        true,
        &cfg,
        61_000_000_000,
        Some(GB128),
        2,
        "vllm-node",
    );
    let r = &inf.recipe;
    validate(r).unwrap();
    assert_eq!(r.architecture.as_deref(), Some("Qwen3MoeForCausalLM"));
    assert_eq!(r.mode, Mode::Solo);
    assert!(
        inf.notes
            .iter()
            .any(|n| n.starts_with("MoE:") && n.contains("128 experts, 8 active"))
    );
    assert!(has_pair(&r.args, "--reasoning-parser", "qwen3"));
    assert!(has_pair(&r.args, "--tool-call-parser", "hermes"));
    assert!(r.args.contains(&"--enable-auto-tool-choice".to_string()));
    assert!(has_pair(&r.args, "--max-model-len", "32768"));
    assert!(!r.args.contains(&"--max-num-batched-tokens".to_string()));
    assert_eq!(r.capabilities, s(&["tools", "reasoning"]));

    let inf = infer(
        "Qwen/Qwen3-30B-A3B-Instruct-2507",
        true,
        &cfg,
        61_000_000_000,
        None,
        1,
        "vllm-node",
    );
    assert!(!inf.recipe.args.contains(&"--reasoning-parser".to_string()));
    assert_eq!(inf.recipe.capabilities, s(&["tools"]));
    assert!(inf.notes.iter().any(|n| n.contains("instruct variant")));
    assert!(inf.notes.iter().any(|n| n.contains("node memory unknown")));

    let inf = infer(
        "Qwen/Qwen3-Coder-30B-A3B-Instruct",
        true,
        &cfg,
        1,
        None,
        1,
        "vllm-node",
    );
    assert!(has_pair(
        &inf.recipe.args,
        "--tool-call-parser",
        "qwen3_coder"
    ));
}

#[test]
fn infer_vision() {
    let inf = infer(
        "Qwen/Qwen2.5-VL-7B-Instruct",
        true,
        &config("qwen2.5-vl-7b-instruct.json"),
        16_600_000_000,
        Some(GB128),
        1,
        "vllm-node",
    );
    let r = &inf.recipe;
    validate(r).unwrap();
    assert_eq!(r.capabilities, s(&["vision"]));
    assert_eq!(
        r.args,
        s(&[
            "--max-num-batched-tokens",
            "16384",
            "--max-model-len",
            "32768"
        ])
    );
    assert!(
        !r.args
            .iter()
            .any(|a| a.starts_with("--limit-mm-per-prompt"))
    );
    assert!(
        inf.notes
            .iter()
            .any(|n| n.starts_with("vision:") && n.contains("only a real start"))
    );
}

#[test]
fn infer_hybrid_mamba() {
    let inf = infer(
        "nvidia/NVIDIA-Nemotron-Nano-9B-v2",
        true,
        &config("nemotron-nano-9b-v2.json"),
        17_800_000_000,
        Some(GB128),
        2,
        "vllm-node",
    );
    let r = &inf.recipe;
    validate(r).unwrap();
    assert_eq!(r.architecture.as_deref(), Some("NemotronHForCausalLM"));
    assert!(has_pair(&r.args, "--max-num-batched-tokens", "16384"));
    assert_eq!(
        r.args
            .iter()
            .filter(|a| *a == "--max-num-batched-tokens")
            .count(),
        1
    );
    assert!(!r.args.contains(&"--trust-remote-code".to_string()));
    assert!(r.capabilities.is_empty());
    assert!(inf.notes.iter().any(|n| n.starts_with("Mamba hybrid:")));
    assert!(inf.notes.iter().any(|n| n.contains("auto_map")));

    // The key alone marks a hybrid too.
    let cfg = json!({"architectures": ["SomeNewForCausalLM"], "layers_block_type": ["mamba", "attention"]});
    let inf = infer("org/new", true, &cfg, 1_000_000_000, None, 1, "vllm-node");
    assert!(has_pair(
        &inf.recipe.args,
        "--max-num-batched-tokens",
        "16384"
    ));
}

#[test]
fn infer_gpt_oss() {
    let inf = infer(
        "openai/gpt-oss-120b",
        true,
        &config("gpt-oss-120b.json"),
        65_300_000_000,
        Some(GB128),
        2,
        "vllm-node",
    );
    let r = &inf.recipe;
    validate(r).unwrap();
    assert_eq!(r.mode, Mode::Solo);
    assert_eq!(
        r.args,
        s(&[
            "--reasoning-parser",
            "openai_gptoss",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "openai",
            "--max-model-len",
            "32768",
        ])
    );
    assert_eq!(r.capabilities, s(&["reasoning", "tools"]));
    assert!(
        inf.notes
            .iter()
            .any(|n| n.starts_with("MoE:") && n.contains("128 experts, 4 active"))
    );
    assert!(inf.notes.iter().any(|n| n.contains("MXFP4")));
    // Sliding/full attention layer types are not a Mamba hybrid.
    assert!(!inf.notes.iter().any(|n| n.starts_with("Mamba hybrid")));
}

#[test]
fn infer_speech_checkpoints_are_not_text_or_vision() {
    let inf = infer(
        "nvidia/parakeet-ctc-1.1b",
        true,
        &config("parakeet-ctc-1.1b.json"),
        4_300_000_000,
        Some(GB128),
        1,
        "vllm-node",
    );
    assert_eq!(inf.recipe.architecture.as_deref(), Some("ParakeetForCTC"));
    assert!(inf.recipe.args.is_empty());
    assert!(inf.recipe.capabilities.is_empty());
    assert!(
        inf.notes
            .iter()
            .any(|n| n.contains("speech-recognition model"))
    );

    let inf = infer(
        "openai/whisper-large-v3",
        true,
        &config("whisper-large-v3.json"),
        3_100_000_000,
        Some(GB128),
        1,
        "vllm-node",
    );
    assert_eq!(inf.recipe.capabilities, s(&["transcription"]));
    assert!(
        !inf.recipe
            .args
            .contains(&"--max-num-batched-tokens".to_string())
    );
}

#[test]
fn infer_embedding() {
    let inf = infer(
        "BAAI/bge-m3",
        true,
        &config("bge-m3.json"),
        2_270_000_000,
        Some(GB128),
        2,
        "vllm-node",
    );
    let r = &inf.recipe;
    validate(r).unwrap();
    assert_eq!(r.args, s(&["--runner", "pooling"]));
    assert_eq!(r.capabilities, s(&["embedding"]));
    assert_eq!(r.key, "baai-bge-m3");
}

#[test]
fn infer_cluster_by_size_and_node_count() {
    let cfg = config("llama-3.1-8b-instruct.json");
    // 141 GB of weights on 128 GB nodes: cluster when two nodes exist.
    let inf = infer(
        "meta-llama/Llama-3.1-70B-Instruct",
        true,
        &cfg,
        141_000_000_000,
        Some(GB128),
        2,
        "vllm-node",
    );
    assert_eq!(inf.recipe.mode, Mode::Cluster);
    assert_eq!(inf.recipe.nodes, Some(2));
    assert_eq!(cluster_nodes(&inf.recipe), 2);
    assert_eq!(inf.recipe.expected_ready_seconds, 60 + 564 + 60);
    validate(&inf.recipe).unwrap();
    assert!(
        inf.notes
            .iter()
            .any(|n| n.starts_with("cluster of 2 nodes"))
    );
    // One node only: solo, with a warning.
    let inf = infer(
        "meta-llama/Llama-3.1-70B-Instruct",
        true,
        &cfg,
        141_000_000_000,
        Some(GB128),
        1,
        "vllm-node",
    );
    assert_eq!(inf.recipe.mode, Mode::Solo);
    assert!(inf.notes.iter().any(|n| n.contains("likely will not fit")));
    // Far too big even for two.
    let inf = infer(
        "x/huge",
        true,
        &cfg,
        400_000_000_000,
        Some(GB128),
        2,
        "vllm-node",
    );
    assert!(
        inf.notes
            .iter()
            .any(|n| n.contains("not fit even on two nodes"))
    );
    // Exactly at 70% stays solo.
    let inf = infer(
        "x/edge",
        true,
        &cfg,
        89_600_000_000,
        Some(GB128),
        2,
        "vllm-node",
    );
    assert_eq!(inf.recipe.mode, Mode::Solo);
}

#[test]
fn infer_local_path_and_nested_text_config() {
    let cfg = json!({
        "architectures": ["Llama4ForConditionalGeneration"],
        "model_type": "llama4",
        "text_config": {"num_local_experts": 16, "max_position_embeddings": 10485760, "model_type": "llama4_text"},
        "vision_config": {"hidden_size": 1408}
    });
    let inf = infer("/models/scout-ft", false, &cfg, 0, None, 1, "my/image:1");
    let r = &inf.recipe;
    validate(r).unwrap();
    assert_eq!(r.path.as_deref(), Some("/models/scout-ft"));
    assert_eq!(r.repo, None);
    assert_eq!(r.key, "models-scout-ft");
    assert_eq!(r.name, "scout-ft");
    assert_eq!(r.size_gb, None);
    assert_eq!(r.runtime.image, "my/image:1");
    assert_eq!(r.capabilities, s(&["vision"]));
    assert!(has_pair(&r.args, "--max-model-len", "32768"));
    assert!(
        inf.notes
            .iter()
            .any(|n| n.starts_with("MoE:") && n.contains("16 experts"))
    );
}

#[test]
fn infer_never_panics_on_odd_json() {
    let odd = [
        json!(null),
        json!([]),
        json!("config"),
        json!(42),
        json!({}),
        json!({"architectures": 5}),
        json!({"architectures": [1, null, {"a": 1}]}),
        json!({"architectures": [""], "model_type": 7}),
        json!({"architectures": ["X"], "num_experts": "many", "max_position_embeddings": -1}),
        json!({"architectures": ["X"], "num_experts": 1e300, "max_position_embeddings": 1.5e19}),
        json!({"text_config": "nope", "llm_config": [1], "quantization_config": "fp8"}),
        json!({"text_config": {"architectures": ["Qwen3ForCausalLM"], "num_experts": null}}),
        json!({"quantization_config": {"quant_method": 3}, "layer_types": [1, "mamba"]}),
        json!({"layer_types": "mamba", "vision_config": null, "torch_dtype": ["x"]}),
    ];
    for cfg in odd {
        for (size, mem, nodes) in [(0, None, 0), (u64::MAX, Some(0), 5), (1, Some(u64::MAX), 2)] {
            let inf = infer("org/odd", true, &cfg, size, mem, nodes, "vllm-node");
            assert!(!inf.notes.is_empty());
            assert!(is_valid_key(&inf.recipe.key));
        }
    }
    // Bad inputs produce a recipe that says what is wrong rather than panicking.
    let inf = infer("relative/path", false, &json!({}), 1, None, 1, "vllm-node");
    assert!(
        inf.notes
            .iter()
            .any(|n| n.contains("does not validate") && n.contains("path"))
    );
}

// ---------------------------------------------------------------- architecture check

#[test]
fn check_architecture_outcomes() {
    let mut r = recipe("kokoro-ish");
    assert!(
        check_architecture(&r, &s(&["Anything"]))
            .unwrap()
            .contains("not checked")
    );

    r.architecture = Some("Qwen3ForCausalLM".into());
    assert!(check_architecture(&r, &s(&["Qwen3ForCausalLM"])).is_ok());
    assert!(check_architecture(&r, &[]).unwrap().contains("not checked"));

    let e = check_architecture(&r, &s(&["ParakeetForCTC"])).unwrap_err();
    assert!(
        e.contains("ParakeetForCTC") && e.contains("Qwen3ForCausalLM"),
        "{e}"
    );
    assert!(
        e.contains("this looks like a speech model, not the text model the recipe expects"),
        "{e}"
    );

    let e = check_architecture(&r, &s(&["LlamaForCausalLM"])).unwrap_err();
    assert!(
        e.contains("LlamaForCausalLM") && !e.contains("looks like"),
        "{e}"
    );

    let e = check_architecture(&r, &s(&["Qwen2_5_VLForConditionalGeneration"])).unwrap_err();
    assert!(
        e.contains("vision-language model, not the text model"),
        "{e}"
    );

    r.architecture = Some("KokoroTTS".into());
    let e = check_architecture(&r, &s(&["WhisperForConditionalGeneration"])).unwrap_err();
    assert!(
        e.contains("speech model, not the text-to-speech model"),
        "{e}"
    );
}
