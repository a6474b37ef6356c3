#![allow(clippy::unwrap_used)]

//! `spark-fake vllm` run as a process with real `vllm serve` command lines: parsing and
//! validation (clap's exit code 2), `--check-args`, vLLM-like logs, a load that fails
//! (`--exit-during-load-ms`), and `--headless` workers.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_spark-fake");

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connects(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A running `spark-fake`, its stdout as lines and its stderr collected.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("VLLM_LOGGING_STREAM")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child,
            lines,
            stderr,
        }
    }

    /// Stdout lines up to and including the first one containing `needle`.
    fn lines_until(&self, needle: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no line with {needle:?}; stdout so far: {seen:#?}; stderr: {}",
                    self.stderr()
                )
            });
            let done = line.contains(needle);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the exit (at most `within`); the status and how long it took.
    fn wait(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(started.elapsed() < within, "still running after {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM; the status and how long the exit took.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait(Duration::from_secs(5))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `spark-fake` to completion: exit code, stdout, stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("VLLM_LOGGING_STREAM")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The log line of `lines` containing `needle`.
fn line_with<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in {lines:#?}"))
}

#[tokio::test]
async fn real_vllm_command_line_starts_logs_and_serves() {
    let port = free_port();
    let port_s = port.to_string();
    let args = [
        "vllm",
        "serve-me/Qwen3-30B-A3B-FP8",
        "--host",
        "127.0.0.1",
        "--port",
        &port_s,
        "--served-model-name",
        "qwen3",
        "-tp",
        "2",
        "--pipeline-parallel-size=1",
        "--gpu-memory-utilization",
        "0.85",
        "--max_model_len=40K",
        "--max-num-batched-tokens",
        "8k",
        "--max-num-seqs=64",
        "--kv-cache-dtype",
        "fp8",
        "--enable-prefix-caching",
        "--load-format",
        "fastsafetensors",
        "--trust-remote-code",
        "--dtype",
        "bfloat16",
        "--quantization",
        "fp8",
        "--nnodes",
        "2",
        "--node-rank",
        "0",
        "--master-addr",
        "10.0.0.1",
        "--master-port",
        "29501",
        "--distributed-executor-backend",
        "mp",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--reasoning-parser",
        "qwen3",
        "--limit-mm-per-prompt",
        r#"{"image":2,"video":0}"#,
        "--mm-encoder-tp-mode",
        "data",
        "--enforce-eager",
        "--swap-space",
        "4",
        "--max-num-partial-prefills",
        "2",
        "--async-scheduling",
        "--chat-template",
        "/models/template.jinja",
        "--moe-backend",
        "marlin",
        "--enable-expert-parallel",
        "--load-delay-ms",
        "300",
    ];
    let started = Instant::now();
    let mut p = Proc::start(
        &args,
        &[
            ("VLLM_LOGGING_STREAM", "ext://sys.stdout"),
            ("VLLM_HOST_IP", "10.0.0.1"),
            ("NCCL_SOCKET_IFNAME", "enp1s0f0np0"),
            ("GLOO_SOCKET_IFNAME", "enp1s0f0np0"),
        ],
    );
    // Loading: the port is not bound yet.
    std::thread::sleep(Duration::from_millis(100));
    assert!(!connects(port), "bound while loading");

    let lines = p.lines_until("listening on ", Duration::from_secs(10));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        lines.last().unwrap(),
        &format!("listening on 127.0.0.1:{port}")
    );

    // The whole argv, once, as a JSON array.
    let argv_lines: Vec<&String> = lines.iter().filter(|l| l.contains("argv: ")).collect();
    assert_eq!(argv_lines.len(), 1, "{lines:#?}");
    assert!(argv_lines[0].starts_with("INFO "), "{}", argv_lines[0]);
    let json = &argv_lines[0][argv_lines[0].find("argv: ").unwrap() + 6..];
    let argv: Vec<String> = serde_json::from_str(json).unwrap();
    assert_eq!(argv[0], BIN);
    assert_eq!(&argv[1..], &args[..], "argv as given, not normalized");

    // Environment, engine start, weights, then the API server right before binding.
    line_with(&lines, "environment: VLLM_HOST_IP=10.0.0.1");
    line_with(&lines, "environment: NCCL_SOCKET_IFNAME=enp1s0f0np0");
    line_with(&lines, "environment: GLOO_SOCKET_IFNAME=enp1s0f0np0");
    assert!(!lines.iter().any(|l| l.contains("NCCL_IB_HCA")));
    line_with(
        &lines,
        "Starting vLLM engine for serve-me/Qwen3-30B-A3B-FP8 (tp=2, nnodes=2, rank=0",
    );
    let config = line_with(&lines, "Engine config: ");
    for setting in [
        "max_model_len=40960",
        "kv_cache_dtype=fp8",
        "gpu_memory_utilization=0.85",
        "max_num_batched_tokens=8000",
        "max_num_seqs=64",
        "enable_prefix_caching=true",
        "load_format=fastsafetensors",
        "trust_remote_code=true",
        "tool_call_parser=hermes",
    ] {
        assert!(config.contains(setting), "{setting} not in {config}");
    }
    line_with(&lines, "Loading weights took 0.30 seconds");
    let n = lines.len();
    assert!(
        lines[n - 2].starts_with("INFO ")
            && lines[n - 2].ends_with(&format!(
                "Starting vLLM API server on http://127.0.0.1:{port}"
            )),
        "{lines:#?}"
    );

    // Serving, with the served name and the context length from `--max_model_len=40K`.
    let http = client();
    let base = format!("http://127.0.0.1:{port}");
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let models: Value = http
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], "qwen3");
    assert_eq!(models["data"][0]["root"], "serve-me/Qwen3-30B-A3B-FP8");
    assert_eq!(models["data"][0]["max_model_len"], 40_960);

    let (status, took) = p.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn logs_go_to_stderr_by_default_and_stdout_starts_with_listening() {
    let port = free_port();
    let port_s = port.to_string();
    let mut p = Proc::start(
        &[
            "--host",
            "127.0.0.1",
            "vllm",
            "org/model",
            "--port",
            &port_s,
            "--runner",
            "pooling",
        ],
        &[],
    );
    let lines = p.lines_until("listening on ", Duration::from_secs(10));
    assert_eq!(lines, [format!("listening on 127.0.0.1:{port}")]);
    let stderr = p.stderr();
    assert!(stderr.contains("argv: ["), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Starting vLLM API server on http://127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    // `--runner pooling` serves a pooling model.
    let resp = client()
        .post(format!("http://127.0.0.1:{port}/v1/embeddings"))
        .json(&serde_json::json!({"model": "org/model", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 1024);
    let (status, _) = p.terminate();
    assert!(status.success());
}

#[test]
fn check_args_validates_without_loading_or_binding() {
    // Hold the port: a fake that tried to bind it would fail.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let started = Instant::now();
    let (code, stdout, stderr) = run(&[
        "vllm",
        "--model",
        "org/model",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "-tp",
        "2",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--headless",
        "--max-model-len",
        "32k",
        "--kv-cache-dtype=fp8_e4m3",
        "--no-enable-prefix-caching",
        "--load-delay-ms",
        "60000",
        "--check-args",
    ]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stdout, "arguments ok\n");
    assert!(!stderr.contains("Starting vLLM"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "--check-args must not load"
    );

    // vLLM's cross-checks fail like a parse error.
    for (args, needle) in [
        (
            &["--nnodes", "2", "--node-rank", "2", "-tp", "2"][..],
            "node_rank=2 must be less than nnodes=2.",
        ),
        (
            &["--nnodes", "2", "--node-rank", "1", "-tp", "3"][..],
            "world_size=3 must be divisible by nnodes=2.",
        ),
        (&["--headless"][..], "--headless needs --nnodes > 1"),
        (
            &["--enable-auto-tool-choice"][..],
            "--enable-auto-tool-choice requires --tool-call-parser",
        ),
    ] {
        let mut argv = vec!["vllm", "org/model", "--check-args"];
        argv.extend_from_slice(args);
        let (code, stdout, stderr) = run(&argv);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    drop(held);
}

#[test]
fn unknown_flags_and_bad_values_exit_2_naming_the_problem() {
    let port = free_port().to_string();
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--no-such-flag"],
            &["unexpected argument '--no-such-flag'"],
        ),
        (&["--enable-prefix-cache"], &["'--enable-prefix-cache'"]),
        (
            &["--gpu-memory-utilization", "1.5"],
            &["'1.5'", "--gpu-memory-utilization"],
        ),
        (
            &["--gpu-memory-utilization=0"],
            &["'0'", "--gpu-memory-utilization"],
        ),
        (
            &["--kv-cache-dtype", "fp16x"],
            &["'fp16x'", "--kv-cache-dtype", "possible values"],
        ),
        (&["-tp", "0"], &["'0'", "--tensor-parallel-size"]),
    ];
    for (bad, needles) in cases {
        // The real start path, not --check-args: parsing fails before anything else.
        let mut argv = vec!["vllm", "org/model", "--host", "127.0.0.1", "--port", &port];
        argv.extend_from_slice(bad);
        let (code, stdout, stderr) = run(&argv);
        assert_eq!(code, Some(2), "{bad:?}: {stderr}");
        assert!(stdout.is_empty(), "{bad:?}: {stdout}");
        assert!(stderr.starts_with("error: "), "{bad:?}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{bad:?}: {needle:?} not in {stderr}"
            );
        }
    }
    // The good forms of the same flags are fine.
    let (code, stdout, stderr) = run(&[
        "vllm",
        "org/model",
        "--enable-prefix-caching",
        "--gpu-memory-utilization",
        "1",
        "--kv-cache-dtype",
        "fp8",
        "-tp",
        "1",
        "--check-args",
    ]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "arguments ok\n"),
        "{stderr}"
    );
}

#[test]
fn exit_during_load_fails_with_cuda_oom_and_never_binds() {
    for (extra, expected) in [(&[][..], 1), (&["--exit-code", "7"][..], 7)] {
        let port = free_port();
        let port_s = port.to_string();
        let mut argv = vec![
            "vllm",
            "org/model",
            "--host",
            "127.0.0.1",
            "--port",
            &port_s,
            "--exit-during-load-ms",
            "200",
        ];
        argv.extend_from_slice(extra);
        let mut p = Proc::start(&argv, &[]);
        let started = Instant::now();
        let status = loop {
            assert!(!connects(port), "the port was bound during the load");
            if let Some(status) = p.child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "no exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(status.code(), Some(expected));
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        let stderr = p.stderr();
        assert!(
            stderr
                .contains("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
            "{stderr}"
        );
        assert!(
            stderr
                .contains("RuntimeError: Engine core initialization failed. See root cause above."),
            "{stderr}"
        );
        assert!(!stderr.contains("Starting vLLM API server"), "{stderr}");
        assert!(!stderr.contains("Loading weights took"), "{stderr}");
        assert!(p.lines.try_recv().is_err(), "nothing on stdout");
    }
}

#[test]
fn headless_worker_never_binds_and_exits_on_sigterm() {
    let port = free_port();
    let port_s = port.to_string();
    let mut p = Proc::start(
        &[
            "vllm",
            "org/model",
            "--host",
            "127.0.0.1",
            "--port",
            &port_s,
            "-tp",
            "2",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-addr",
            "10.0.0.1",
            "--master-port",
            "29501",
            "--headless",
            "--load-delay-ms",
            "100",
        ],
        &[("VLLM_LOGGING_STREAM", "ext://sys.stdout")],
    );
    // Wait until loading is over, then check that the worker stays up without a port.
    let lines = p.lines_until("Loading weights took", Duration::from_secs(10));
    line_with(&lines, "headless worker rank 1 of 2, master 10.0.0.1:29501");
    line_with(
        &lines,
        "Starting vLLM engine for org/model (tp=2, nnodes=2, rank=1",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.child.try_wait().unwrap().is_none(), "the worker exited");
    assert!(!connects(port), "a headless worker bound the API port");
    assert!(!lines.iter().any(|l| l.contains("Starting vLLM API server")));
    assert!(!lines.iter().any(|l| l.starts_with("listening on")));

    let (status, took) = p.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}
