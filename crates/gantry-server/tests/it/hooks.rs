//! Gantry keeps GitLab's side of the connection: exactly one project hook
//! per project and endpoint, repaired when it drifts, its token updated on
//! a secret rotation, removed with the last stack; a project where the
//! token may not manage hooks is `forbidden` with the manual steps. And
//! the token is checked again, its warnings recomputed, and rotated once
//! before it expires.

use gantry_gitlab_sim::{AccessLevel, Sim, TokenSpec};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Db, TestApp, free_port};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    gantry_keeps_exactly_one_hook_per_project,
    tokens_are_checked_again_and_rotated_once,
);

const BASE: &str = "/api/v1/integrations/gitlab/main";

struct Setup {
    sim: Sim,
    network: u64,
    dns: u64,
    bot: gantry_gitlab_sim::Bot,
}

/// A GitLab where the bot is Maintainer of `infra/network` and only
/// Developer of `infra/dns`, and the integration `main` on it.
async fn setup(app: &TestApp, token_spec: Option<TokenSpec>) -> Setup {
    let sim = Sim::start().await.expect("sim");
    let mut bot = sim.add_bot("gantry-bot");
    if let Some(spec) = token_spec {
        bot.token = sim.add_token(spec);
    }
    let network = sim
        .add_maintained_project(&bot, "infra/network", "main")
        .expect("project");
    let dns = sim.add_project("infra/dns", "main").expect("project");
    sim.add_member(dns, bot.user, AccessLevel::Developer);
    let (status, created) = app
        .post(
            "/api/v1/integrations/gitlab",
            &app.admin,
            sim.integration_body(&bot, "Main", true),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    Setup {
        sim,
        network,
        dns,
        bot,
    }
}

async fn stack(app: &TestApp, name: &str, repository: &str) -> Value {
    let (status, stack) = app
        .post(
            "/api/v1/stacks",
            &app.admin,
            json!({ "name": name, "repository": repository, "branch": "main",
                    "vendor": { "kind": "shell", "plan": "true", "apply": "true" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    stack
}

/// Gantry's hooks on a project.
fn ours(sim: &Sim, project: u64, endpoint: &str) -> Vec<Value> {
    sim.hooks(project)
        .into_iter()
        .filter(|hook| hook["url"] == endpoint)
        .collect()
}

async fn sync(app: &TestApp) {
    let (status, body) = app
        .post(&format!("{BASE}/hooks/sync"), &app.admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.settle().await;
}

async fn gantry_keeps_exactly_one_hook_per_project(db: Db) {
    let app = TestApp::start_reachable(&db, free_port(), |_| {}).await;
    let gitlab = setup(&app, None).await;
    let (sim, network) = (&gitlab.sim, gitlab.network);
    stack(&app, "Net", "infra/network").await;
    stack(&app, "Net Two", "infra/network").await;
    app.settle().await;
    let (_, integration) = app.get(BASE, &app.admin).await;
    let endpoint = integration["webhook_endpoint"]
        .as_str()
        .expect("endpoint")
        .to_owned();
    let secret = integration["webhook_secret"]
        .as_str()
        .expect("secret")
        .to_owned();

    // Two stacks, one hook: the secret as token, the three events only.
    let hooks = ours(sim, network, &endpoint);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let hook = &hooks[0];
    assert_eq!(hook["token"], secret.as_str());
    for (event, on) in [
        ("push_events", true),
        ("tag_push_events", true),
        ("merge_requests_events", true),
        ("issues_events", false),
        ("note_events", false),
        ("pipeline_events", false),
    ] {
        assert_eq!(hook[event], on, "{event}: {hook}");
    }
    assert_eq!(hook["enable_ssl_verification"], false, "http endpoint");
    let (_, listed) = app.get(&format!("{BASE}/hooks"), &app.admin).await;
    let first = &listed["items"][0];
    assert_eq!(
        (first["path"].as_str(), first["state"].as_str()),
        (Some("infra/network"), Some("ok")),
        "{listed}"
    );
    assert_eq!(first["hook_id"], hook["id"]);
    // GitLab delivers through it.
    let (before, after) = sim
        .commit(network, "main", &[("main.tf", Some("x"))], "x")
        .expect("commit");
    let push = sim
        .push_payload(network, "main", &before, &after)
        .expect("payload");
    let answers = sim.deliver(network, "Push Hook", &push).await;
    assert_eq!(answers.iter().map(|a| a.status).collect::<Vec<_>>(), [200]);

    // Deleted in GitLab: recreated; edited: repaired in place.
    sim.delete_hook(network, hook["id"].as_u64().expect("id"));
    sync(&app).await;
    let recreated = ours(sim, network, &endpoint);
    assert_eq!(recreated.len(), 1);
    assert_ne!(recreated[0]["id"], hook["id"]);
    let id = recreated[0]["id"].as_u64().expect("id");
    sim.edit_hook(network, id, "issues_events", true);
    sim.edit_hook(network, id, "merge_requests_events", false);
    sync(&app).await;
    let repaired = ours(sim, network, &endpoint);
    assert_eq!(repaired.len(), 1);
    assert_eq!(repaired[0]["id"], id, "repaired in place");
    assert_eq!(
        (
            repaired[0]["issues_events"].clone(),
            repaired[0]["merge_requests_events"].clone()
        ),
        (json!(false), json!(true))
    );

    // Duplicates (added by hand) are consolidated to one.
    sim.add_hook(network, &endpoint, "stale");
    sim.add_hook(network, &endpoint, "stale");
    sync(&app).await;
    assert_eq!(ours(sim, network, &endpoint).len(), 1);

    // A secret rotation updates the hook's token; deliveries still pass.
    let (status, rotated) = app
        .post(
            &format!("{BASE}/webhook-secret/rotate?grace_seconds=0"),
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    app.settle().await;
    let hooks = ours(sim, network, &endpoint);
    assert_eq!(hooks[0]["token"], rotated["webhook_secret"]);
    let answers = sim.deliver(network, "Push Hook", &push).await;
    assert_eq!(answers.iter().map(|a| a.status).collect::<Vec<_>>(), [200]);

    // A Developer token: the stack is made, the hook `forbidden`, and the
    // stack says what to do by hand.
    stack(&app, "DNS", "infra/dns").await;
    app.settle().await;
    assert!(ours(sim, gitlab.dns, &endpoint).is_empty());
    let (_, listed) = app.get(&format!("{BASE}/hooks"), &app.admin).await;
    let dns = listed["items"]
        .as_array()
        .and_then(|items| items.iter().find(|h| h["path"] == "infra/dns"))
        .cloned()
        .expect("dns listed");
    assert_eq!(dns["state"], "forbidden", "{listed}");
    let (_, shown) = app.get("/api/v1/stacks/dns", &app.admin).await;
    let warning = shown["warnings"][0].as_str().unwrap_or("");
    assert!(
        warning.contains("by hand") && warning.contains(&endpoint),
        "{shown}"
    );

    // Admins see the hooks on the integration's page too.
    let mut browser = crate::web::Browser::new(&app);
    browser.sign_in(&app.admin, "/").await;
    let page = browser.get("/integrations/main").await;
    assert!(
        page.body.contains("Project hooks") && page.body.contains("forbidden"),
        "{}",
        page.body
    );

    // The last stack of a project takes its hook along.
    app.delete("/api/v1/stacks/net", &app.admin).await;
    app.settle().await;
    assert_eq!(
        ours(sim, network, &endpoint).len(),
        1,
        "Net Two still uses it"
    );
    // A module of the project keeps the hook too, until it goes.
    let (status, module) = app
        .post(
            "/api/v1/modules",
            &app.admin,
            json!({ "name": "VPC", "repository": "infra/network", "provider": "aws" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{module}");
    app.delete("/api/v1/stacks/net-two", &app.admin).await;
    app.settle().await;
    assert_eq!(ours(sim, network, &endpoint).len(), 1, "the module uses it");
    app.delete("/api/v1/modules/vpc", &app.admin).await;
    app.settle().await;
    assert!(ours(sim, network, &endpoint).is_empty());

    // `manage_hooks: false` leaves GitLab alone.
    stack(&app, "Net", "infra/network").await;
    let (status, _) = app
        .patch(BASE, &app.admin, json!({ "manage_hooks": false }))
        .await;
    assert_eq!(status, StatusCode::OK);
    app.settle().await;
    let (_, listed) = app.get(&format!("{BASE}/hooks"), &app.admin).await;
    assert!(
        listed["items"]
            .as_array()
            .is_some_and(|items| items.iter().all(|h| h["state"] == "unmanaged")),
        "{listed}"
    );
    let _ = gitlab.bot;
    app.stop().await;
}

fn date_in(days: i64) -> String {
    (time::OffsetDateTime::now_utc().date() + time::Duration::days(days)).to_string()
}

async fn metrics(app: &TestApp) -> String {
    reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

async fn tokens_are_checked_again_and_rotated_once(db: Db) {
    let port = free_port();
    let app = TestApp::start_reachable(&db, port, |_| {}).await;
    let probe = Sim::start().await.expect("sim");
    let user = probe.add_user("gantry-bot");
    let mut spec = TokenSpec::new(user, &["api"]);
    spec.expires_at = Some(date_in(3));
    let gitlab = {
        let sim = probe;
        let token = sim.add_token(spec);
        let network = sim.add_project("infra/network", "main").expect("project");
        sim.add_member(network, user, AccessLevel::Maintainer);
        let body = json!({ "name": "Main", "default": true, "api_host_url": sim.url(), "api_token": token,
                           "rotate_token_days_before_expiry": 7 });
        let (status, created) = app
            .post("/api/v1/integrations/gitlab", &app.admin, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert!(
            created["warnings"].to_string().contains("(in 3 days)"),
            "{created}"
        );
        assert!(created["token"]["checked_at"].is_string(), "{created}");
        (sim, token)
    };
    let (sim, old) = gitlab;
    let shown = metrics(&app).await;
    assert!(
        shown.contains("gantry_integration_token_healthy{integration=\"main\"} 1"),
        "{shown}"
    );
    assert!(
        shown.contains("gantry_integration_token_expiry_seconds{integration=\"main\"}"),
        "{shown}"
    );

    // The check at start rotates the token, once.
    app.stop().await;
    let app = TestApp::start_reachable(&db, port, |_| {}).await;
    app.settle().await;
    let rotations = || {
        sim.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/personal_access_tokens/self/rotate"))
            .count()
    };
    assert_eq!(rotations(), 1);
    assert!(!sim.token_active(&old), "GitLab revoked the old token");
    let (_, shown) = app.get(BASE, &app.admin).await;
    let expires = shown["token"]["expires_at"]
        .as_str()
        .expect("expiry")
        .to_owned();
    assert!(expires > date_in(7), "{shown}");
    assert!(!shown["warnings"].to_string().contains("(in "), "{shown}");
    // The integration works with the new token: a stack resolves its project.
    stack(&app, "Net", "infra/network").await;

    // A restart checks again and rotates nothing.
    app.stop().await;
    let app = TestApp::start_reachable(&db, port, |_| {}).await;
    app.settle().await;
    assert_eq!(rotations(), 1, "a token is rotated once");
    let new = sim.active_tokens(user);
    assert_eq!(new.len(), 1, "the rotated token still works: {new:?}");

    // Its expiry moved in GitLab: the next check warns, without any user
    // action (20 days: not yet due for rotation).
    sim.set_token_expiry(&new[0], Some(&date_in(20)));
    app.stop().await;
    let app = TestApp::start_reachable(&db, port, |_| {}).await;
    app.settle().await;
    let (_, shown) = app.get(BASE, &app.admin).await;
    assert!(
        shown["warnings"].to_string().contains("(in 20 days)"),
        "{shown}"
    );
    assert_eq!(rotations(), 1);

    // Revoked in GitLab: the next check says so, without any user action.
    sim.revoke_token(&new[0]);
    app.stop().await;
    let app = TestApp::start_reachable(&db, port, |_| {}).await;
    app.settle().await;
    let (_, shown) = app.get(BASE, &app.admin).await;
    assert!(
        shown["warnings"]
            .to_string()
            .contains("rejected the API token"),
        "{shown}"
    );
    assert_eq!(shown["health"]["status"], "token_rejected");
    assert!(
        metrics(&app)
            .await
            .contains("gantry_integration_token_healthy{integration=\"main\"} 0")
    );
    app.stop().await;
}
