//! The HTTP API: shapes, errors, and the admin / same-origin guard on control endpoints.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use spark_testkit::{TestAgent, TestController, init, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints_need_the_admin_token_or_same_origin() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let url = ctl.url("/api/nodes/tokens");
    let same_origin = format!("http://{}", ctl.http);

    // Cross-origin browser request: refused, and says why.
    let resp = ctl
        .client
        .post(&url)
        .header("Origin", "http://evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cross_origin");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cross-origin"),
        "{body}"
    );

    // Same-origin browser request: allowed.
    let resp = ctl
        .client
        .post(&url)
        .header("Origin", &same_origin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert!(body["token"].as_str().unwrap().starts_with("sparkjoin1."));
    assert!(body["expires_at"].is_string());

    // Admin token: allowed. Wrong token or none: 401 with a hint.
    let resp = ctl
        .admin(Method::POST, "/api/nodes/tokens")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = ctl
        .client
        .post(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = ctl.client.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin.token"),
        "{body}"
    );

    // The same guard covers PATCH and DELETE.
    let resp = ctl
        .client
        .patch(ctl.url("/api/nodes/x"))
        .header("Origin", "http://evil.example")
        .json(&json!({"name": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = ctl
        .client
        .delete(ctl.url("/api/nodes/x"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // Reads stay open.
    let (status, _) = ctl.get_json("/api/nodes").await;
    assert_eq!(status, 200);

    // The admin token file is private.
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir.path().join("ctl/admin.token")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let on_disk = std::fs::read_to_string(dir.path().join("ctl/admin.token")).unwrap();
    assert_eq!(on_disk.trim(), ctl.admin_token);

    // Control actions are in the event log with who did them.
    let events = ctl.events().await;
    let actors: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "token_created")
        .map(|e| e["actor"].clone())
        .collect();
    assert!(
        actors.contains(&json!("browser")) && actors.contains(&json!("admin-token")),
        "{actors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_that_say_what_to_fix() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let check = |status: u16, body: Value, want: &str| {
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(want),
            "{status}: {body}"
        );
    };
    // Send a control request; it must fail with `status` and a message containing `want`.
    let expect_error = async |req: reqwest::RequestBuilder, status: u16, want: &str| {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), status, "{want}");
        check(status, resp.json().await.unwrap(), want);
    };
    let tokens = || ctl.admin(Method::POST, "/api/nodes/tokens");
    let missing = || ctl.admin(Method::PATCH, "/api/nodes/missing");

    expect_error(
        tokens()
            .body("{nope")
            .header("content-type", "application/json"),
        400,
        "ttl_seconds",
    )
    .await;
    expect_error(
        tokens().json(&json!({"ttl_seconds": 0})),
        400,
        "between 1 second",
    )
    .await;
    expect_error(
        tokens().json(&json!({"ttl_seconds": 99999999})),
        400,
        "between 1 second",
    )
    .await;
    expect_error(missing().json(&json!({"name": "ok"})), 404, "no node").await;
    expect_error(missing().json(&json!({"nom": "ok"})), 422, "name").await;
    let (status, body) = ctl.get_json("/api/nothing-here").await;
    assert_eq!(status, 404);
    check(404, body, "no API endpoint");
    let (status, _) = ctl.get_json("/healthz").await;
    assert_eq!(status, 200);

    // Enrollment with a malformed body is a 400 with a reason, not a crash.
    let resp = insecure_gateway_client()
        .post(format!("https://{}/v1/enroll", ctl.gateway))
        .body("{}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("bad enrollment request"),
        "{body}"
    );
}

fn insecure_gateway_client() -> reqwest::Client {
    // Only for poking at the gateway's HTTP error shapes; agents always verify.
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_reaches_the_agent_and_names_are_validated() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let state = dir.path().join("a");
    let agent = TestAgent::join_and_run(&ctl.token().await, &state, "box").await;
    let id = agent.identity.node_id.clone();
    ctl.wait_node_connected(&id, true, Duration::from_secs(3))
        .await;

    let resp = ctl
        .admin(Method::PATCH, &format!("/api/nodes/{id}"))
        .json(&json!({"name": "spark-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["name"], "spark-2");
    // The agent hears of it and records it.
    let mut status = agent.status.clone();
    wait_until(Duration::from_secs(2), "agent renamed", || {
        let s = status.borrow_and_update().clone();
        async move { matches!(s, spark_agent::link::LinkState::Connected { ref node_name } if node_name == "spark-2").then_some(()) }
    })
    .await;
    let file = std::fs::read_to_string(state.join("identity.json")).unwrap();
    assert!(file.contains("spark-2"), "{file}");

    for bad in ["", "<img src=x>", " padded"] {
        let resp = ctl
            .admin(Method::PATCH, &format!("/api/nodes/{id}"))
            .json(&json!({"name": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad:?}");
    }
    // A second node cannot take the same name.
    let other = spark_agent::enroll::join(&ctl.token().await, &dir.path().join("b"), "spark-2")
        .await
        .unwrap();
    assert_eq!(
        other.node_name, "spark-2-2",
        "enrollment de-duplicates names"
    );
    let resp = ctl
        .admin(Method::PATCH, &format!("/api/nodes/{}", other.node_id))
        .json(&json!({"name": "spark-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_assets_are_served_with_a_strict_csp_and_never_parse_html() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let resp = ctl.client.get(ctl.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    let html = resp.text().await.unwrap();
    assert!(html.contains("Spark Control") && html.contains("/app.js"));
    assert!(
        !html.contains(" onclick=") && !html.contains(" style="),
        "inline code or style"
    );
    // Every module the page is made of is served as JavaScript, and none inserts text as HTML.
    let web = spark_testkit::docker::workspace_root().join("web");
    let mut modules = 0;
    for entry in std::fs::read_dir(&web).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".js") {
            continue;
        }
        modules += 1;
        let resp = ctl
            .client
            .get(ctl.url(&format!("/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(
            resp.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        let js = resp.text().await.unwrap();
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(sink), "{name} uses {sink}");
        }
    }
    assert!(modules >= 5, "only {modules} modules in web/");
}
