//! GitLab inside a private network: the server cannot resolve its host
//! (`http://gitlab.internal`); one `gantry vcs-agent` process, whose
//! `--target` is the simulator's real address, carries every call. Killed,
//! the integration says no agent is connected and writes wait; started
//! again, they go out, none twice.

use std::process::Stdio;
use std::time::Duration;

use gantry_gitlab_sim::Sim;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::api::{Api, admin_token};
use crate::process::{free_port, serve, terminate};

fn agent(base: &str, token: &str, target: &str, log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "vcs-agent",
            "--server",
            base,
            "--target",
            target,
            "--name",
            "corp-1",
        ])
        .env("GANTRY_VCS_AGENT_TOKEN", token)
        .env("GANTRY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("gantry vcs-agent starts")
}

async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..1500 {
        if let Some(found) = check().await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

async fn agents(api: &Api) -> usize {
    api.get("/api/v1/vcs-agent-pools/corp").await["agents"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_gitlab_is_reached_through_one_agent() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let server = serve(&data, free_port(), &["--embedded-workers", "1"]).await;
    let api = Api::new(&server.base, &admin_token(&data));
    let sim = Sim::start_as("http://gitlab.internal").await.expect("sim");
    let bot = sim.add_bot("bot");
    let project = sim
        .add_maintained_project(&bot, "infra/network", "main")
        .expect("project");
    sim.commit(project, "main", &[("main.tf", Some("v0"))], "init")
        .expect("commit");
    let pool = api
        .post("/api/v1/vcs-agent-pools", json!({ "name": "Corp" }))
        .await;
    let token = pool["token"].as_str().expect("token").to_owned();

    // A wrong token: the agent says so and exits.
    let wrong_log = dir.path().join("wrong.log");
    let mut wrong = agent(
        &server.base,
        "gantry_pool_wrong",
        sim.listen_url(),
        &wrong_log,
    );
    let exited = tokio::time::timeout(Duration::from_secs(20), wrong.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(!exited.success());
    let said = std::fs::read_to_string(&wrong_log).expect("log");
    assert!(said.contains("refused the pool token (401)"), "{said}");

    let log = dir.path().join("agent.log");
    let mut running = agent(&server.base, &token, sim.listen_url(), &log);
    until("the agent is listed", async || {
        (agents(&api).await == 1).then_some(())
    })
    .await;

    // The token check, the project lookup and the hook all go through it.
    let mut body = sim.integration_body(&bot, "Main", true);
    body["user_facing_host_url"] = json!("private://corp");
    let integration = api.post("/api/v1/integrations/gitlab", body).await;
    assert_eq!(integration["api_host_url"], "http://gitlab.internal");
    assert_eq!(integration["health"]["status"], "ok", "{integration}");
    api.post(
        "/api/v1/stacks",
        json!({ "name": "Net", "repository": "infra/network", "branch": "main", "autodeploy": true,
                "vendor": { "kind": "shell", "plan": "cat main.tf; echo 'Plan: 1 to add, 0 to change, 0 to destroy.'; exit 2",
                            "apply": "echo applied" } }),
    )
    .await;
    until("the hook is made", async || {
        (!sim.hooks(project).is_empty()).then_some(())
    })
    .await;

    // A push: the run fetches its source through the agent and reports.
    let push = async |content: &str| {
        let (before, after) = sim
            .commit(project, "main", &[("main.tf", Some(content))], content)
            .expect("commit");
        let payload = sim
            .push_payload(project, "main", &before, &after)
            .expect("payload");
        let answers = sim.deliver(project, "Push Hook", &payload).await;
        assert_eq!(answers.len(), 1, "one hook");
        assert_eq!(answers[0].status, 200, "{}", answers[0].body);
        after
    };
    let status_of = |sha: &str| sim.status_history(project, sha, "gantry/net");
    let first = push("v1").await;
    until("the first push's run succeeds in GitLab", async || {
        (status_of(&first).last().map(String::as_str) == Some("success")).then_some(())
    })
    .await;
    // The deployment is its own write, which may land just after.
    until("a deployment", async || {
        (!sim.deployments(project).is_empty()).then_some(())
    })
    .await;

    // A merge request: its preview's comment goes through the agent too.
    sim.commit(project, "feature", &[("main.tf", Some("mr"))], "mr")
        .expect("commit");
    let iid = sim
        .open_merge_request(project, "feature", "main", "Change")
        .expect("mr");
    let payload = sim
        .merge_request_payload(project, iid, "open", None)
        .expect("payload");
    assert_eq!(
        sim.deliver(project, "Merge Request Hook", &payload).await[0].status,
        200
    );
    until("the MR comment", async || {
        sim.notes(project, iid)
            .iter()
            .any(|n| n.body.contains("Plan: 1 to add"))
            .then_some(())
    })
    .await;

    // Every call GitLab saw came through the agent.
    let requests = sim.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.ends_with("/git-upload-pack")),
        "a git fetch"
    );
    for request in &requests {
        assert_eq!(
            request.via.as_deref(),
            Some("1.1 gantry-vcs-agent"),
            "{request:?}"
        );
    }
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(
        said.contains("forwarded") && said.contains("git upload-pack"),
        "{said}"
    );
    assert!(
        !said.contains(&bot.token) && !said.contains(&token),
        "no secret in the agent's log"
    );

    // Kill the agent: no agent, and the next push's writes wait.
    running.start_kill().expect("kill -9");
    running.wait().await.expect("dead");
    until("no agent listed", async || {
        (agents(&api).await == 0).then_some(())
    })
    .await;
    let shown = api.get("/api/v1/integrations/gitlab/main").await;
    assert_eq!(shown["health"]["status"], "no_agent", "{shown}");
    assert!(
        shown["health"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("\"corp\""),
        "{shown}"
    );
    let second = push("v2").await;
    let pending = until("a write waits", async || {
        let health: Value = api.get("/api/v1/integrations/gitlab/main").await["health"].clone();
        (health["pending_writes"].as_i64() > Some(0)).then_some(health)
    })
    .await;
    assert_eq!(pending["status"], "no_agent");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(status_of(&second).is_empty(), "nothing reached GitLab");

    // Start it again: the writes go out, each once.
    let mut again = agent(
        &server.base,
        &token,
        sim.listen_url(),
        &dir.path().join("again.log"),
    );
    let history = until("the second push's run succeeds in GitLab", async || {
        let history = status_of(&second);
        (history.last().map(String::as_str) == Some("success")).then_some(history)
    })
    .await;
    let mut unique = history.clone();
    unique.dedup();
    assert_eq!(unique, history, "no state delivered twice");
    let health = api.get("/api/v1/integrations/gitlab/main").await["health"].clone();
    assert_eq!(health["status"], "ok", "{health}");
    // SIGTERM: the agent says goodbye and exits cleanly.
    assert!(terminate(&mut again).await.success());
    until("no agent listed", async || {
        (agents(&api).await == 0).then_some(())
    })
    .await;
    drop(server);
}

/// With several servers an agent connects to each (`--server` repeats), so
/// every server reaches GitLab through it, and each lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_connects_to_every_server() {
    let Some(url) = gantry_store::testing::postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let key = gantry_store::crypto::MasterKey::generate();
    let env = [(
        "GANTRY_MASTER_KEY",
        secrecy::ExposeSecret::expose_secret(&key.to_base64()).to_owned(),
    )];
    let flags = ["--database-url", &url, "--embedded-workers", "0"];
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = crate::process::serve_with(&data_a, free_port(), &flags, &env).await;
    let b = crate::process::serve_with(&data_b, free_port(), &flags, &env).await;
    let admin = admin_token(&data_a);
    let (api_a, api_b) = (Api::new(&a.base, &admin), Api::new(&b.base, &admin));
    let sim = Sim::start_as("http://gitlab.internal").await.expect("sim");
    let bot = sim.add_bot("bot");
    sim.add_maintained_project(&bot, "infra/network", "main")
        .expect("project");
    let pool = api_a
        .post("/api/v1/vcs-agent-pools", json!({ "name": "Corp" }))
        .await;
    let token = pool["token"].as_str().expect("token");
    let both = format!("{},{}", a.base, b.base);
    let mut running = agent(
        &both,
        token,
        sim.listen_url(),
        &dir.path().join("agent.log"),
    );
    let listed = until("the agent holds both servers", async || {
        let shown = api_b.get("/api/v1/vcs-agent-pools/corp").await;
        (shown["agents"][0]["servers"] == 2).then_some(shown)
    })
    .await;
    assert_eq!(
        listed["agents"].as_array().map(Vec::len),
        Some(1),
        "one agent: {listed}"
    );

    // The token check through server B, the project lookup through A.
    let mut body = sim.integration_body(&bot, "Main", true);
    body["user_facing_host_url"] = json!("private://corp");
    api_b.post("/api/v1/integrations/gitlab", body).await;
    api_a
        .post(
            "/api/v1/stacks",
            json!({ "name": "Net", "repository": "infra/network", "branch": "main",
                    "vendor": { "kind": "shell", "plan": "true", "apply": "true" } }),
        )
        .await;
    for request in sim.requests() {
        assert_eq!(
            request.via.as_deref(),
            Some("1.1 gantry-vcs-agent"),
            "{request:?}"
        );
    }
    running.start_kill().expect("kill");
    running.wait().await.expect("dead");
    for api in [&api_a, &api_b] {
        until("no agent on either server", async || {
            (api.get("/api/v1/integrations/gitlab/main").await["health"]["status"] == "no_agent")
                .then_some(())
        })
        .await;
    }
}
