//! `spark-control`: the controller. `up` runs it with a local agent; `serve` alone;
//! `token create` prints a join token for a new box.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use spark_agent::link::{LinkOptions, LinkState};
use spark_control::{ControllerConfig, Listeners};

#[derive(Parser)]
#[command(
    name = "spark-control",
    version,
    about = "Spark Control: run a small GPU cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Data directory: database, CA, admin token.
    #[arg(long, env = "SPARK_CONTROL_DATA_DIR", default_value = "./spark-data")]
    data_dir: PathBuf,
    /// Address of the HTTP port (dashboard, API).
    #[arg(long, env = "SPARK_CONTROL_HTTP", default_value = "0.0.0.0:9999")]
    http: SocketAddr,
    /// Address of the agent gateway (TLS, client certificates).
    #[arg(
        long,
        env = "SPARK_CONTROL_AGENT_GATEWAY",
        default_value = "0.0.0.0:9443"
    )]
    agent_gateway: SocketAddr,
    /// Gateway address(es) to put in join tokens, host:port (repeatable or comma-separated).
    /// Default: this machine's LAN addresses with the gateway port.
    #[arg(long, env = "SPARK_CONTROL_ADVERTISE", value_delimiter = ',')]
    advertise: Vec<String>,
    /// Log as JSON lines.
    #[arg(long, env = "SPARK_CONTROL_LOG_JSON")]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller and an agent for this machine.
    Up(ServeArgs),
    /// Run the controller alone.
    Serve(ServeArgs),
    /// Join tokens for new boxes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a one-time join token.
    Create {
        /// How long the token stays valid (e.g. 30m, 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[arg(long, env = "SPARK_CONTROL_DATA_DIR", default_value = "./spark-data")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    spark_agent::install_crypto_provider();
    let cli = Cli::parse();
    let log_json = match &cli.command {
        Command::Up(a) | Command::Serve(a) => a.log_json,
        Command::Token { .. } => false,
    };
    init_logging(log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spark-control: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => serve(args, true).await,
            Command::Serve(args) => serve(args, false).await,
            Command::Token {
                command: TokenCommand::Create { ttl, data_dir },
            } => token_create(data_dir, ttl),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spark-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn token_create(data_dir: PathBuf, ttl: Duration) -> anyhow::Result<()> {
    let (db, ca, _) = spark_control::open_data_dir(&data_dir)?;
    let gateways: Vec<String> = db
        .meta("gateway_advertise")?
        .and_then(|j| serde_json::from_str(&j).ok())
        .context("this data directory has never run a controller, so the gateway address is unknown: start `spark-control serve` (or `up`) once first")?;
    let (token, expires_at) =
        spark_control::nodes::create_token(&db, &ca.fingerprint(), &gateways, ttl, "cli")?;
    println!("{token}");
    eprintln!(
        "Valid once, until {}. On the new box run:\n  spark-agent join {token}",
        spark_control::rfc3339(expires_at)
    );
    Ok(())
}

async fn serve(args: ServeArgs, with_local_agent: bool) -> anyhow::Result<()> {
    let mut config = ControllerConfig::new(&args.data_dir);
    config.advertise = args.advertise.clone();
    if let Some(bad) = config
        .advertise
        .iter()
        .find(|a| !spark_common::token::is_host_port(a))
    {
        anyhow::bail!("--advertise {bad:?} is not host:port (e.g. 192.168.1.10:9443)");
    }
    let listeners = Listeners::bind(args.http, args.agent_gateway).await?;
    let running = spark_control::start(config, listeners).await?;
    let agent = if with_local_agent {
        Some(spark_control::up::start_local_agent(&running, LinkOptions::default()).await?)
    } else {
        None
    };

    let data_dir = running.app.config.data_dir.display().to_string();
    println!(
        "Spark Control {} is running.",
        spark_common::SOFTWARE_VERSION
    );
    for url in dashboard_urls(running.http_addr) {
        println!("  Dashboard:     {url}");
    }
    println!("  Agent gateway: {}", running.app.gateway_addrs.join(", "));
    println!("  Data:          {data_dir} (admin token in {data_dir}/admin.token)");
    println!("  Add a box:     spark-control token create --data-dir {data_dir}");

    if let Some(agent) = &agent {
        let mut status = agent.status.clone();
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let LinkState::Connected { node_name } = &*status.borrow() {
                    return node_name.clone();
                }
                if status.changed().await.is_err() {
                    return String::new();
                }
            }
        })
        .await;
        match waited {
            Ok(name) if !name.is_empty() => println!("  Local node:    '{name}' connected"),
            _ => println!(
                "  Local node:    not connected yet ({:?})",
                &*agent.status.borrow()
            ),
        }
    }

    wait_for_signal().await;
    println!("Stopping…");
    running.stop().await;
    if let Some(agent) = agent {
        agent.shutdown.cancel();
        let _ = agent.task.await;
    }
    Ok(())
}

fn dashboard_urls(http: SocketAddr) -> Vec<String> {
    if !http.ip().is_unspecified() {
        return vec![format!(
            "http://{}/",
            spark_control::config::fmt_host_port(http.ip(), http.port())
        )];
    }
    let mut urls = vec![format!("http://localhost:{}/", http.port())];
    for ip in spark_control::config::local_ipv4s() {
        urls.push(format!("http://{ip}:{}/", http.port()));
    }
    urls
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
