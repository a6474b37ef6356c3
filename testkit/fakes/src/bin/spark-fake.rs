//! `spark-fake`: runs one of the fake upstreams of `spark-fakes` as a process.
//!
//! Usable on a host and as the entrypoint of a `FROM scratch` container (static binary: no DNS,
//! no /etc files, no TLS, no shell). Prints `listening on ADDR` once bound and exits promptly on
//! SIGTERM or SIGINT.
//!
//! `spark-fake vllm` takes real `vllm serve` command lines (see [`spark_fakes::vllm`]): it
//! normalizes them as vLLM's parser does (`--max_model_len`, `-tp 2`), validates them, logs
//! vLLM-like lines while "loading", and models `--check-args`, `--headless` workers and failing
//! loads (`--exit-during-load-ms`).

use std::ffi::OsString;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use spark_fakes::{Fake, asr, qdrant, tei, tts, vllm};

/// vLLM's default port.
const VLLM_PORT: u16 = 8000;

#[derive(Debug, Parser)]
#[command(
    name = "spark-fake",
    version,
    about = "Fake upstream servers for Spark Control tests",
    // As with argparse, a repeated single-value flag is not an error: the last one wins
    // (list flags such as --served-model-name or --repo still accumulate).
    args_override_self = true
)]
struct Cli {
    /// Address to listen on (an IP address: no name resolution).
    #[arg(long, global = true, default_value = "0.0.0.0")]
    host: IpAddr,
    /// Port to listen on (0 = any free port; default: the upstream's usual port).
    #[arg(long, global = true)]
    port: Option<u16>,
    #[command(subcommand)]
    fake: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// vLLM OpenAI-compatible server (default port 8000).
    Vllm(Box<vllm::ServeArgs>),
    /// Parakeet-style ASR server (default port 8000).
    Asr(AsrArgs),
    /// Kokoro-FastAPI TTS (default port 8880).
    Kokoro(KokoroArgs),
    /// NVIDIA Magpie / Riva TTS NIM (default port 9000).
    Magpie(MagpieArgs),
    /// text-embeddings-inference (default port 3000).
    Tei(TeiArgs),
    /// In-memory Qdrant (default port 6333).
    Qdrant(QdrantArgs),
    /// Hugging Face Hub file server serving local directories as repositories (default port 8080).
    Hf(HfArgs),
}

impl Command {
    /// The fake to run and its default port.
    fn into_fake(self) -> (Fake, u16) {
        match self {
            Command::Vllm(a) => (Fake::Vllm(a.to_config()), VLLM_PORT),
            Command::Asr(a) => (Fake::Asr(a.into_config()), 8000),
            Command::Kokoro(a) => (Fake::Kokoro(a.into_config()), 8880),
            Command::Magpie(a) => (Fake::Magpie(a.into_config()), 9000),
            Command::Tei(a) => (Fake::Tei(a.into_config()), 3000),
            Command::Qdrant(a) => (Fake::Qdrant(a.into_config()), 6333),
            Command::Hf(a) => (
                Fake::Router {
                    router: spark_fakes::hf::router(a.into_config()),
                    bind_delay: Duration::ZERO,
                },
                8080,
            ),
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[derive(Debug, Args)]
struct AsrArgs {
    /// Model name.
    #[arg(long, default_value = "nvidia/parakeet-tdt-0.6b-v3")]
    model: String,
    /// Language reported when a request names none.
    #[arg(long, default_value = "en")]
    language: String,
    /// verbose_json words carry a leading space.
    #[arg(long)]
    word_leading_space: bool,
    /// Transcriptions fail with a CUDA error after this many.
    #[arg(long)]
    wedge_after: Option<u64>,
    /// Health answers 503 for this long after start.
    #[arg(long, default_value_t = 0)]
    load_delay_ms: u64,
}

impl AsrArgs {
    fn into_config(self) -> asr::Config {
        asr::Config {
            model: self.model,
            language: self.language,
            word_leading_space: self.word_leading_space,
            wedge_after: self.wedge_after,
            load_delay: ms(self.load_delay_ms),
        }
    }
}

#[derive(Debug, Args)]
struct KokoroArgs {
    /// Voice ids (repeatable; default: a built-in list starting with af_heart).
    #[arg(long = "voice")]
    voices: Vec<String>,
    /// /v1/audio/voices returns the legacy list of strings.
    #[arg(long)]
    legacy_voices: bool,
}

impl KokoroArgs {
    fn into_config(self) -> tts::KokoroConfig {
        let mut cfg = tts::KokoroConfig::default();
        if !self.voices.is_empty() {
            cfg.voices = self.voices;
        }
        cfg.legacy_voices = self.legacy_voices;
        cfg
    }
}

#[derive(Debug, Args)]
struct MagpieArgs {
    /// /v1/health/ready answers 503 for this long after start.
    #[arg(long, default_value_t = 0)]
    load_delay_ms: u64,
    /// Default output sample rate.
    #[arg(long, default_value_t = 22_050)]
    sample_rate: u32,
}

impl MagpieArgs {
    fn into_config(self) -> tts::MagpieConfig {
        tts::MagpieConfig {
            load_delay: ms(self.load_delay_ms),
            sample_rate: self.sample_rate,
            ..tts::MagpieConfig::default()
        }
    }
}

#[derive(Debug, Args)]
struct TeiArgs {
    /// Model id reported by /info.
    #[arg(long, default_value = "BAAI/bge-m3")]
    model_id: String,
    /// Dense embedding dimension.
    #[arg(long, default_value_t = 1024)]
    dim: usize,
    /// Maximum tokens per input.
    #[arg(long, default_value_t = 8192)]
    max_input_length: usize,
    /// Maximum inputs per request.
    #[arg(long, default_value_t = 32)]
    max_client_batch_size: usize,
    /// Serve dense embeddings only, like real TEI with bge-m3 (/embed_sparse and /rerank: 424).
    #[arg(long)]
    dense_only: bool,
}

impl TeiArgs {
    fn into_config(self) -> tei::Config {
        tei::Config {
            model_id: self.model_id,
            dim: self.dim,
            max_input_length: self.max_input_length,
            max_client_batch_size: self.max_client_batch_size,
            sparse: !self.dense_only,
            rerank: !self.dense_only,
        }
    }
}

#[derive(Debug, Args)]
struct QdrantArgs {
    /// Version reported by GET /.
    #[arg(long, default_value = "1.13.0")]
    qdrant_version: String,
    /// k of {"fusion":"rrf"} (Qdrant's default: 2).
    #[arg(long, default_value_t = 2.0)]
    rrf_k: f32,
}

impl QdrantArgs {
    fn into_config(self) -> qdrant::Config {
        qdrant::Config {
            version: self.qdrant_version,
            rrf_k: self.rrf_k,
        }
    }
}

#[derive(Debug, Args)]
struct HfArgs {
    /// A repository to serve: `ORG/NAME=DIRECTORY` (repeatable). Files of at least 1 MiB are
    /// served as LFS files (sha256 ETags).
    #[arg(long = "repo", value_name = "ID=DIR")]
    repos: Vec<String>,
    /// Repositories that need the token (repeatable).
    #[arg(long = "gated", value_name = "ID")]
    gated: Vec<String>,
    /// The token that opens gated repositories.
    #[arg(long)]
    token: Option<String>,
    /// Cut each large file's first transfer after this many bytes (to exercise resume).
    #[arg(long)]
    interrupt_after_bytes: Option<u64>,
}

impl HfArgs {
    fn into_config(self) -> spark_fakes::hf::HfFakeConfig {
        let mut repos = Vec::new();
        for spec in &self.repos {
            let Some((id, dir)) = spec.split_once('=') else {
                eprintln!("spark-fake hf: --repo takes ID=DIRECTORY, not '{spec}'");
                std::process::exit(2);
            };
            match spark_fakes::hf::HfRepo::from_dir(id, std::path::Path::new(dir), 1 << 20) {
                Ok(mut repo) => {
                    repo.gated = self.gated.iter().any(|g| g == id);
                    repos.push(repo);
                }
                Err(e) => {
                    eprintln!("spark-fake hf: cannot read {dir}: {e}");
                    std::process::exit(2);
                }
            }
        }
        spark_fakes::hf::HfFakeConfig {
            repos,
            token: self.token,
            interrupt_after_bytes: self.interrupt_after_bytes,
            ..Default::default()
        }
    }
}

/// A future resolving on SIGTERM or SIGINT. The handlers are installed before this returns, so
/// a signal that arrives before the future is first polled (e.g. during a bind delay) is not lost.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The command line, with the arguments after `vllm` normalized as vLLM's parser reads them
/// ([`vllm::normalize_serve_args`]).
fn argv() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    // Find the subcommand: skip the global flags (and their values) before it.
    let mut i = 1;
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        match arg {
            "--host" | "--port" => i += 2,
            a if a.starts_with("--host=") || a.starts_with("--port=") => i += 1,
            "vllm" => {
                let tail = args.split_off(i + 1);
                args.extend(vllm::normalize_serve_args(tail));
                break;
            }
            _ => break,
        }
    }
    args
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(argv());
    let (host, port) = (cli.host, cli.port);
    if let Command::Vllm(args) = cli.fake {
        return run_vllm(*args, SocketAddr::new(host, port.unwrap_or(VLLM_PORT))).await;
    }
    let (fake, default_port) = cli.fake.into_fake();
    let addr = SocketAddr::new(host, port.unwrap_or(default_port));
    let shutdown = shutdown_signal()?;
    spark_fakes::serve(fake, addr, shutdown)
        .await
        .map_err(|e| anyhow::anyhow!("serving on {addr}: {e}"))
}

/// Environment variables a multi-node vLLM container gets (spark-vllm-docker), logged if set.
const LOGGED_ENV: [&str; 4] = [
    "VLLM_HOST_IP",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_HCA",
    "GLOO_SOCKET_IFNAME",
];

/// `spark-fake vllm`: validate, log like vLLM, "load", then serve (or, headless, wait).
async fn run_vllm(args: vllm::ServeArgs, addr: SocketAddr) -> anyhow::Result<()> {
    if let Err(msg) = args.validate() {
        // Reported like a parse error (exit code 2), with the `vllm` subcommand's usage.
        let mut cmd = Cli::command();
        cmd.build();
        let sub = cmd.find_subcommand_mut("vllm");
        match sub {
            Some(sub) => sub.error(ErrorKind::ArgumentConflict, msg).exit(),
            None => cmd.error(ErrorKind::ArgumentConflict, msg).exit(),
        }
    }
    if args.check_args {
        let mut out = std::io::stdout().lock();
        writeln!(out, "arguments ok")?;
        out.flush()?;
        return Ok(());
    }
    // Installed first, so a signal during the start-up is not lost.
    let mut shutdown: Shutdown = Box::pin(shutdown_signal()?);
    let log = Log::from_env();
    let model = args.model_name();

    log.info(
        "api_server.py:1896",
        &format!("vLLM API server version {}", args.vllm_version),
    );
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    log.info(
        "utils.py:328",
        &format!("argv: {}", serde_json::Value::from(argv)),
    );
    for name in LOGGED_ENV {
        if let Some(value) = std::env::var_os(name) {
            log.info(
                "envs.py:1105",
                &format!("environment: {name}={}", value.to_string_lossy()),
            );
        }
    }
    log.info(
        "core.py:93",
        &format!(
            "Starting vLLM engine for {model} (tp={}, nnodes={}, rank={}, pp={}, backend={})",
            args.tensor_parallel_size,
            args.nnodes,
            args.node_rank,
            args.pipeline_parallel_size,
            args.distributed_executor_backend.as_deref().unwrap_or("mp"),
        ),
    );
    log.info("core.py:94", &args.summary());
    if args.headless {
        log.info(
            "serve.py:243",
            &format!(
                "headless worker rank {} of {}, master {}:{}",
                args.node_rank, args.nnodes, args.master_addr, args.master_port
            ),
        );
    }
    log.info(
        "gpu_model_runner.py:2602",
        &format!("Starting to load model {model}..."),
    );

    // "Loading": the port is not bound. A failing load ends the process at its deadline.
    let loading = Duration::from_millis(args.exit_during_load_ms.unwrap_or(args.load_delay_ms));
    tokio::select! {
        () = &mut shutdown => return Ok(()),
        () = tokio::time::sleep(loading) => {}
    }
    if args.exit_during_load_ms.is_some() {
        fail_load(args.exit_code);
    }
    log.info(
        "default_loader.py:267",
        &format!("Loading weights took {:.2} seconds", loading.as_secs_f64()),
    );
    log.info(
        "gpu_model_runner.py:2653",
        &format!(
            "Model loading took 1.00 GiB and {:.6} seconds",
            loading.as_secs_f64()
        ),
    );

    if args.headless {
        shutdown.await;
        return Ok(());
    }
    log.info(
        "api_server.py:1971",
        &format!("Starting vLLM API server on http://{addr}"),
    );
    let mut cfg = args.to_config();
    // The loading phase is over: bind at once (the `die_after` clock starts now).
    cfg.load_delay = Duration::ZERO;
    spark_fakes::serve(Fake::Vllm(cfg), addr, shutdown)
        .await
        .map_err(|e| anyhow::anyhow!("serving on {addr}: {e}"))
}

/// What a vLLM engine that runs out of GPU memory while loading prints to stderr before
/// exiting (abridged); then exits with `code`.
fn fail_load(code: u8) -> ! {
    let ts = timestamp();
    let lines = [
        format!("ERROR {ts} [core.py:708] EngineCore failed to start."),
        format!("ERROR {ts} [core.py:708] Traceback (most recent call last):"),
        format!(
            "ERROR {ts} [core.py:708]   File \"/usr/local/lib/python3.12/dist-packages/vllm/\
             model_executor/model_loader/base_loader.py\", line 49, in load_model"
        ),
        format!(
            "ERROR {ts} [core.py:708] torch.OutOfMemoryError: CUDA out of memory. Tried to \
             allocate 2.00 GiB. GPU 0 has a total capacity of 119.70 GiB of which 1.06 GiB is \
             free. Including non-PyTorch memory, this process has 112.35 GiB memory in use."
        ),
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core \
         proc(s): {'EngineCore_DP0': 1}"
            .to_string(),
    ];
    let mut err = std::io::stderr().lock();
    for line in lines {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code))
}

/// vLLM-style log lines (`INFO MM-DD HH:MM:SS [file.py:line] message`). They go to stderr
/// unless `VLLM_LOGGING_STREAM` names stdout (`ext://sys.stdout`), so that stdout stays the
/// `listening on ADDR` channel (real vLLM logs to stdout by default: a documented deviation).
struct Log {
    stdout: bool,
}

impl Log {
    fn from_env() -> Log {
        let stdout = std::env::var("VLLM_LOGGING_STREAM").is_ok_and(|v| v.ends_with("stdout"));
        Log { stdout }
    }

    fn info(&self, source: &str, message: &str) {
        let line = format!("INFO {} [{source}] {message}", timestamp());
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        } else {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
            let _ = err.flush();
        }
    }
}

/// `MM-DD HH:MM:SS` in UTC, as vLLM's log format prints it.
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!(
        "{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
