//! `spark-control up` as a user runs it: the real binary, a fresh data directory, one
//! connected local node; run again on the same directory, still one node.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Up {
    child: Child,
    base: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_up(data_dir: &std::path::Path) -> Up {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spark-control"))
        .args([
            "up",
            "--http",
            "127.0.0.1:0",
            "--agent-gateway",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn spark-control up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut base = None;
    let mut local = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && (base.is_none() || local.is_none()) {
        let Some(Ok(line)) = lines.next() else { break };
        eprintln!("up> {line}");
        if let Some(url) = line.trim().strip_prefix("Dashboard:") {
            base = Some(url.trim().trim_end_matches('/').to_string());
        }
        if line.contains("Local node:") {
            local = Some(line);
        }
    }
    let base = base.expect("up printed the dashboard URL");
    assert!(
        local
            .expect("up reported the local node")
            .contains("connected")
    );
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Up { child, base }
}

fn nodes(base: &str) -> Vec<serde_json::Value> {
    let body = ureq_get(&format!("{base}/api/nodes"));
    serde_json::from_str::<Vec<serde_json::Value>>(&body).expect("nodes JSON")
}

/// Minimal blocking GET over std (this test must not depend on the code under test).
fn ureq_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

#[test]
fn up_on_a_fresh_data_dir_shows_one_connected_local_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("spark-data");
    let first_id;
    {
        let up = start_up(&data);
        let list = nodes(&up.base);
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["connected"], true);
        first_id = list[0]["id"].as_str().unwrap().to_string();
        // The snapshot follows within a second or two.
        let deadline = Instant::now() + Duration::from_secs(3);
        while nodes(&up.base)[0]["host"].is_null() {
            assert!(Instant::now() < deadline, "no host snapshot");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(data.join("spark-control.db").exists());
        assert!(data.join("ca/ca.pem").exists());
        assert!(data.join("admin.token").exists());
        assert!(data.join("local-agent/key.pem").exists());
        let page = ureq_get(&format!("{}/", up.base));
        assert!(page.contains("Spark Control"));
    }
    // Second run, same directory: same CA, same single node.
    let up = start_up(&data);
    let list = nodes(&up.base);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], first_id.as_str());
    assert_eq!(list[0]["connected"], true);
}
