//! Webhooks (F13): signed deliveries to a real HTTP receiver on loopback, retries with backoff,
//! event filtering, persistence across a restart, and the secret kept out of every answer.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use spark_testkit::webhook::{Receiver, assert_signed, hmac_sha256};
use spark_testkit::{TestController, init, wait_until};

const SECRET: &str = "wh-secret-0123456789-abcdef";

async fn create(ctl: &TestController, body: Value) -> (u16, Value) {
    let resp = ctl
        .admin(Method::POST, "/api/webhooks")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn deliveries(ctl: &TestController, id: &str) -> Vec<Value> {
    let (status, v) = ctl
        .get_json(&format!("/api/webhooks/{id}/deliveries"))
        .await;
    assert_eq!(status, 200, "{v}");
    v.as_array().cloned().unwrap()
}

fn app(ctl: &TestController) -> &spark_control::App {
    &ctl.running.as_ref().unwrap().app
}

#[test]
fn the_test_hmac_is_right() {
    // RFC 4231 test case 2.
    assert_eq!(
        hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_signed_and_the_secret_never_shows() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let rx = Receiver::start(&[]).await;

    let (status, hook) = create(
        &ctl,
        json!({"url": rx.url("/hooks/spark?x=1"), "secret": SECRET}),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let id = hook["id"].as_str().unwrap().to_string();
    assert_eq!(hook["url"], rx.url("/hooks/spark?x=1"));
    assert_eq!(hook["events"], json!(["swap_complete", "swap_failed"]));
    assert!(hook["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(hook.get("secret").is_none());

    let resp = ctl
        .admin(Method::POST, &format!("/api/webhooks/{id}/test"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let d: Value = resp.json().await.unwrap();
    assert_eq!(d["event"], "ping");
    assert_eq!(d["state"], "delivered", "{d}");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status"], 200);

    let got = rx.got();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.target, "/hooks/spark?x=1");
    assert_signed(r, SECRET);
    assert_eq!(r.header("x-spark-event"), Some("ping"));
    assert_eq!(r.header("x-spark-delivery"), d["id"].as_str());
    let body = r.json();
    assert_eq!(body["event"], "ping");
    assert_eq!(body["delivery_id"], d["id"]);
    assert!(body["sent_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["data"]["webhook_id"], id);
    // A signature made with another secret does not verify.
    assert_ne!(
        r.header("x-spark-signature").unwrap(),
        format!("sha256={}", hmac_sha256(b"another-secret-000000", &r.body))
    );

    let ds = deliveries(&ctl, &id).await;
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0]["id"], d["id"]);
    assert_eq!(ds[0]["state"], "delivered");
    assert!(ds[0]["delivered_at"].as_str().unwrap().ends_with('Z'));

    // The secret is in no answer and no event.
    for path in [
        "/api/webhooks".to_string(),
        format!("/api/webhooks/{id}"),
        format!("/api/webhooks/{id}/deliveries"),
        "/api/events".to_string(),
    ] {
        let text = ctl
            .client
            .get(ctl.url(&path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(SECRET), "{path}: {text}");
        assert!(
            text.contains(&id) || text.contains("dlv_") || path == "/api/events",
            "{path}: {text}"
        );
    }
    let events = ctl.events().await;
    let created = events
        .iter()
        .find(|e| e["kind"] == "webhook_created")
        .unwrap();
    assert_eq!(created["actor"], "admin-token");
    // Events name the receiver's origin, not its path (which can be a credential).
    let msg = created["message"].as_str().unwrap();
    assert!(
        msg.contains(&rx.addr.to_string()) && !msg.contains("/hooks/spark"),
        "{msg}"
    );

    // Listed, then deleted.
    let (_, list) = ctl.get_json("/api/webhooks").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let resp = ctl
        .admin(Method::DELETE, &format!("/api/webhooks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(ctl.get_json("/api/webhooks").await.1, json!([]));
    let (status, err) = ctl
        .get_json(&format!("/api/webhooks/{id}/deliveries"))
        .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_found");
    let resp = ctl
        .admin(Method::DELETE, &format!("/api/webhooks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_until_delivered() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let rx = Receiver::start(&[500, 500, 200]).await;
    let (status, hook) = create(&ctl, json!({"url": rx.url("/"), "secret": SECRET})).await;
    assert_eq!(status, 201);
    let id = hook["id"].as_str().unwrap().to_string();

    spark_control::webhooks::notify(
        app(&ctl),
        "swap_complete",
        json!({"job_id": "job-1", "model": "qwen3-30b"}),
    );
    // First attempt at once, then after 1 s and 2 s.
    let delivered = wait_until(Duration::from_secs(15), "the delivery", || async {
        deliveries(&ctl, &id)
            .await
            .into_iter()
            .find(|d| d["state"] == "delivered")
    })
    .await;
    assert_eq!(delivered["attempts"], 3, "{delivered}");
    assert_eq!(delivered["last_status"], 200);
    assert_eq!(delivered["event"], "swap_complete");

    let got = rx.got();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_signed(r, SECRET);
        // Every attempt sends the same bytes.
        assert_eq!(r.body, got[0].body);
        assert_eq!(r.header("x-spark-delivery"), delivered["id"].as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_attempt_is_recorded_and_retried_later() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let rx = Receiver::start(&[503]).await;
    let (_, hook) = create(&ctl, json!({"url": rx.url("/x"), "secret": SECRET})).await;
    let id = hook["id"].as_str().unwrap().to_string();
    let resp = ctl
        .admin(Method::POST, &format!("/api/webhooks/{id}/test"))
        .send()
        .await
        .unwrap();
    let d: Value = resp.json().await.unwrap();
    assert_eq!(d["state"], "pending", "{d}");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status"], 503);
    let err = d["last_error"].as_str().unwrap();
    assert!(
        err.contains("503") && err.contains("receiver says no"),
        "{err}"
    );
    assert!(d["next_attempt_at"].is_string());
    // The worker retries it.
    let done = wait_until(Duration::from_secs(10), "the retried ping", || async {
        deliveries(&ctl, &id)
            .await
            .into_iter()
            .find(|d| d["state"] == "delivered")
    })
    .await;
    assert_eq!(done["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wraps_the_payload_and_filters_by_event() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let on_complete = Receiver::start(&[]).await;
    let on_failed = Receiver::start(&[]).await;
    let (s1, complete_hook) = create(
        &ctl,
        json!({"url": on_complete.url("/c"), "secret": SECRET, "events": ["swap_complete"]}),
    )
    .await;
    let failed_secret = "another-secret-for-failures";
    let (s2, failed_hook) = create(
        &ctl,
        json!({"url": on_failed.url("/f"), "secret": failed_secret, "events": ["swap_failed", "swap_failed"]}),
    )
    .await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(complete_hook["events"], json!(["swap_complete"]));
    assert_eq!(failed_hook["events"], json!(["swap_failed"]));

    let payload = json!({"job_id": "j-42", "model": "gpt-oss-120b", "elapsed_seconds": 187.5, "nodes": ["spark-1", "spark-2"]});
    spark_control::webhooks::notify(app(&ctl), "swap_complete", payload.clone());
    wait_until(
        Duration::from_secs(5),
        "the swap_complete delivery",
        || async { (!on_complete.got().is_empty()).then_some(()) },
    )
    .await;
    let got = on_complete.got();
    assert_eq!(got.len(), 1);
    assert_signed(&got[0], SECRET);
    let body = got[0].json();
    let mut keys: Vec<_> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["data", "delivery_id", "event", "sent_at"]);
    assert_eq!(body["event"], "swap_complete");
    assert_eq!(body["data"], payload);
    assert!(body["delivery_id"].as_str().unwrap().starts_with("dlv_"));

    // The hook subscribed only to swap_failed got nothing, and has no delivery queued.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(on_failed.got().is_empty());
    let failed_id = failed_hook["id"].as_str().unwrap();
    assert!(deliveries(&ctl, failed_id).await.is_empty());

    spark_control::webhooks::notify(
        app(&ctl),
        "swap_failed",
        json!({"job_id": "j-43", "error": "vLLM exited"}),
    );
    // An event nobody subscribes to goes nowhere.
    spark_control::webhooks::notify(app(&ctl), "something_else", json!({}));
    wait_until(
        Duration::from_secs(5),
        "the swap_failed delivery",
        || async { (!on_failed.got().is_empty()).then_some(()) },
    )
    .await;
    let got = on_failed.got();
    assert_signed(&got[0], failed_secret);
    assert_eq!(got[0].json()["data"]["error"], "vLLM exited");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(on_complete.got().len(), 1);
    assert_eq!(on_failed.got().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_resume_after_a_restart() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ctl");
    let mut ctl = TestController::start(&data).await;
    let rx = Receiver::start(&[]).await;
    rx.default.store(500, Ordering::SeqCst);
    let (_, hook) = create(&ctl, json!({"url": rx.url("/r"), "secret": SECRET})).await;
    let id = hook["id"].as_str().unwrap().to_string();
    spark_control::webhooks::notify(app(&ctl), "swap_failed", json!({"job_id": "j-1"}));
    wait_until(Duration::from_secs(5), "a failed first attempt", || async {
        deliveries(&ctl, &id)
            .await
            .into_iter()
            .find(|d| d["attempts"] == 1 && d["state"] == "pending")
    })
    .await;
    ctl.stop().await;
    let before = rx.got().len();

    rx.default.store(200, Ordering::SeqCst);
    let ctl = TestController::start(&data).await;
    let done = wait_until(
        Duration::from_secs(10),
        "delivery after the restart",
        || async {
            deliveries(&ctl, &id)
                .await
                .into_iter()
                .find(|d| d["state"] == "delivered")
        },
    )
    .await;
    assert!(done["attempts"].as_i64().unwrap() >= 2, "{done}");
    let got = rx.got();
    assert!(got.len() > before);
    assert_eq!(got.last().unwrap().body, got[0].body);
    assert_signed(got.last().unwrap(), SECRET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhooks_are_rejected_with_a_reason() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let cases = [
        (
            json!({"url": "ftp://example.com/x", "secret": SECRET}),
            "http",
        ),
        (json!({"url": "http://", "secret": SECRET}), "url"),
        (
            json!({"url": "not a url", "secret": SECRET}),
            "not a valid URL",
        ),
        (json!({"url": "", "secret": SECRET}), "empty"),
        (
            json!({"url": "http://user:pw@example.com/", "secret": SECRET}),
            "password",
        ),
        (
            json!({"url": "http://example.com/", "secret": "short"}),
            "16",
        ),
        (
            json!({"url": "http://example.com/", "secret": "s".repeat(257)}),
            "256",
        ),
        (
            json!({"url": "http://example.com/", "secret": SECRET, "events": ["swap_done"]}),
            "swap_complete, swap_failed",
        ),
        (
            json!({"url": "http://example.com/", "secret": SECRET, "events": []}),
            "at least one",
        ),
    ];
    for (body, needle) in cases {
        let (status, err) = create(&ctl, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {err}");
        assert_eq!(err["error"]["code"], "bad_request");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
        assert!(!msg.contains(SECRET));
    }
    for body in [
        json!({"url": "http://example.com/"}),
        json!({"url": "http://example.com/", "secret": SECRET, "events": "swap_failed"}),
        json!({"url": "http://example.com/", "secret": SECRET, "extra": 1}),
    ] {
        let (status, err) = create(&ctl, body.clone()).await;
        assert!(status == 400 || status == 422, "{body} -> {status}");
        assert_eq!(err["error"]["code"], "bad_request");
    }
    assert_eq!(ctl.get_json("/api/webhooks").await.1, json!([]));

    // Unknown ids.
    for (method, path) in [
        (Method::POST, "/api/webhooks/wh_nope/test"),
        (Method::DELETE, "/api/webhooks/wh_nope"),
        (Method::GET, "/api/webhooks/wh_nope"),
    ] {
        let resp = ctl.admin(method, path).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    // Control endpoints need the admin token.
    let resp = ctl
        .client
        .post(ctl.url("/api/webhooks"))
        .json(&json!({"url": "http://example.com/", "secret": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}
