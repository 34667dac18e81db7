//! `kill -9` during a burst of deliveries: every delivery answered 200 is
//! in the log after the restart and is processed exactly once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_gitlab_sim::Sim;
use serde_json::{Value, json};

use crate::process::{Db, free_port, serve};

fn push(n: usize) -> Vec<u8> {
    json!({
        "object_kind": "push", "project_id": 42, "ref": "refs/heads/main",
        "before": "1111111111111111111111111111111111111111", "after": format!("{n:040x}"),
        "project": {"id": 42, "path_with_namespace": "infra/network"},
        "commits": [], "total_commits_count": 0
    })
    .to_string()
    .into_bytes()
}

/// `count` senders post unique push deliveries to `urls` in turn until a
/// server stops answering 200; the ids of those acknowledged go into
/// `acknowledged`.
pub(crate) fn burst(
    count: usize,
    urls: Vec<String>,
    secret: String,
    acknowledged: Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::new();
    (0..count)
        .map(|sender| {
            let (http, urls, secret, acknowledged) = (
                http.clone(),
                urls.clone(),
                secret.clone(),
                acknowledged.clone(),
            );
            tokio::spawn(async move {
                for i in 0.. {
                    let n = sender * 1_000_000 + i;
                    let answer = http
                        .post(&urls[i % urls.len()])
                        .header("Content-Type", "application/json")
                        .header("X-Gitlab-Event", "Push Hook")
                        .header("X-Gitlab-Token", &secret)
                        .header("Idempotency-Key", format!("key-{n}"))
                        .body(push(n))
                        .send()
                        .await;
                    let Ok(response) = answer else { return };
                    if response.status() != 200 {
                        return;
                    }
                    let Ok(body) = response.json::<Value>().await else {
                        return;
                    };
                    if let Some(id) = body["delivery"].as_str() {
                        acknowledged.lock().expect("lock").push(id.to_owned());
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_deliveries_survive_kill_9_and_are_processed_once_on_sqlite() {
    acknowledged_deliveries_survive_kill_9(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_deliveries_survive_kill_9_and_are_processed_once_on_postgres() {
    if let Some(db) = Db::postgres().await {
        acknowledged_deliveries_survive_kill_9(db).await;
    }
}

async fn acknowledged_deliveries_survive_kill_9(db: Db) {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let port = free_port();
    let mut flags = vec!["--lease-seconds", "3"];
    flags.extend(db.flags());
    let mut server = serve(&data, port, &flags).await;
    let admin = std::fs::read_to_string(data.join("initial-admin-token")).expect("token");
    let admin = admin.trim().to_owned();
    let sim = Sim::start().await.expect("sim");
    let bot = sim.add_bot("bot");
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/api/v1/integrations/gitlab", server.base))
        .bearer_auth(&admin)
        .json(&sim.integration_body(&bot, "Main", false))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let secret = created["webhook_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let url = format!("{}/webhooks/gitlab/main", server.base);

    // Eight senders post until the server dies under them.
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let senders = burst(8, vec![url], secret, acknowledged.clone());
    while acknowledged.lock().expect("lock").len() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.start_kill().expect("kill -9");
    server.child.wait().await.expect("dead");
    for sender in senders {
        sender.await.expect("sender");
    }
    let acknowledged: HashSet<String> =
        acknowledged.lock().expect("lock").iter().cloned().collect();
    assert!(acknowledged.len() >= 300);

    let server = serve(&data, port, &flags).await;
    let store = db.open(&data).await;
    // Wait for the inbox (and the reaper, for jobs leased at the kill).
    let mut rows: Vec<(String, String, Option<i64>, i64)> = Vec::new();
    for _ in 0..3000 {
        rows = sqlx::query_as("SELECT id, status, processed_at, times_processed FROM deliveries")
            .fetch_all(store.pool())
            .await
            .expect("rows");
        if rows.iter().all(|(_, _, processed, _)| processed.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored: HashSet<&String> = rows.iter().map(|(id, ..)| id).collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged delivery {id} was lost");
    }
    for (id, status, processed, times) in &rows {
        assert_eq!(status, "accepted", "{id}");
        assert!(processed.is_some(), "{id} was never processed");
        assert_eq!(*times, 1, "{id} was processed {times} times");
    }
    let (pending,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM jobs WHERE kind = 'process_delivery' AND state <> 'done'",
    )
    .fetch_one(store.pool())
    .await
    .expect("jobs");
    assert_eq!(pending, 0);
    drop(server);
}
