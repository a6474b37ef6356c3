//! The model store through the controller's API: a download to two boxes with SSE progress
//! from a Hugging Face-compatible server, the per-node disk listing, a gated repository, and
//! deletes with their guards.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use spark_fakes::hf::{HfFakeConfig, HfRepo};
use spark_testkit::{TestAgent, TestController, init, offline_runtime};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Read an SSE response until the `finished` event; returns (event, data) pairs.
async fn read_events(resp: reqwest::Response) -> Vec<(String, Value)> {
    spark_testkit::read_sse(resp, "finished", Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_to_two_boxes_list_and_delete() {
    init();
    let weights: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let config =
        br#"{"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3","torch_dtype":"bfloat16"}"#;
    let (_, hf) = spark_fakes::hf::spawn(HfFakeConfig {
        repos: vec![
            HfRepo::new("org/tiny", COMMIT)
                .file("config.json", config.to_vec(), false)
                .file("model.safetensors", weights.clone(), true),
            HfRepo::new("org/gated", COMMIT)
                .file("config.json", config.to_vec(), false)
                .gated(),
        ],
        token: Some("hf_right_token".into()),
        // Every large file's first transfer is cut: the agent resumes with Range.
        interrupt_after_bytes: Some(1024 * 1024),
        ..Default::default()
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let mut nodes = Vec::new();
    let mut agents = Vec::new();
    for name in ["spark-1", "spark-2"] {
        let state = dir.path().join(name);
        let identity = ctl.enroll(&state, name).await;
        let mut rc = offline_runtime(&state);
        rc.hf_endpoint = hf.endpoint();
        // A wrong token on the box: gated repos fail, public ones work.
        rc.hf_token = Some(spark_common::ops::Secret("hf_wrong_token".into()));
        nodes.push(identity.node_id.clone());
        agents.push(TestAgent::run_with(identity, &state, rc));
    }
    for n in &nodes {
        ctl.wait_node_connected(n, true, Duration::from_secs(5))
            .await;
    }

    // Start the download to both boxes; follow progress over SSE.
    let resp = ctl
        .admin(Method::POST, "/api/models/download")
        .json(&json!({"repo": "org/tiny", "nodes": ["spark-1", nodes[1]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let started: Value = resp.json().await.unwrap();
    let events_url = started["events_url"].as_str().unwrap().to_string();
    let resp = ctl.client.get(ctl.url(&events_url)).send().await.unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = read_events(resp).await;
    let kinds: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(kinds.contains(&"progress"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "node_done").count(),
        2,
        "{events:?}"
    );
    let (_, finished) = events.last().unwrap();
    assert_eq!(finished["status"], "done", "{finished}");
    assert!(
        hf.range_headers()
            .iter()
            .any(|(_, r)| r.starts_with("bytes=") && !r.starts_with("bytes=0-")),
        "no resumed transfer: {:?}",
        hf.range_headers()
    );
    // Reopening the stream after the end replays it (a reopened page re-attaches).
    let again = read_events(ctl.client.get(ctl.url(&events_url)).send().await.unwrap()).await;
    assert_eq!(again.last().unwrap().0, "finished");
    let (_, status) = ctl
        .get_json(&format!(
            "/api/models/downloads/{}",
            started["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status["status"], "done");

    // The weights on disk hash correctly on both boxes.
    for name in ["spark-1", "spark-2"] {
        let file = dir.path().join(name).join(format!(
            "hf/hub/models--org--tiny/snapshots/{COMMIT}/model.safetensors"
        ));
        assert_eq!(
            spark_common::sha256_hex(&std::fs::read(&file).unwrap()),
            spark_common::sha256_hex(&weights)
        );
    }

    // The disk listing shows it on both boxes, complete, with its size and config summary.
    let (status, disk) = ctl.get_json("/api/models/disk").await;
    assert_eq!(status, 200);
    for n in disk["nodes"].as_array().unwrap() {
        let m = n["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["repo_id"] == "org/tiny")
            .unwrap_or_else(|| panic!("{n}"));
        assert_eq!(m["complete"], true);
        let size = m["size_bytes"].as_u64().unwrap();
        let files = (weights.len() + config.len()) as u64;
        assert!(size >= files && size < files + 4096, "{size}");
        assert_eq!(m["config"]["architectures"], json!(["Qwen3ForCausalLM"]));
        assert_eq!(m["revisions"][0]["commit"], COMMIT);
    }

    // A gated repository with a wrong token: the gated message, never the token.
    let resp = ctl
        .admin(Method::POST, "/api/models/download")
        .json(&json!({"repo": "org/gated", "nodes": ["spark-1"]}))
        .send()
        .await
        .unwrap();
    let started: Value = resp.json().await.unwrap();
    let events = read_events(
        ctl.client
            .get(ctl.url(started["events_url"].as_str().unwrap()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let failed = events
        .iter()
        .find(|(e, _)| e == "node_failed")
        .map(|(_, d)| d["message"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{events:?}"));
    assert!(
        failed.contains("gated or unauthorized: accept the license / check the token"),
        "{failed}"
    );
    let everything = format!("{events:?} {:?}", ctl.events().await);
    assert!(!everything.contains("hf_wrong_token"));

    // Bad requests say what is wrong.
    for (body, needle) in [
        (
            json!({"repo": "../etc", "nodes": ["spark-1"]}),
            "not a Hugging Face repository id",
        ),
        (
            json!({"repo": "org/tiny", "nodes": []}),
            "at least one node",
        ),
        (
            json!({"repo": "org/tiny", "revision": "a b", "nodes": ["spark-1"]}),
            "not a revision",
        ),
        (json!({"repo": "org/tiny", "nodes": ["nobody"]}), "no node"),
    ] {
        let resp = ctl
            .admin(Method::POST, "/api/models/download")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_client_error(), "{body}");
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }

    // Delete on one box: freed bytes reported, the other box keeps its copy.
    let resp = ctl
        .admin(Method::DELETE, "/api/models/disk")
        .json(&json!({"node": "spark-1", "repo": "org/tiny"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["freed_bytes"].as_u64().unwrap() >= weights.len() as u64,
        "{v}"
    );
    let (_, disk) = ctl.get_json("/api/models/disk").await;
    let has = |node: &str| {
        disk["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .unwrap()["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["repo_id"] == "org/tiny")
    };
    assert!(!has("spark-1") && has("spark-2"));
    for (body, status) in [
        (json!({"node": "spark-2", "path": "/etc"}), 403),
        (json!({"node": "spark-2", "path": "/x/../etc"}), 400),
        (
            json!({"node": "spark-2", "repo": "org/tiny", "path": "/x"}),
            400,
        ),
        (json!({"node": "spark-2", "repo": "org/absent"}), 404),
        (json!({"node": "spark-2", "repo": "a;b"}), 400),
    ] {
        let resp = ctl
            .admin(Method::DELETE, "/api/models/disk")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            status,
            "{body}: {}",
            resp.text().await.unwrap()
        );
    }
    // Control endpoints need credentials.
    let resp = ctl
        .client
        .delete(ctl.url("/api/models/disk"))
        .json(&json!({"node": "spark-2", "repo": "org/tiny"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let events = ctl.events().await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "model_deleted" && e["actor"].is_string())
    );
    assert!(events.iter().any(|e| e["kind"] == "model_downloaded"));
    for a in agents {
        a.stop().await;
    }
}
