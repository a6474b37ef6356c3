//! Swaps on real Docker engines with the fake vLLM image: solo A -> B, a cluster across two
//! boxes with separate engines, a server that dies while loading, a controller restarted
//! mid-swap, the lock in the way of a swap, and webhooks from real swaps.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use spark_testkit::models::{LLAMA_CONFIG, add_recipe, fake_recipe as recipe, free_port};
use spark_testkit::webhook::{Receiver, assert_signed};
use spark_testkit::{DockerBox, TestController, init, plant_hf_model, read_sse, wait_until};

async fn start_swap(ctl: &TestController, body: Value) -> Value {
    let resp = ctl
        .admin(Method::POST, "/api/swap")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    v
}

/// Follow a job's event stream to its end.
async fn follow(ctl: &TestController, job: &str) -> Vec<Value> {
    let resp = ctl
        .client
        .get(ctl.url(&format!("/api/swap/{job}/stream")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    read_sse(resp, "done", Duration::from_secs(60))
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

fn phases(events: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events.iter().filter(|e| e["type"] == "phase") {
        let p = e["phase"].as_str().unwrap().to_string();
        if out.last() != Some(&p) {
            out.push(p);
        }
    }
    out
}

fn containers(b: &DockerBox) -> Vec<String> {
    b.dockerd
        .docker(&["ps", "-a", "--format", "{{.Names}} {{.State}}"])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn inspect(b: &DockerBox, name: &str, format: &str) -> String {
    b.dockerd
        .docker(&["inspect", "--format", format, name])
        .unwrap()
}

fn argv(b: &DockerBox, name: &str) -> Vec<String> {
    let cmd = inspect(b, name, "{{json .Config.Entrypoint}} {{json .Config.Cmd}}");
    let (ep, cmd) = cmd.split_once(' ').unwrap();
    let mut v: Vec<String> = serde_json::from_str(ep).unwrap_or_default();
    v.extend(serde_json::from_str::<Vec<String>>(cmd).unwrap());
    v
}

/// The value after `flag` in an argv.
fn flag<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solo_swap_a_to_b_then_a_failing_load_then_the_lock() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let Some(b1) = DockerBox::start(&ctl, dir.path(), "spark-1").await else {
        return;
    };
    let image = b1.dockerd.fake_image();
    plant_hf_model(&b1.hf_cache, "fake-org/model-a", LLAMA_CONFIG, 4096);
    plant_hf_model(&b1.hf_cache, "fake-org/model-b", LLAMA_CONFIG, 8192);
    let (pa, pb) = (free_port(), free_port());
    add_recipe(
        &ctl,
        recipe(
            "model-a",
            "fake-org/model-a",
            &image,
            pa,
            &["--load-delay-ms", "300"],
        ),
    )
    .await;
    add_recipe(
        &ctl,
        recipe(
            "model-b",
            "fake-org/model-b",
            &image,
            pb,
            &["--load-delay-ms", "1500"],
        ),
    )
    .await;

    // A webhook receiver that fails its first answer (the delivery is retried).
    let receiver = Receiver::start(&[500]).await;
    let secret = "swap-hook-secret-0123456789";
    let resp = ctl
        .admin(Method::POST, "/api/webhooks")
        .json(&json!({"url": receiver.url("/hook"), "secret": secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // The menu shows both as ready to run from disk on spark-1.
    let (_, menu) = ctl.get_json("/api/models").await;
    let a = menu["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "model-a")
        .unwrap();
    assert_eq!(a["state"], "ready", "{a}");
    assert_eq!(a["nodes"][0]["weights"], "present");

    // Swap to A.
    let job = start_swap(&ctl, json!({"key": "model-a"})).await;
    let events = follow(&ctl, job["id"].as_str().unwrap()).await;
    assert_eq!(
        phases(&events),
        ["preflight", "stopping", "starting", "loading", "ready"],
        "{events:#?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "events in order: {seqs:?}"
    );
    assert!(
        containers(&b1)
            .iter()
            .any(|c| c == "sc-llm-model-a running")
    );

    // Swap to B: A's container is gone, B's runs with the recipe's arguments.
    let t0 = std::time::Instant::now();
    let job = start_swap(&ctl, json!({"key": "model-b"})).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["status"], "running");
    let events = follow(&ctl, &id).await;
    assert_eq!(
        phases(&events),
        ["preflight", "stopping", "starting", "loading", "ready"],
        "{events:#?}"
    );
    let stopping = events.iter().find(|e| e["phase"] == "stopping").unwrap();
    assert!(
        stopping["message"]
            .as_str()
            .unwrap()
            .contains("sc-llm-model-a"),
        "{stopping}"
    );
    let names = containers(&b1);
    assert_eq!(
        names,
        vec!["sc-llm-model-b running".to_string()],
        "only B remains"
    );
    let cmd = argv(&b1, "sc-llm-model-b");
    assert_eq!(&cmd[..3], ["/bin/spark-fake", "vllm", "fake-org/model-b"]);
    assert_eq!(flag(&cmd, "--served-model-name"), Some("model-b"));
    assert_eq!(flag(&cmd, "--port"), Some(pb.to_string().as_str()));
    assert_eq!(flag(&cmd, "--gpu-memory-utilization"), Some("0.05"));
    assert_eq!(flag(&cmd, "--load-delay-ms"), Some("1500"));
    assert!(cmd.contains(&"--enable-prefix-caching".to_string()));
    let labels = inspect(&b1, "sc-llm-model-b", "{{json .Config.Labels}}");
    assert!(
        labels.contains(&format!("\"spark-control.swap-job\":\"{id}\"")),
        "{labels}"
    );
    assert!(
        labels.contains("\"io.spark-control.role\":\"llm\""),
        "{labels}"
    );

    // The server's log lines were streamed, and readiness was noticed within 1 s of the server
    // binding its port (the fake logs "Starting vLLM API server" right before it binds).
    let bound = events
        .iter()
        .find(|e| {
            e["type"] == "log"
                && e["line"]
                    .as_str()
                    .unwrap()
                    .contains("Starting vLLM API server")
        })
        .unwrap_or_else(|| panic!("no server log line in {events:#?}"));
    let ready = events.iter().find(|e| e["phase"] == "ready").unwrap();
    let lag = ready["at"].as_i64().unwrap() - bound["at"].as_i64().unwrap();
    assert!(
        (0..=1000).contains(&lag),
        "ready noticed {lag} ms after the server bound"
    );
    assert!(t0.elapsed() < Duration::from_secs(20));

    // The job and the status say so.
    let (_, j) = ctl.get_json(&format!("/api/swap/{id}")).await;
    assert_eq!(j["status"], "ready", "{j}");
    assert!(j["elapsed_seconds"].as_f64().unwrap() >= 1.5);
    assert_eq!(j["expected_ready_seconds"], 2);
    let (_, status) = ctl.get_json("/api/status").await;
    let models = &status["nodes"][0]["models"];
    assert_eq!(models[0]["key"], "model-b", "{status}");
    assert_eq!(models[0]["state"], "running");
    assert!(status["active_job"].is_null());
    // Re-attaching to a finished job replays it from any point (here: the last two events).
    let last = events.last().unwrap()["seq"].as_u64().unwrap();
    let resp = ctl
        .client
        .get(ctl.url(&format!("/api/swap/{id}/stream")))
        .header("Last-Event-ID", (last - 2).to_string())
        .send()
        .await
        .unwrap();
    let replay = read_sse(resp, "done", Duration::from_secs(10)).await;
    let replayed: Vec<u64> = replay
        .iter()
        .map(|(_, e)| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(replayed, [last - 1, last]);
    assert_eq!(replay[1].0, "done");

    // A server that exits while loading: swap_failed with the log tail, no containers left.
    let pc = free_port();
    add_recipe(
        &ctl,
        recipe(
            "model-c",
            "fake-org/model-a",
            &image,
            pc,
            &["--exit-during-load-ms", "400"],
        ),
    )
    .await;
    let job = start_swap(&ctl, json!({"key": "model-c"})).await;
    let id = job["id"].as_str().unwrap().to_string();
    let events = follow(&ctl, &id).await;
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["phase"], "failed");
    let (_, j) = ctl.get_json(&format!("/api/swap/{id}")).await;
    assert_eq!(j["status"], "failed");
    let error = j["error"].as_str().unwrap();
    assert!(
        error.contains("exited during the load with code 1"),
        "{error}"
    );
    let tail = j["log_tail"].to_string();
    assert!(tail.contains("CUDA out of memory"), "{tail}");
    let left: Vec<String> = containers(&b1);
    assert!(
        left.is_empty(),
        "containers left after a failed swap: {left:?}"
    );

    // Swap counts and durations in /metrics: A and B ready, C failed.
    let metrics = ctl
        .client
        .get(ctl.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "spark_swaps_total{model=\"model-a\",outcome=\"ready\"} 1",
        "spark_swaps_total{model=\"model-b\",outcome=\"ready\"} 1",
        "spark_swaps_total{model=\"model-c\",outcome=\"failed\"} 1",
        "spark_swap_duration_seconds_count{model=\"model-c\",outcome=\"failed\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in\n{metrics}"
        );
    }
    // The audit log has the three swaps with their actor and result; the swap events carry
    // the swap's subject.
    let (_, audit) = ctl.get_json("/api/audit?actor=admin-token&limit=500").await;
    let swaps = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "POST" && a["target"] == "/api/swap" && a["status"] == 202)
        .count();
    assert_eq!(swaps, 3, "{audit}");
    let (_, ev) = ctl.get_json("/api/events?subject=swap:model-c").await;
    assert_eq!(ev[0]["kind"], "swap_failed", "{ev}");

    // The webhooks: swap_complete for A and B, swap_failed for C with its log tail, each
    // signed; the first attempt got a 500 and the same delivery came again, byte for byte.
    let got = wait_until(
        Duration::from_secs(20),
        "the webhook deliveries",
        || async {
            let got = receiver.got();
            let distinct = |event: &str| {
                let mut ids: Vec<String> = got
                    .iter()
                    .map(|r| r.json())
                    .filter(|j| j["event"] == event)
                    .map(|j| j["delivery_id"].as_str().unwrap().to_string())
                    .collect();
                ids.sort();
                ids.dedup();
                ids.len()
            };
            (distinct("swap_failed") == 1 && distinct("swap_complete") == 2).then_some(got)
        },
    )
    .await;
    assert_eq!(
        got[0].header("x-spark-delivery"),
        got[1].header("x-spark-delivery")
    );
    assert_eq!(got[0].body, got[1].body);
    for r in &got {
        assert_signed(r, secret);
    }
    let failed = got
        .iter()
        .map(|r| r.json())
        .find(|j| j["event"] == "swap_failed")
        .unwrap();
    assert_eq!(failed["data"]["job_id"], id.as_str());
    assert_eq!(failed["data"]["model"], "model-c");
    assert!(
        failed["data"]["log_tail"]
            .to_string()
            .contains("CUDA out of memory"),
        "{failed}"
    );
    assert!(
        got.iter()
            .map(|r| r.json())
            .any(|j| j["event"] == "swap_complete"
                && j["data"]["model"] == "model-b"
                && j["data"]["status"] == "ready")
    );

    // The lock: a swap without the token gets 423 naming the holder; with it, it proceeds.
    let resp = ctl
        .admin(Method::POST, "/api/swap/lock")
        .json(&json!({"holder": "nightly-eval", "ttl_seconds": 60, "reason": "benchmarks"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let lock: Value = resp.json().await.unwrap();
    let token = lock["token"].as_str().unwrap().to_string();
    let resp = ctl
        .admin(Method::POST, "/api/swap")
        .json(&json!({"key": "model-a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::LOCKED);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nightly-eval"),
        "{err}"
    );
    let resp = ctl
        .admin(Method::POST, "/api/swap")
        .header("X-Spark-Lock-Token", &token)
        .json(&json!({"key": "model-a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job: Value = resp.json().await.unwrap();
    // A second swap while one runs is refused, naming the running job.
    let resp = ctl
        .admin(Method::POST, "/api/swap")
        .header("X-Spark-Lock-Token", &token)
        .json(&json!({"key": "model-b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let events = follow(&ctl, job["id"].as_str().unwrap()).await;
    assert_eq!(events.last().unwrap()["phase"], "ready", "{events:#?}");
    assert_eq!(containers(&b1), vec!["sc-llm-model-a running".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_swap_across_two_engines() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let Some(b1) = DockerBox::start(&ctl, dir.path(), "spark-1").await else {
        return;
    };
    let Some(b2) = DockerBox::start(&ctl, dir.path(), "spark-2").await else {
        return;
    };
    let image = b1.dockerd.fake_image();
    assert_eq!(image, b2.dockerd.fake_image());
    for b in [&b1, &b2] {
        plant_hf_model(&b.hf_cache, "fake-org/big", LLAMA_CONFIG, 16384);
    }
    let port = free_port();
    let mut r = recipe(
        "big",
        "fake-org/big",
        &image,
        port,
        &["--load-delay-ms", "500"],
    );
    r["mode"] = json!("cluster");
    r["env"] = json!({"NCCL_SOCKET_IFNAME": "enp1s0f1np1"});
    add_recipe(&ctl, r).await;

    // Preflight names both nodes and runs the image's own parser.
    let resp = ctl
        .admin(Method::POST, "/api/swap/big/validate")
        .json(&json!({"nodes": ["spark-1", "spark-2"]}))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "arguments" && c["ok"] == true)
    );

    let job = start_swap(&ctl, json!({"key": "big", "nodes": ["spark-1", "spark-2"]})).await;
    let events = follow(&ctl, job["id"].as_str().unwrap()).await;
    assert_eq!(events.last().unwrap()["phase"], "ready", "{events:#?}");

    let head = argv(&b1, "sc-llm-big");
    let worker = argv(&b2, "sc-llm-big-w1");
    for (cmd, rank) in [(&head, "0"), (&worker, "1")] {
        assert_eq!(flag(cmd, "--nnodes"), Some("2"), "{cmd:?}");
        assert_eq!(flag(cmd, "--tensor-parallel-size"), Some("2"), "{cmd:?}");
        assert_eq!(flag(cmd, "--node-rank"), Some(rank), "{cmd:?}");
        assert_eq!(flag(cmd, "--master-addr"), Some("127.0.0.1"), "{cmd:?}");
        assert_eq!(flag(cmd, "--master-port"), Some("29501"), "{cmd:?}");
    }
    assert!(!head.contains(&"--headless".to_string()));
    assert!(worker.contains(&"--headless".to_string()));
    let env = inspect(&b2, "sc-llm-big-w1", "{{json .Config.Env}}");
    assert!(env.contains("VLLM_HOST_IP=127.0.0.1"), "{env}");
    assert!(env.contains("NCCL_SOCKET_IFNAME=enp1s0f1np1"), "{env}");
    assert!(env.contains("HF_HUB_OFFLINE=1"), "{env}");
    let net = inspect(
        &b1,
        "sc-llm-big",
        "{{.HostConfig.NetworkMode}} {{.HostConfig.IpcMode}}",
    );
    assert_eq!(net, "host host");
    assert!(
        inspect(&b2, "sc-llm-big-w1", "{{json .Config.Labels}}")
            .contains("\"io.spark-control.role\":\"llm-worker\"")
    );
    let (_, status) = ctl.get_json("/api/status").await;
    let loaded = status["loaded"].as_array().unwrap();
    assert_eq!(loaded.len(), 1, "{status}");
    assert_eq!(loaded[0]["nodes"].as_array().unwrap().len(), 2, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restarted_mid_swap_finishes_the_job_with_one_model_running() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ctl");
    let mut ctl = TestController::start(&data).await;
    let Some(b1) = DockerBox::start(&ctl, dir.path(), "spark-1").await else {
        return;
    };
    let image = b1.dockerd.fake_image();
    plant_hf_model(&b1.hf_cache, "fake-org/slow", LLAMA_CONFIG, 4096);
    let port = free_port();
    add_recipe(
        &ctl,
        recipe(
            "slow",
            "fake-org/slow",
            &image,
            port,
            &["--load-delay-ms", "5000"],
        ),
    )
    .await;
    let job = start_swap(&ctl, json!({"key": "slow"})).await;
    let id = job["id"].as_str().unwrap().to_string();
    wait_until(
        Duration::from_secs(20),
        "the job to reach loading",
        || async {
            let (_, j) = ctl.get_json(&format!("/api/swap/{id}")).await;
            (j["phase"] == "loading").then_some(())
        },
    )
    .await;

    // The controller goes away mid-load and comes back on the same addresses.
    let (http, gateway) = (ctl.http, ctl.gateway);
    ctl.stop().await;
    let ctl = TestController::start_with(&data, http, gateway, |_| {}).await;
    let (_, j) = ctl.get_json(&format!("/api/swap/{id}")).await;
    assert_eq!(j["status"], "running", "{j}");
    let events = follow(&ctl, &id).await;
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "ready", "{events:#?}");
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("re-attached"))),
        "{events:#?}"
    );
    assert_eq!(containers(&b1), vec!["sc-llm-slow running".to_string()]);

    // A swap started and interrupted before its container exists ends failed with nothing left.
    add_recipe(
        &ctl,
        recipe("slow2", "fake-org/slow", &image, free_port(), &[]),
    )
    .await;
    let mut ctl = ctl;
    let job = start_swap(&ctl, json!({"key": "slow2"})).await;
    let id = job["id"].as_str().unwrap().to_string();
    ctl.stop().await;
    let ctl = TestController::start_with(&data, http, gateway, |_| {}).await;
    let j = wait_until(
        Duration::from_secs(45),
        "the interrupted job to end",
        || async {
            let (_, j) = ctl.get_json(&format!("/api/swap/{id}")).await;
            (j["status"] != "running").then_some(j)
        },
    )
    .await;
    let running: Vec<String> = containers(&b1);
    match j["status"].as_str().unwrap() {
        // It got as far as loading before the stop and was re-attached.
        "ready" => assert_eq!(running, vec!["sc-llm-slow2 running".to_string()]),
        _ => {
            assert!(j["error"].as_str().unwrap().contains("restarted"), "{j}");
            assert!(
                running.iter().all(|c| !c.starts_with("sc-llm-slow2")),
                "{running:?}"
            );
            assert!(running.len() <= 1, "{running:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_loading_queues_honours_the_lock_and_unloads_when_idle() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_with(
        &dir.path().join("ctl"),
        spark_testkit::LOOPBACK_ANY_PORT,
        spark_testkit::LOOPBACK_ANY_PORT,
        |c| c.on_demand_wait = Duration::from_secs(3),
    )
    .await;
    let Some(b1) = DockerBox::start(&ctl, dir.path(), "spark-1").await else {
        return;
    };
    let image = b1.dockerd.fake_image();
    plant_hf_model(&b1.hf_cache, "fake-org/x", LLAMA_CONFIG, 4096);
    plant_hf_model(&b1.hf_cache, "fake-org/y", LLAMA_CONFIG, 4096);
    add_recipe(
        &ctl,
        recipe(
            "x",
            "fake-org/x",
            &image,
            free_port(),
            &["--load-delay-ms", "5000"],
        ),
    )
    .await;
    let mut y = recipe(
        "y",
        "fake-org/y",
        &image,
        free_port(),
        &["--load-delay-ms", "300"],
    );
    y["on_demand"] = json!(true);
    y["idle_unload_seconds"] = json!(3);
    add_recipe(&ctl, y).await;
    let chat = |model: &str| {
        ctl.client
            .post(ctl.url("/v1/chat/completions"))
            .json(
                &json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]}),
            )
            .send()
    };

    // A model without on-demand loading is not loaded for a request.
    let resp = chat("x").await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POST /api/swap"),
        "{err}"
    );
    let resp = chat("nope").await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // While x loads, a request for y queues behind it and gets 503 + Retry-After + position.
    let job = start_swap(&ctl, json!({"key": "x"})).await;
    let resp = chat("y").await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().get("retry-after").is_some());
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["queue_position"], 1, "{err}");
    assert_eq!(err["error"]["type"], "model_loading");
    let events = follow(&ctl, job["id"].as_str().unwrap()).await;
    assert_eq!(events.last().unwrap()["phase"], "ready");

    // x done: the queued swap to y starts by itself; a request waits for it and is answered.
    let resp = chat("y").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["model"], "y", "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "hello there");
    let (_, jobs) = ctl.get_json("/api/swap/jobs").await;
    assert_eq!(jobs["jobs"][0]["model"], "y");
    assert_eq!(jobs["jobs"][0]["on_demand"], true);
    assert_eq!(containers(&b1), vec!["sc-llm-y running".to_string()]);

    // Idle past its TTL, y is unloaded.
    wait_until(
        Duration::from_secs(15),
        "y to be unloaded when idle",
        || async { containers(&b1).is_empty().then_some(()) },
    )
    .await;

    // With the lock held, an on-demand request does not load anything.
    let resp = ctl
        .admin(Method::POST, "/api/swap/lock")
        .json(&json!({"holder": "batch-job", "ttl_seconds": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = chat("y").await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().get("retry-after").is_some());
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batch-job"),
        "{err}"
    );
    assert!(containers(&b1).is_empty());
}
