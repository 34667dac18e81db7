//! Runs executed by the embedded workers against the simulator's real
//! repository: a shell stack plans with changes, waits for confirmation,
//! applies; an autodeploy stack goes straight through; the log is
//! redacted and the checkout is the run's commit.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Db, TestApp, repo};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    a_shell_stack_plans_waits_for_confirmation_and_applies,
    no_changes_timeouts_log_following_and_hand_back,
    the_worker_api_holds_workers_to_their_leases,
    preparing_waits_out_a_short_gitlab_outage,
);

/// Creates a shell stack on `infra/network` with `extra` fields, and
/// triggers a tracked run at the branch head; the run's id.
pub(crate) async fn shell_run(app: &TestApp, name: &str, plan: &str, extra: Value) -> String {
    let mut body = json!({
        "name": name, "repository": "infra/network", "branch": "main",
        "vendor": { "kind": "shell", "plan": plan, "apply": "echo APPLIED" }
    });
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    let (status, stack) = app.post("/api/v1/stacks", &app.admin, body).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let id = stack["id"].as_str().expect("id");
    let (status, run) = app
        .post(
            &format!("/api/v1/stacks/{id}/runs"),
            &app.admin,
            json!({ "kind": "tracked" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    run["id"].as_str().expect("run").to_owned()
}

pub(crate) fn states(run: &Value) -> Vec<&str> {
    run["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter_map(|t| t["state"].as_str())
        .collect()
}

/// Reads server-sent events until `end`; the `(event, id, data)` of each.
async fn events(app: &TestApp, run: &str, last_id: Option<&str>) -> Vec<(String, String, String)> {
    let mut request = reqwest::Client::new()
        .get(format!("{}/api/v1/runs/{run}/logs?follow=true", app.base))
        .bearer_auth(&app.admin);
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let mut response = request.send().await.expect("follow");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{:?}",
        response.headers()
    );
    let (mut buffer, mut found) = (String::new(), Vec::new());
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), String::new(), Vec::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            if event.is_empty() {
                continue; // a keep-alive comment
            }
            let done = event == "end";
            found.push((event, id, data.join("\n")));
            if done {
                return found;
            }
        }
    }
    panic!("the stream ended without an `end` event: {found:?}");
}

async fn no_changes_timeouts_log_following_and_hand_back(db: Db) {
    let app = TestApp::start_with_workers(&db, 2).await;
    let _repo = repo(&app).await;

    // No changes: finished, never applied.
    let quiet = shell_run(&app, "Quiet", "echo nothing to do; exit 0", json!({})).await;
    let done = wait_for(&app, &quiet, "finished").await;
    assert_eq!(
        states(&done),
        ["queued", "preparing", "planning", "finished"]
    );
    let (_, log) = app
        .get(&format!("/api/v1/runs/{quiet}/logs"), &app.admin)
        .await;
    assert!(
        log.as_str()
            .is_some_and(|l| l.contains("nothing to do") && !l.contains("APPLIED")),
        "{log}"
    );

    // The stack's own no-output limit ends a silent plan.
    let stuck = shell_run(
        &app,
        "Stuck",
        "echo start; sleep 30",
        json!({ "no_output_timeout_seconds": 1 }),
    )
    .await;
    let failed = wait_for(&app, &stuck, "failed").await;
    assert_eq!(
        failed["reason"], "plan printed nothing for too long",
        "{failed}"
    );
    let (status, answer) = app
        .patch(
            "/api/v1/stacks/stuck",
            &app.admin,
            json!({ "run_timeout_seconds": 0 }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("run_timeout_seconds")
    );

    // Following: the events carry exactly the stored log, then the end;
    // Last-Event-ID resumes after a chunk.
    let chatty = shell_run(
        &app,
        "Chatty",
        "for i in 1 2 3; do echo line $i; sleep 0.3; done; printf 'no newline'",
        json!({}),
    )
    .await;
    let followed = events(&app, &chatty, None).await;
    let (_, log) = app
        .get(&format!("/api/v1/runs/{chatty}/logs"), &app.admin)
        .await;
    let log = log.as_str().expect("log").to_owned();
    let (logs, end) = followed.split_at(followed.len() - 1);
    assert!(
        logs.len() >= 2,
        "the log came in several events: {followed:?}"
    );
    let streamed: String = logs.iter().map(|(_, _, data)| data.as_str()).collect();
    assert_eq!(streamed, log);
    assert_eq!(end[0].0, "end");
    let end: Value = serde_json::from_str(&end[0].2).expect("end json");
    assert_eq!(end["state"], "finished");
    let resumed = events(&app, &chatty, Some(&logs[0].1)).await;
    let rest: String = resumed[..resumed.len() - 1]
        .iter()
        .map(|(_, _, d)| d.as_str())
        .collect();
    assert_eq!(format!("{}{rest}", logs[0].2), log);

    // Shutdown while planning: after the grace period the plan is stopped
    // and the run goes back to the queue, for the next worker.
    let slow = shell_run(&app, "Slow", "echo waiting; sleep 30", json!({})).await;
    wait_for(&app, &slow, "planning").await;
    // A follower of the unfinished run does not hold up the shutdown.
    let following = reqwest::Client::new()
        .get(format!("{}/api/v1/runs/{slow}/logs?follow=true", app.base))
        .bearer_auth(&app.admin)
        .send()
        .await
        .expect("follow");
    assert_eq!(following.status(), StatusCode::OK);
    app.stop().await;
    drop(following);
    let app = TestApp::start(&db).await;
    let (_, handed) = app.get(&format!("/api/v1/runs/{slow}"), &app.admin).await;
    assert_eq!(handed["state"], "queued", "{handed}");
    let last = handed["transitions"]
        .as_array()
        .expect("t")
        .last()
        .cloned()
        .expect("last");
    assert!(
        last["cause"]
            .as_str()
            .unwrap_or("")
            .contains("worker shut down"),
        "{handed}"
    );
    app.stop().await;
}

/// A worker as `gantry worker` calls the API, by hand.
struct Caller<'a> {
    app: &'a TestApp,
    key: &'a str,
    name: &'a str,
}

impl Caller<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}/api/v1/worker{path}", self.app.base))
            .bearer_auth(self.key)
            .header("gantry-worker", self.name);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("call");
        (
            response.status(),
            response.bytes().await.expect("body").to_vec(),
        )
    }

    async fn json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, bytes) = self
            .call(Method::POST, path, Some(body.to_string().into_bytes()))
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

async fn the_worker_api_holds_workers_to_their_leases(db: Db) {
    let app = TestApp::start(&db).await;
    let repo = repo(&app).await;
    let run = shell_run(
        &app,
        "Net",
        "exit 2",
        json!({ "secret_environment": { "TOKEN_X": "sekrit" }, "run_timeout_seconds": 120 }),
    )
    .await;
    let key = app
        .key("workers", json!([{ "space": "root", "role": "worker" }]))
        .await;
    let admin_key = app.admin.clone();
    let (w1, w2) = (
        Caller {
            app: &app,
            key: &key,
            name: "w1",
        },
        Caller {
            app: &app,
            key: &key,
            name: "w2",
        },
    );

    // Roles and the worker's name are checked first.
    let admin = Caller {
        app: &app,
        key: &admin_key,
        name: "w1",
    };
    assert_eq!(
        admin.json("/claim?wait_seconds=0", json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let unnamed = Caller {
        app: &app,
        key: &key,
        name: "",
    };
    let (status, answer) = unnamed.json("/claim?wait_seconds=0", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Gantry-Worker")
    );

    // w1 claims: everything the run needs, secrets included.
    let (status, assignment) = w1.json("/claim?wait_seconds=0", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{assignment}");
    assert_eq!(assignment["run_id"], run.as_str());
    assert_eq!(assignment["phase"], "plan");
    assert_eq!(assignment["run_timeout_seconds"], 120);
    assert_eq!(
        assignment["secret_env"],
        json!([{ "name": "TOKEN_X", "value": "sekrit" }])
    );
    // No GitLab credential, nor where to use one: the source comes from
    // the server.
    assert!(assignment.get("source").is_none(), "{assignment}");
    let raw = assignment.to_string();
    assert!(!raw.contains(&repo.token), "{raw}");
    assert!(!raw.contains(&repo.sim.url().to_string()), "{raw}");
    assert_eq!(
        w2.json("/claim?wait_seconds=0", json!({})).await.0,
        StatusCode::NO_CONTENT
    );

    // w2 holds no lease on it: refused everywhere.
    let path = |what: &str| format!("/runs/{run}/{what}");
    assert_eq!(
        w2.json(&path("heartbeat"), json!({})).await.1["keep_going"],
        false
    );
    assert_eq!(
        w2.call(Method::POST, &path("log"), Some(b"x".to_vec()))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        w2.json(&path("step"), json!({ "step": "plan" })).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        w2.call(Method::PUT, &path("workspace"), Some(b"x".to_vec()))
            .await
            .0,
        StatusCode::CONFLICT
    );

    // w1 reports; a step that is not one is 422 and changes nothing.
    assert_eq!(
        w1.json(&path("heartbeat"), json!({})).await.1["keep_going"],
        true
    );
    let (status, answer) = w1.json(&path("step"), json!({ "step": "explode" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(
        w1.json(&path("step"), json!({ "step": "plan" })).await.1["state"],
        "planning"
    );
    assert_eq!(
        w1.call(Method::POST, &path("log"), Some(b"planned\n".to_vec()))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let archive: Vec<u8> = (0..200_000u32).map(|n| (n % 251) as u8).collect();
    assert_eq!(
        w1.call(Method::PUT, &path("workspace"), Some(archive.clone()))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    // The plan takes two seconds of the run's timeout.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let summary = json!({ "add": 1, "change": 0, "destroy": 0, "resources": ["null_resource.a"] });
    let (status, answer) = w1
        .json(
            &path("step"),
            json!({ "step": "planned", "changes": true, "summary": summary }),
        )
        .await;
    assert_eq!(
        (status, &answer["state"]),
        (StatusCode::OK, &json!("unconfirmed")),
        "{answer}"
    );
    assert_eq!(
        w1.call(Method::POST, &path("release"), None).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, shown) = app.get(&format!("/api/v1/runs/{run}"), &app.admin).await;
    assert_eq!(shown["summary"], summary);

    // Confirmed after three seconds, which do not count, the apply goes to
    // w2 with the workspace w1 stored and what the plan left of the timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.post(
        &format!("/api/v1/runs/{run}/confirm"),
        &app.admin,
        json!({}),
    )
    .await;
    let (status, assignment) = w2.json("/claim?wait_seconds=0", json!({})).await;
    assert_eq!(
        (status, &assignment["phase"]),
        (StatusCode::OK, &json!("apply"))
    );
    let left = assignment["run_timeout_seconds"].as_u64().unwrap_or(0);
    assert!((116..=118).contains(&left), "{assignment}");
    assert!(
        assignment["source"].is_null(),
        "the apply needs no checkout"
    );
    assert_eq!(
        w1.call(Method::GET, &path("workspace"), None).await.0,
        StatusCode::CONFLICT
    );
    let (status, restored) = w2.call(Method::GET, &path("workspace"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        restored == archive,
        "the workspace comes back byte for byte"
    );
    assert_eq!(
        w2.json(&path("step"), json!({ "step": "applied" })).await.1["state"],
        "finished"
    );
    w2.call(Method::POST, &path("release"), None).await;
    let (_, log) = app
        .get(&format!("/api/v1/runs/{run}/logs"), &app.admin)
        .await;
    assert_eq!(log, "planned\n");

    // A restart sweeps the workspaces of ended runs, and the sources no
    // run still waits for.
    let blobs = db.data_dir().join("blobs");
    let mut kept: Vec<String> = std::fs::read_dir(&blobs)
        .expect("blobs")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept[0].starts_with("source.main."), "{kept:?}");
    assert!(kept[1].starts_with("workspace-"), "{kept:?}");
    app.stop().await;
    let app = TestApp::start(&db).await;
    for _ in 0..200 {
        if std::fs::read_dir(&blobs).expect("blobs").count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_dir(&blobs).expect("blobs").count(),
        0,
        "swept"
    );
    app.stop().await;
}

pub(crate) async fn wait_for(app: &TestApp, run: &str, state: &str) -> Value {
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

/// The runs of a stack once every delivery received so far was processed.
async fn runs_of(app: &TestApp, stack: &str) -> Vec<Value> {
    app.settle().await;
    let (_, list) = app
        .get(&format!("/api/v1/stacks/{stack}/runs"), &app.admin)
        .await;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert!(!items.is_empty(), "no runs for {stack}: {list}");
    items
}

async fn a_shell_stack_plans_waits_for_confirmation_and_applies(db: Db) {
    let app = TestApp::start_with_workers(&db, 2).await;
    let repo = repo(&app).await;
    repo.hook(&app).await;
    let (sim, project, token) = (&repo.sim, repo.project, repo.token.clone());
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

/// GitLab's git endpoints answer 503 for a while: the run goes back to
/// the queue with a backoff, says so in its log, and plans once GitLab is
/// back; an outage longer than the server's patience fails the run with a
/// reason that says so.
async fn preparing_waits_out_a_short_gitlab_outage(db: Db) {
    let app = TestApp::start_configured(&db, |config| {
        config.embedded_workers = 1;
        config.prepare_patience = Duration::from_secs(6);
    })
    .await;
    let repo = repo(&app).await;
    repo.sim.outage(".git/", Duration::from_millis(1500));
    let run = shell_run(&app, "Net", "true", json!({})).await;
    let done = wait_for(&app, &run, "finished").await;
    let shown = states(&done);
    assert!(
        shown.starts_with(&["queued", "preparing", "queued", "preparing"]),
        "{done}"
    );
    assert_eq!(shown.last(), Some(&"finished"), "{done}");
    let (_, log) = app
        .get(&format!("/api/v1/runs/{run}/logs"), &app.admin)
        .await;
    let log = log.as_str().unwrap_or("");
    assert!(
        log.contains("returned error: 503") && log.contains("trying again in"),
        "{log}"
    );
    assert!(!log.contains(&repo.token), "{log}");

    let (_, next) = repo
        .sim
        .commit(repo.project, "main", &[("main.tf", Some("two"))], "two")
        .expect("commit");
    repo.sim.outage(".git/", Duration::from_secs(120));
    let (status, second) = app
        .post(
            "/api/v1/stacks/net/runs",
            &app.admin,
            json!({ "kind": "tracked", "commit_sha": next }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let second = second["id"].as_str().expect("id").to_owned();
    let failed = wait_for(&app, &second, "failed").await;
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unavailable for longer than 6 s")),
        "{failed}"
    );
    app.stop().await;
}
