//! The swap lock (F12): holder + TTL + secret token, 423 for others, renewal, release, forced
//! release, expiry, persistence across a restart, and `lock::check` as the swap endpoint uses it.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use spark_control::lock;
use spark_testkit::{TestController, init};

async fn acquire(
    ctl: &TestController,
    body: Value,
    token: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = ctl.admin(Method::POST, "/api/swap/lock").json(&body);
    if let Some(t) = token {
        req = req.header("X-Spark-Lock-Token", t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap_or(Value::Null), headers)
}

async fn release(ctl: &TestController, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = ctl.admin(Method::DELETE, &format!("/api/swap/lock{query}"));
    if let Some(t) = token {
        req = req.header("X-Spark-Lock-Token", t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn app(ctl: &TestController) -> &spark_control::App {
    &ctl.running.as_ref().unwrap().app
}

/// Event kinds with their actors, oldest first.
async fn lock_events(ctl: &TestController) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = ctl
        .events()
        .await
        .into_iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("swap_lock_"))
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.reverse();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_conflict_renew_and_release() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;

    let (status, v) = ctl.get_json("/api/swap/lock").await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"held": false}));
    assert!(lock::check(app(&ctl), None).is_ok());

    // Acquire.
    let (status, got, _) = acquire(
        &ctl,
        json!({"holder": "nightly-eval", "ttl_seconds": 600, "reason": "benchmarks"}),
        None,
    )
    .await;
    assert_eq!(status, 201, "{got}");
    let token = got["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("sclk_") && token.len() == 45, "{token}");
    assert!(token[5..].chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(got["holder"], "nightly-eval");
    assert_eq!(got["reason"], "benchmarks");
    let expires_at = got["expires_at"].as_str().unwrap().to_string();
    assert!(expires_at.ends_with('Z') && got["acquired_at"].as_str().unwrap() < &expires_at[..]);

    // Reads show the holder, never the token.
    let resp = ctl
        .client
        .get(ctl.url("/api/swap/lock"))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(!text.contains(&token), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["held"], true);
    assert_eq!(v["holder"], "nightly-eval");
    assert_eq!(v["reason"], "benchmarks");
    assert_eq!(v["expires_at"], expires_at);
    let left = v["expires_in_seconds"].as_i64().unwrap();
    assert!((595..=600).contains(&left), "{left}");
    assert!(v.get("token").is_none());

    // Someone else: 423 with holder and expiry as fields.
    let (status, err, headers) =
        acquire(&ctl, json!({"holder": "alice", "ttl_seconds": 60}), None).await;
    assert_eq!(status, 423, "{err}");
    assert_eq!(err["error"]["code"], "locked");
    assert_eq!(err["error"]["holder"], "nightly-eval");
    assert_eq!(err["error"]["expires_at"], expires_at);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("nightly-eval") && msg.contains(&expires_at),
        "{msg}"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((590..=600).contains(&retry), "{retry}");
    // A wrong token is no better.
    let (status, _, _) = acquire(
        &ctl,
        json!({"holder": "alice", "ttl_seconds": 60}),
        Some("sclk_0000000000000000000000000000000000000000"),
    )
    .await;
    assert_eq!(status, 423);

    // What the swap endpoint sees.
    let refused = lock::check(app(&ctl), None).unwrap_err();
    assert_eq!(refused.status.as_u16(), 423);
    assert_eq!(refused.code, "locked");
    assert!(
        refused.message.contains("nightly-eval"),
        "{}",
        refused.message
    );
    assert!(lock::check(app(&ctl), Some("sclk_wrong")).is_err());
    assert!(lock::check(app(&ctl), Some(&token)).is_ok());

    // Renewal with the token: 200, same token, later expiry, reason kept.
    let (status, renewed, _) = acquire(
        &ctl,
        json!({"holder": "nightly-eval", "ttl_seconds": 3600}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["token"], token);
    assert_eq!(renewed["acquired_at"], got["acquired_at"]);
    assert_eq!(renewed["reason"], "benchmarks");
    assert!(renewed["expires_at"].as_str().unwrap() > &expires_at[..]);

    // Release: no token or a wrong one is 403; the right one (as ?token=) releases.
    let (status, err) = release(&ctl, "", None).await;
    assert_eq!(status, 403, "{err}");
    assert_eq!(err["error"]["code"], "lock_token_mismatch");
    let (status, err) = release(&ctl, "", Some("sclk_nope")).await;
    assert_eq!(status, 403);
    assert_eq!(err["error"]["code"], "lock_token_mismatch");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{err}"
    );
    let (status, v) = release(&ctl, &format!("?token={token}"), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["released"], true);
    assert_eq!(v["forced"], false);
    assert_eq!(
        ctl.get_json("/api/swap/lock").await.1,
        json!({"held": false})
    );
    assert!(lock::check(app(&ctl), None).is_ok());

    // Not held any more: 404 not_locked.
    let (status, err) = release(&ctl, "", Some(&token)).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_locked");

    // Free again for someone else.
    let (status, other, _) =
        acquire(&ctl, json!({"holder": "alice", "ttl_seconds": 60}), None).await;
    assert_eq!(status, 201);
    assert_ne!(other["token"], token);
    assert_eq!(other["reason"], Value::Null);

    // Audited, with who did it; the token is in no event.
    assert_eq!(
        lock_events(&ctl).await,
        [
            ("swap_lock_acquired".into(), "admin-token".into()),
            ("swap_lock_renewed".into(), "admin-token".into()),
            ("swap_lock_released".into(), "admin-token".into()),
            ("swap_lock_acquired".into(), "admin-token".into()),
        ]
    );
    let all = serde_json::to_string(&ctl.events().await).unwrap();
    assert!(!all.contains(&token[5..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_frees_the_lock() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let (status, got, _) = acquire(&ctl, json!({"holder": "short", "ttl_seconds": 1}), None).await;
    assert_eq!(status, 201);
    let token = got["token"].as_str().unwrap().to_string();
    assert!(lock::check(app(&ctl), None).is_err());
    tokio::time::sleep(Duration::from_millis(1300)).await;

    assert_eq!(
        ctl.get_json("/api/swap/lock").await.1,
        json!({"held": false})
    );
    assert!(lock::check(app(&ctl), None).is_ok());
    // Renewing an expired lock takes a new one.
    let (status, again, _) = acquire(
        &ctl,
        json!({"holder": "short", "ttl_seconds": 60}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 201);
    assert_ne!(again["token"], token);
    let kinds: Vec<String> = lock_events(&ctl).await.into_iter().map(|k| k.0).collect();
    assert_eq!(
        kinds,
        [
            "swap_lock_acquired",
            "swap_lock_expired",
            "swap_lock_acquired"
        ]
    );
    let expired = ctl
        .events()
        .await
        .into_iter()
        .find(|e| e["kind"] == "swap_lock_expired")
        .unwrap();
    assert!(
        expired["message"].as_str().unwrap().contains("'short'"),
        "{expired}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_recorded_without_anyone_asking() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let (status, _, _) = acquire(&ctl, json!({"holder": "quiet", "ttl_seconds": 1}), None).await;
    assert_eq!(status, 201);
    spark_testkit::wait_until(Duration::from_secs(5), "swap_lock_expired", || async {
        ctl.events()
            .await
            .into_iter()
            .find(|e| e["kind"] == "swap_lock_expired")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_release() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let (status, _, _) = acquire(
        &ctl,
        json!({"holder": "stuck-job", "ttl_seconds": 3600}),
        None,
    )
    .await;
    assert_eq!(status, 201);

    let (status, err) = release(&ctl, "?force=maybe", None).await;
    assert_eq!(status, 400);
    assert!(err["error"]["message"].as_str().unwrap().contains("force"));
    let (status, err) = release(&ctl, "?forse=true", None).await;
    assert_eq!(status, 400);
    assert!(err["error"]["message"].as_str().unwrap().contains("forse"));

    // Control auth applies: a cross-origin page cannot force it.
    let resp = ctl
        .client
        .delete(ctl.url("/api/swap/lock?force=true"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(ctl.get_json("/api/swap/lock").await.1["held"], true);

    // The dashboard (same origin) can.
    let resp = ctl
        .client
        .delete(ctl.url("/api/swap/lock?force=true"))
        .header("Origin", format!("http://{}", ctl.http))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"released": true, "forced": true}));
    assert_eq!(ctl.get_json("/api/swap/lock").await.1["held"], false);
    assert_eq!(
        lock_events(&ctl).await,
        [
            ("swap_lock_acquired".into(), "admin-token".into()),
            ("swap_lock_forced".into(), "browser".into()),
        ]
    );
    let (status, err) = release(&ctl, "?force=true", None).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_survives_a_restart() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ctl");
    let mut ctl = TestController::start(&data).await;
    let (status, got, _) =
        acquire(&ctl, json!({"holder": "weekly", "ttl_seconds": 600}), None).await;
    assert_eq!(status, 201);
    let token = got["token"].as_str().unwrap().to_string();
    ctl.stop().await;

    let ctl = TestController::start(&data).await;
    let (_, v) = ctl.get_json("/api/swap/lock").await;
    assert_eq!(v["held"], true);
    assert_eq!(v["holder"], "weekly");
    assert_eq!(v["expires_at"], got["expires_at"]);
    let (status, err, _) = acquire(&ctl, json!({"holder": "other", "ttl_seconds": 60}), None).await;
    assert_eq!(status, 423);
    assert_eq!(err["error"]["holder"], "weekly");
    assert!(lock::check(app(&ctl), None).is_err());
    assert!(lock::check(app(&ctl), Some(&token)).is_ok());
    let (status, _) = release(&ctl, "", Some(&token)).await;
    assert_eq!(status, 200);
    // Only the token's hash is on disk.
    for entry in std::fs::read_dir(&data).unwrap() {
        let raw = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        assert!(!raw.windows(40).any(|w| w == &token.as_bytes()[5..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lock_requests_say_why() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let cases = [
        (json!({"holder": "", "ttl_seconds": 60}), "holder"),
        (json!({"holder": "   ", "ttl_seconds": 60}), "holder"),
        (json!({"holder": "a\nb", "ttl_seconds": 60}), "control"),
        (json!({"holder": "x".repeat(129), "ttl_seconds": 60}), "128"),
        (json!({"holder": "a", "ttl_seconds": 0}), "ttl_seconds"),
        (json!({"holder": "a", "ttl_seconds": -5}), "ttl_seconds"),
        (json!({"holder": "a", "ttl_seconds": 86_401}), "86400"),
        (
            json!({"holder": "a", "ttl_seconds": 60, "reason": "r".repeat(501)}),
            "500",
        ),
    ];
    for (body, needle) in cases {
        let (status, err, _) = acquire(&ctl, body.clone(), None).await;
        assert_eq!(status, 400, "{body} -> {err}");
        assert_eq!(err["error"]["code"], "bad_request");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // Shape errors come from the JSON extractor, still in the API's error shape.
    for body in [
        json!({"ttl_seconds": 60}),
        json!({"holder": "a"}),
        json!({"holder": "a", "ttl_seconds": 60, "tll": 1}),
    ] {
        let (status, err, _) = acquire(&ctl, body.clone(), None).await;
        assert!(status == 400 || status == 422, "{body} -> {status}");
        assert_eq!(err["error"]["code"], "bad_request");
    }
    // Nothing was taken, and the limits themselves are accepted.
    assert_eq!(ctl.get_json("/api/swap/lock").await.1["held"], false);
    let (status, _, _) = acquire(
        &ctl,
        json!({"holder": "x".repeat(128), "ttl_seconds": 86_400, "reason": "r".repeat(500)}),
        None,
    )
    .await;
    assert_eq!(status, 201);
    // Control endpoints need the admin token.
    let resp = ctl
        .client
        .post(ctl.url("/api/swap/lock"))
        .json(&json!({"holder": "a", "ttl_seconds": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}
