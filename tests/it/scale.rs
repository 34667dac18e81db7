//! A deployment at scale, as processes: two `gantry serve` on one
//! PostgreSQL and one S3-compatible blob store (moto), `gantry worker`s on
//! both. A plan made through server A is confirmed through server B after
//! A was killed with `kill -9` in the middle of a burst of deliveries
//! spread over both (each acknowledged one is processed exactly once), and
//! its apply runs from the workspace in S3, which the sweeper then deletes;
//! a worker killed mid-plan loses its run and another worker takes the
//! next; a third server with another master key refuses to start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_gitlab_sim::Sim;
use serde_json::json;

use crate::api::{Api, admin_token};
use crate::crash::burst;
use crate::process::{free_port, serve_with, terminate, worker};

/// The keys under `prefix` in the S3 server's bucket `gantry`.
async fn s3_keys(endpoint: &str, prefix: &str) -> Vec<String> {
    let listing = reqwest::get(format!("{endpoint}/gantry?list-type=2&prefix={prefix}"))
        .await
        .expect("list")
        .text()
        .await
        .expect("xml");
    listing
        .split("<Key>")
        .skip(1)
        .filter_map(|part| part.split("</Key>").next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_two_workers_one_database_one_blob_store() {
    let Some(url) = gantry_store::testing::postgres_url().await else {
        return;
    };
    let Some(s3) = gantry_store::testing::s3_server() else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let key = gantry_store::crypto::MasterKey::generate();
    let mut env = s3.env();
    env.push((
        "GANTRY_MASTER_KEY",
        secrecy::ExposeSecret::expose_secret(&key.to_base64()).to_owned(),
    ));
    let flags = [
        "--database-url",
        &url,
        "--blob-store",
        "s3://gantry/deployment",
        "--embedded-workers",
        "0",
        "--lease-seconds",
        "3",
    ];
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = serve_with(&data_a, free_port(), &flags, &env).await;
    let b = serve_with(&data_b, free_port(), &flags, &env).await;
    let ready = reqwest::get(format!("{}/readyz", b.base))
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        200,
        "the database and the blob store answer"
    );
    let admin = admin_token(&data_a);
    let (api_a, api_b) = (Api::new(&a.base, &admin), Api::new(&b.base, &admin));

    let sim = Sim::start().await.expect("sim");
    let bot = sim.add_bot("bot");
    let project = sim
        .add_maintained_project(&bot, "infra/network", "main")
        .expect("project");
    let (_, sha) = sim
        .commit(project, "main", &[("main.tf", Some("one"))], "one")
        .expect("commit");
    let mut integration = sim.integration_body(&bot, "Main", true);
    integration["manage_hooks"] = json!(false);
    api_a.post("/api/v1/integrations/gitlab", integration).await;
    api_b
        .post(
            "/api/v1/stacks",
            json!({ "name": "Net", "repository": "infra/network", "branch": "main",
                    "vendor": { "kind": "shell",
                        "plan": "echo planned-on-some-worker > planned.txt; echo 'Plan: 1 to add, 0 to change, 0 to destroy.'; exit 2",
                        "apply": "echo \"applying $(cat planned.txt)\"" } }),
        )
        .await;
    let workers_key = api_a
        .post(
            "/api/v1/api-keys",
            json!({ "name": "workers", "roles": [{ "space": "root", "role": "worker" }] }),
        )
        .await["secret"]
        .as_str()
        .expect("secret")
        .to_owned();

    // Only A's worker is up for the plan: the workspace goes through A.
    let work = dir.path().join("work");
    let mut on_a = worker(&a.base, &workers_key, "worker-a", &work.join("a"), &[]);
    let run = api_a
        .post(
            "/api/v1/stacks/net/runs",
            json!({ "kind": "tracked", "commit_sha": sha }),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    api_b.wait_for(&run, |r| r["state"] == "unconfirmed").await;
    assert!(
        s3_keys(&s3.endpoint, "deployment/")
            .await
            .contains(&format!("deployment/workspace-{run}.tar.zst")),
        "the planned workspace is in S3"
    );

    // A burst of deliveries to both servers; A dies in the middle of it.
    let shown = api_a.get("/api/v1/integrations/gitlab/main").await;
    let secret = shown["webhook_secret"].as_str().expect("secret").to_owned();
    let urls = vec![
        format!("{}/webhooks/gitlab/main", a.base),
        format!("{}/webhooks/gitlab/main", b.base),
    ];
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let senders = burst(4, urls, secret.clone(), acknowledged.clone());
    while acknowledged.lock().expect("lock").len() < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.child.start_kill().expect("kill -9");
    a.child.wait().await.expect("dead");
    on_a.start_kill().expect("stop");
    let _ = on_a.wait().await;
    // The senders that were on A stop; the rest go on with B a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for sender in &senders {
        sender.abort();
    }

    // Confirmed through B, applied by B's worker from the workspace in S3.
    let _on_b = worker(&b.base, &workers_key, "worker-b", &work.join("b"), &[]);
    api_b
        .post(&format!("/api/v1/runs/{run}/confirm"), json!({}))
        .await;
    let done = api_b
        .wait_for(&run, |r| {
            matches!(r["state"].as_str(), Some("finished" | "failed"))
        })
        .await;
    assert_eq!(done["state"], "finished", "{done}");
    let log = api_b.text(&format!("/api/v1/runs/{run}/logs")).await;
    assert!(log.contains("applying planned-on-some-worker"), "{log}");

    // Every acknowledged delivery is processed, once.
    let acknowledged: HashSet<String> =
        acknowledged.lock().expect("lock").iter().cloned().collect();
    let store = gantry_store::Store::connect(&url).await.expect("open");
    let mut rows: Vec<(String, Option<i64>, i64)> = Vec::new();
    for _ in 0..1500 {
        rows = sqlx::query_as("SELECT id, processed_at, times_processed FROM deliveries")
            .fetch_all(store.pool())
            .await
            .expect("rows");
        if rows.iter().all(|(_, processed, _)| processed.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored: HashSet<&String> = rows.iter().map(|(id, ..)| id).collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged delivery {id} was lost");
    }
    for (id, processed, times) in &rows {
        assert!(
            processed.is_some() && *times == 1,
            "{id}: processed {times} times"
        );
    }

    // The sweeper (at B's restart) deletes the ended run's workspace in S3.
    let mut b = b;
    assert!(terminate(&mut b.child).await.success());
    let b = serve_with(&data_b, free_port(), &flags, &env).await;
    let api_b = Api::new(&b.base, &admin);
    let workspace = format!("deployment/workspace-{run}.tar.zst");
    let mut swept = false;
    for _ in 0..250 {
        if !s3_keys(&s3.endpoint, "deployment/")
            .await
            .contains(&workspace)
        {
            swept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(swept, "the sweeper deleted {workspace}");

    // Two workers on B; the one planning a run dies: the run is lost,
    // and the other worker takes the next one.
    let mut workers = vec![
        (
            "worker-b1",
            worker(&b.base, &workers_key, "worker-b1", &work.join("b1"), &[]),
        ),
        (
            "worker-b2",
            worker(&b.base, &workers_key, "worker-b2", &work.join("b2"), &[]),
        ),
    ];
    api_b
        .patch(
            "/api/v1/stacks/net",
            json!({ "vendor": { "kind": "shell", "plan": "sleep 60", "apply": "true" } }),
        )
        .await;
    let (_, second) = sim
        .commit(project, "main", &[("main.tf", Some("two"))], "two")
        .expect("commit");
    let slow = api_b
        .post(
            "/api/v1/stacks/net/runs",
            json!({ "kind": "tracked", "commit_sha": second }),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let planning = api_b.wait_for(&slow, |r| r["state"] == "planning").await;
    let holder = planning["transitions"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["state"] == "preparing"))
        .and_then(|t| t["cause"].as_str())
        .unwrap_or_default()
        .to_owned();
    let index = workers
        .iter()
        .position(|(name, _)| holder.ends_with(name))
        .unwrap_or_else(|| panic!("no worker holds it: {holder}"));
    let (_, mut dead) = workers.remove(index);
    dead.start_kill().expect("kill -9 the worker");
    let _ = dead.wait().await;
    let lost = api_b.wait_for(&slow, |r| r["state"] == "failed").await;
    assert!(
        lost["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("worker lost")),
        "{lost}"
    );
    api_b
        .patch(
            "/api/v1/stacks/net",
            json!({ "vendor": { "kind": "shell", "plan": "true", "apply": "true" } }),
        )
        .await;
    let (_, third) = sim
        .commit(project, "main", &[("main.tf", Some("three"))], "three")
        .expect("commit");
    let next = api_b
        .post(
            "/api/v1/stacks/net/runs",
            json!({ "kind": "tracked", "commit_sha": third }),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let done = api_b.wait_for(&next, |r| r["state"] == "finished").await;
    let (survivor, _) = &workers[0];
    assert!(
        done.to_string().contains(survivor),
        "taken by {survivor}: {done}"
    );

    // A third server with another master key refuses to start.
    let other = gantry_store::crypto::MasterKey::generate();
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("c"))
        .args(flags)
        .envs(
            env.iter()
                .filter(|(k, _)| *k != "GANTRY_MASTER_KEY")
                .map(|(k, v)| (*k, v.as_str())),
        )
        .env(
            "GANTRY_MASTER_KEY",
            secrecy::ExposeSecret::expose_secret(&other.to_base64()),
        )
        .output()
        .await
        .expect("third server");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("same master key"), "{stderr}");
    drop(b);
}
