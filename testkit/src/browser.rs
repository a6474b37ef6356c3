//! A real headless Chromium, driven through ChromeDriver (WebDriver), for the dashboard tests.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Missing, the test
//! is skipped loudly, or fails with `CI=true` (see [`crate::docker::missing_prerequisite`]).
//! Screenshots go to `target/test-artifacts/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::docker::{missing_prerequisite, which};

/// A browser session; [`Browser::close`] ends it (dropping kills the driver too).
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// Where screenshots are kept: `target/test-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let dir = crate::docker::workspace_root()
        .join("target")
        .join("test-artifacts");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

impl Browser {
    /// Start ChromeDriver and a headless Chromium at `width` x `height`.
    pub async fn start(width: u32, height: u32) -> Option<Browser> {
        let chromium = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|c| which(c));
        let Some(chromium) = chromium else {
            return missing_prerequisite("chromium (apt-get install chromium chromium-driver)");
        };
        let Some(chromedriver) = which("chromedriver") else {
            return missing_prerequisite("chromedriver (apt-get install chromium-driver)");
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("profile dir");
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-quic",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            }
        });
        let caps: serde_json::Map<String, Value> = caps.as_object().cloned().unwrap_or_default();
        let started = Instant::now();
        let client = loop {
            let mut builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            match builder.capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(_) if started.elapsed() < Duration::from_secs(20) => {
                    // ChromeDriver is still starting.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver did not start a browser: {e}"),
            }
        };
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Save a screenshot as `target/test-artifacts/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Run `script` (a function body; `arguments` available) and return its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .expect("script runs")
    }

    /// Wait until `script` returns a truthy value; returns it. Panics naming `what` after
    /// `limit`.
    pub async fn wait_js(&self, limit: Duration, what: &str, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script, vec![]).await;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if start.elapsed() > limit {
                let shot = self
                    .screenshot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                panic!(
                    "timed out after {limit:?} waiting for {what} (screenshot: {})",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Click the element `css` selects.
    pub async fn click(&self, css: &str) {
        let el = self
            .client
            .wait()
            .at_most(Duration::from_secs(5))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        el.click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// End the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
