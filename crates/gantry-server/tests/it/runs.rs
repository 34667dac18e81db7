//! From events to runs against the simulated GitLab with real
//! repositories: every row of the rules table, compare when the payload's
//! commit list is incomplete, one run per (stack, commit, kind),
//! cancellation, replay, and the runs API.

use gantry_gitlab_sim::Sim;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Db, TestApp, assert_error, ids, repo};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    pushes_and_merge_requests_make_the_right_runs,
    the_runs_api,
    deliveries_finish_while_gitlab_is_slow,
    a_delivery_out_of_attempts_says_why_and_a_replay_recovers_it,
);

struct World {
    sim: Sim,
    project: u64,
}

async fn world(app: &TestApp) -> World {
    let repo = repo(app).await;
    repo.hook(app).await;
    for (name, root) in [("Net", "network"), ("Docs", "docs")] {
        let (status, body) = app
            .post(
                "/api/v1/stacks",
                &app.admin,
                json!({ "name": name, "repository": "infra/network", "branch": "main", "project_root": root,
                        "vendor": { "kind": "opentofu" } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    World {
        sim: repo.sim,
        project: repo.project,
    }
}

/// Delivers an event through the project's hook and waits until the
/// delivery is processed; answers the delivery from the log.
async fn deliver(app: &TestApp, world: &World, event: &str, payload: &Value) -> Value {
    let answers = world.sim.deliver(world.project, event, payload).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    let answer: Value = serde_json::from_str(&answers[0].body).expect("json");
    app.processed("main", answer["delivery"].as_str().expect("delivery"))
        .await
}

async fn runs(app: &TestApp, stack: &str) -> Vec<Value> {
    let (status, list) = app
        .get(
            &format!("/api/v1/stacks/{stack}/runs?limit=500"),
            &app.admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"].as_array().expect("items").clone()
}

async fn push(
    world: &World,
    branch: &str,
    files: &[(&str, Option<&str>)],
) -> (String, String, Value) {
    let (before, after) = world
        .sim
        .commit(world.project, branch, files, "change")
        .expect("commit");
    let payload = world
        .sim
        .push_payload(world.project, branch, &before, &after)
        .expect("payload");
    (before, after, payload)
}

async fn pushes_and_merge_requests_make_the_right_runs(db: Db) {
    let app = TestApp::start(&db).await;
    let world = world(&app).await;

    // A push to the tracked branch under network/: a tracked run for Net only.
    let (_, main_sha, payload) = push(&world, "main", &[("network/main.tf", Some("# v1\n"))]).await;
    let delivery = deliver(&app, &world, "Push Hook", &payload).await;
    let net = runs(&app, "net").await;
    assert_eq!(net.len(), 1);
    assert_eq!(
        (net[0]["kind"].as_str(), net[0]["state"].as_str()),
        (Some("tracked"), Some("queued"))
    );
    assert_eq!(net[0]["commit_sha"], main_sha.as_str());
    assert_eq!(
        net[0]["trigger"],
        format!("delivery:{}", delivery["id"].as_str().expect("id"))
    );
    assert_eq!(delivery["runs"], json!([net[0]["id"]]));
    let outcome = delivery["outcome"].as_str().expect("outcome");
    assert!(
        outcome.contains("created tracked run") && outcome.contains("docs: no changed file"),
        "{outcome}"
    );
    assert!(runs(&app, "docs").await.is_empty());

    // Replaying it creates nothing new.
    let replay = format!(
        "/api/v1/integrations/gitlab/main/deliveries/{}/replay",
        delivery["id"].as_str().expect("id")
    );
    let (status, replayed) = app
        .call(Method::POST, &replay, Some(&app.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert!(
        replayed["outcome"]
            .as_str()
            .unwrap_or("")
            .contains("already existed"),
        "{replayed}"
    );
    assert_eq!(runs(&app, "net").await.len(), 1);

    // A push to another branch: proposed; then the MR for that commit
    // links the same run instead of making a second one.
    let (_, feature_sha, payload) =
        push(&world, "feature", &[("network/vpc.tf", Some("# vpc\n"))]).await;
    deliver(&app, &world, "Push Hook", &payload).await;
    let iid = world
        .sim
        .open_merge_request(world.project, "feature", "main", "VPC")
        .expect("mr");
    let opened = world
        .sim
        .merge_request_payload(world.project, iid, "open", None)
        .expect("mr payload");
    let delivery = deliver(&app, &world, "Merge Request Hook", &opened).await;
    let proposed: Vec<Value> = runs(&app, "net")
        .await
        .into_iter()
        .filter(|r| r["kind"] == "proposed")
        .collect();
    assert_eq!(proposed.len(), 1, "one run per (stack, commit, kind)");
    assert_eq!(proposed[0]["commit_sha"], feature_sha.as_str());
    assert_eq!(proposed[0]["merge_request_iid"], iid);
    assert_eq!(delivery["runs"], json!([proposed[0]["id"]]));

    // Metadata-only updates, approvals and merges make no run.
    for action in ["update", "approved", "merge"] {
        let payload = world
            .sim
            .merge_request_payload(world.project, iid, action, None)
            .expect("payload");
        let delivery = deliver(&app, &world, "Merge Request Hook", &payload).await;
        assert_eq!(delivery["runs"], json!([]), "{action}");
    }

    // A newer commit on the branch supersedes the queued proposed run.
    let (old_head, newer_sha, payload) =
        push(&world, "feature", &[("network/vpc.tf", Some("# vpc 2\n"))]).await;
    deliver(&app, &world, "Push Hook", &payload).await;
    let update = world
        .sim
        .merge_request_payload(world.project, iid, "update", Some(&old_head))
        .expect("payload");
    deliver(&app, &world, "Merge Request Hook", &update).await;
    let all = runs(&app, "net").await;
    let first = all
        .iter()
        .find(|r| r["commit_sha"] == feature_sha.as_str())
        .expect("first");
    assert_eq!(first["state"], "canceled");
    assert!(
        first["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("superseded by run"),
        "{first}"
    );
    let newer = all
        .iter()
        .find(|r| r["commit_sha"] == newer_sha.as_str())
        .expect("newer");
    assert_eq!(
        (newer["state"].as_str(), newer["merge_request_iid"].as_u64()),
        (Some("queued"), Some(iid))
    );

    // Closing the MR cancels its queued proposed runs.
    let closed = world
        .sim
        .merge_request_payload(world.project, iid, "close", None)
        .expect("payload");
    deliver(&app, &world, "Merge Request Hook", &closed).await;
    let (_, newer) = app
        .get(
            &format!("/api/v1/runs/{}", newer["id"].as_str().expect("id")),
            &app.admin,
        )
        .await;
    assert_eq!(newer["state"], "canceled");
    assert_eq!(newer["reason"], format!("merge request !{iid} was closed"));

    // Deleting a branch cancels the queued proposed runs of that branch.
    let (_, other_sha, payload) = push(&world, "other", &[("network/x.tf", Some("x"))]).await;
    deliver(&app, &world, "Push Hook", &payload).await;
    let deletion = world
        .sim
        .push_payload(
            world.project,
            "other",
            &other_sha,
            "0000000000000000000000000000000000000000",
        )
        .expect("payload");
    deliver(&app, &world, "Push Hook", &deletion).await;
    let other = runs(&app, "net")
        .await
        .into_iter()
        .find(|r| r["commit_sha"] == other_sha.as_str())
        .expect("other");
    assert_eq!(
        (other["state"].as_str(), other["reason"].as_str()),
        (Some("canceled"), Some("branch other was deleted"))
    );

    // A tag push makes no run; a fork's MR is ignored.
    let tag = json!({ "object_kind": "tag_push", "project_id": world.project, "ref": "refs/tags/v1.0.0",
        "before": "0000000000000000000000000000000000000000", "after": main_sha,
        "project": {"id": world.project, "path_with_namespace": "infra/network"}, "commits": [], "total_commits_count": 0 });
    let delivery = deliver(&app, &world, "Tag Push Hook", &tag).await;
    assert_eq!(delivery["runs"], json!([]));
    let mut fork = world
        .sim
        .merge_request_payload(world.project, iid, "reopen", None)
        .expect("payload");
    fork["object_attributes"]["source_project_id"] = json!(999);
    let delivery = deliver(&app, &world, "Merge Request Hook", &fork).await;
    assert!(
        delivery["outcome"].as_str().unwrap_or("").contains("fork"),
        "{delivery}"
    );

    // An incomplete commit list: the payload lists only the newest commit
    // (a docs change), but the push also changed network/ — compare finds it.
    let (before, _) = world
        .sim
        .commit(
            world.project,
            "main",
            &[("network/big.tf", Some("big"))],
            "big",
        )
        .expect("c1");
    let (_, after) = world
        .sim
        .commit(
            world.project,
            "main",
            &[("docs/readme.md", Some("docs"))],
            "docs",
        )
        .expect("c2");
    let mut payload = world
        .sim
        .push_payload(world.project, "main", &before, &after)
        .expect("payload");
    let newest = payload["commits"]
        .as_array()
        .and_then(|c| c.last())
        .cloned()
        .expect("commits");
    assert_eq!(newest["added"], json!(["docs/readme.md"]));
    payload["commits"] = json!([newest]);
    payload["total_commits_count"] = json!(25);
    deliver(&app, &world, "Push Hook", &payload).await;
    let tracked: Vec<Value> = runs(&app, "net")
        .await
        .into_iter()
        .filter(|r| r["kind"] == "tracked")
        .collect();
    assert!(
        tracked.iter().any(|r| r["commit_sha"] == after.as_str()),
        "compare found network/big.tf"
    );
    assert!(
        runs(&app, "docs")
            .await
            .iter()
            .any(|r| r["commit_sha"] == after.as_str())
    );
    assert!(
        world
            .sim
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/repository/compare"))
    );
    app.stop().await;
}

async fn the_runs_api(db: Db) {
    let app = TestApp::start(&db).await;
    let world = world(&app).await;
    let reader = app
        .key("reader", json!([{ "space": "root", "role": "read" }]))
        .await;
    let writer = app
        .key("writer", json!([{ "space": "root", "role": "write" }]))
        .await;
    // Trigger at the branch head.
    let head = world
        .sim
        .commit(world.project, "main", &[("network/a.tf", Some("a"))], "a")
        .expect("commit")
        .1;
    assert_error(
        &app.post(
            "/api/v1/stacks/net/runs",
            &reader,
            json!({ "kind": "tracked" }),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "write",
    );
    let (status, run) = app
        .post(
            "/api/v1/stacks/net/runs",
            &writer,
            json!({ "kind": "tracked" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["commit_sha"], head.as_str());
    assert_eq!(run["trigger"], "api-key:writer");
    assert_eq!(run["transitions"][0]["state"], "queued");
    assert_error(
        &app.post(
            "/api/v1/stacks/net/runs",
            &writer,
            json!({ "kind": "tracked" }),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        run["id"].as_str().expect("id"),
    );
    assert_error(
        &app.post(
            "/api/v1/stacks/net/runs",
            &writer,
            json!({ "kind": "deploy" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "`kind`",
    );
    assert_error(
        &app.post(
            "/api/v1/stacks/net/runs",
            &writer,
            json!({ "kind": "proposed", "commit_sha": "zz" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "commit_sha",
    );
    // A short id is expanded by GitLab: the run carries the full one, and
    // the same commit given short and in full is one run.
    let (status, short) = app
        .post(
            "/api/v1/stacks/net/runs",
            &writer,
            json!({ "kind": "proposed", "commit_sha": &head[..7] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{short}");
    assert_eq!(short["commit_sha"], head.as_str());
    assert_error(
        &app.post(
            "/api/v1/stacks/net/runs",
            &writer,
            json!({ "kind": "proposed", "commit_sha": head }),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        short["id"].as_str().expect("id"),
    );
    assert_error(
        &app.post(
            "/api/v1/stacks/net/runs",
            &writer,
            json!({ "kind": "proposed", "commit_sha": "0123456" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "is not a commit of infra/network",
    );
    let id = run["id"].as_str().expect("id");
    // A queued run cannot be confirmed; it can be canceled, once.
    assert_error(
        &app.call(
            Method::POST,
            &format!("/api/v1/runs/{id}/confirm"),
            Some(&writer),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "queued cannot be confirmed",
    );
    assert_error(
        &app.call(
            Method::POST,
            &format!("/api/v1/runs/{id}/cancel"),
            Some(&reader),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "write",
    );
    let (status, canceled) = app
        .call(
            Method::POST,
            &format!("/api/v1/runs/{id}/cancel"),
            Some(&writer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["state"], "canceled");
    assert_eq!(canceled["reason"], "canceled by api-key:writer");
    assert_eq!(canceled["transitions"].as_array().map(Vec::len), Some(2));
    assert_error(
        &app.call(
            Method::POST,
            &format!("/api/v1/runs/{id}/cancel"),
            Some(&writer),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "canceled cannot be canceled",
    );
    let (_, list) = app
        .get(
            "/api/v1/stacks/net/runs?state=canceled&kind=tracked",
            &reader,
        )
        .await;
    assert_eq!(ids(&list), [id]);
    assert_error(
        &app.get("/api/v1/stacks/net/runs?state=lost", &reader).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "`state`",
    );
    assert_error(
        &app.get("/api/v1/runs/nope", &reader).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
    app.stop().await;
}

/// Six pushes of more than 20 commits arrive together and GitLab's compare
/// API answers each 1.5 s late, with a 3 s lease: every delivery gets its
/// outcome on its first attempt (the batch's leases are renewed while it
/// is decided, and the deliveries are decided side by side).
async fn deliveries_finish_while_gitlab_is_slow(db: Db) {
    let app = TestApp::start_configured(&db, |config| {
        config.lease = std::time::Duration::from_secs(3);
    })
    .await;
    let world = world(&app).await;
    let mut sent = Vec::new();
    for n in 0..6 {
        let (before, after) = world
            .sim
            .commit(
                world.project,
                "main",
                &[(&format!("network/part-{n}.tf"), Some("x"))],
                "part",
            )
            .expect("commit");
        let mut payload = world
            .sim
            .push_payload(world.project, "main", &before, &after)
            .expect("payload");
        // More commits than GitLab lists: the changed files come from compare.
        payload["total_commits_count"] = json!(25);
        sent.push(payload);
    }
    for _ in 0..sent.len() {
        world.sim.inject(gantry_gitlab_sim::Fault {
            path_contains: "/repository/compare".into(),
            kind: gantry_gitlab_sim::FaultKind::Delay(std::time::Duration::from_millis(1500)),
        });
    }
    let mut ids = Vec::new();
    for payload in &sent {
        let answers = world.sim.deliver(world.project, "Push Hook", payload).await;
        assert_eq!(answers[0].status, 200, "{}", answers[0].body);
        let answer: Value = serde_json::from_str(&answers[0].body).expect("json");
        ids.push(answer["delivery"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        let done = app.processed("main", id).await;
        assert!(done["error"].is_null(), "{done}");
        assert!(
            done["outcome"]
                .as_str()
                .is_some_and(|o| o.contains("created tracked run")),
            "{done}"
        );
    }
    let mut conn = app.store().conn().await.expect("conn");
    let attempts: Vec<(i64,)> =
        sqlx::query_as("SELECT attempts FROM jobs WHERE kind = 'process_delivery' ORDER BY id")
            .fetch_all(&mut *conn)
            .await
            .expect("jobs");
    assert!(
        attempts.iter().all(|(n,)| *n == 1),
        "no attempt was burnt: {attempts:?}"
    );
    drop(conn);
    app.stop().await;
}

async fn metrics(app: &TestApp) -> String {
    reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// GitLab's compare API is down through every attempt of a delivery's
/// job: the delivery gets an outcome with the error, `/metrics` counts it,
/// and a replay once GitLab is back creates its run and clears the count.
async fn a_delivery_out_of_attempts_says_why_and_a_replay_recovers_it(db: Db) {
    let app = TestApp::start(&db).await;
    let world = world(&app).await;
    let (before, after) = world
        .sim
        .commit(world.project, "main", &[("network/a.tf", Some("x"))], "a")
        .expect("commit");
    let mut payload = world
        .sim
        .push_payload(world.project, "main", &before, &after)
        .expect("payload");
    payload["total_commits_count"] = json!(25);
    world
        .sim
        .outage("/repository/compare", std::time::Duration::from_secs(600));
    let answers = world
        .sim
        .deliver(world.project, "Push Hook", &payload)
        .await;
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    let answer: Value = serde_json::from_str(&answers[0].body).expect("json");
    let id = answer["delivery"].as_str().expect("id").to_owned();

    // After the first failed attempt, the job has one attempt left.
    let mut conn = app.store().conn().await.expect("conn");
    let mut first = None;
    for _ in 0..500 {
        let job: (i64, String) = sqlx::query_as(
            "SELECT attempts, state FROM jobs WHERE kind = 'process_delivery' ORDER BY id DESC LIMIT 1",
        )
        .fetch_one(&mut *conn)
        .await
        .expect("job");
        if job.0 >= 1 && job.1 == "queued" {
            first = Some(job.0);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let attempts = first.expect("a first failed attempt");
    sqlx::query("UPDATE jobs SET max_attempts = $1, run_at = 0 WHERE kind = 'process_delivery'")
        .bind(attempts + 1)
        .execute(&mut *conn)
        .await
        .expect("last attempt");
    drop(conn);
    let failed = app.processed("main", &id).await;
    assert!(
        failed["error"].as_str().is_some_and(|e| e.contains("503")),
        "{failed}"
    );
    assert!(
        failed["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("processing failed after")),
        "{failed}"
    );
    let shown = metrics(&app).await;
    for line in [
        "gantry_deliveries_failed 1",
        "gantry_deliveries{status=\"accepted\"} 1",
        "gantry_jobs{kind=\"process_delivery\",state=\"dead\"} 1",
        "gantry_runs{state=\"queued\"} 0",
        "endpoint=\"projects/:id/repository/compare\",status=\"503\"",
    ] {
        assert!(shown.contains(line), "{line} in {shown}");
    }

    world.sim.end_outages();
    let (status, replayed) = app
        .post(
            &format!("/api/v1/integrations/gitlab/main/deliveries/{id}/replay"),
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert!(replayed["error"].is_null(), "{replayed}");
    assert!(
        replayed["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("created tracked run")),
        "{replayed}"
    );
    let shown = metrics(&app).await;
    for line in [
        "gantry_deliveries_failed 0",
        "gantry_runs{state=\"queued\"} 1",
    ] {
        assert!(shown.contains(line), "{line} in {shown}");
    }
    app.stop().await;
}
