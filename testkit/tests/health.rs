//! Services and deep health: probe bodies the upstream doubles accept, the auto-restart policy
//! acting through a real Docker engine (and stopping after three restarts), settings applied
//! live and kept, health reports in the event log, and the audit log.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use spark_fakes::{Fake, asr, tei, tts, vllm};
use spark_testkit::{DockerBox, TestController, init, wait_until};

async fn send(ctl: &TestController, method: Method, path: &str, body: Value) -> (u16, Value) {
    let r = ctl.admin(method, path).json(&body).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn probe(ctl: &TestController, service: &str) -> Value {
    let (s, v) = send(
        ctl,
        Method::POST,
        &format!("/api/deep-health/{service}/run"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_bodies_are_accepted_by_the_upstream_doubles() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_manual_discovery(dir.path()).await;
    let asr = spark_fakes::spawn(Fake::Asr(asr::Config::default()))
        .await
        .unwrap();
    let kokoro = spark_fakes::spawn(Fake::Kokoro(tts::KokoroConfig::default()))
        .await
        .unwrap();
    let magpie = spark_fakes::spawn(Fake::Magpie(tts::MagpieConfig::default()))
        .await
        .unwrap();
    let tei = spark_fakes::spawn(Fake::Tei(tei::Config::default()))
        .await
        .unwrap();
    let qdrant = spark_fakes::spawn(Fake::Qdrant(Default::default()))
        .await
        .unwrap();
    let llm = spark_fakes::spawn(Fake::Vllm(vllm::Config {
        served_model_names: vec!["side".into()],
        ..Default::default()
    }))
    .await
    .unwrap();
    for (name, body) in [
        ("asr", json!({"kind": "asr", "url": asr.url()})),
        ("tts", json!({"kind": "tts", "url": kokoro.url()})),
        (
            "magpie",
            json!({"kind": "tts", "api": "magpie", "url": magpie.url()}),
        ),
        (
            "embeddings",
            json!({"kind": "embeddings", "url": tei.url()}),
        ),
        (
            "qdrant",
            json!({"kind": "vector_store", "url": qdrant.url()}),
        ),
        ("side-llm", json!({"kind": "llm", "url": llm.url()})),
    ] {
        let (s, v) = send(&ctl, Method::PUT, &format!("/api/services/{name}"), body).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"]["healthy"], true, "{name}: {v}");
    }
    for name in ["asr", "tts", "magpie", "embeddings", "qdrant", "side-llm"] {
        let r = probe(&ctl, name).await;
        assert_eq!(r["outcome"], "ok", "{name}: {r}");
        assert!(r["wedge"].is_null());
    }
    // The ASR double transcribed exactly one second of audio: the WAV header was read.
    let stats: Value = reqwest::get(format!("{}/fake/stats", asr.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"], 1, "{stats}");
    assert_eq!(stats["wedged"], false);
    // The side LLM got a one-token completion.
    let log: Value = reqwest::get(format!("{}/fake/requests", llm.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log[0]["body"]["max_tokens"], 1, "{log}");

    // No model loaded by the swap arbiter: the LLM is idle, not failed.
    let r = probe(&ctl, "llm").await;
    assert_eq!(r["outcome"], "idle", "{r}");
    assert!(r["detail"].as_str().unwrap().contains("no model is loaded"));

    // A service that stopped answering fails its probe, and that is logged; coming back
    // is logged as a recovery.
    let tei_addr = tei.addr;
    tei.stop().await.unwrap();
    let r = probe(&ctl, "embeddings").await;
    assert_eq!(r["outcome"], "failed");
    assert!(r["wedge"].is_null(), "refused is not a wedge: {r}");
    let again = spark_fakes::spawn_at(Fake::Tei(tei::Config::default()), tei_addr)
        .await
        .unwrap();
    let r = probe(&ctl, "embeddings").await;
    assert_eq!(r["outcome"], "ok", "{r}");
    let (_, events) = ctl.get_json("/api/events?subject=service:embeddings").await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "probe_failed",
        "probe_recovered",
        "service_down",
        "service_up",
    ] {
        assert!(kinds.contains(&k), "{k} missing: {events}");
    }
    let down = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "service_up")
        .unwrap();
    assert!(
        down["message"].as_str().unwrap().contains("after"),
        "{down}"
    );
    drop(again);

    // GET /api/deep-health lists every service with its last probe.
    let (_, dh) = ctl.get_json("/api/deep-health").await;
    let listed: Vec<&str> = dh["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&"asr") && listed.contains(&"llm"), "{dh}");
    assert_eq!(dh["policy"]["max_restarts"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_asr_is_restarted_through_docker_three_times_then_left_for_a_person() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_manual_discovery(dir.path()).await;
    let Some(b) = DockerBox::start_with_services(&ctl, dir.path(), "spark-2", &["parakeet"]).await
    else {
        return;
    };
    let image = b.dockerd.fake_image();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_s = port.to_string();
    // A Parakeet double that wedges (500 naming cuFFT) after one transcription.
    b.dockerd
        .docker(&[
            "run",
            "-d",
            "--name",
            "parakeet",
            "--network",
            "host",
            &image,
            "--host",
            "127.0.0.1",
            "--port",
            &port_s,
            "asr",
            "--wedge-after",
            "1",
        ])
        .unwrap();
    let (s, v) = send(
        &ctl,
        Method::PUT,
        "/api/services/asr",
        json!({"kind": "asr", "node": "spark-2", "port": port, "container": "parakeet",
               "model": "nvidia/parakeet-tdt-0.6b-v3"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    wait_until(
        Duration::from_secs(10),
        "the ASR double to answer",
        || async {
            let (_, v) = ctl.get_json("/api/services/asr").await;
            (v["status"]["healthy"] == true).then_some(())
        },
    )
    .await;
    let (_, v) = ctl.get_json("/api/services/asr").await;
    assert_eq!(v["container_state"]["state"], "running", "{v}");
    // No grace or cooldown in this test (they are unit-tested with an injected clock).
    let (s, v) = send(
        &ctl,
        Method::PUT,
        "/api/settings",
        json!({"health": {"grace_seconds": 0, "cooldown_seconds": 0}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    let started_at = |_: &TestController| {
        b.dockerd
            .docker(&["inspect", "parakeet", "--format", "{{.State.StartedAt}}"])
            .unwrap()
    };
    for round in 1..=4 {
        let before = started_at(&ctl);
        // A fresh (or restarted) double transcribes once, then wedges.
        let ok = probe(&ctl, "asr").await;
        assert_eq!(ok["outcome"], "ok", "round {round}: {ok}");
        let report = probe(&ctl, "asr").await;
        assert_eq!(report["outcome"], "failed", "round {round}: {report}");
        assert!(
            report["wedge"].as_str().unwrap_or("").contains("HTTP 500"),
            "round {round}: {report}"
        );
        let action = report["action"].as_str().unwrap().to_string();
        if round <= 3 {
            assert_eq!(action, "restarted", "round {round}: {report}");
            assert_ne!(before, started_at(&ctl), "round {round}: not restarted");
            wait_until(
                Duration::from_secs(10),
                "the restarted ASR to answer",
                || async {
                    let (_, v) = ctl.get_json("/api/services/asr").await;
                    (v["status"]["healthy"] == true).then_some(())
                },
            )
            .await;
        } else {
            // The fourth wedge inside 30 minutes is left for a person.
            assert!(
                action.starts_with("withheld: already restarted 3 times"),
                "{action}"
            );
            assert_eq!(started_at(&ctl), before, "no fourth restart");
        }
    }
    // Through the gateway, the wedge is a 503 with Retry-After.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(spark_control::health::silence_wav())
                .file_name("a.wav"),
        )
        .text("model", "nvidia/parakeet-tdt-0.6b-v3");
    let r = ctl
        .client
        .post(ctl.url("/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "10");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "asr_failed");
    let (_, svc) = ctl.get_json("/api/services/asr").await;
    assert_eq!(svc["restart_count"], 3, "{svc}");
    assert_eq!(svc["last_probe"]["outcome"], "failed");

    // The event log tells the story; the audit log names the policy as the actor.
    let (_, events) = ctl
        .get_json("/api/events?subject=service:asr&limit=100")
        .await;
    let count = |k: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == k)
            .count()
    };
    assert_eq!(count("service_restarted"), 3, "{events}");
    assert!(
        count("probe_failed") >= 4 && count("probe_recovered") >= 3,
        "{events}"
    );
    assert_eq!(count("asr_error"), 1);
    let (_, audit) = ctl.get_json("/api/audit?actor=policy").await;
    assert_eq!(audit.as_array().unwrap().len(), 3, "{audit}");
    assert!(audit[0]["target"].as_str().unwrap().contains("parakeet"));

    // A manual restart by the operator: done through the agent, audited with the actor.
    let before = started_at(&ctl);
    let (s, v) = send(&ctl, Method::POST, "/api/services/asr/restart", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(started_at(&ctl), before);
    let (_, audit) = ctl.get_json("/api/audit?actor=admin-token").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "POST"
                && a["target"] == "/api/services/asr/restart"
                && a["status"] == 200),
        "{audit}"
    );
    // A container the agent does not manage cannot be driven through a service.
    send(
        &ctl,
        Method::PUT,
        "/api/services/rogue",
        json!({"kind": "custom", "node": "spark-2", "port": 1, "container": "not-ours"}),
    )
    .await;
    b.dockerd
        .docker(&[
            "run",
            "-d",
            "--name",
            "not-ours",
            &b.dockerd.busybox_image().unwrap(),
            "sleep",
            "100",
        ])
        .unwrap();
    let (s, v) = send(&ctl, Method::POST, "/api/services/rogue/stop", json!({})).await;
    assert!(s == 403 || s == 404, "{s} {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_apply_live_survive_a_restart_and_refuse_bad_values() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = TestController::start_manual_discovery(dir.path()).await;
    let qdrant = spark_fakes::spawn(Fake::Qdrant(Default::default()))
        .await
        .unwrap();
    let (s, _) = send(
        &ctl,
        Method::PUT,
        "/api/services/qdrant",
        json!({"kind": "vector_store", "url": qdrant.url()}),
    )
    .await;
    assert_eq!(s, 200);
    let (_, dh) = ctl.get_json("/api/deep-health").await;
    assert_eq!(dh["interval_seconds"], 300);
    assert!(
        dh["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["last_probe"].is_null())
    );

    // Five-second rounds, at once: a round runs without anyone asking.
    let (s, v) = send(
        &ctl,
        Method::PUT,
        "/api/settings",
        json!({"health": {"probe_interval_seconds": 5}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let t = std::time::Instant::now();
    wait_until(
        Duration::from_secs(8),
        "a probe round on the new interval",
        || async {
            let (_, dh) = ctl.get_json("/api/deep-health").await;
            dh["services"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["service"] == "qdrant")
                .filter(|s| s["last_probe"]["outcome"] == "ok")
                .map(|_| ())
        },
    )
    .await;
    assert!(
        t.elapsed() >= Duration::from_secs(4),
        "the round came too early: {:?}",
        t.elapsed()
    );

    // A bad value names its field and changes nothing.
    for (patch, field) in [
        (
            json!({"health": {"probe_interval_seconds": 0}}),
            "health.probe_interval_seconds",
        ),
        (
            json!({"health": {"max_restarts": "three"}}),
            "health.max_restarts",
        ),
        (json!({"health": {"cooldown": 1}}), "health"),
    ] {
        let (s, v) = send(&ctl, Method::PUT, "/api/settings", patch).await;
        assert_eq!(s, 400);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
    // Secrets are write-only: masked on read, kept when the mask is sent back, never in the
    // event log.
    let secret = "hf_SuperSecretToken123";
    let (s, v) = send(
        &ctl,
        Method::PUT,
        "/api/settings",
        json!({"secrets": {"huggingface_token": secret}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["secrets"]["huggingface_token"], "********");
    assert!(v["secrets"]["ngc_api_key"].is_null());
    let (_, whole) = ctl.get_json("/api/settings").await;
    assert!(!whole.to_string().contains(secret));
    let (s, _) = send(&ctl, Method::PUT, "/api/settings", whole.clone()).await;
    assert_eq!(s, 200);
    let stored = &ctl.running.as_ref().unwrap().app.settings.get().secrets;
    assert_eq!(
        stored.huggingface_token.as_deref(),
        Some(secret),
        "the mask kept the value"
    );

    let data = ctl.data_dir.clone();
    ctl.stop().await;
    let ctl = TestController::start_manual_discovery(&data).await;
    let (_, settings) = ctl.get_json("/api/settings").await;
    assert_eq!(settings["health"]["probe_interval_seconds"], 5);
    assert_eq!(settings["secrets"]["huggingface_token"], "********");
    let (_, events) = ctl.get_json("/api/events?limit=1000").await;
    assert!(!events.to_string().contains(secret));
    let (_, audit) = ctl.get_json("/api/audit?limit=1000").await;
    assert!(!audit.to_string().contains(secret));
    let (_, dh) = ctl.get_json("/api/deep-health").await;
    assert_eq!(dh["interval_seconds"], 5);
    // The audit log has the settings changes (and the refusals) with their actor.
    let (_, audit) = ctl.get_json("/api/audit").await;
    let puts: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["target"] == "/api/settings")
        .collect();
    assert_eq!(puts.len(), 6, "{audit}");
    assert!(puts.iter().all(|a| a["actor"] == "admin-token"));
    assert_eq!(puts.iter().filter(|a| a["status"] == 400).count(), 3);
    // Refused requests are audited too, without a body.
    let r = ctl
        .client
        .put(ctl.url("/api/settings"))
        .json(&json!({"api_keys_required": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (_, audit) = ctl.get_json("/api/audit?actor=unauthenticated").await;
    assert_eq!(audit[0]["target"], "/api/settings");
    assert!(!audit.to_string().contains("api_keys_required"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_event_reports_land_in_the_event_log() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_manual_discovery(dir.path()).await;
    let since = spark_control::now_ms();
    let post = |body: Value| {
        ctl.client
            .post(ctl.url("/api/health-event"))
            .json(&body)
            .send()
    };
    let r = post(json!({"service": "asr", "ok": false, "source": "recapper", "error": "HTTP 500 from transcription", "ms": 812})).await.unwrap();
    assert_eq!(r.status(), 202);
    let r = post(json!({"service": "asr", "ok": true, "source": "recapper", "ms": 640}))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Bad reports say what is wrong.
    for (body, want) in [
        (json!({"ok": true}), "service"),
        (json!({"service": "asr", "ok": "yes"}), "ok"),
        (json!({"service": "asr", "ok": true, "extra": 1}), "extra"),
        (json!({"service": "", "ok": true}), "service"),
    ] {
        let r = post(body).await.unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{v}"
        );
    }
    let (_, events) = ctl
        .get_json(&format!("/api/events?subject=service:asr&since={since}"))
        .await;
    // (A failing ASR report also starts a deep probe; its events are not the reports.)
    let events: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("health_report"))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["kind"], "health_report_ok");
    assert_eq!(events[1]["kind"], "health_report_failed");
    assert!(
        events[1]["message"]
            .as_str()
            .unwrap()
            .contains("recapper reports asr failing (812 ms): HTTP 500")
    );
    assert_eq!(events[1]["subject"], "service:asr");
    // Time filtering: nothing since a moment in the future.
    let (_, none) = ctl
        .get_json(&format!(
            "/api/events?subject=service:asr&since={}",
            since + 3_600_000
        ))
        .await;
    assert_eq!(none, json!([]));
    let (s, v) = ctl.get_json("/api/events?since=yesterday").await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("since:")
    );
}
