//! The `spark-agent` binary as an operator uses it: join with a token, run, be stopped with
//! SIGTERM, be refused after revocation; configuration from file, environment and flags.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spark_control::{ControllerConfig, Listeners};

const AGENT: &str = env!("CARGO_BIN_EXE_spark-agent");

fn agent() -> Command {
    let mut c = Command::new(AGENT);
    c.env_remove("SPARK_AGENT_STATE_DIR")
        .env_remove("SPARK_AGENT_CONFIG")
        .env("RUST_LOG", "warn");
    c
}

async fn wait_connected(running: &spark_control::Running, id: &str, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while running.app.registry.get(id).is_some() != want {
        assert!(Instant::now() < deadline, "node {id} connected != {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_run_stop_and_revoke_with_the_binary() {
    spark_agent::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let running = spark_control::start(ControllerConfig::new(dir.path().join("ctl")), listeners)
        .await
        .unwrap();
    let (token, _) = running.create_join_token(Duration::from_secs(60)).unwrap();
    let state = dir.path().join("agent-state");

    // join, token on standard input.
    let mut join = agent()
        .args(["join", "-", "--name", "cli-box", "--state-dir"])
        .arg(&state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(join.stdin.take().unwrap(), "{token}").unwrap();
    }
    let out = tokio::task::spawn_blocking(move || join.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Enrolled as node 'cli-box'"));
    let identity = spark_agent::state::Identity::load(&state).unwrap().unwrap();

    // Joining again into the same directory is refused with advice.
    let out = agent()
        .args(["join", &token, "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already enrolled"));

    // run, state dir from the environment; SIGTERM stops it cleanly.
    let mut run = agent()
        .arg("run")
        .env("SPARK_AGENT_STATE_DIR", &state)
        .spawn()
        .unwrap();
    wait_connected(&running, &identity.node_id, true).await;
    let _ = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || run.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    wait_connected(&running, &identity.node_id, false).await;

    // After revocation the agent exits with code 3 (systemd does not restart on it).
    let mut run = agent()
        .args(["run", "--state-dir"])
        .arg(&state)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_connected(&running, &identity.node_id, true).await;
    spark_control::nodes::revoke(&running.app, &identity.node_id, "test").unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while run.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "agent kept running after revocation"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        run.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    running.stop().await;
}

#[test]
fn config_precedence_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "state_dir = \"/from/file\"\nlog_format = \"json\"\n").unwrap();
    let show = |cmd: &mut Command| -> serde_json::Value {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = show(agent().arg("config").arg("--config").arg(&file));
    assert_eq!(v["state_dir"], "/from/file");
    assert_eq!(v["log_format"], "json");
    let v = show(
        agent()
            .arg("config")
            .env("SPARK_AGENT_CONFIG", &file)
            .env("SPARK_AGENT_STATE_DIR", "/from/env"),
    );
    assert_eq!(v["state_dir"], "/from/env");
    let v = show(
        agent()
            .args(["config", "--state-dir", "/from/flag"])
            .env("SPARK_AGENT_CONFIG", &file)
            .env("SPARK_AGENT_STATE_DIR", "/from/env"),
    );
    assert_eq!(v["state_dir"], "/from/flag");

    std::fs::write(&file, "bogus = 1\n").unwrap();
    let out = agent()
        .arg("config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));

    // run without an identity says what to do.
    let out = agent()
        .args(["run", "--state-dir"])
        .arg(dir.path().join("empty"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("spark-agent join"));
    // join with garbage says it is not a token.
    let out = agent()
        .args(["join", "garbage", "--state-dir"])
        .arg(dir.path().join("g"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Spark Control join token"));
}
