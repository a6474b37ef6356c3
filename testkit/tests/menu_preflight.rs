//! The disk-driven menu and preflight against a real Docker engine: a model on disk with no
//! recipe is inferred and confirmed once, knobs replace flags, and preflight catches the wrong
//! weights, a missing image and arguments the runtime's own parser refuses — without touching
//! the running model.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use spark_testkit::{DockerBox, TestController, init, plant_hf_model};

const MOE_CONFIG: &str = r#"{"architectures":["Qwen3MoeForCausalLM"],"model_type":"qwen3_moe","num_experts":128,"num_experts_per_tok":8,"num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":2,"head_dim":64,"hidden_size":512,"max_position_embeddings":40960,"torch_dtype":"bfloat16"}"#;
const ASR_CONFIG: &str = r#"{"architectures":["ParakeetForCTC"],"model_type":"parakeet_ctc"}"#;

fn model<'a>(menu: &'a Value, key: &str) -> &'a Value {
    menu["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {menu:#}"))
}

async fn validate(ctl: &TestController, key: &str) -> Value {
    let resp = ctl
        .admin(Method::POST, &format!("/api/swap/{key}/validate"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {v:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferred_recipes_knobs_and_preflight() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let Some(b1) = DockerBox::start(&ctl, dir.path(), "spark-1").await else {
        return;
    };
    let image = b1.dockerd.fake_image();
    plant_hf_model(&b1.hf_cache, "Qwen/Qwen3-30B-A3B", MOE_CONFIG, 4096);

    // On disk with no recipe: needs setup, with a recipe inferred from config.json.
    let (_, menu) = ctl.get_json("/api/models").await;
    let m = model(&menu, "qwen-qwen3-30b-a3b");
    assert_eq!(m["state"], "needs_setup", "{m:#}");
    assert_eq!(m["needs_setup"], true);
    assert_eq!(m["recipe"]["repo"], "Qwen/Qwen3-30B-A3B");
    assert_eq!(m["recipe"]["architecture"], "Qwen3MoeForCausalLM");
    assert!(
        m["inferred_notes"]
            .to_string()
            .to_lowercase()
            .contains("moe"),
        "{m:#}"
    );
    assert_eq!(m["nodes"][0]["weights"], "present");
    assert!(m["nodes"][0]["gpu_memory_gb"].as_f64().unwrap() > 0.0);
    // Bundled recipes whose weights are absent are downloadable.
    let bundled = model(&menu, "gpt-oss-120b");
    assert_eq!(bundled["state"], "downloadable", "{bundled:#}");
    assert_eq!(bundled["source"], "bundled");

    // Confirm once, pointing it at the test runtime.
    let resp = ctl
        .admin(Method::POST, "/api/models/qwen-qwen3-30b-a3b/confirm")
        .json(&json!({
            "runtime": {"image": image, "serve_command": ["/bin/spark-fake", "vllm"],
                        "check_command": ["/bin/spark-fake", "vllm", "--check-args"]},
            "port": 18931,
        }))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert!(body["recipe"].is_object(), "{body:#}");
    let (_, menu) = ctl.get_json("/api/models").await;
    let m = model(&menu, "qwen-qwen3-30b-a3b");
    assert_eq!(m["state"], "ready", "{m:#}");
    assert_eq!(m["source"], "confirmed");
    // Confirming again is refused: it has a recipe now.
    let resp = ctl
        .admin(Method::POST, "/api/models/qwen-qwen3-30b-a3b/confirm")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);

    // Knobs replace the matching flags instead of adding a second copy.
    let resp = ctl
        .admin(Method::PUT, "/api/models/qwen-qwen3-30b-a3b/knobs")
        .json(&json!({"max_model_len": 2048, "gpu_memory_utilization": 0.04, "fp8_kv_cache": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let k: Value = resp.json().await.unwrap();
    let args: Vec<String> = serde_json::from_value(k["args"].clone()).unwrap();
    assert_eq!(
        args.iter().filter(|a| *a == "--max-model-len").count(),
        1,
        "{args:?}"
    );
    let i = args.iter().position(|a| a == "--max-model-len").unwrap();
    assert_eq!(args[i + 1], "2048");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--kv-cache-dtype" && w[1] == "fp8"),
        "{args:?}"
    );
    let gb = k["nodes"][0]["gpu_memory_gb"].as_f64().unwrap();
    let total = k["nodes"][0]["memory_total_gb"].as_f64().unwrap();
    assert!((gb - 0.04 * total).abs() < 0.2, "{k:#}");
    let resp = ctl
        .admin(Method::PUT, "/api/models/qwen-qwen3-30b-a3b/knobs")
        .json(&json!({"gpu_memory_utilization": 1.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpu_memory_utilization"),
        "{err}"
    );

    // Preflight passes, including the image's own argument parser.
    let v = validate(&ctl, "qwen-qwen3-30b-a3b").await;
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(check(&v, "arguments")["ok"], true);
    assert_eq!(check(&v, "architecture")["ok"], true);
    assert!(
        b1.dockerd.docker(&["ps", "-aq"]).unwrap().is_empty(),
        "the check container is removed"
    );

    // A recipe whose weights are an ASR checkpoint, with a misspelt flag, on an absent image.
    plant_hf_model(&b1.hf_cache, "nvidia/parakeet-ctc-1.1b", ASR_CONFIG, 1024);
    let bad = json!({
        "key": "wrong", "name": "Wrong variant", "repo": "nvidia/parakeet-ctc-1.1b",
        "runtime": {"image": image, "serve_command": ["/bin/spark-fake", "vllm"],
                    "check_command": ["/bin/spark-fake", "vllm", "--check-args"]},
        "args": ["--gpu-memory-utilization", "0.05", "--max-modle-len", "4096"],
        "architecture": "LlamaForCausalLM", "port": 18932,
    });
    let resp = ctl
        .admin(Method::POST, "/api/models")
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v = validate(&ctl, "wrong").await;
    assert_eq!(v["ok"], false);
    let arch = check(&v, "architecture");
    assert_eq!(arch["ok"], false);
    assert!(
        arch["detail"].as_str().unwrap().contains("ParakeetForCTC"),
        "{arch}"
    );
    let args = check(&v, "arguments");
    assert_eq!(args["ok"], false);
    assert!(
        args["detail"].as_str().unwrap().contains("--max-modle-len"),
        "{args}"
    );
    // A swap to it stops at preflight and touches nothing.
    let resp = ctl
        .admin(Method::POST, "/api/swap")
        .json(&json!({"key": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job: Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    let j = spark_testkit::wait_until(
        std::time::Duration::from_secs(20),
        "the job to fail",
        || async {
            let (_, j) = ctl.get_json(&format!("/api/swap/{id}")).await;
            (j["status"] == "failed").then_some(j)
        },
    )
    .await;
    assert!(
        j["error"].as_str().unwrap().contains("architecture"),
        "{j:#}"
    );

    let mut missing = bad.clone();
    missing["key"] = json!("noimage");
    missing["runtime"]["image"] = json!("vllm-node:does-not-exist");
    missing["architecture"] = json!("ParakeetForCTC");
    let resp = ctl
        .admin(Method::POST, "/api/models")
        .json(&missing)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v = validate(&ctl, "noimage").await;
    let img = check(&v, "image");
    assert_eq!(img["ok"], false);
    assert!(
        img["detail"].as_str().unwrap().contains("not on this node"),
        "{img}"
    );

    // Recipes added through the API can be removed; bundled ones cannot.
    let resp = ctl
        .admin(Method::DELETE, "/api/models/noimage")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = ctl
        .admin(Method::DELETE, "/api/models/gpt-oss-120b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // Bad recipes say what is wrong.
    let resp = ctl
        .admin(Method::POST, "/api/models")
        .json(&json!({"key": "Bad Key", "name": "x", "repo": "a/b", "runtime": {"image": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"].as_str().unwrap().contains("key"),
        "{err}"
    );
    // A spark-vllm-docker recipe can be added as YAML.
    let yaml = "recipe_version: \"1\"\nname: Tiny\ndescription: test\nmodel: fake-org/tiny\ncontainer: vllm-node\nsolo_only: true\ndefaults:\n  port: 8888\n  host: 0.0.0.0\n  gpu_memory_utilization: 0.7\ncommand: |\n  vllm serve fake-org/tiny \\\n    --port {port} --host {host} \\\n    --gpu-memory-utilization {gpu_memory_utilization}\n";
    let resp = ctl
        .admin(Method::POST, "/api/models")
        .json(&json!({"yaml": yaml}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["recipe"]["port"], 8888, "{body:#}");
    assert_eq!(body["recipe"]["repo"], "fake-org/tiny");
}
