//! A deployment at scale, as processes: two `gantry serve` on one
//! PostgreSQL and one S3-compatible blob store (moto), two `gantry worker`s.
//! A plan made through server A is confirmed through server B after A was
//! killed with `kill -9`, and its apply runs from the workspace in S3; a
//! third server with another master key refuses to start.

use gantry_gitlab_sim::Sim;
use serde_json::json;

use crate::api::{Api, admin_token};
use crate::process::{free_port, serve_with, worker};

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
    a.child.start_kill().expect("kill -9");
    a.child.wait().await.expect("dead");
    on_a.start_kill().expect("stop");
    let _ = on_a.wait().await;

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
