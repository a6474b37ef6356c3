//! The dashboard in a real headless Chromium against a real controller with two agents on two
//! private Docker engines and fake services: live rendering, a container killed behind the
//! agent's back turning its card red, swaps started from the page (with a reload mid-swap), a
//! failing swap's message, the add-node flow producing a token that works, markup in a model name
//! shown as text, and screenshots at desktop and phone width (in `target/test-artifacts/`).
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use spark_testkit::browser::Browser;
use spark_testkit::models::{LLAMA_CONFIG, add_recipe, fake_recipe, free_port};
use spark_testkit::{DockerBox, TestAgent, TestController, init, plant_hf_model};

const EVIL: &str = "<img src=x onerror=\"window.__pwned=1\"><b>Evil</b> model";

/// `document.querySelector(css)` as a JS expression.
fn q(css: &str) -> String {
    format!("document.querySelector({})", json!(css))
}

/// Click through JS (works whichever tab is showing), then confirm if a dialog asks.
async fn act(b: &Browser, css: &str) {
    let clicked = b
        .js(
            &format!(
                "const e = {}; if (!e) return false; e.click(); return true;",
                q(css)
            ),
            vec![],
        )
        .await;
    assert_eq!(clicked, true, "no element {css}");
}

async fn confirm(b: &Browser) {
    b.wait_js(
        Duration::from_secs(5),
        "the confirmation dialog",
        "const d = document.getElementById('confirm'); return d && d.open;",
    )
    .await;
    act(b, "#confirm-yes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_live_and_drives_swaps() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&dir.path().join("ctl")).await;
    let Some(b1) = DockerBox::start(&ctl, dir.path(), "spark-1").await else {
        return;
    };
    let Some(b2) = DockerBox::start_with_services(&ctl, dir.path(), "spark-2", &["kokoro"]).await
    else {
        return;
    };
    let Some(browser) = Browser::start(1280, 900).await else {
        return;
    };

    // Models: two that load, one that dies while loading, one whose name is markup.
    let image = b1.dockerd.fake_image();
    plant_hf_model(&b1.hf_cache, "fake-org/model-a", LLAMA_CONFIG, 4096);
    plant_hf_model(&b1.hf_cache, "fake-org/model-b", LLAMA_CONFIG, 4096);
    let slow = ["--load-delay-ms", "2500"];
    add_recipe(
        &ctl,
        fake_recipe("model-a", "fake-org/model-a", &image, free_port(), &[]),
    )
    .await;
    add_recipe(
        &ctl,
        fake_recipe("model-b", "fake-org/model-b", &image, free_port(), &slow),
    )
    .await;
    let dying = ["--exit-during-load-ms", "400"];
    add_recipe(
        &ctl,
        fake_recipe("model-c", "fake-org/model-a", &image, free_port(), &dying),
    )
    .await;
    let mut evil = fake_recipe("evil", "fake-org/model-a", &image, free_port(), &[]);
    evil["name"] = json!(EVIL);
    add_recipe(&ctl, evil).await;

    // A TTS service on spark-2, in a container its agent may manage.
    let image2 = b2.dockerd.fake_image();
    let port = free_port();
    b2.dockerd
        .docker(&[
            "run",
            "-d",
            "--name",
            "kokoro",
            "--network",
            "host",
            &image2,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "kokoro",
        ])
        .unwrap();
    let r = ctl
        .admin(Method::PUT, "/api/services/tts")
        .json(&json!({"kind": "tts", "node": "spark-2", "port": port, "container": "kokoro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    browser.client.goto(&ctl.url("/")).await.unwrap();
    // Real data renders: both nodes up, the service healthy, the models listed.
    browser
        .wait_js(
            Duration::from_secs(10),
            "two node cards, both up",
            "const c = [...document.querySelectorAll('article.card.node')]; \
             return c.length === 2 && c.every(e => e.dataset.state === 'up');",
        )
        .await;
    let names = browser
        .js(
            "return [...document.querySelectorAll('article.card.node')].map(e => e.dataset.node).sort();",
            vec![],
        )
        .await;
    assert_eq!(names, json!(["spark-1", "spark-2"]));
    browser
        .wait_js(
            Duration::from_secs(10),
            "the tts service card, healthy",
            &format!(
                "const e = {}; return e && e.dataset.state === 'ok';",
                q("article.card.service[data-service='tts']")
            ),
        )
        .await;
    browser
        .wait_js(
            Duration::from_secs(15),
            "the model cards",
            &format!(
                "return !!{} && !!{};",
                q("article.card.model[data-model='model-a']"),
                q("article.card.model[data-model='evil']")
            ),
        )
        .await;
    // The node card shows the service's container with its state.
    browser
        .wait_js(
            Duration::from_secs(5),
            "kokoro listed running on spark-2",
            &format!(
                "const e = {}; return e && e.dataset.state === 'running';",
                q("article.card.node[data-node='spark-2'] [data-container='kokoro']")
            ),
        )
        .await;

    // Markup in a model name is text.
    let shown = browser
        .js(
            &format!(
                "return {}.querySelector('.model-name').textContent;",
                q("article.card.model[data-model='evil']")
            ),
            vec![],
        )
        .await;
    assert!(shown.as_str().unwrap().contains(EVIL), "{shown}");
    let injected = browser
        .js(
            "return { img: document.querySelectorAll('article.card.model img').length, b: [...document.querySelectorAll('.model-name b')].length, pwned: window.__pwned === 1 };",
            vec![],
        )
        .await;
    assert_eq!(injected, json!({"img": 0, "b": 0, "pwned": false}));
    browser.screenshot("dashboard-desktop").await;

    // A container killed behind the agent's back: its card turns red within 2 s, no reload.
    let killed = Instant::now();
    b2.dockerd.docker(&["kill", "kokoro"]).unwrap();
    browser
        .wait_js(
            Duration::from_secs(2),
            "the tts card to turn red",
            &format!("const e = {}; return e && (e.dataset.state === 'stopped' || e.dataset.state === 'down');", q("article.card.service[data-service='tts']")),
        )
        .await;
    let took = killed.elapsed();
    let red = browser
        .js(
            &format!("const s = getComputedStyle({}); return [s.borderTopColor, s.backgroundColor, s.borderLeftColor];", q("article.card.service[data-service='tts']")),
            vec![],
        )
        .await;
    let reddish = red.as_array().unwrap().iter().any(|c| {
        let nums: Vec<f64> = c
            .as_str()
            .unwrap_or("")
            .trim_start_matches("rgba(")
            .trim_start_matches("rgb(")
            .trim_end_matches(')')
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        nums.len() >= 3 && nums[0] > 120.0 && nums[0] > nums[1] * 1.5 && nums[0] > nums[2] * 1.5
    });
    assert!(reddish, "the stopped service's card is not red: {red}");
    eprintln!("container kill shown in the browser after {took:?}");
    browser.screenshot("dashboard-service-stopped").await;

    // A swap started from the page: phases show, a reload re-attaches, it ends ready.
    browser
        .js(
            "window.__phases = new Set(); const el = document.getElementById('swap-phase'); \
             new MutationObserver(() => window.__phases.add(el.textContent.trim())).observe(el, {childList: true, characterData: true, subtree: true}); return true;",
            vec![],
        )
        .await;
    act(
        &browser,
        "article.card.model[data-model='model-b'] [data-action='switch']",
    )
    .await;
    confirm(&browser).await;
    browser
        .wait_js(
            Duration::from_secs(20),
            "the swap to reach loading",
            "return document.getElementById('swap-phase').textContent.toLowerCase().includes('loading');",
        )
        .await;
    browser.screenshot("dashboard-swap-loading").await;
    let seen = browser
        .js(
            "return [...window.__phases].map(p => p.toLowerCase());",
            vec![],
        )
        .await;
    let seen: Vec<String> = serde_json::from_value(seen).unwrap();
    assert!(
        seen.iter().any(|p| p.contains("loading"))
            && seen.iter().any(|p| ["preflight", "stopping", "starting"]
                .iter()
                .any(|e| p.contains(e))),
        "the panel did not step through the phases: {seen:?}"
    );
    browser.client.refresh().await.unwrap();
    browser
        .wait_js(
            Duration::from_secs(30),
            "the re-attached swap to end ready",
            "const p = document.getElementById('swap-phase'); const m = document.getElementById('swap-model'); \
             return p && p.textContent.toLowerCase().includes('ready') && m.textContent.includes('model-b');",
        )
        .await;
    let log_lines = browser
        .js(
            "return document.querySelectorAll('#swap-log > *').length;",
            vec![],
        )
        .await;
    assert!(log_lines.as_u64().unwrap() > 0, "no log lines shown");
    let (_, status) = ctl.get_json("/api/status").await;
    assert_eq!(status["loaded"][0]["key"], "model-b", "{status}");

    // A failing swap shows its message.
    act(
        &browser,
        "article.card.model[data-model='model-c'] [data-action='switch']",
    )
    .await;
    confirm(&browser).await;
    let msg = browser
        .wait_js(
            Duration::from_secs(30),
            "the failed swap's message",
            "const p = document.getElementById('swap-phase'); const e = document.getElementById('swap-error'); \
             return p.textContent.toLowerCase().includes('failed') && e.textContent.trim() ? e.textContent : '';",
        )
        .await;
    assert!(
        msg.as_str().unwrap().contains("exited during the load"),
        "{msg}"
    );
    browser.screenshot("dashboard-swap-failed").await;

    // Add a box: the page makes a join token that a new agent can use.
    act(&browser, "#add-node").await;
    let token = browser
        .wait_js(
            Duration::from_secs(5),
            "the join token",
            "const t = document.getElementById('join-token'); return t && t.textContent.trim().startsWith('sparkjoin1.') ? t.textContent.trim() : '';",
        )
        .await;
    let commands = browser
        .js(
            "return document.getElementById('join-commands').textContent;",
            vec![],
        )
        .await;
    assert!(
        commands.as_str().unwrap().contains("spark-agent join"),
        "{commands}"
    );
    let agent = TestAgent::join_and_run(
        token.as_str().unwrap(),
        &dir.path().join("spark-3"),
        "spark-3",
    )
    .await;
    browser
        .wait_js(
            Duration::from_secs(10),
            "the new node's card",
            &format!(
                "const e = {}; return e && e.dataset.state === 'up';",
                q("article.card.node[data-node='spark-3']")
            ),
        )
        .await;
    browser.screenshot("dashboard-three-nodes").await;
    // Each main view, at desktop width.
    for view in [
        "hardware", "swap", "models", "services", "events", "nodes", "settings",
    ] {
        browser
            .js(
                &format!(
                    "document.getElementById({}).scrollIntoView(); return true;",
                    json!(view)
                ),
                vec![],
            )
            .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        browser.screenshot(&format!("view-{view}-desktop")).await;
    }

    // Phone width: the same page, one column.
    browser.client.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflow = browser
        .js(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await;
    assert_eq!(
        overflow,
        json!(true),
        "the page scrolls sideways at phone width"
    );
    browser.screenshot("dashboard-phone").await;
    for view in ["models", "services", "swap"] {
        browser
            .js(
                &format!(
                    "document.getElementById({}).scrollIntoView(); return true;",
                    json!(view)
                ),
                vec![],
            )
            .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        browser.screenshot(&format!("view-{view}-phone")).await;
    }

    agent.stop().await;
    browser.close().await;
}
