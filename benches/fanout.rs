//! Fan-out: one push to a repository used by many stacks, half of them
//! affected. Measures the time from the webhook's acknowledgement to all
//! runs queued (the delivery processed), for 1,000 and 10,000 stacks.
//!
//! `cargo bench --bench fanout` (`FANOUT_SIZES`, default `1000,10000`).
//! It starts `gantry serve` on SQLite in a temporary directory, creates the
//! integration through the API against the simulated GitLab, inserts the
//! stacks straight into the database (creating 10,000 through the API
//! would measure GitLab lookups, not fan-out), posts one push, and polls
//! the delivery until it is processed.

mod support;

use std::time::{Duration, Instant};

use gantry_store::stacks;
use gantry_store::{Millis, Store};
use serde_json::{Value, json};

async fn measure(size: usize) -> (Duration, i64) {
    // No workers: the runs are counted while queued.
    let bench = support::start(&["--embedded-workers", "0"], "Main", true).await;
    let (base, data, secret) = (bench.base.clone(), bench.data.clone(), bench.secret.clone());
    let http = reqwest::Client::new();

    let store = Store::connect(&format!("sqlite://{}", data.join("gantry.db").display()))
        .await
        .expect("open");
    let now = Millis::now();
    let mut tx = store.begin().await.expect("tx");
    for i in 0..size {
        let root = if i % 2 == 0 {
            format!("shared/{}/", i % 7)
        } else {
            format!("other-{i}/")
        };
        let stack = gantry_store::testing::stack(
            &format!("stack-{i:05}"),
            "main",
            42,
            "infra/big",
            &root,
            now,
        );
        stacks::insert(&mut tx, &stack).await.expect("stack");
    }
    tx.commit().await.expect("commit");

    let files: Vec<String> = (0..7).map(|n| format!("shared/{n}/main.tf")).collect();
    let payload = json!({
        "object_kind": "push", "project_id": 42, "ref": "refs/heads/main",
        "before": "1111111111111111111111111111111111111111", "after": "2222222222222222222222222222222222222222",
        "project": {"id": 42, "path_with_namespace": "infra/big"},
        "commits": [{"id": "2222222222222222222222222222222222222222", "added": files, "modified": [], "removed": []}],
        "total_commits_count": 1
    });
    let answer: Value = http
        .post(format!("{base}/webhooks/gitlab/main"))
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Token", &secret)
        .body(payload.to_string())
        .send()
        .await
        .expect("webhook")
        .json()
        .await
        .expect("json");
    let acknowledged = Instant::now();
    let delivery = answer["delivery"].as_str().expect("delivery").to_owned();
    loop {
        let (processed,): (Option<i64>,) =
            sqlx::query_as("SELECT processed_at FROM deliveries WHERE id = $1")
                .bind(&delivery)
                .fetch_one(store.pool())
                .await
                .expect("poll");
        if processed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = acknowledged.elapsed();
    let (runs,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM runs WHERE state = 'queued'")
        .fetch_one(store.pool())
        .await
        .expect("count");
    drop(bench);
    (elapsed, runs)
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("FANOUT_SIZES")
        .unwrap_or_else(|_| "1000,10000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut first: Option<(usize, Duration)> = None;
    for size in sizes {
        let (elapsed, runs) = measure(size).await;
        assert_eq!(
            runs as usize,
            size / 2 + size % 2,
            "half the stacks are affected"
        );
        let per_stack = elapsed.as_secs_f64() * 1e6 / size as f64;
        let growth = first.map(|(n, t)| {
            format!(
                "; {:.1}x the time for {:.0}x the stacks",
                elapsed.as_secs_f64() / t.as_secs_f64(),
                size as f64 / n as f64
            )
        });
        println!(
            "{size:>6} stacks: all {runs} runs queued {:.0} ms after the acknowledgement ({per_stack:.0} µs per stack{})",
            elapsed.as_secs_f64() * 1000.0,
            growth.unwrap_or_default()
        );
        first.get_or_insert((size, elapsed));
    }
}
