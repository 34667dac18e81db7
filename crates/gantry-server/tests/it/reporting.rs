//! What Gantry writes back to the simulated GitLab: commit statuses in
//! order, one deployment per applied tracked run, one MR comment per stack
//! edited in place (after a restart too), through faults and a rejected
//! token, and a huge log cut under GitLab's comment limit.

use std::time::Duration;

use gantry_gitlab_sim::{Fault, FaultKind, TokenSpec};
use reqwest::StatusCode;
use serde_json::json;

use crate::execution::{shell_run, wait_for};
use crate::harness::{Db, TestApp, repo};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    statuses_and_deployments_of_tracked_runs,
    one_comment_per_merge_request_and_stack,
    a_previewed_commit_merged_by_fast_forward_reports_on_main,
);

/// Polls `check` until it gives a value.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..750 {
        if let Some(found) = check() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

async fn statuses_and_deployments_of_tracked_runs(db: Db) {
    let app = TestApp::start_with_workers(&db, 1).await;
    let repo = repo(&app).await;
    let (sim, project) = (&repo.sim, repo.project);
    let plan = "echo 'Plan: 1 to add, 0 to change, 0 to destroy.'; exit 2";
    // Run a holds the stack's lock while it waits for confirmation, so run
    // b's `pending` is seen before it starts.
    // The apply takes a moment, so that the deployment is seen running.
    let vendor = json!({ "vendor": { "kind": "shell", "plan": plan, "apply": "sleep 1" } });
    let a = shell_run(&app, "Net", plan, vendor).await;
    wait_for(&app, &a, "unconfirmed").await;
    let (_, c2) = sim
        .commit(project, "main", &[("main.tf", Some("two"))], "two")
        .expect("commit");
    let (status, b) = app
        .post(
            "/api/v1/stacks/net/runs",
            &app.admin,
            json!({ "kind": "tracked", "commit_sha": c2 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let b = b["id"].as_str().expect("id").to_owned();
    eventually("b's pending status", || {
        (sim.status_history(project, &c2, "gantry/net") == ["pending"]).then_some(())
    })
    .await;

    app.post(&format!("/api/v1/runs/{a}/discard"), &app.admin, json!({}))
        .await;
    wait_for(&app, &b, "unconfirmed").await;
    eventually("b's running status", || {
        (sim.status_history(project, &c2, "gantry/net") == ["pending", "running"]).then_some(())
    })
    .await;

    // Faults on the way to success: two 500s and a 429 with Retry-After: 1.
    for kind in [
        FaultKind::Status(500),
        FaultKind::Status(500),
        FaultKind::RateLimited {
            retry_after: Some(1),
            ratelimit_reset: None,
        },
    ] {
        sim.inject(Fault {
            path_contains: "/statuses/".into(),
            kind,
        });
    }
    app.post(&format!("/api/v1/runs/{b}/confirm"), &app.admin, json!({}))
        .await;
    wait_for(&app, &b, "finished").await;
    let history = eventually("b's success", || {
        let history = sim.status_history(project, &c2, "gantry/net");
        (history.last().map(String::as_str) == Some("success")).then_some(history)
    })
    .await;
    assert_eq!(history, ["pending", "running", "success"]);
    let shown = sim.statuses(project, &c2);
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["name"], "gantry/net");
    assert_eq!(shown[0]["ref"], "main");
    assert_eq!(
        shown[0]["target_url"],
        format!("http://gantry.test/runs/{b}")
    );
    assert_eq!(
        shown[0]["description"],
        "1 to add, 0 to change, 0 to destroy"
    );
    // The discarded run's status says so; it never got a deployment.
    let a_commit = app.get(&format!("/api/v1/runs/{a}"), &app.admin).await.1["commit_sha"]
        .as_str()
        .expect("sha")
        .to_owned();
    let a_history = eventually("a's canceled status", || {
        let history = sim.status_history(project, &a_commit, "gantry/net");
        (history.last().map(String::as_str) == Some("canceled")).then_some(history)
    })
    .await;
    // `pending` is sent, or superseded by `running` when the worker took
    // the run before the outbox got to it; either way never backwards.
    assert!(
        a_history == ["running", "canceled"] || a_history == ["pending", "running", "canceled"],
        "{a_history:?}"
    );

    let deployments = eventually("b's deployment succeeded", || {
        let deployments = sim.deployments(project);
        (deployments.len() == 1 && deployments[0]["status"] == "success").then_some(deployments)
    })
    .await;
    let deployment = &deployments[0];
    assert_eq!(deployment["sha"], c2.as_str());
    assert_eq!(deployment["ref"], "main");
    assert_eq!(deployment["environment"]["name"], "gantry/net");
    let writes: Vec<(String, u16)> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/deployments"))
        .map(|r| (r.method, r.status))
        .collect();
    assert!(
        writes.contains(&("POST".into(), 201)) && writes.contains(&("PUT".into(), 200)),
        "created running, then updated: {writes:?}"
    );

    // A rejected token pauses the integration's writes; a new one resumes them.
    sim.revoke_token(&repo.token);
    let (_, c3) = sim
        .commit(project, "main", &[("main.tf", Some("three"))], "three")
        .expect("commit");
    let (_, c) = app
        .post(
            "/api/v1/stacks/net/runs",
            &app.admin,
            json!({ "kind": "tracked", "commit_sha": c3 }),
        )
        .await;
    let c = c["id"].as_str().expect("id").to_owned();
    // The run's `pending` goes out, meets the revoked token, and pauses.
    app.settle().await;
    let paused = app
        .get("/api/v1/integrations/gitlab/main", &app.admin)
        .await
        .1;
    assert_eq!(paused["health"]["status"], "token_rejected", "{paused}");
    assert!(
        paused["health"]["pending_writes"].as_i64().unwrap_or(0) >= 1,
        "{paused}"
    );
    // The worker cannot ask GitLab for the clone URL either: the run fails.
    wait_for(&app, &c, "failed").await;
    app.settle().await;
    let metrics = reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("gantry_integration_healthy{integration=\"main\"} 0")
            && metrics.contains("gantry_outbox_pending{integration=\"main\"}"),
        "{metrics}"
    );
    let user = sim.add_user("gantry-bot-2");
    sim.add_member(project, user, gantry_gitlab_sim::AccessLevel::Maintainer);
    let fresh = sim.add_token(TokenSpec::new(user, &["api"]));
    let (status, fixed) = app
        .patch(
            "/api/v1/integrations/gitlab/main",
            &app.admin,
            json!({ "api_token": fresh }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fixed}");
    assert_eq!(fixed["health"]["status"], "ok");
    // The paused writes go out now, newest first: c's final status.
    eventually("c's status after the fix", || {
        (sim.status_history(project, &c3, "gantry/net") == ["failed"]).then_some(())
    })
    .await;
    app.stop().await;
}

async fn one_comment_per_merge_request_and_stack(db: Db) {
    let app = TestApp::start_with_workers(&db, 1).await;
    let repo = repo(&app).await;
    let (sim, project) = (&repo.sim, repo.project);
    repo.hook(&app).await;
    let (status, stack) = app
        .post(
            "/api/v1/stacks",
            &app.admin,
            json!({ "name": "Net", "repository": "infra/network", "branch": "main",
                    "vendor": { "kind": "shell",
                        "plan": "echo \"plan of $(git rev-parse --short HEAD)\"; echo 'Plan: 2 to add, 0 to change, 1 to destroy.'; exit 2",
                        "apply": "true" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let (_, first) = sim
        .commit(project, "feature", &[("main.tf", Some("f1"))], "f1")
        .expect("commit");
    let iid = sim
        .open_merge_request(project, "feature", "main", "Feature")
        .expect("mr");
    let payload = sim
        .merge_request_payload(project, iid, "open", None)
        .expect("payload");
    assert_eq!(
        sim.deliver(project, "Merge Request Hook", &payload).await[0].status,
        200
    );
    let note = eventually("the comment on the first run", || {
        let notes = sim.notes(project, iid);
        notes
            .first()
            .filter(|n| n.body.contains("**finished**"))
            .cloned()
    })
    .await;
    assert!(
        note.body.starts_with("<!-- gantry:stack=net -->"),
        "{}",
        note.body
    );
    assert!(
        note.body.contains("2 to add, 0 to change, 1 to destroy"),
        "{}",
        note.body
    );
    assert!(
        note.body.contains(&format!("plan of {}", &first[..7])),
        "{}",
        note.body
    );

    // A restart, then a new commit on the MR: the same note is edited.
    app.stop().await;
    let app = TestApp::start_with_workers(&db, 1).await;
    repo.hook(&app).await;
    let delivered = |answers: Vec<gantry_gitlab_sim::DeliveryAnswer>| {
        // The hook of the server before the restart answers nothing.
        assert!(answers.iter().any(|a| a.status == 200), "{answers:?}");
    };
    let (_, second) = sim
        .commit(project, "feature", &[("main.tf", Some("f2"))], "f2")
        .expect("commit");
    let payload = sim
        .merge_request_payload(project, iid, "update", Some(&first))
        .expect("payload");
    delivered(sim.deliver(project, "Merge Request Hook", &payload).await);
    let edited = eventually("the comment on the second run", || {
        let notes = sim.notes(project, iid);
        notes
            .first()
            .filter(|n| n.body.contains(&format!("plan of {}", &second[..7])))
            .filter(|n| n.body.contains("**finished**"))
            .map(|n| (n.id, notes.len()))
    })
    .await;
    assert_eq!(edited, (note.id, 1), "one note, edited in place");

    // A 2,000,000-character plan output: the comment is cut under the limit.
    let (status, _) = app
        .patch(
            "/api/v1/stacks/net",
            &app.admin,
            json!({ "vendor": { "kind": "shell",
                "plan": "head -c 2000000 /dev/zero | tr '\\0' 'x'; echo; echo 'Plan: 1 to add, 0 to change, 0 to destroy.'; exit 2",
                "apply": "true" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, third) = sim
        .commit(project, "feature", &[("main.tf", Some("f3"))], "f3")
        .expect("commit");
    let payload = sim
        .merge_request_payload(project, iid, "update", Some(&second))
        .expect("payload");
    delivered(sim.deliver(project, "Merge Request Hook", &payload).await);
    let body = eventually("the comment on the huge run", || {
        let notes = sim.notes(project, iid);
        notes
            .first()
            .filter(|n| n.body.contains(&third[..12]) && n.body.contains("**finished**"))
            .map(|n| n.body.clone())
    })
    .await;
    assert!(body.chars().count() < 1_000_000, "{}", body.len());
    assert!(body.contains("the log was cut"), "says it was cut");
    assert!(body.contains("/api/v1/runs/") && body.contains("1 to add"));
    assert_eq!(sim.notes(project, iid).len(), 1);
    app.stop().await;
}

/// GitLab keeps a status per (commit, ref, name): the preview of a commit
/// on `feature` has finished, `main` is fast-forwarded to it, and the
/// tracked run still reports its whole story on `main`.
async fn a_previewed_commit_merged_by_fast_forward_reports_on_main(db: Db) {
    let app = TestApp::start_with_workers(&db, 1).await;
    let repo = repo(&app).await;
    let (sim, project) = (&repo.sim, repo.project);
    repo.hook(&app).await;
    let (status, stack) = app
        .post(
            "/api/v1/stacks",
            &app.admin,
            json!({ "name": "Net", "repository": "infra/network", "branch": "main",
                    "vendor": { "kind": "shell", "plan": "sleep 1", "apply": "true" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let (_, sha) = sim
        .commit(project, "feature", &[("main.tf", Some("f1"))], "f1")
        .expect("commit");
    let iid = sim
        .open_merge_request(project, "feature", "main", "Feature")
        .expect("mr");
    let payload = sim
        .merge_request_payload(project, iid, "open", None)
        .expect("payload");
    assert_eq!(
        sim.deliver(project, "Merge Request Hook", &payload).await[0].status,
        200
    );
    eventually("the preview's success on feature", || {
        let history = sim.status_history_on(project, &sha, "feature", "gantry/net");
        (history.last().map(String::as_str) == Some("success")).then_some(())
    })
    .await;

    let (before, after) = sim.set_branch(project, "main", &sha).expect("merge");
    let payload = sim
        .push_payload(project, "main", &before, &after)
        .expect("payload");
    assert_eq!(
        sim.deliver(project, "Push Hook", &payload).await[0].status,
        200
    );
    let history = eventually("the tracked run's success on main", || {
        let history = sim.status_history_on(project, &sha, "main", "gantry/net");
        (history.last().map(String::as_str) == Some("success")).then_some(history)
    })
    .await;
    // `pending` is superseded by `running` when the worker took the run
    // before the outbox got to it; either way it runs before it succeeds.
    assert!(
        history == ["pending", "running", "success"] || history == ["running", "success"],
        "{history:?}"
    );
    let on_main: Vec<_> = sim
        .statuses(project, &sha)
        .into_iter()
        .filter(|s| s["ref"] == "main")
        .collect();
    assert_eq!(on_main.len(), 1, "{on_main:?}");
    app.stop().await;
}
