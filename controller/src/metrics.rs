//! Prometheus `/metrics` (text exposition format 0.0.4): gateway requests by route, model, node
//! and status, with latency histograms; swaps by model and outcome, with durations; and node,
//! GPU and service gauges taken from the latest telemetry at scrape time.
//!
//! Owns: the controller's metric registry. Never: labels from unbounded user input (routes are
//! the gateway's own route names; models are only those the gateway resolved; unknown models
//! count under `model=""`).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::App;

/// Request latency buckets (seconds): sub-millisecond to minutes (long generations).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];
const SWAP_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    upstream_first_byte: HistogramVec,
    swaps: IntCounterVec,
    swap_seconds: HistogramVec,
    // Scrape-time gauges, rebuilt from telemetry on every scrape.
    node_up: GaugeVec,
    cpu_usage: GaugeVec,
    load1: GaugeVec,
    mem_total: GaugeVec,
    mem_available: GaugeVec,
    gpu_util: GaugeVec,
    gpu_temp: GaugeVec,
    gpu_power: GaugeVec,
    gpu_mem_total: GaugeVec,
    gpu_mem_used: GaugeVec,
    store_total: GaugeVec,
    store_available: GaugeVec,
    model_loaded: GaugeVec,
    service_up: GaugeVec,
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition");
    reg.register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(clippy::expect_used)] // static metric definitions; a bad one is a programming error
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "spark_gateway_requests_total",
                "Application requests answered by the gateway.",
            ),
            &["route", "model", "node", "status"],
        )
        .expect("valid counter");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "spark_gateway_request_duration_seconds",
                "Time from the request's arrival to the response head (which includes the upstream's first body byte).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "model", "node", "status"],
        )
        .expect("valid histogram");
        let upstream_first_byte = HistogramVec::new(
            HistogramOpts::new(
                "spark_gateway_upstream_first_byte_seconds",
                "Time from sending a request upstream to its first body byte (time to first token when streaming).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "model", "node"],
        )
        .expect("valid histogram");
        let swaps = IntCounterVec::new(
            Opts::new("spark_swaps_total", "Model swaps finished, by outcome."),
            &["model", "outcome"],
        )
        .expect("valid counter");
        let swap_seconds = HistogramVec::new(
            HistogramOpts::new(
                "spark_swap_duration_seconds",
                "Time from a swap's request to ready or failed.",
            )
            .buckets(SWAP_BUCKETS.to_vec()),
            &["model", "outcome"],
        )
        .expect("valid histogram");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(upstream_first_byte.clone()),
            Box::new(swaps.clone()),
            Box::new(swap_seconds.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let r = &registry;
        Metrics {
            node_up: gauge(
                r,
                "spark_node_up",
                "1 when the node's agent is connected.",
                &["node"],
            ),
            cpu_usage: gauge(
                r,
                "spark_node_cpu_usage_percent",
                "Whole-machine CPU use.",
                &["node"],
            ),
            load1: gauge(r, "spark_node_load1", "One-minute load average.", &["node"]),
            mem_total: gauge(
                r,
                "spark_node_memory_total_bytes",
                "Physical memory.",
                &["node"],
            ),
            mem_available: gauge(
                r,
                "spark_node_memory_available_bytes",
                "Memory available to new work.",
                &["node"],
            ),
            gpu_util: gauge(
                r,
                "spark_gpu_utilization_percent",
                "GPU utilization.",
                &["node", "gpu", "name"],
            ),
            gpu_temp: gauge(
                r,
                "spark_gpu_temperature_celsius",
                "GPU temperature.",
                &["node", "gpu"],
            ),
            gpu_power: gauge(
                r,
                "spark_gpu_power_watts",
                "GPU power draw.",
                &["node", "gpu"],
            ),
            gpu_mem_total: gauge(
                r,
                "spark_gpu_memory_total_bytes",
                "GPU memory (on unified-memory boxes such as GB10, the shared system memory).",
                &["node", "gpu", "unified"],
            ),
            gpu_mem_used: gauge(
                r,
                "spark_gpu_memory_used_bytes",
                "GPU memory in use.",
                &["node", "gpu", "unified"],
            ),
            store_total: gauge(
                r,
                "spark_model_store_total_bytes",
                "Size of the disk holding a model store root.",
                &["node", "root"],
            ),
            store_available: gauge(
                r,
                "spark_model_store_available_bytes",
                "Free space on the disk holding a model store root.",
                &["node", "root"],
            ),
            model_loaded: gauge(
                r,
                "spark_model_loaded",
                "1 for each model a server is serving, by node.",
                &["model", "node"],
            ),
            service_up: gauge(
                r,
                "spark_service_healthy",
                "1 when a service's health check passes.",
                &["service", "kind"],
            ),
            registry,
            requests,
            latency,
            upstream_first_byte,
            swaps,
            swap_seconds,
            scrape: Mutex::new(()),
        }
    }

    /// Count one gateway request.
    pub fn request(&self, route: &str, model: &str, node: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [route, model, node, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(seconds);
    }

    /// Record an upstream's time to first byte.
    pub fn first_byte(&self, route: &str, model: &str, node: &str, seconds: f64) {
        self.upstream_first_byte
            .with_label_values(&[route, model, node])
            .observe(seconds);
    }

    /// Count a finished swap.
    pub fn swap(&self, model: &str, outcome: &str, seconds: f64) {
        self.swaps.with_label_values(&[model, outcome]).inc();
        self.swap_seconds
            .with_label_values(&[model, outcome])
            .observe(seconds);
    }

    /// The exposition text, with the gauges refreshed from the current state.
    pub fn render(&self, app: &App) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh_gauges(app);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    fn refresh_gauges(&self, app: &App) {
        for g in [
            &self.node_up,
            &self.cpu_usage,
            &self.load1,
            &self.mem_total,
            &self.mem_available,
            &self.gpu_util,
            &self.gpu_temp,
            &self.gpu_power,
            &self.gpu_mem_total,
            &self.gpu_mem_used,
            &self.store_total,
            &self.store_available,
            &self.model_loaded,
            &self.service_up,
        ] {
            g.reset();
        }
        let rows = app.db.nodes(false).unwrap_or_default();
        for row in &rows {
            let node = row.name.as_str();
            let live = app.registry.get(&row.id);
            self.node_up
                .with_label_values(&[node])
                .set(if live.is_some() { 1.0 } else { 0.0 });
            let Some(t) = live.and_then(|l| l.telemetry) else {
                continue;
            };
            self.cpu_usage
                .with_label_values(&[node])
                .set(f64::from(t.host.cpu_usage_pct));
            self.load1
                .with_label_values(&[node])
                .set(f64::from(t.host.load.one));
            self.mem_total
                .with_label_values(&[node])
                .set(t.host.mem_total_bytes as f64);
            self.mem_available
                .with_label_values(&[node])
                .set(t.host.mem_available_bytes as f64);
            for d in &t.gpu.devices {
                let gpu = d.index.to_string();
                let unified = if d.memory.unified { "true" } else { "false" };
                if let Some(u) = d.utilization_pct {
                    self.gpu_util
                        .with_label_values(&[node, &gpu, &d.name])
                        .set(f64::from(u));
                }
                if let Some(c) = d.temperature_c {
                    self.gpu_temp
                        .with_label_values(&[node, &gpu])
                        .set(f64::from(c));
                }
                if let Some(w) = d.power_watts {
                    self.gpu_power
                        .with_label_values(&[node, &gpu])
                        .set(f64::from(w));
                }
                self.gpu_mem_total
                    .with_label_values(&[node, &gpu, unified])
                    .set(d.memory.total_bytes as f64);
                self.gpu_mem_used
                    .with_label_values(&[node, &gpu, unified])
                    .set(d.memory.used_bytes as f64);
            }
            for s in &t.store {
                self.store_total
                    .with_label_values(&[node, &s.root])
                    .set(s.total_bytes as f64);
                self.store_available
                    .with_label_values(&[node, &s.root])
                    .set(s.available_bytes as f64);
            }
        }
        for target in app.routes.get(app).targets.iter() {
            self.model_loaded
                .with_label_values(&[&target.model, &target.node])
                .set(1.0);
        }
        for (cfg, st) in app.services.snapshot().values() {
            if cfg.enabled {
                self.service_up
                    .with_label_values(&[&cfg.name, cfg.kind.as_str()])
                    .set(if st.healthy { 1.0 } else { 0.0 });
            }
        }
    }
}

/// `GET /metrics`.
pub async fn handler(State(app): State<Arc<App>>) -> Response {
    let body = app.metrics.render(&app);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
