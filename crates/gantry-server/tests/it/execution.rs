//! Runs executed by the embedded workers against the simulator's real
//! repository: a shell stack plans with changes, waits for confirmation,
//! applies; an autodeploy stack goes straight through; the log is
//! redacted and the checkout is the run's commit.

use std::time::Duration;

use gantry_gitlab_sim::{AccessLevel, Sim, TokenSpec};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Db, TestApp};
use crate::on_both_databases;

on_both_databases!(a_shell_stack_plans_waits_for_confirmation_and_applies);

async fn wait_for(app: &TestApp, run: &str, state: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..1500 {
        let (_, found) = app.get(&format!("/api/v1/runs/{run}"), &app.admin).await;
        if found["state"] == state {
            return found;
        }
        last = found;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, log) = app
        .get(&format!("/api/v1/runs/{run}/logs"), &app.admin)
        .await;
    panic!("run {run} never reached {state}: {last} {log}");
}

async fn runs_of(app: &TestApp, stack: &str) -> Vec<Value> {
    for _ in 0..500 {
        let (_, list) = app
            .get(&format!("/api/v1/stacks/{stack}/runs"), &app.admin)
            .await;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if !items.is_empty() {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no runs for {stack}");
}

async fn a_shell_stack_plans_waits_for_confirmation_and_applies(db: Db) {
    let app = TestApp::start_with_workers(&db, 2).await;
    let sim = Sim::start().await.expect("sim");
    let user = sim.add_user("gantry-bot");
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    let project = sim.add_project("infra/network", "main").expect("project");
    sim.add_member(project, user, AccessLevel::Maintainer);
    let (status, created) = app
        .post(
            "/api/v1/integrations/gitlab",
            &app.admin,
            json!({ "name": "Main", "default": true, "api_host_url": sim.url(), "api_token": token }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["webhook_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    sim.add_hook(
        project,
        &format!("{}/webhooks/gitlab/main", app.base),
        &secret,
    );
    let shell = |autodeploy: bool, name: &str, root: &str| {
        json!({
            "name": name, "repository": "infra/network", "branch": "main", "project_root": root,
            "autodeploy": autodeploy,
            "secret_environment": { "DB_PASSWORD": "pw-EXEC-CANARY" },
            "environment": { "REGION": "eu-west-1" },
            "vendor": {
                "kind": "shell",
                "init": "echo init in $(pwd | sed 's|.*/||')",
                "plan": "echo \"commit $(git rev-parse HEAD) region $REGION password $DB_PASSWORD\"; cat main.tf; echo 'Plan: 1 to add, 0 to change, 0 to destroy.'; exit 2",
                "apply": "echo \"applying $GANTRY_RUN_KIND run $GANTRY_RUN_ID\""
            }
        })
    };
    for body in [shell(false, "Net", "network"), shell(true, "Auto", "auto")] {
        let (status, answer) = app.post("/api/v1/stacks", &app.admin, body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }

    let (_, after) = sim
        .commit(
            project,
            "main",
            &[
                ("network/main.tf", Some("# the network\n")),
                ("auto/main.tf", Some("# auto\n")),
            ],
            "both",
        )
        .expect("commit");
    let before = sim
        .push_payload(
            project,
            "main",
            "0000000000000000000000000000000000000000",
            &after,
        )
        .expect("p");
    let mut payload = before.clone();
    payload["before"] = json!("1111111111111111111111111111111111111111");
    let answers = sim.deliver(project, "Push Hook", &payload).await;
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);

    // Net: planned with changes, then waits for confirmation.
    let net = runs_of(&app, "net").await;
    let run = net[0]["id"].as_str().expect("id").to_owned();
    let planned = wait_for(&app, &run, "unconfirmed").await;
    assert_eq!(
        planned["summary"],
        json!({ "add": 1, "change": 0, "destroy": 0, "resources": [] })
    );
    let (status, log) = app
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/logs"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let log = log.as_str().expect("text").to_owned();
    assert!(
        log.contains(&format!("commit {after} region eu-west-1")),
        "the checkout is the run's commit: {log}"
    );
    assert!(
        log.contains("password [REDACTED]") && !log.contains("pw-EXEC-CANARY"),
        "{log}"
    );
    assert!(
        log.contains("# the network") && log.contains("init in network"),
        "{log}"
    );
    assert!(!log.contains(&token), "{log}");

    let (status, confirmed) = app
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/confirm"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    let finished = wait_for(&app, &run, "finished").await;
    let states: Vec<&str> = finished["transitions"]
        .as_array()
        .expect("t")
        .iter()
        .filter_map(|t| t["state"].as_str())
        .collect();
    assert_eq!(
        states,
        [
            "queued",
            "preparing",
            "planning",
            "unconfirmed",
            "confirmed",
            "applying",
            "finished"
        ]
    );
    let (_, log) = app
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/logs"),
            Some(&app.admin),
            None,
        )
        .await;
    assert!(
        log.as_str()
            .unwrap_or("")
            .contains(&format!("applying tracked run {run}")),
        "{log}"
    );

    // Auto: straight through.
    let auto = runs_of(&app, "auto").await;
    let auto_run = auto[0]["id"].as_str().expect("id");
    let done = wait_for(&app, auto_run, "finished").await;
    let states: Vec<&str> = done["transitions"]
        .as_array()
        .expect("t")
        .iter()
        .filter_map(|t| t["state"].as_str())
        .collect();
    assert_eq!(
        states,
        ["queued", "preparing", "planning", "applying", "finished"]
    );
    app.stop().await;
}
