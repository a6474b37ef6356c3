//! Enrollment and the agent link, end to end: real controller, real agents, real TLS on
//! loopback, ephemeral ports.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use spark_agent::enroll::JoinError;
use spark_agent::link::{LinkError, LinkState};
use spark_common::proto::{self, CLOSE_REFUSED, ControllerMsg, Hello};
use spark_common::token::JoinToken;
use spark_testkit::{TestAgent, TestController, init, raw_handshake, raw_link, wait_until};
use tokio_tungstenite::tungstenite::Message;

async fn connected_node(ctl: &TestController, id: &str) -> Option<serde_json::Value> {
    ctl.node(id)
        .await
        .filter(|n| n["connected"] == true && n["host"]["hostname"].is_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_agent_appears_with_host_snapshot_within_2s() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let token = ctl.token().await;
    let state = dir.path().join("agent");
    let identity = spark_agent::enroll::join(&token, &state, "spark-1")
        .await
        .unwrap();

    // Key is private; certificate and CA are written.
    let mode = std::fs::metadata(state.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(state.join("cert.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(
        std::fs::read_to_string(state.join("ca.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    let started = Instant::now();
    let agent = TestAgent::run(identity.clone(), &state);
    let node = wait_until(
        Duration::from_secs(2),
        "node connected with a host snapshot",
        || connected_node(&ctl, &identity.node_id),
    )
    .await;
    eprintln!("node visible with snapshot after {:?}", started.elapsed());
    assert_eq!(node["name"], "spark-1");
    assert_eq!(node["agent_version"], spark_common::SOFTWARE_VERSION);
    let host = &node["host"];
    assert!(host["cpu_cores"].as_u64().unwrap() >= 1);
    assert!(host["mem_total_bytes"].as_u64().unwrap() > 0);
    for key in [
        "os",
        "kernel",
        "arch",
        "uptime_secs",
        "load",
        "mem_available_bytes",
        "disks",
    ] {
        assert!(!host[key].is_null(), "host.{key} missing: {host}");
    }
    assert!(node["last_seen"].is_string());

    // Snapshots keep coming: last_seen advances.
    let first_seen = node["last_seen"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(3), "a newer snapshot", || async {
        ctl.node(&identity.node_id)
            .await
            .filter(|n| n["last_seen"].as_str() != Some(first_seen.as_str()))
    })
    .await;

    let kinds: Vec<_> = ctl
        .events()
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(kinds.contains(&"node_enrolled".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"node_connected".to_string()), "{kinds:?}");
    agent.stop().await;
    ctl.wait_node_connected(&identity.node_id, false, Duration::from_secs(3))
        .await;
    let events = ctl.events().await;
    assert_eq!(
        events[0]["kind"], "node_disconnected",
        "newest first: {events:?}"
    );
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("disconnected after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_expired_and_forged_tokens_are_refused() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;

    // Each refusal names its reason.
    let refused = async |token: &str, dir_name: &str, want: &str| {
        let err = spark_agent::enroll::join(token, &dir.path().join(dir_name), dir_name)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(want), "{dir_name}: {err}");
        err
    };

    // Used.
    let token = ctl.token().await;
    spark_agent::enroll::join(&token, &dir.path().join("a1"), "a1")
        .await
        .unwrap();
    let err = refused(&token, "a2", "already used").await;
    assert!(matches!(err, JoinError::Refused(_)), "{err}");

    // Expired.
    let token = ctl.token_with_ttl(Some(1)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refused(&token, "a3", "expired").await;

    // Forged: right id, wrong secret; and an id that never existed.
    let mut forged = JoinToken::parse(&ctl.token().await).unwrap();
    forged.secret = "Forged0000000000000000000000000000".into();
    refused(&forged.encode(), "a4", "not recognised").await;
    forged.id = "tNeverIssued1".into();
    refused(&forged.encode(), "a5", "not recognised").await;

    // Not a token at all.
    refused("hello", "a6", "not a Spark Control join token").await;

    // Nothing was written for refused joins.
    for d in ["a2", "a3", "a4", "a5", "a6"] {
        assert!(
            !dir.path().join(d).join("key.pem").exists(),
            "{d} has a key"
        );
    }
    let refusals = ctl
        .events()
        .await
        .iter()
        .filter(|e| e["kind"] == "enroll_refused")
        .count();
    assert_eq!(refusals, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_controller_whose_ca_does_not_match_the_pin() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let good = ctl.token().await;
    let mut token = JoinToken::parse(&good).unwrap();
    token.ca_sha256 = "00".repeat(32);
    let err = spark_agent::enroll::join(&token.encode(), &dir.path().join("a"), "a")
        .await
        .unwrap_err();
    let JoinError::CaMismatch { expected, seen, .. } = &err else {
        panic!("expected a CA mismatch, got: {err}");
    };
    assert_eq!(expected, &"00".repeat(32));
    assert!(
        seen.contains(&JoinToken::parse(&good).unwrap().ca_sha256),
        "{err}"
    );
    assert!(err.to_string().contains("refusing to enroll"), "{err}");
    assert!(!dir.path().join("a").join("key.pem").exists());
    // The secret never reached the controller: the genuine token still works.
    spark_agent::enroll::join(&good, &dir.path().join("b"), "b")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_node_is_dropped_and_cannot_reconnect() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let state = dir.path().join("agent");
    let agent = TestAgent::join_and_run(&ctl.token().await, &state, "doomed").await;
    let id = agent.identity.node_id.clone();
    wait_until(Duration::from_secs(3), "node connected", || {
        connected_node(&ctl, &id)
    })
    .await;

    let resp = ctl
        .admin(reqwest::Method::DELETE, &format!("/api/nodes/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // The live link is dropped and the agent stops for good, saying why.
    let result = tokio::time::timeout(Duration::from_secs(3), agent.task)
        .await
        .expect("agent stops")
        .unwrap();
    match result {
        Err(LinkError::Refused(reason)) => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(ctl.node(&id).await.is_none(), "revoked node still listed");
    let (_, all) = ctl.get_json("/api/nodes?include_revoked=true").await;
    let revoked = all
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id.as_str())
        .unwrap();
    assert_eq!(revoked["revoked"], true);
    assert_eq!(revoked["connected"], false);

    // Reconnecting with the same (still CA-valid) certificate is refused.
    let again = TestAgent::run(agent.identity.clone(), &state);
    let result = tokio::time::timeout(Duration::from_secs(3), again.task)
        .await
        .expect("agent stops")
        .unwrap();
    match result {
        Err(LinkError::Refused(reason)) => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let raw = raw_link(
        ctl.gateway,
        &agent.identity.ca_pem,
        &agent.identity.cert_pem,
        &agent.identity.key_pem,
    )
    .await;
    let err = raw.expect_err("raw link refused");
    assert!(err.contains("403") && err.contains("revoked"), "{err}");
    // Revoking twice or an unknown node says so.
    let resp = ctl
        .admin(reqwest::Method::DELETE, &format!("/api/nodes/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let resp = ctl
        .admin(reqwest::Method::DELETE, "/api/nodes/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let real_ca = std::fs::read_to_string(dir.path().join("ctl/ca/ca.pem")).unwrap();

    // A second controller's CA issues a certificate to an "agent".
    let other = TestController::start(&dir.path().join("other")).await;
    let foreign = spark_agent::enroll::join(&other.token().await, &dir.path().join("f"), "f")
        .await
        .unwrap();

    // Present it to the first controller (trusting the first controller's CA for the server).
    let err = raw_link(ctl.gateway, &real_ca, &foreign.cert_pem, &foreign.key_pem)
        .await
        .expect_err("refused");
    assert!(!err.contains("101"), "{err}");
    // And no certificate at all cannot open the link either.
    let err = no_cert_link(&ctl, &real_ca).await;
    assert!(
        err.contains("401") && err.contains("client certificate"),
        "{err}"
    );
    assert!(ctl.nodes().await.is_empty());
}

async fn no_cert_link(ctl: &TestController, ca_pem: &str) -> String {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    for c in spark_agent::tls::certs_from_pem(ca_pem, "ca").unwrap() {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(ctl.gateway).await.unwrap();
    let name = spark_agent::tls::server_name(&ctl.gateway.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    match tokio_tungstenite::client_async(format!("wss://{}/v1/link", ctl.gateway), tls).await {
        Ok(_) => "connected".into(),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => format!(
            "{} {}",
            r.status(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
        ),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_within_5s_after_controller_restart() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ctl");
    let mut ctl = TestController::start(&data).await;
    let (http, gateway) = (ctl.http, ctl.gateway);
    let agent =
        TestAgent::join_and_run(&ctl.token().await, &dir.path().join("agent"), "survivor").await;
    let id = agent.identity.node_id.clone();
    wait_until(Duration::from_secs(3), "node connected", || {
        connected_node(&ctl, &id)
    })
    .await;

    ctl.stop().await;
    let mut status = agent.status.clone();
    wait_until(
        Duration::from_secs(3),
        "agent notices the controller left",
        || {
            let s = status.borrow_and_update().clone();
            async move { (!matches!(s, LinkState::Connected { .. })).then_some(()) }
        },
    )
    .await;
    // Stay down long enough for the agent's backoff to reach its cap.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let restarted = Instant::now();
    let ctl = TestController::start_with(&data, http, gateway, |_| {}).await;
    let node = wait_until(
        Duration::from_secs(5),
        "agent reconnected to the restarted controller",
        || connected_node(&ctl, &id),
    )
    .await;
    eprintln!("reconnected {:?} after restart", restarted.elapsed());
    assert_eq!(
        node["name"], "survivor",
        "the controller still knows the node"
    );
    let kinds: Vec<String> = ctl
        .events()
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.iter().filter(|k| *k == "node_connected").count() >= 2,
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"node_disconnected".to_string()),
        "{kinds:?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_is_declared_dead_by_heartbeat() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start_with(
        &dir.path().join("ctl"),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        |c| c.heartbeat_interval = Duration::from_millis(300),
    )
    .await;
    let id = ctl.enroll(&dir.path().join("a"), "quiet").await;
    let mut ws = ctl.raw_link(&id).await.unwrap();
    let (_hello, welcome) = raw_handshake(&mut ws, &Hello::current(&[])).await;
    let Message::Binary(b) = welcome else {
        panic!("{welcome:?}")
    };
    assert!(matches!(
        proto::decode::<ControllerMsg>(&b).unwrap(),
        ControllerMsg::Welcome { .. }
    ));
    ctl.wait_node_connected(&id.node_id, true, Duration::from_secs(2))
        .await;
    // Now go silent: no reads (so no pongs), no writes.
    let silent = Instant::now();
    ctl.wait_node_connected(&id.node_id, false, Duration::from_secs(3))
        .await;
    assert!(
        silent.elapsed() >= Duration::from_millis(600),
        "dropped too early: {:?}",
        silent.elapsed()
    );
    let events = ctl.events().await;
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("no frame from the agent"),
        "{events:?}"
    );
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_major_mismatch_is_refused_naming_both_versions() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let id = ctl.enroll(&dir.path().join("a"), "future").await;
    let mut ws = ctl.raw_link(&id).await.unwrap();
    let future = Hello {
        proto_major: 9,
        proto_minor: 4,
        software_version: "9.4.0".into(),
        features: vec![],
    };
    let (hello, close) = raw_handshake(&mut ws, &future).await;
    let Message::Binary(b) = hello else {
        panic!("expected hello, got {hello:?}")
    };
    let theirs: Hello = proto::decode(&b).unwrap();
    assert_eq!(theirs.proto_major, proto::PROTO_MAJOR);
    let Message::Close(Some(frame)) = close else {
        panic!("expected close, got {close:?}")
    };
    assert_eq!(u16::from(frame.code), CLOSE_REFUSED);
    assert!(
        frame.reason.contains("9.4") && frame.reason.contains("1.0"),
        "{}",
        frame.reason
    );
    let events = ctl.events().await;
    assert_eq!(events[0]["kind"], "node_refused");
    assert!(ctl.node(&id.node_id).await.unwrap()["connected"] == false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_do_not_break_the_controller() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let id = ctl.enroll(&dir.path().join("a"), "noisy").await;

    // Garbage instead of a Hello: closed with a reason.
    let mut ws = ctl.raw_link(&id).await.unwrap();
    ws.send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    let msg = ws.next().await.unwrap().unwrap();
    assert!(
        matches!(msg, Message::Close(Some(ref f)) if f.reason.contains("bad hello")),
        "{msg:?}"
    );

    // After a good Hello, undecodable frames are dropped and the link stays up.
    let mut ws = ctl.raw_link(&id).await.unwrap();
    raw_handshake(&mut ws, &Hello::current(&[])).await;
    let mut seed = 0x1234_5678u32;
    for i in 0..300 {
        let len = (i % 64) + 1;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        ws.send(Message::Binary(bytes.into())).await.unwrap();
    }
    ws.send(Message::Text("not binary".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ctl.node(&id.node_id).await.unwrap()["connected"], true);

    // An oversized frame ends that link, and only that link.
    let big = vec![0u8; proto::MAX_FRAME_BYTES + 10];
    let _ = ws.send(Message::Binary(big.into())).await;
    ctl.wait_node_connected(&id.node_id, false, Duration::from_secs(3))
        .await;
    let (status, _) = ctl.get_json("/healthz").await;
    assert_eq!(status, 200);
}
