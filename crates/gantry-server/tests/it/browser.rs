//! A person in a real browser: Debian's headless Chromium, driven through
//! chromedriver with fantoccini, against a real server and the simulated
//! GitLab. They follow a commit status link without a session, sign in
//! and land on the run, confirm it with the button and watch it finish;
//! set up an integration with the form; see the webhook secret as an admin
//! and not with a read-only key; a `<script>` in a description stays text;
//! a POST without the CSRF token is refused.
//!
//! Without chromedriver the test is skipped, except under `CI=true`.
//! `GANTRY_SCREENSHOTS=1` writes the pages' screenshots to `docs/`.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::execution::{shell_run, wait_for};
use crate::harness::{Db, TestApp, free_port, repo};

/// A chromedriver of this test, stopped when dropped.
struct Driver {
    _child: tokio::process::Child,
    url: String,
    profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Option<Self> {
        let port = free_port();
        let child = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!(
                    "the browser tests need chromedriver (apt-get install chromium chromium-driver): {error}"
                )
            }
            Err(error) => {
                eprintln!(
                    "SKIPPED: browser test (no chromedriver: {error}); set CI=true to fail instead"
                );
                return None;
            }
        };
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..250 {
            if reqwest::get(format!("{url}/status")).await.is_ok() {
                let profile = tempfile::tempdir().expect("profile");
                return Some(Self {
                    _child: child,
                    url,
                    profile,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("chromedriver did not start on {url}");
    }

    /// A new headless Chromium, with the flags a closed network needs.
    async fn browser(&self) -> Client {
        let options = json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                format!("--user-data-dir={}", self.profile.path().display()),
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        // Chromium may be slow to start while the other tests run.
        let mut last = None;
        for _ in 0..3 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&self.url)
                .await
            {
                Ok(client) => return client,
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("no browser session: {last:?}")
    }
}

async fn path_of(browser: &Client) -> String {
    browser.current_url().await.expect("url").path().to_owned()
}

/// The text of `css` now, or `None` while the page has no such element
/// (or is being replaced: the live log reloads the page when the run ends).
async fn try_text(browser: &Client, css: &str) -> Option<String> {
    let element = browser.find(Locator::Css(css)).await.ok()?;
    element.text().await.ok()
}

async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("no {css}: {error}"))
        .text()
        .await
        .expect("text")
}

async fn fill(browser: &Client, id: &str, value: &str) {
    let field = browser
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|error| panic!("no field {id}: {error}"));
    field.send_keys(value).await.expect("typed");
}

/// Submits `form` with its button and waits for the page it leads to.
async fn submit(browser: &Client, form: &str) {
    browser
        .execute("window.gantryOldPage = true", vec![])
        .await
        .expect("mark the page");
    browser
        .find(Locator::Css(&format!("{form} button[type=submit]")))
        .await
        .unwrap_or_else(|error| panic!("no submit button in {form}: {error}"))
        .click()
        .await
        .expect("clicked");
    for _ in 0..500 {
        let loaded = browser
            .execute(
                "return window.gantryOldPage === undefined && document.readyState === 'complete'",
                vec![],
            )
            .await;
        if loaded.is_ok_and(|done| done == json!(true)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("submitting {form} led to no new page");
}

async fn sign_in(browser: &Client, key: &str) {
    assert_eq!(path_of(browser).await, "/login");
    fill(browser, "api_key", key).await;
    submit(browser, "form[action='/login']").await;
    if path_of(browser).await == "/login" {
        let page = browser.source().await.unwrap_or_default();
        panic!("still on the sign-in page: {page}");
    }
}

/// Saves a screenshot of the page as `docs/screenshots/<name>.png` when
/// asked to (`GANTRY_SCREENSHOTS=1`); checks it is a PNG either way.
async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if std::env::var("GANTRY_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/screenshots");
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(format!("{dir}/{name}.png"), png).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_in_a_browser_signs_in_confirms_and_sets_up_an_integration() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let db = <Db as gantry_store::testing::Databases>::sqlite().await;
    let port = free_port();
    let app = TestApp::start_reachable(&db, port, |config| config.embedded_workers = 1).await;
    let repo = repo(&app).await;
    let plan =
        "echo 'planning the network'; echo 'Plan: 2 to add, 1 to change, 0 to destroy.'; exit 2";
    let vendor = json!({ "vendor": { "kind": "shell", "plan": plan, "apply": "echo applying; sleep 1; echo applied" },
                         "labels": ["prod"] });
    let run = shell_run(&app, "Network", plan, vendor).await;
    let shown = wait_for(&app, &run, "unconfirmed").await;
    let sha = shown["commit_sha"].as_str().expect("sha").to_owned();
    let mut target = None;
    for _ in 0..500 {
        target = repo
            .sim
            .statuses(repo.project, &sha)
            .first()
            .and_then(|status| status["target_url"].as_str().map(str::to_owned));
        if target.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let target = target.expect("the commit status has a link");
    assert_eq!(target, format!("{}/runs/{run}", app.base));

    // The "details" link next to the commit status, without a session.
    let browser = driver.browser().await;
    browser.goto(&target).await.expect("goto");
    screenshot(&browser, "sign-in").await;
    sign_in(&browser, &app.admin).await;
    assert_eq!(path_of(&browser).await, format!("/runs/{run}"));
    assert_eq!(text_of(&browser, "#run-state").await, "unconfirmed");
    assert!(text_of(&browser, ".summary").await.contains("2 to add"));
    assert!(
        text_of(&browser, "#log")
            .await
            .contains("planning the network")
    );
    screenshot(&browser, "run").await;

    // Confirm with the button; the live log and the reload show the end.
    submit(&browser, &format!("form[action='/runs/{run}/confirm']")).await;
    let mut state = String::new();
    for _ in 0..300 {
        state = try_text(&browser, "#run-state").await.unwrap_or_default();
        if state == "finished" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "finished", "the page follows the run to its end");
    assert!(text_of(&browser, "#log").await.contains("applied"));
    assert!(
        browser
            .find(Locator::Css("form[action$='/confirm']"))
            .await
            .is_err(),
        "no Confirm button on a finished run"
    );
    browser
        .goto(&format!("{}/stacks/network", app.base))
        .await
        .expect("goto");
    screenshot(&browser, "stack").await;
    // On a phone's width the pages fit; wide tables scroll in their box.
    browser.set_window_size(390, 844).await.expect("resize");
    for page in [format!("/runs/{run}"), "/stacks/network".to_owned()] {
        browser
            .goto(&format!("{}{page}", app.base))
            .await
            .expect("goto");
        let fits = browser
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth",
                vec![],
            )
            .await
            .expect("js");
        assert_eq!(fits, json!(true), "{page} is wider than a phone");
    }
    screenshot(&browser, "stack-phone").await;
    browser.set_window_size(1200, 900).await.expect("resize");

    // A POST without the CSRF token is refused.
    let status: Value = browser
        .execute(
            &format!("return fetch('/runs/{run}/cancel', {{method: 'POST'}}).then(r => r.status)"),
            vec![],
        )
        .await
        .expect("fetch");
    assert_eq!(status, json!(403));

    // Set up a second integration with the form.
    let bot = repo.sim.add_bot("second-bot");
    browser
        .goto(&format!("{}/integrations/new", app.base))
        .await
        .expect("goto");
    fill(&browser, "name", "Second GitLab").await;
    fill(&browser, "api_host_url", repo.sim.url()).await;
    fill(&browser, "api_token", &bot.token).await;
    fill(&browser, "labels", "prod, eu").await;
    fill(
        &browser,
        "description",
        "Runbook: **ask #infra**\n\n<script>window.pwned = true</script>",
    )
    .await;
    submit(&browser, "form[action='/integrations/new']").await;
    assert_eq!(path_of(&browser).await, "/integrations/second-gitlab");
    assert_eq!(text_of(&browser, "h1").await, "Second GitLab");
    let secret = browser
        .find(Locator::Id("webhook-secret"))
        .await
        .expect("an admin sees the secret")
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default();
    assert!(secret.len() >= 32, "{secret}");
    let description = text_of(&browser, ".description").await;
    assert!(
        description.contains("<script>window.pwned = true</script>"),
        "as text: {description}"
    );
    let pwned = browser
        .execute("return typeof window.pwned", vec![])
        .await
        .expect("js");
    assert_eq!(pwned, json!("undefined"), "no script of a description runs");
    screenshot(&browser, "integration").await;
    browser
        .goto(&format!("{}/integrations", app.base))
        .await
        .expect("goto");
    screenshot(&browser, "source-code").await;

    // A bad token: the API's message next to the field, nothing created.
    browser
        .goto(&format!("{}/integrations/new", app.base))
        .await
        .expect("goto");
    fill(&browser, "name", "Third").await;
    fill(&browser, "api_host_url", repo.sim.url()).await;
    fill(&browser, "api_token", "glpat-not-a-token").await;
    submit(&browser, "form[action='/integrations/new']").await;
    let error = text_of(&browser, "#api_token-error").await;
    assert!(error.contains("token"), "{error}");
    let (status, _) = app
        .get("/api/v1/integrations/gitlab/third", &app.admin)
        .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);

    // A read-only key sees the integration, not its secret.
    submit(&browser, "form[action='/logout']").await;
    assert_eq!(path_of(&browser).await, "/login");
    let reader = app
        .key("reader", json!([{ "space": "root", "role": "read" }]))
        .await;
    browser
        .goto(&format!("{}/integrations/second-gitlab", app.base))
        .await
        .expect("goto");
    sign_in(&browser, &reader).await;
    assert_eq!(path_of(&browser).await, "/integrations/second-gitlab");
    assert!(browser.find(Locator::Id("webhook-secret")).await.is_err());
    assert!(!browser.source().await.expect("source").contains(&secret));
    browser.close().await.expect("close");
    app.stop().await;
}
