//! `kill -9` of a server whose writes to GitLab are still pending (GitLab
//! answering 503): after a restart they are delivered, none twice.

use std::time::Duration;

use gantry_gitlab_sim::{Fault, FaultKind, Sim};
use serde_json::json;

use crate::api::{Api, admin_token};
use crate::process::{Db, free_port, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_writes_survive_kill_9_and_are_delivered_once_on_sqlite() {
    pending_writes_survive_kill_9(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_writes_survive_kill_9_and_are_delivered_once_on_postgres() {
    if let Some(db) = Db::postgres().await {
        pending_writes_survive_kill_9(db).await;
    }
}

async fn pending_writes_survive_kill_9(db: Db) {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let port = free_port();
    let mut flags = vec!["--embedded-workers", "1", "--lease-seconds", "3"];
    flags.extend(db.flags());
    let mut server = serve(&data, port, &flags).await;
    let api = Api::new(&server.base, &admin_token(&data));
    let sim = Sim::start().await.expect("sim");
    let bot = sim.add_bot("bot");
    let project = sim
        .add_maintained_project(&bot, "infra/network", "main")
        .expect("project");
    let (_, sha) = sim
        .commit(project, "main", &[("main.tf", Some("one"))], "one")
        .expect("commit");
    api.post(
        "/api/v1/integrations/gitlab",
        sim.integration_body(&bot, "Main", true),
    )
    .await;
    api.post(
        "/api/v1/stacks",
        json!({ "name": "Net", "repository": "infra/network", "branch": "main",
                "vendor": { "kind": "shell", "plan": "exit 0", "apply": "true" } }),
    )
    .await;
    for _ in 0..6 {
        sim.inject(Fault {
            path_contains: "/statuses/".into(),
            kind: FaultKind::Status(503),
        });
    }
    let run = api
        .post(
            "/api/v1/stacks/net/runs",
            json!({ "kind": "tracked", "commit_sha": sha }),
        )
        .await;
    let run = run["id"].as_str().expect("id").to_owned();
    api.wait_for(&run, |r| r["state"] == "finished").await;
    // GitLab has refused a delivery attempt: the writes are pending.
    for _ in 0..500 {
        if sim.requests().iter().any(|r| r.status == 503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sim.status_history(project, &sha, "gantry/net").is_empty());

    server.child.start_kill().expect("kill -9");
    server.child.wait().await.expect("dead");
    let server = serve(&data, port, &flags).await;
    let mut history = Vec::new();
    for _ in 0..1500 {
        history = sim.status_history(project, &sha, "gantry/net");
        if history.last().map(String::as_str) == Some("success") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        history.last().map(String::as_str),
        Some("success"),
        "{history:?}"
    );
    let mut unique = history.clone();
    unique.dedup();
    assert_eq!(unique, history, "no state delivered twice");
    assert_eq!(sim.statuses(project, &sha).len(), 1);
    drop(server);
}
