//! The Spark Control agent: a small daemon on each GPU box.
//!
//! It only dials out: it enrolls once with a join token ([`enroll`]), keeps its identity in a
//! state directory ([`state`]), then holds one mutually authenticated websocket to the controller
//! ([`link`]) over which it reports telemetry ([`host`], [`gpu`], [`nics`]) and performs typed
//! operations ([`runtime`]) on the Docker engine ([`docker`]), the model store ([`models`]) and
//! the local network ([`wol`]).
//!
//! Invariants: nothing listens on the box; the agent never runs a shell string; its private key
//! never leaves the state directory (mode 0600) and is never logged.
#![forbid(unsafe_code)]

pub mod config;
pub mod docker;
pub mod enroll;
pub mod gpu;
pub mod host;
pub mod link;
pub mod models;
pub mod nics;
pub mod runtime;
pub mod state;
pub mod tls;
pub mod wol;

/// Install the ring crypto provider for rustls, once per process. Every entry point (binary,
/// test) calls this before building a TLS config; calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Features this agent announces in its `Hello`.
pub const FEATURES: &[&str] = &["host-snapshot", "telemetry", "ops", "model-config"];
