//! A webhook receiver for tests: a minimal HTTP/1.1 server on loopback that records the raw
//! requests and answers with scripted statuses, and an HMAC-SHA256 written out from RFC 2104
//! (independent of the controller's) to check `X-Spark-Signature`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("receiver")
    }
}

/// A minimal HTTP/1.1 server that records requests and answers with scripted statuses (then
/// `default`), so the test sees the raw bytes the controller signed.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    pub default: Arc<AtomicU16>,
}

impl Receiver {
    pub async fn start(script: &[u16]) -> Receiver {
        Self::start_on(
            TcpListener::bind("127.0.0.1:0").await.expect("receiver"),
            script,
        )
    }

    pub fn start_on(listener: TcpListener, script: &[u16]) -> Receiver {
        let r = Receiver {
            addr: listener.local_addr().expect("receiver"),
            got: Default::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            default: Arc::new(AtomicU16::new(200)),
        };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let _ = me.serve(conn).await;
                });
            }
        });
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn got(&self) -> Vec<Received> {
        self.got.lock().expect("receiver").clone()
    }

    async fn serve(&self, conn: tokio::net::TcpStream) -> std::io::Result<()> {
        let mut conn = BufReader::new(conn);
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let target = parts.next().unwrap_or("").to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                conn.read_line(&mut h).await?;
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            conn.read_exact(&mut body).await?;
            self.got.lock().expect("receiver").push(Received {
                method,
                target,
                headers,
                body,
            });
            let status = self
                .script
                .lock()
                .expect("receiver")
                .pop_front()
                .unwrap_or_else(|| self.default.load(Ordering::SeqCst));
            let text = if status < 300 {
                "ok"
            } else {
                "receiver says no"
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            conn.get_mut().write_all(resp.as_bytes()).await?;
        }
    }
}

/// HMAC-SHA256 written out from RFC 2104, independent of the controller's implementation.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::digest([pad(0x36), msg.to_vec()].concat());
    hex::encode(Sha256::digest([pad(0x5c), inner.to_vec()].concat()))
}

pub fn assert_signed(r: &Received, secret: &str) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let expected = format!("sha256={}", hmac_sha256(secret.as_bytes(), &r.body));
    assert_eq!(
        r.header("x-spark-signature"),
        Some(expected.as_str()),
        "{r:?}"
    );
    let body = r.json();
    assert_eq!(r.header("x-spark-event"), body["event"].as_str());
    assert_eq!(r.header("x-spark-delivery"), body["delivery_id"].as_str());
}
