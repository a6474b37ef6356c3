//! The gateway relay benchmark: what `POST /v1/chat/completions` through the controller costs
//! compared with calling the model server directly.
//!
//! The release `spark-fake vllm` (no token delay) and the release `spark-control serve` run as
//! separate processes on loopback; the fake is configured as an `llm` service named `bench`
//! (`PUT /api/services/bench`), so the controller routes model `bench` to it. Then, each case
//! against the upstream directly and through the controller:
//!
//! * non-streaming throughput and latency with `wrk --latency` (1 connection / 1 thread and
//!   64 connections / 2 threads; a short warm-up run before each measured one);
//! * streaming time to first token (`"stream": true`; send until the first body chunk holding
//!   `data: `, the rest of the stream read to `[DONE]`) with this program's own client, at
//!   concurrency 1 and 64.
//!
//! It prints a table (requests/s, p50/p99, what the proxy adds, CPU per request of the upstream
//! and the controller), checks the design targets (added p50 <= 1 ms and p99 <= 5 ms at 64
//! clients, <= 2 ms added to TTFT, >= 90 % of direct throughput) and writes the results into
//! `docs/proxy-benchmark.md` between its `spark-proxy-bench:<layout>` markers.
//!
//! Run: `cargo run --release -p spark-testkit --bin spark-proxy-bench -- [SECONDS_PER_CASE]
//! [--pin[=servers|controller]] [--no-write]` (default 10 s per case, nothing pinned). Needs
//! `wrk` (`apt-get install wrk`). Pinning needs `taskset` (util-linux) and 2+ cores:
//! `--pin`/`--pin=servers` puts the load generators on CPU 0 and the upstream and the controller
//! on CPU 1; `--pin=controller` puts the load generators and the upstream on CPU 0 and the
//! controller alone on CPU 1 (as on its own host). `--no-write` only prints.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::{Value, json};
use spark_testkit::docker::workspace_root;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const MODEL: &str = "bench";
const PROMPT: &str = "Say hello to the benchmark in a few short words please";
const MAX_TOKENS: u32 = 16;
/// Requests per second of the paced streaming case: the same offered load direct and proxied,
/// well under either's capacity, so that TTFT is compared at equal load.
const PACED_RATE: f64 = 500.0;

// ---------- child processes ----------

/// A child process killed (SIGKILL) when dropped, whatever ended the run.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .ok_or_else(|| anyhow!("{} has already exited", self.name))
    }

    /// Fails (with the end of its log) when the process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); end of its log:\n{}",
                self.name,
                log_tail(&self.log)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A command, run under `taskset -c CPUS` when pinned.
fn command(program: &Path, cpus: Option<&str>) -> Command {
    let mut cmd = match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.kill_on_drop(true).stdin(Stdio::null());
    cmd
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `(utime + stime)` of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn shell_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

// ---------- wrk ----------

#[derive(Debug, Clone)]
struct Measure {
    rps: f64,
    p50: Duration,
    p99: Duration,
    requests: u64,
    /// Socket errors as wrk reports them, when any.
    errors: Option<String>,
    /// Streams: p50 and p99 of the time to the first content token and to the end.
    stream: Option<StreamTimes>,
    cpu: Usage,
}

/// `181.00us`, `1.25ms`, `2.00s`, `1.00m`.
fn parse_wrk_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        bail!("wrk duration {s:?} has no known unit")
    };
    let v: f64 = num.parse().with_context(|| format!("wrk duration {s:?}"))?;
    Ok(Duration::from_secs_f64(v * scale))
}

struct WrkOutput {
    rps: f64,
    p50: Duration,
    p99: Duration,
    requests: u64,
    non_2xx: u64,
    errors: Option<String>,
}

fn parse_wrk(out: &str) -> anyhow::Result<WrkOutput> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut non_2xx = 0;
    let mut errors = None;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>().context("Requests/sec")?);
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(parse_wrk_duration(v)?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(parse_wrk_duration(v)?);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().context("Non-2xx count")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            errors = Some(v.trim().to_string());
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    Ok(WrkOutput {
        rps: rps.ok_or_else(|| anyhow!("no Requests/sec in wrk's output:\n{out}"))?,
        p50: p50.ok_or_else(|| anyhow!("no 50% latency in wrk's output:\n{out}"))?,
        p99: p99.ok_or_else(|| anyhow!("no 99% latency in wrk's output:\n{out}"))?,
        requests: requests.ok_or_else(|| anyhow!("no request count in wrk's output:\n{out}"))?,
        non_2xx,
        errors,
    })
}

struct Wrk {
    bin: PathBuf,
    script: PathBuf,
    cpus: Option<String>,
    /// Threads at 64 connections (wrk's own CPU share).
    threads_64: u32,
}

impl Wrk {
    async fn run(&self, url: &str, conns: u32, seconds: u64) -> anyhow::Result<WrkOutput> {
        let threads = if conns == 1 { 1 } else { self.threads_64 };
        let out = command(&self.bin, self.cpus.as_deref())
            .arg("--latency")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{conns}"))
            .arg(format!("-d{seconds}s"))
            .args(["--timeout", "10s", "-s"])
            .arg(&self.script)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed = parse_wrk(&text)?;
        ensure!(
            parsed.non_2xx == 0,
            "wrk got {} non-2xx responses of {} from {url}: the relay is failing requests\n{text}",
            parsed.non_2xx,
            parsed.requests
        );
        ensure!(parsed.requests > 0, "wrk completed no request at {url}");
        Ok(parsed)
    }
}

// ---------- the streaming client ----------

/// The times of one streamed request.
#[derive(Clone, Copy)]
struct StreamSample {
    /// To the first body chunk holding an event (`data: `): the TTFT of the targets.
    first_event: Duration,
    /// To the first event with text (`"content":"x`): what a reader of the answer waits for
    /// (a chat stream starts with an event carrying only the role).
    first_content: Duration,
    /// To the end of the stream.
    end: Duration,
}

/// p50 and p99 of the time to the first content token and to the end of the stream.
#[derive(Debug, Clone, Copy)]
struct StreamTimes {
    content: (Duration, Duration),
    end: (Duration, Duration),
}

/// Whether `buf` holds an event with non-empty `content`.
fn has_content(buf: &[u8]) -> bool {
    const KEY: &[u8] = b"\"content\":\"";
    buf.windows(KEY.len() + 1)
        .any(|w| w.starts_with(KEY) && w[KEY.len()] != b'"')
}

/// One streamed request, read to its end.
async fn one_stream(
    client: &reqwest::Client,
    url: &str,
    body: &str,
) -> anyhow::Result<StreamSample> {
    let t0 = Instant::now();
    let mut resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        bail!("{url} answered {status}: {text}");
    }
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let (mut ttft, mut content) = (None, None);
    while let Some(chunk) = resp.chunk().await? {
        buf.extend_from_slice(&chunk);
        if ttft.is_none() && buf.windows(6).any(|w| w == b"data: ") {
            ttft = Some(t0.elapsed());
        }
        if content.is_none() && has_content(&buf) {
            content = Some(t0.elapsed());
        }
    }
    ensure!(
        buf.ends_with(b"data: [DONE]\n\n"),
        "the stream from {url} did not end with [DONE]: {}",
        String::from_utf8_lossy(&buf)
    );
    let end = t0.elapsed();
    Ok(StreamSample {
        first_event: ttft.ok_or_else(|| anyhow!("the stream from {url} had no event"))?,
        first_content: content.ok_or_else(|| anyhow!("the stream from {url} had no text"))?,
        end,
    })
}

struct StreamRun {
    ttft: Vec<Duration>,
    content: Vec<Duration>,
    end: Vec<Duration>,
    elapsed: Duration,
}

async fn stream_run(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    conc: usize,
    dur: Duration,
    rate: Option<f64>,
) -> anyhow::Result<StreamRun> {
    let start = Instant::now();
    let deadline = start + dur;
    // Paced: each client sends one request every `period`, the clients spread over it.
    let period = rate.map(|r| Duration::from_secs_f64(conc as f64 / r));
    let mut tasks = Vec::new();
    for i in 0..conc {
        let client = client.clone();
        let url = url.to_string();
        let body = body.to_string();
        let mut next = start + period.map_or(Duration::ZERO, |p| p * i as u32 / conc as u32);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next < deadline {
                if period.is_some() && next > Instant::now() {
                    // (Only when paced: the timer's 1 ms resolution would slow a closed loop.)
                    tokio::time::sleep_until(next.into()).await;
                }
                out.push(one_stream(&client, &url, &body).await?);
                next = match period {
                    // Behind schedule: go on at once, without a burst to catch up.
                    Some(p) => (next + p).max(Instant::now()),
                    None => Instant::now(),
                };
            }
            anyhow::Ok(out)
        }));
    }
    let (mut ttft, mut content, mut end) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        for x in t.await.context("streaming client task")?? {
            ttft.push(x.first_event);
            content.push(x.first_content);
            end.push(x.end);
        }
    }
    let elapsed = start.elapsed();
    ensure!(!ttft.is_empty(), "no streaming request completed at {url}");
    ttft.sort_unstable();
    content.sort_unstable();
    end.sort_unstable();
    Ok(StreamRun {
        ttft,
        content,
        end,
        elapsed,
    })
}

/// Nearest-rank percentile of a sorted sample.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------- the cases ----------

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Wrk,
    /// Closed loop: each client sends its next request as soon as the last one ended.
    Stream,
    /// The same offered load direct and proxied ([`PACED_RATE`]).
    PacedStream,
}

struct Case {
    label: String,
    kind: Kind,
    conns: u32,
    direct: Measure,
    proxied: Measure,
}

impl Case {
    fn ratio(&self) -> f64 {
        self.proxied.rps / self.direct.rps
    }
    fn added_p50_ms(&self) -> f64 {
        ms(self.proxied.p50) - ms(self.direct.p50)
    }
    fn added_p99_ms(&self) -> f64 {
        ms(self.proxied.p99) - ms(self.direct.p99)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Measures the CPU time the upstream, the controller, the load generator and the rest of the
/// machine spend during a run.
struct CpuClock {
    up: u32,
    ctl: u32,
    hz: f64,
}

/// CPU clock ticks at one moment.
#[derive(Clone, Copy)]
struct Reading {
    up: u64,
    ctl: u64,
    /// This process and its reaped children (wrk).
    load: u64,
    /// The whole machine, busy (user, nice, system, steal; interrupts left out).
    machine: u64,
    at: Instant,
}

/// CPU use over a run.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// Seconds per request.
    upstream: f64,
    controller: f64,
    /// The load generator (wrk or this program's streaming client).
    load: f64,
    /// Cores used by everything else on the machine during the run (not the upstream, the
    /// controller, wrk or this program): other work disturbing the measurement.
    others: f64,
}

/// utime + stime + cutime + cstime of this process (children: those reaped, i.e. wrk runs).
fn own_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (11..=14).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = cpu
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal …
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(7).copied().unwrap_or(0))
}

impl CpuClock {
    fn read(&self) -> anyhow::Result<Reading> {
        Ok(Reading {
            up: cpu_ticks(self.up).ok_or_else(|| anyhow!("the upstream has exited"))?,
            ctl: cpu_ticks(self.ctl).ok_or_else(|| anyhow!("the controller has exited"))?,
            load: own_ticks().ok_or_else(|| anyhow!("/proc/self/stat unreadable"))?,
            machine: machine_busy_ticks().ok_or_else(|| anyhow!("/proc/stat unreadable"))?,
            at: Instant::now(),
        })
    }

    fn usage(&self, a: Reading, b: Reading, requests: u64) -> Usage {
        let n = requests.max(1) as f64;
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / self.hz;
        let (up, ctl) = (d(a.up, b.up), d(a.ctl, b.ctl));
        let ours = up + ctl + d(a.load, b.load);
        let wall = (b.at - a.at).as_secs_f64().max(1e-9);
        Usage {
            upstream: up / n,
            controller: ctl / n,
            load: d(a.load, b.load) / n,
            others: ((d(a.machine, b.machine) - ours) / wall).max(0.0),
        }
    }
}

struct Bench {
    wrk: Wrk,
    client: reqwest::Client,
    clock: CpuClock,
    seconds: u64,
    warmup: u64,
}

/// Other work using more than this many cores disturbs a measurement: the bench waits for the
/// machine to calm down before a case, and re-runs a case that was disturbed.
const QUIET_CORES: f64 = 0.25;
/// Runs of a disturbed case (the least disturbed one is kept).
const ATTEMPTS: usize = 3;
/// How long to wait for a quiet machine before measuring anyway.
const QUIET_WAIT: Duration = Duration::from_secs(180);

impl Bench {
    /// Waits (up to [`QUIET_WAIT`]) until other work uses less than [`QUIET_CORES`].
    async fn wait_quiet(&self) -> anyhow::Result<()> {
        let until = Instant::now() + QUIET_WAIT;
        let mut told = false;
        loop {
            let a = self.clock.read()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let others = self.clock.usage(a, self.clock.read()?, 1).others;
            if others < QUIET_CORES {
                return Ok(());
            }
            if Instant::now() >= until {
                eprintln!(
                    "  the machine is still busy ({others:.2} cores of other work); measuring anyway"
                );
                return Ok(());
            }
            if !told {
                eprintln!("  other work is using {others:.2} cores; waiting for it to calm down…");
                told = true;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Measures up to [`ATTEMPTS`] times while other work disturbs it; keeps the least disturbed.
    async fn quietly<F, Fut>(&self, mut once: F) -> anyhow::Result<Measure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Measure>>,
    {
        let mut best: Option<Measure> = None;
        for attempt in 1..=ATTEMPTS {
            self.wait_quiet().await?;
            let m = once().await?;
            let others = m.cpu.others;
            if best.as_ref().is_none_or(|b| others < b.cpu.others) {
                best = Some(m);
            }
            if others < QUIET_CORES {
                break;
            }
            if attempt < ATTEMPTS {
                eprintln!("  disturbed by other work ({others:.2} cores); measuring again");
            }
        }
        best.ok_or_else(|| anyhow!("no measurement"))
    }

    async fn wrk_case(&self, url: &str, conns: u32) -> anyhow::Result<Measure> {
        self.quietly(|| async {
            self.wrk.run(url, conns, self.warmup).await?;
            let a = self.clock.read()?;
            let r = self.wrk.run(url, conns, self.seconds).await?;
            let b = self.clock.read()?;
            let cpu = self.clock.usage(a, b, r.requests);
            Ok(Measure {
                rps: r.rps,
                p50: r.p50,
                p99: r.p99,
                requests: r.requests,
                errors: r.errors,
                stream: None,
                cpu,
            })
        })
        .await
    }

    async fn stream_case(
        &self,
        url: &str,
        body: &str,
        conc: usize,
        rate: Option<f64>,
    ) -> anyhow::Result<Measure> {
        let run = |secs: u64| {
            stream_run(
                &self.client,
                url,
                body,
                conc,
                Duration::from_secs(secs),
                rate,
            )
        };
        self.quietly(|| async {
            run(self.warmup).await?;
            let a = self.clock.read()?;
            let r = run(self.seconds).await?;
            let b = self.clock.read()?;
            let requests = r.ttft.len() as u64;
            let cpu = self.clock.usage(a, b, requests);
            Ok(Measure {
                rps: requests as f64 / r.elapsed.as_secs_f64(),
                p50: percentile(&r.ttft, 50.0),
                p99: percentile(&r.ttft, 99.0),
                requests,
                errors: None,
                stream: Some(StreamTimes {
                    content: (percentile(&r.content, 50.0), percentile(&r.content, 99.0)),
                    end: (percentile(&r.end, 50.0), percentile(&r.end, 99.0)),
                }),
                cpu,
            })
        })
        .await
    }
}

// ---------- setup ----------

/// Where the processes run.
#[derive(Clone, Copy, PartialEq)]
enum Pin {
    /// Not pinned: everything shares every core.
    None,
    /// Load generators on CPU 0; upstream and controller on CPU 1.
    Servers,
    /// Load generators and upstream on CPU 0; the controller alone on CPU 1.
    Controller,
}

impl Pin {
    /// CPUs of (load generators, upstream, controller).
    fn cpus(
        self,
    ) -> (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    ) {
        match self {
            Pin::None => (None, None, None),
            Pin::Servers => (Some("0"), Some("1"), Some("1")),
            Pin::Controller => (Some("0"), Some("0"), Some("1")),
        }
    }

    /// The name of its results block in the document, and its flag.
    fn layout(self) -> (&'static str, &'static str) {
        match self {
            Pin::None => ("default", ""),
            Pin::Servers => ("pinned-servers", " --pin=servers"),
            Pin::Controller => ("pinned-controller", " --pin=controller"),
        }
    }

    fn describe(self, cores: usize) -> String {
        match self {
            Pin::None => format!(
                "not pinned: wrk (or the streaming client), the upstream and the controller \
                 share all {cores} cores"
            ),
            Pin::Servers => "pinned with taskset: wrk (1 thread) and the streaming client on \
                             CPU 0; the upstream and the controller on CPU 1"
                .into(),
            Pin::Controller => "pinned with taskset: wrk (1 thread), the streaming client and \
                                the upstream on CPU 0; the controller alone on CPU 1"
                .into(),
        }
    }
}

struct Setup {
    cores: usize,
    pin: Pin,
    seconds: u64,
    write_doc: bool,
}

fn parse_args() -> anyhow::Result<Setup> {
    let mut seconds = 10;
    let mut pin = Pin::None;
    let mut write_doc = true;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--pin" | "--pin=servers" => pin = Pin::Servers,
            "--pin=controller" => pin = Pin::Controller,
            "--no-write" => write_doc = false,
            "-h" | "--help" => {
                println!(
                    "usage: spark-proxy-bench [SECONDS_PER_CASE] [--pin[=servers|controller]] \
                     [--no-write]\n\
                     (see docs/proxy-benchmark.md)"
                );
                std::process::exit(0);
            }
            s => {
                seconds = s
                    .parse()
                    .with_context(|| format!("{s:?} is not a number of seconds per case"))?;
            }
        }
    }
    ensure!(seconds >= 1, "give at least 1 second per case");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Setup {
        cores,
        pin,
        seconds,
        write_doc,
    })
}

/// A program on `PATH` (or in /usr/bin).
fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|c| c.is_file())
}

fn find_wrk() -> anyhow::Result<PathBuf> {
    if let Some(wrk) = find_in_path("wrk") {
        return Ok(wrk);
    }
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!! spark-proxy-bench needs the HTTP load generator `wrk`, not found.   !!");
    eprintln!("!! Install it:  apt-get install wrk   (Debian/Ubuntu package `wrk`)   !!");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    bail!("wrk is not installed (apt-get install wrk)")
}

fn build_binaries(root: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("building the release spark-control and spark-fake…");
    let ok = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "spark-control",
            "--bin",
            "spark-control",
            "-p",
            "spark-fakes",
            "--bin",
            "spark-fake",
        ])
        .status()?
        .success();
    ensure!(ok, "building spark-control and spark-fake failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release"))
}

async fn start_upstream(bin: &Path, dir: &Path, cpus: Option<&str>) -> anyhow::Result<(Proc, u16)> {
    let log = dir.join("upstream.log");
    let mut child = command(bin, cpus)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "vllm",
            "bench-org/bench-model",
            "--served-model-name",
            MODEL,
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting spark-fake")?;
    let stdout = child.stdout.take().context("spark-fake's stdout")?;
    let mut proc = Proc {
        name: "the upstream (spark-fake vllm)",
        child,
        log,
    };
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    let line = match first {
        Ok(Ok(Some(l))) => l,
        _ => {
            proc.check_alive()?;
            bail!("spark-fake did not print `listening on ADDR` within 30 s")
        }
    };
    // Keep draining stdout so the fake never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr: std::net::SocketAddr = line
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("spark-fake said {line:?}, not `listening on ADDR`"))?
        .trim()
        .parse()
        .with_context(|| format!("spark-fake's address in {line:?}"))?;
    Ok((proc, addr.port()))
}

async fn start_controller(
    bin: &Path,
    dir: &Path,
    cpus: Option<&str>,
    client: &reqwest::Client,
) -> anyhow::Result<(Proc, u16, String)> {
    let http = free_port()?;
    let gateway = free_port()?;
    let data = dir.join("ctl");
    let log = dir.join("controller.log");
    let child = command(bin, cpus)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .arg("--http")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--agent-gateway")
        .arg(format!("127.0.0.1:{gateway}"))
        .arg("--advertise")
        .arg(format!("127.0.0.1:{gateway}"))
        .stdout(std::fs::File::create(dir.join("controller.stdout"))?)
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting spark-control")?;
    let mut proc = Proc {
        name: "the controller (spark-control serve)",
        child,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        proc.check_alive()?;
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{http}/healthz"))
            .send()
            .await
            && r.status().is_success()
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the controller did not answer /healthz within 30 s; end of its log:\n{}",
            log_tail(&proc.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = std::fs::read_to_string(data.join("admin.token"))
        .context("reading the controller's admin.token")?
        .trim()
        .to_string();
    ensure!(!token.is_empty(), "the controller's admin.token is empty");
    Ok((proc, http, token))
}

async fn configure(client: &reqwest::Client, ctl: u16, up: u16, token: &str) -> anyhow::Result<()> {
    let resp = client
        .put(format!("http://127.0.0.1:{ctl}/api/services/{MODEL}"))
        .bearer_auth(token)
        .json(&json!({"kind": "llm", "url": format!("http://127.0.0.1:{up}")}))
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .context("PUT /api/services/bench answer")?;
    ensure!(
        status.is_success(),
        "PUT /api/services/{MODEL} answered {status}: {v}"
    );
    ensure!(
        v["status"]["healthy"] == true,
        "the controller does not see the upstream as healthy: {v}"
    );
    ensure!(
        v["status"]["models"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == MODEL)),
        "the controller does not see model {MODEL:?} at the upstream: {v}"
    );
    Ok(())
}

async fn check_chat(client: &reqwest::Client, url: &str, body: &str) -> anyhow::Result<()> {
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    ensure!(status == 200, "POST {url} answered {status}: {text}");
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{url}: {text}"))?;
    ensure!(
        v["choices"][0]["message"]["content"].is_string(),
        "POST {url} answered without a completion: {text}"
    );
    Ok(())
}

// ---------- report ----------

fn table(cases: &[Case]) -> String {
    let mut s = String::new();
    s.push_str("| case | direct req/s | proxied req/s | proxied/direct | direct p50 | direct p99 | proxied p50 | proxied p99 | added p50 | added p99 |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for c in cases {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.1} % | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:+.3} ms | {:+.3} ms |\n",
            c.label,
            c.direct.rps,
            c.proxied.rps,
            c.ratio() * 100.0,
            ms(c.direct.p50),
            ms(c.direct.p99),
            ms(c.proxied.p50),
            ms(c.proxied.p99),
            c.added_p50_ms(),
            c.added_p99_ms(),
        ));
    }
    s
}

fn cpu_table(cases: &[Case]) -> String {
    let us = |s: f64| s * 1e6;
    let mut s = String::new();
    s.push_str("| case | requests direct / proxied | load generator CPU/req, direct / proxied | upstream CPU/req, direct / proxied | controller CPU/req | other load, direct / proxied |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for c in cases {
        s.push_str(&format!(
            "| {} | {} / {} | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.0} µs | {:.2} / {:.2} cores |\n",
            c.label,
            c.direct.requests,
            c.proxied.requests,
            us(c.direct.cpu.load),
            us(c.proxied.cpu.load),
            us(c.direct.cpu.upstream),
            us(c.proxied.cpu.upstream),
            us(c.proxied.cpu.controller),
            c.direct.cpu.others,
            c.proxied.cpu.others,
        ));
    }
    s
}

fn stream_table(cases: &[Case]) -> String {
    let mut s = String::new();
    s.push_str(
        "| case | first text, direct p50 / p99 | first text, proxied p50 / p99 | first text, added p50 / p99 | end, direct p50 / p99 | end, proxied p50 / p99 | end, added p50 / p99 |\n",
    );
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let pair = |(a, b): (Duration, Duration)| format!("{:.3} / {:.3} ms", ms(a), ms(b));
    let added = |(a, b): (Duration, Duration), (c, d): (Duration, Duration)| {
        format!("{:+.3} / {:+.3} ms", ms(c) - ms(a), ms(d) - ms(b))
    };
    for c in cases {
        let (Some(d), Some(p)) = (c.direct.stream, c.proxied.stream) else {
            continue;
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            c.label,
            pair(d.content),
            pair(p.content),
            added(d.content, p.content),
            pair(d.end),
            pair(p.end),
            added(d.end, p.end),
        ));
    }
    s
}

fn verdict(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

fn targets(cases: &[Case]) -> String {
    let find = |k: Kind, c: u32| cases.iter().find(|x| x.kind == k && x.conns == c);
    let mut s = String::new();
    if let Some(c) = find(Kind::Wrk, 64) {
        s.push_str(&format!(
            "- Added p50 latency <= 1 ms at 64 concurrent clients (non-streaming, wrk): {:+.3} ms — {}\n",
            c.added_p50_ms(),
            verdict(c.added_p50_ms() <= 1.0)
        ));
        s.push_str(&format!(
            "- Added p99 latency <= 5 ms at 64 concurrent clients (non-streaming, wrk): {:+.3} ms — {}\n",
            c.added_p99_ms(),
            verdict(c.added_p99_ms() <= 5.0)
        ));
    }
    if let (Some(one), Some(paced)) = (find(Kind::Stream, 1), find(Kind::PacedStream, 64)) {
        let worst = one.added_p50_ms().max(paced.added_p50_ms());
        s.push_str(&format!(
            "- Streaming adds <= 2 ms to time to first token (p50; 1 client, and 64 clients at \
             {PACED_RATE:.0} req/s): {:+.3} ms at 1, {:+.3} ms at 64 — {}\n",
            one.added_p50_ms(),
            paced.added_p50_ms(),
            verdict(worst <= 2.0)
        ));
        let text = |c: &Case| match (c.direct.stream, c.proxied.stream) {
            (Some(d), Some(p)) => ms(p.content.0) - ms(d.content.0),
            _ => f64::NAN,
        };
        s.push_str(&format!(
            "- (for information) the same measured to the first event with text, what a reader \
             waits for: {:+.3} ms at 1, {:+.3} ms at 64 — {} by the same 2 ms\n",
            text(one),
            text(paced),
            if text(one).max(text(paced)) <= 2.0 {
                "within"
            } else {
                "**not** within"
            }
        ));
    }
    if let Some(c) = find(Kind::Stream, 64) {
        s.push_str(&format!(
            "- (for information) closed-loop streaming at 64 clients: TTFT p50 {:+.3} ms, \
             throughput {:.1} % of direct; the TTFTs are not comparable, the two paths ran at \
             {:.0} and {:.0} req/s\n",
            c.added_p50_ms(),
            c.ratio() * 100.0,
            c.direct.rps,
            c.proxied.rps,
        ));
    }
    if let Some(c) = find(Kind::Wrk, 64) {
        s.push_str(&format!(
            "- Throughput >= 90 % of direct (non-streaming, 64 clients): {:.1} % — {}\n",
            c.ratio() * 100.0,
            verdict(c.ratio() >= 0.9)
        ));
    }
    s
}

fn update_doc(path: &Path, layout: &str, block: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- spark-proxy-bench:{layout}:begin -->");
    let end = format!("<!-- spark-proxy-bench:{layout}:end -->");
    let fresh = format!("{begin}\n{block}{end}");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{fresh}{}", &text[..b], &text[e + end.len()..])
        }
        _ if text.is_empty() => format!(
            "# Proxy benchmark\n\nWritten by `spark-proxy-bench` \
             (testkit/src/bin/spark-proxy-bench.rs).\n\n{fresh}\n"
        ),
        _ => format!("{}\n\n{fresh}\n", text.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

// ---------- main ----------

async fn run(setup: Setup) -> anyhow::Result<()> {
    let root = workspace_root();
    let wrk_bin = find_wrk()?;
    if setup.pin != Pin::None {
        ensure!(
            setup.cores >= 2,
            "--pin needs at least 2 cores (this machine has {})",
            setup.cores
        );
        ensure!(
            find_in_path("taskset").is_some(),
            "--pin needs taskset (util-linux)"
        );
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: the benchmark itself is a debug build; its streaming client is slower. \
             Run it with `cargo run --release`."
        );
    }
    let release = build_binaries(&root)?;
    // Other work on the machine skews everything: say how busy it was before the run.
    let load_before = loadavg();
    eprintln!("load average before the run: {load_before}");
    let (ctl_bin, fake_bin) = (release.join("spark-control"), release.join("spark-fake"));

    let (load_cpus, up_cpus, ctl_cpus) = setup.pin.cpus();
    if let Some(c) = load_cpus {
        let ok = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", c, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()?
            .success();
        ensure!(ok, "pinning the benchmark to CPU {c} failed");
    }

    spark_agent::install_crypto_provider();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .build()?;

    let dir = tempfile::tempdir()?;
    let (mut upstream, up_port) = start_upstream(&fake_bin, dir.path(), up_cpus)
        .await
        .context("starting the upstream")?;
    let (mut controller, ctl_port, token) =
        start_controller(&ctl_bin, dir.path(), ctl_cpus, &client)
            .await
            .context("starting the controller")?;
    configure(&client, ctl_port, up_port, &token).await?;

    let body = json!({
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": PROMPT}],
    })
    .to_string();
    let stream_body = json!({
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "stream": true,
        "messages": [{"role": "user", "content": PROMPT}],
    })
    .to_string();
    let direct = format!("http://127.0.0.1:{up_port}/v1/chat/completions");
    let proxied = format!("http://127.0.0.1:{ctl_port}/v1/chat/completions");
    check_chat(&client, &direct, &body).await?;
    check_chat(&client, &proxied, &body).await?;
    eprintln!("upstream on :{up_port}, controller on :{ctl_port}; model {MODEL:?} routed");

    let script = dir.path().join("chat.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = [==[{body}]==]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )?;
    let bench = Bench {
        wrk: Wrk {
            bin: wrk_bin.clone(),
            script,
            cpus: load_cpus.map(str::to_string),
            threads_64: if setup.pin == Pin::None { 2 } else { 1 },
        },
        client: client.clone(),
        clock: CpuClock {
            up: upstream.pid()?,
            ctl: controller.pid()?,
            hz: ticks_per_second(),
        },
        seconds: setup.seconds,
        warmup: setup.seconds.clamp(1, 2),
    };

    let mut cases = Vec::new();
    for conns in [1u32, 64] {
        let threads = if conns == 1 { 1 } else { bench.wrk.threads_64 };
        eprintln!("wrk, {conns} connection(s): direct…");
        let d = bench.wrk_case(&direct, conns).await?;
        eprintln!("wrk, {conns} connection(s): through the controller…");
        let p = bench.wrk_case(&proxied, conns).await?;
        upstream.check_alive()?;
        controller.check_alive()?;
        cases.push(Case {
            label: format!(
                "non-streaming, {conns} client{} (wrk -t{threads} -c{conns})",
                if conns == 1 { "" } else { "s" }
            ),
            kind: Kind::Wrk,
            conns,
            direct: d,
            proxied: p,
        });
    }
    for (conc, rate) in [(1usize, None), (64, None), (64, Some(PACED_RATE))] {
        let label = format!(
            "streaming TTFT, {conc} client{}{}",
            if conc == 1 { "" } else { "s" },
            rate.map(|r| format!(" paced at {r:.0} req/s"))
                .unwrap_or_default()
        );
        eprintln!("{label}: direct…");
        let d = bench.stream_case(&direct, &stream_body, conc, rate).await?;
        eprintln!("{label}: through the controller…");
        let p = bench
            .stream_case(&proxied, &stream_body, conc, rate)
            .await?;
        upstream.check_alive()?;
        controller.check_alive()?;
        cases.push(Case {
            label,
            kind: if rate.is_some() {
                Kind::PacedStream
            } else {
                Kind::Stream
            },
            conns: conc as u32,
            direct: d,
            proxied: p,
        });
    }

    // ---- report ----
    let (layout, flag) = setup.pin.layout();
    let date = shell_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let kernel = shell_line("uname", &["-sr"]);
    let wrk_version = shell_line(&wrk_bin.display().to_string(), &["-v"]);
    let cpu = cpu_model();
    let placement = setup.pin.describe(setup.cores);
    let mut block = String::new();
    block.push_str(&format!(
        "Measured {date} on {cpu}, {} cores (`nproc`), {kernel}; {wrk_version}; release build; \
         {} s per case after a {} s warm-up; {placement}; load average (1/5/15 min) {load_before} \
         before the run.\n\n",
        setup.cores, setup.seconds, bench.warmup
    ));
    block.push_str(&format!(
        "Command: `cargo run --release -p spark-testkit --bin spark-proxy-bench -- {}{flag}`\n\n",
        setup.seconds,
    ));
    block.push_str(&table(&cases));
    block.push_str(
        "\nStreams: time from sending the request to the first event with text (a chat stream's \
         first event carries only the role; the TTFT above is the first event) and to the end of \
         the stream (`data: [DONE]`; 18 events):\n\n",
    );
    block.push_str(&stream_table(&cases));
    block.push_str(&format!(
        "\nCPU time per request (from `/proc/<pid>/stat`, over the measured run); other load: \
         cores busy (`/proc/stat`, interrupts left out) with anything but the upstream, the \
         controller and the load generator, i.e. other work disturbing the run (the bench waits \
         for the machine to be quiet before each run, and re-runs one disturbed by more than \
         {QUIET_CORES} cores, up to {ATTEMPTS} times, keeping the least disturbed):\n\n",
    ));
    block.push_str(&cpu_table(&cases));
    let errors: Vec<String> = cases
        .iter()
        .flat_map(|c| {
            [("direct", &c.direct), ("proxied", &c.proxied)]
                .into_iter()
                .filter_map(|(w, m)| {
                    m.errors
                        .as_ref()
                        .map(|e| format!("- {}, {w}: wrk socket errors: {e}\n", c.label))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if !errors.is_empty() {
        block.push('\n');
        block.push_str(&errors.concat());
    }
    block.push_str("\nTargets (this run):\n\n");
    block.push_str(&targets(&cases));

    println!();
    println!("{block}");
    if setup.write_doc {
        let doc = root.join("docs/proxy-benchmark.md");
        update_doc(&doc, layout, &block)?;
        eprintln!("results written to {} ({layout})", doc.display());
    }
    drop(controller);
    drop(upstream);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let setup = parse_args()?;
    let outcome = tokio::select! {
        r = run(setup) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // The children were killed as `run` ended (or was dropped); give the kernel a moment to
    // deliver the signals before this process exits.
    tokio::time::sleep(Duration::from_millis(50)).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_parsed() {
        let out = "Running 10s test @ http://127.0.0.1:1/v1/chat/completions
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.53ms  512.00us  20.01ms   80.00%
    Req/Sec    20.10k     1.20k   22.00k    70.00%
  Latency Distribution
     50%  181.00us
     75%    1.60ms
     90%    2.10ms
     99%    1.02s
  400000 requests in 10.00s, 300.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 0
  Non-2xx or 3xx responses: 3
Requests/sec:  40000.12
Transfer/sec:     30.00MB
";
        let w = parse_wrk(out).unwrap();
        assert_eq!(w.p50, Duration::from_micros(181));
        assert_eq!(w.p99, Duration::from_millis(1020));
        assert_eq!(w.requests, 400_000);
        assert_eq!(w.non_2xx, 3);
        assert!((w.rps - 40000.12).abs() < 1e-6);
        assert_eq!(
            w.errors.as_deref(),
            Some("connect 0, read 2, write 0, timeout 0")
        );
        assert_eq!(
            parse_wrk_duration("1.00m").unwrap(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn content_events_are_recognised() {
        assert!(!has_content(
            br#"data: {"choices":[{"delta":{"content":"","role":"assistant"}}]}"#
        ));
        assert!(has_content(
            br#"data: {"choices":[{"delta":{"content":"Say"}}]}"#
        ));
        assert!(!has_content(br#"data: {"choices":[{"delta":{"content":"#));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
    }
}
