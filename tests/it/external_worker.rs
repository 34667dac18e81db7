//! `gantry worker` processes against `gantry serve --embedded-workers 0`:
//! a plan on one worker, its apply on another from the stored workspace;
//! `kill -9` of a worker mid-run ends the run `failed` (worker lost) and
//! frees the stack; cancel stops the plan; SIGTERM hands a plan back.

use gantry_gitlab_sim::Sim;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, admin_token};
use crate::process::{free_port, serve, terminate, worker};

fn transition_cause(run: &Value, state: &str) -> String {
    run["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .rev()
        .find(|t| t["state"] == state)
        .map(|t| t["cause"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_workers_execute_runs_and_survive_each_others_deaths() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let flags = ["--lease-seconds", "3", "--embedded-workers", "0"];
    let server = serve(&data, free_port(), &flags).await;
    let api = Api::new(&server.base, &admin_token(&data));
    let sim = Sim::start().await.expect("sim");
    let bot = sim.add_bot("bot");
    let project = sim
        .add_maintained_project(&bot, "infra/network", "main")
        .expect("project");
    let mut commits = Vec::new();
    for n in 0..5 {
        let (_, sha) = sim
            .commit(
                project,
                "main",
                &[("main.tf", Some(&format!("v{n}")))],
                "change",
            )
            .expect("commit");
        commits.push(sha);
    }
    api.post(
        "/api/v1/integrations/gitlab",
        sim.integration_body(&bot, "Main", true),
    )
    .await;
    api.post(
        "/api/v1/stacks",
        json!({ "name": "Net", "repository": "infra/network", "branch": "main",
                "secret_environment": { "DB_PASSWORD": "pw-WORKER-CANARY" },
                "vendor": { "kind": "shell",
                    "plan": "echo \"planned at $(git rev-parse HEAD)\" > planned.txt; echo 'Plan: 1 to add, 0 to change, 0 to destroy.'; exit 2",
                    "apply": "cat planned.txt; echo \"password $DB_PASSWORD\"" } }),
    )
    .await;
    let key = api
        .post(
            "/api/v1/api-keys",
            json!({ "name": "workers", "roles": [{ "space": "root", "role": "worker" }] }),
        )
        .await;
    let (key_id, secret) = (
        key["id"].as_str().expect("id").to_owned(),
        key["secret"].as_str().expect("secret").to_owned(),
    );
    let trigger = |sha: &str| {
        let body = json!({ "kind": "tracked", "commit_sha": sha });
        async {
            api.post("/api/v1/stacks/net/runs", body).await["id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
    };

    // Worker a plans; then it stops, and worker b applies from the stored
    // workspace: the file the plan wrote is there, on another machine.
    let dir_a = dir.path().join("a");
    let mut a = worker(&server.base, &secret, "a", &dir_a, &[]);
    let run = trigger(&commits[0]).await;
    let planned = api.wait_for(&run, |r| r["state"] == "unconfirmed").await;
    assert_eq!(planned["summary"]["add"], 1, "{planned}");
    assert!(
        transition_cause(&planned, "planning").contains(&format!("{key_id}/a")),
        "{planned}"
    );
    assert!(
        terminate(&mut a).await.success(),
        "an idle worker stops cleanly"
    );
    let left: Vec<_> = std::fs::read_dir(&dir_a).expect("work dir").collect();
    assert!(
        left.is_empty(),
        "the workspace is removed after the phase: {left:?}"
    );

    let dir_b = dir.path().join("b");
    let mut b = worker(&server.base, &secret, "b", &dir_b, &[]);
    api.post(&format!("/api/v1/runs/{run}/confirm"), json!({}))
        .await;
    let finished = api.wait_for(&run, |r| r["state"] == "finished").await;
    assert!(
        transition_cause(&finished, "applying").contains(&format!("{key_id}/b")),
        "{finished}"
    );
    let log = api.text(&format!("/api/v1/runs/{run}/logs")).await;
    assert!(log.contains(&format!("planned at {}", commits[0])), "{log}");
    assert!(log.contains("Restoring the planned workspace"), "{log}");
    assert!(
        !log.contains("pw-WORKER-CANARY") && log.contains("password [REDACTED]"),
        "{log}"
    );

    // A plan on the external worker goes looking for the worker's own API
    // key (in its environment, GANTRY_TOKEN) and the GitLab token: its
    // sandbox shows it neither. Everything it finds is in its log.
    api.post(
        "/api/v1/stacks",
        json!({ "name": "Snoop", "repository": "infra/network", "branch": "main",
                "vendor": { "kind": "shell", "apply": "true", "plan":
                    "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done; \
                     env; cat ../*/* ../../* 2>/dev/null | head -c 100000; exit 0" } }),
    )
    .await;
    let snoop = api
        .post(
            "/api/v1/stacks/snoop/runs",
            json!({ "kind": "proposed", "commit_sha": commits[0] }),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    api.wait_for(&snoop, |r| r["state"] == "finished").await;
    let found = api.text(&format!("/api/v1/runs/{snoop}/logs")).await;
    assert!(found.contains("PATH="), "the plan ran: {found}");
    assert!(!found.contains(&secret), "the worker's key leaked: {found}");
    assert!(
        !found.contains(&bot.token),
        "the GitLab token leaked: {found}"
    );

    // kill -9 of worker b mid-plan: the run fails once the lease lapses,
    // and the stack's next tracked run goes to the next worker.
    let (status, answer) = api
        .send(
            Method::PATCH,
            "/api/v1/stacks/net",
            json!({ "vendor": { "kind": "shell", "plan": "echo planning; sleep 30; exit 2", "apply": "true" } }),
        )
        .await;
    assert!(status.is_success(), "{answer}");
    let lost = trigger(&commits[1]).await;
    let next = trigger(&commits[2]).await;
    api.wait_for(&lost, |r| r["state"] == "planning").await;
    b.start_kill().expect("kill -9");
    b.wait().await.expect("dead");
    let failed = api.wait_for(&lost, |r| r["state"] == "failed").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("worker lost"),
        "{failed}"
    );
    assert_eq!(
        api.get(&format!("/api/v1/runs/{next}")).await["state"],
        "queued"
    );
    let mut c = worker(
        &server.base,
        &secret,
        "c",
        &dir.path().join("c"),
        &["--shutdown-grace-seconds", "1"],
    );
    api.wait_for(&next, |r| r["state"] == "planning").await;

    // Cancel ends the sleeping plan's process group promptly.
    api.post(&format!("/api/v1/runs/{next}/cancel"), json!({}))
        .await;
    let started = std::time::Instant::now();
    let third = trigger(&commits[3]).await;
    api.wait_for(&third, |r| r["state"] == "planning").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the canceled plan did not hold the worker"
    );
    let log = api.text(&format!("/api/v1/runs/{next}/logs")).await;
    assert!(log.contains("canceled during plan"), "{log}");

    // SIGTERM mid-plan: after the grace period the plan is stopped and the
    // run handed back to the queue, and the worker exits cleanly.
    assert!(terminate(&mut c).await.success());
    let handed = api.get(&format!("/api/v1/runs/{third}")).await;
    assert_eq!(handed["state"], "queued", "{handed}");
    assert!(
        transition_cause(&handed, "queued").contains("worker shut down"),
        "{handed}"
    );
    api.post(&format!("/api/v1/runs/{third}/cancel"), json!({}))
        .await;
    drop(server);
}
