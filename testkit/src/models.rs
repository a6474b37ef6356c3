//! Models for tests: a small config.json, recipes that run the fake vLLM image the way a vLLM
//! image runs, and free ports for their servers.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::TestController;

/// A small Llama config.json (a dense text model).
pub const LLAMA_CONFIG: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"hidden_size":256,"max_position_embeddings":4096,"torch_dtype":"bfloat16"}"#;

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A recipe running the fake vLLM image as a vLLM image would run.
pub fn fake_recipe(key: &str, repo: &str, image: &str, port: u16, extra: &[&str]) -> Value {
    let mut args: Vec<String> = [
        "--gpu-memory-utilization",
        "0.05",
        "--max-model-len",
        "4096",
        "--enable-prefix-caching",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    json!({
        "key": key,
        "name": format!("Test model {key}"),
        "repo": repo,
        "runtime": {
            "image": image,
            "serve_command": ["/bin/spark-fake", "vllm"],
            "check_command": ["/bin/spark-fake", "vllm", "--check-args"],
        },
        "served_model_name": key,
        "port": port,
        "args": args,
        "expected_ready_seconds": 2,
        "timeout_seconds": 40,
        "architecture": "LlamaForCausalLM",
    })
}

/// Add a recipe through the API (201 expected).
pub async fn add_recipe(ctl: &TestController, r: Value) {
    let resp = ctl
        .admin(Method::POST, "/api/models")
        .json(&r)
        .send()
        .await
        .expect("POST /api/models");
    let status = resp.status();
    let body: Value = resp.json().await.expect("JSON answer");
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
