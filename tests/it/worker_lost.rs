//! `kill -9` of a server while its embedded worker executes a run: after a
//! restart, the run ends `failed` ("worker lost") once its lease lapses,
//! and the stack's next tracked run starts.

use gantry_gitlab_sim::Sim;
use serde_json::json;

use crate::api::{Api, admin_token};
use crate::process::{free_port, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_worker_died_fails_and_frees_the_stack() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let port = free_port();
    let flags = ["--lease-seconds", "3", "--embedded-workers", "1"];
    let mut server = serve(&data, port, &flags).await;
    let api = Api::new(&server.base, &admin_token(&data));
    let sim = Sim::start().await.expect("sim");
    let bot = sim.add_bot("bot");
    let project = sim
        .add_maintained_project(&bot, "infra/network", "main")
        .expect("project");
    let (_, first) = sim
        .commit(project, "main", &[("main.tf", Some("one"))], "one")
        .expect("c1");
    let (_, second) = sim
        .commit(project, "main", &[("main.tf", Some("two"))], "two")
        .expect("c2");
    api.post(
        "/api/v1/integrations/gitlab",
        sim.integration_body(&bot, "Main", true),
    )
    .await;
    let stack = api.post(
        "/api/v1/stacks",
        json!({ "name": "Net", "repository": "infra/network", "branch": "main",
                "vendor": { "kind": "shell", "plan": "echo planning; sleep 20; exit 2", "apply": "true" } }),
    )
    .await;
    assert_eq!(stack["id"], "net", "{stack}");
    let run = api
        .post(
            "/api/v1/stacks/net/runs",
            json!({ "kind": "tracked", "commit_sha": first }),
        )
        .await;
    let next = api
        .post(
            "/api/v1/stacks/net/runs",
            json!({ "kind": "tracked", "commit_sha": second }),
        )
        .await;
    let (run, next) = (
        run["id"].as_str().expect("run").to_owned(),
        next["id"].as_str().expect("next").to_owned(),
    );
    api.wait_for(&run, |r| r["state"] == "planning").await;
    assert_eq!(
        api.get(&format!("/api/v1/runs/{next}")).await["state"],
        "queued",
        "the lock holds"
    );

    server.child.start_kill().expect("kill -9");
    server.child.wait().await.expect("dead");
    let server = serve(&data, port, &flags).await;
    let failed = api.wait_for(&run, |r| r["state"] == "failed").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("worker lost"),
        "{failed}"
    );
    // The stack is free again: the next tracked run starts.
    api.wait_for(&next, |r| r["state"] != "queued").await;
    drop(server);
}
