//! VCS agent pools over the real tunnel: the agent's own code (what
//! `gantry vcs-agent` runs) connected to a server on port 0, the server
//! sending through it. The end-to-end run through an agent process is in
//! the binary's tests (`tests/it/vcs_agent.rs`).

use std::time::Duration;

use gantry_gitlab::tunnel;
use gantry_gitlab_sim::Sim;
use gantry_server::vcs_agents::agent::{AgentConfig, AgentError, run};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Db, TestApp};
use gantry_store::on_both_databases;

on_both_databases!(Db; pools_show_their_agents_refuse_what_is_not_gitlab_and_revoke);

fn agent(app: &TestApp, token: &str, target: &str) -> AgentConfig {
    AgentConfig {
        servers: vec![app.base.parse().expect("url")],
        token: token.to_owned().into(),
        target: target.parse().expect("url"),
        name: "agent-1".into(),
    }
}

async fn agents_listed(app: &TestApp, pool: &str, count: usize) -> Value {
    let mut last = Value::Null;
    for _ in 0..500 {
        let (status, shown) = app
            .get(&format!("/api/v1/vcs-agent-pools/{pool}"), &app.admin)
            .await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        if shown["agents"].as_array().map(Vec::len) == Some(count) {
            return shown;
        }
        last = shown;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("pool {pool} never had {count} agents: {last}");
}

async fn through(app: &TestApp, method: &str, path: &str) -> (u16, String) {
    let request = axum::http::Request::builder()
        .method(method)
        .uri(format!("http://gitlab{path}"))
        .body(tunnel::full(""))
        .expect("request");
    let response = app
        .vcs_agents()
        .tunnel("corp")
        .send(request)
        .await
        .expect("through the agent");
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn pools_show_their_agents_refuse_what_is_not_gitlab_and_revoke(db: Db) {
    let app = TestApp::start(&db).await;
    let sim = Sim::start().await.expect("sim");
    let (status, pool) = app
        .post(
            "/api/v1/vcs-agent-pools",
            &app.admin,
            json!({ "name": "Corp" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pool}");
    assert_eq!(pool["id"], "corp");
    assert_eq!(pool["user_facing_host_url"], "private://corp");
    let token = pool["token"].as_str().expect("token once").to_owned();
    assert!(token.starts_with("gantry_pool_"));
    let (status, again) = app
        .post(
            "/api/v1/vcs-agent-pools",
            &app.admin,
            json!({ "name": "Corp" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let (_, shown) = app.get("/api/v1/vcs-agent-pools/corp", &app.admin).await;
    assert!(shown.get("token").is_none(), "never shown again: {shown}");
    assert_eq!(shown["agents"], json!([]));

    // A wrong token is refused, and the agent says so and stops.
    let (_, never) = tokio::sync::watch::channel(false);
    let refused = run(
        agent(&app, "gantry_pool_wrong", sim.listen_url()),
        never.clone(),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(refused, AgentError::Refused { status: 401, .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("refused the pool token"),
        "{refused}"
    );

    // An integration of a pool that does not exist is refused before
    // GitLab is asked.
    let mut body = json!({ "name": "Private", "api_host_url": "http://gitlab.internal",
        "user_facing_host_url": "private://nope", "api_token": "glpat-x" });
    let (status, error) = app
        .post("/api/v1/integrations/gitlab", &app.admin, body.clone())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert!(
        error.to_string().contains("no VCS agent pool \\\"nope\\\""),
        "{error}"
    );
    // With no agent connected, the call fails naming the pool.
    body["user_facing_host_url"] = json!("private://corp");
    let (status, error) = app
        .post("/api/v1/integrations/gitlab", &app.admin, body)
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{error}");
    assert!(
        error
            .to_string()
            .contains("no agent of VCS agent pool \\\"corp\\\""),
        "{error}"
    );

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(run(agent(&app, &token, sim.listen_url()), stopping));
    let shown = agents_listed(&app, "corp", 1).await;
    assert_eq!(shown["agents"][0]["name"], "agent-1");
    assert_eq!(shown["agents"][0]["servers"], 1);
    let (_, list) = app.get("/api/v1/vcs-agent-pools", &app.admin).await;
    assert_eq!(list["items"][0]["agents"][0]["name"], "agent-1");

    // The web UI lists the pool with its agent.
    let mut browser = crate::web::Browser::new(&app);
    let signed_in = browser.sign_in(&app.admin, "/vcs-agent-pools").await;
    assert_eq!(signed_in.location.as_deref(), Some("/vcs-agent-pools"));
    let page = browser.get("/vcs-agent-pools").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("Corp") && page.body.contains("agent-1"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains(&token),
        "the token is never shown again"
    );

    // Only the GitLab API and git fetches go through.
    let (status, body) = through(&app, "GET", "/users/sign_in").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("refused by the VCS agent"), "{body}");
    let (status, _) = through(&app, "GET", "/api/v4/user").await;
    assert_eq!(status, 401, "the simulator answered, without a token");
    let seen: Vec<String> = sim.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        seen,
        ["/api/v4/user"],
        "the refused request never left the agent"
    );
    assert_eq!(
        sim.requests()[0].via.as_deref(),
        Some("1.1 gantry-vcs-agent")
    );

    // Revoking the pool disconnects its agents; the agent then stops,
    // saying its token was refused.
    let (status, _) = app.delete("/api/v1/vcs-agent-pools/corp", &app.admin).await;
    assert_eq!(status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the agent stops")
        .expect("joined");
    assert!(
        matches!(ended, Err(AgentError::Refused { .. })),
        "{ended:?}"
    );
    assert_eq!(app.vcs_agents().connected("corp"), 0);
    let page = browser.get("/vcs-agent-pools").await;
    assert!(!page.body.contains("Corp"), "{}", page.body);
    drop(stop);
}
