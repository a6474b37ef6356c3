//! Schedule registry (F14): external schedulers register their recurring swaps; the controller
//! validates and lists them with the next run time, and never runs them.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use reqwest::Method;
use serde_json::{Value, json};
use spark_testkit::{TestController, init};

async fn upsert(ctl: &TestController, body: Value) -> (u16, Value) {
    let resp = ctl
        .admin(Method::POST, "/api/schedules")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn now() -> String {
    spark_control::rfc3339(spark_control::now_ms())
}

/// RFC 3339 text of now + `secs` (same format, so comparable as text).
fn in_secs(secs: i64) -> String {
    spark_control::rfc3339(spark_control::now_ms() + secs * 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_created_updated_listed_and_deleted() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    assert_eq!(ctl.get_json("/api/schedules").await.1, json!([]));

    let before = now();
    let (status, s) = upsert(
        &ctl,
        json!({"name": "nightly-eval", "cron": "*/5 * * * *", "model": "qwen3-30b-a3b", "owner": "eval-team", "description": "nightly benchmarks"}),
    )
    .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["name"], "nightly-eval");
    assert_eq!(s["cron"], "*/5 * * * *");
    assert_eq!(s["model"], "qwen3-30b-a3b");
    assert_eq!(s["owner"], "eval-team");
    assert_eq!(s["description"], "nightly benchmarks");
    assert_eq!(s["timezone"], "UTC");
    let next = s["next_run"].as_str().unwrap();
    // In the future, within five minutes, on a minute divisible by 5, at :00.000.
    assert!(next > &before[..] && next <= &in_secs(301)[..], "{next}");
    let minute: u32 = next[14..16].parse().unwrap();
    assert_eq!(minute % 5, 0, "{next}");
    assert!(next.ends_with(":00.000Z"), "{next}");
    let created_at = s["created_at"].as_str().unwrap().to_string();
    assert_eq!(s["updated_at"], created_at);

    // Upsert by name: 200, created_at kept.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, s2) = upsert(
        &ctl,
        json!({"name": "nightly-eval", "cron": "  0   3 * * *  ", "model": "gpt-oss-120b", "owner": "eval-team"}),
    )
    .await;
    assert_eq!(status, 200, "{s2}");
    assert_eq!(s2["cron"], "0 3 * * *");
    assert_eq!(s2["model"], "gpt-oss-120b");
    assert_eq!(s2["description"], "");
    assert_eq!(s2["created_at"], created_at);
    assert!(s2["updated_at"].as_str().unwrap() > &created_at[..]);
    let next = s2["next_run"].as_str().unwrap();
    assert!(
        next.ends_with("T03:00:00.000Z") && next > &now()[..],
        "{next}"
    );

    // Six fields: seconds first.
    let (status, s3) = upsert(
        &ctl,
        json!({"name": "a quick one", "cron": "*/10 * * * * *", "model": "m", "owner": "o"}),
    )
    .await;
    assert_eq!(status, 201, "{s3}");
    let next = s3["next_run"].as_str().unwrap();
    assert!(next > &now()[..] && next <= &in_secs(11)[..], "{next}");
    let (status, s4) = upsert(
        &ctl,
        json!({"name": "Weekly.backup_2", "cron": "@weekly", "model": "m", "owner": "o"}),
    )
    .await;
    assert_eq!(status, 201, "{s4}");
    assert!(s4["next_run"].as_str().unwrap().ends_with("T00:00:00.000Z"));

    // Listed sorted by name (byte order).
    let (status, list) = ctl.get_json("/api/schedules").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Weekly.backup_2", "a quick one", "nightly-eval"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["next_run"].is_string())
    );

    // Get by name (a name with a space, percent-encoded).
    let (status, one) = ctl.get_json("/api/schedules/a%20quick%20one").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["cron"], "*/10 * * * * *");
    let (status, err) = ctl.get_json("/api/schedules/nope").await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_found");

    // Delete; a second delete is 404.
    let resp = ctl
        .admin(Method::DELETE, "/api/schedules/a%20quick%20one")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(ctl.get_json("/api/schedules/a%20quick%20one").await.0, 404);
    let resp = ctl
        .admin(Method::DELETE, "/api/schedules/a%20quick%20one")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(
        ctl.get_json("/api/schedules")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Audited.
    let kinds: Vec<(String, String)> = ctl
        .events()
        .await
        .into_iter()
        .rev()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("schedule_"))
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    let k = |s: &str| (s.to_string(), "admin-token".to_string());
    assert_eq!(
        kinds,
        [
            k("schedule_created"),
            k("schedule_updated"),
            k("schedule_created"),
            k("schedule_created"),
            k("schedule_deleted")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_survive_a_restart() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ctl");
    let mut ctl = TestController::start(&data).await;
    let (status, _) = upsert(
        &ctl,
        json!({"name": "keep", "cron": "0 0 1 * *", "model": "m", "owner": "o"}),
    )
    .await;
    assert_eq!(status, 201);
    ctl.stop().await;
    let ctl = TestController::start(&data).await;
    let (status, s) = ctl.get_json("/api/schedules/keep").await;
    assert_eq!(status, 200);
    assert!(
        s["next_run"]
            .as_str()
            .unwrap()
            .contains("-01T00:00:00.000Z")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_say_what_is_wrong() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let ok = json!({"name": "n", "cron": "0 3 * * *", "model": "m", "owner": "o"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases = [
        (with("cron", json!("0 3 * *")), "has 4 fields"),
        (with("cron", json!("0 3 * * * * *")), "has 7 fields"),
        (with("cron", json!("")), "cron is empty"),
        (with("cron", json!("61 * * * *")), "not valid"),
        (with("cron", json!("0 25 * * *")), "not valid"),
        (with("cron", json!("0 3 * * funday")), "not valid"),
        (with("cron", json!("@reboot")), "shortcut"),
        (with("cron", json!("0 0 30 2 *")), "never fires"),
        (with("name", json!("")), "name"),
        (
            with("name", json!("-leading")),
            "start with a letter or digit",
        ),
        (with("name", json!("a/b")), "'/'"),
        (with("name", json!("x".repeat(65))), "too long"),
        (with("model", json!("")), "model is empty"),
        (with("model", json!("m".repeat(129))), "128"),
        (with("owner", json!("  ")), "owner is empty"),
        (with("owner", json!("o\u{7}")), "control"),
        (with("description", json!("d".repeat(1001))), "1000"),
    ];
    for (body, needle) in cases {
        let (status, err) = upsert(&ctl, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {err}");
        assert_eq!(err["error"]["code"], "bad_request");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // Cron messages say what a valid one looks like.
    let (_, err) = upsert(&ctl, with("cron", json!("every day"))).await;
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("minute hour day-of-month month day-of-week"),
        "{msg}"
    );

    for body in [
        json!({"name": "n", "cron": "0 3 * * *", "model": "m"}),
        json!({"name": "n", "cron": 5, "model": "m", "owner": "o"}),
        json!({"name": "n", "cron": "0 3 * * *", "model": "m", "owner": "o", "tz": "UTC"}),
    ] {
        let (status, err) = upsert(&ctl, body.clone()).await;
        assert!(status == 400 || status == 422, "{body} -> {status}");
        assert_eq!(err["error"]["code"], "bad_request");
    }
    assert_eq!(ctl.get_json("/api/schedules").await.1, json!([]));
    let resp = ctl
        .client
        .post(ctl.url("/api/schedules"))
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = ctl
        .client
        .delete(ctl.url("/api/schedules/n"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}
