//! Fan-out: one push to a repository used by many stacks, half of them
//! affected. Measures the time from the webhook's acknowledgement to all
//! runs queued (the delivery processed), for 1,000 and 10,000 stacks,
//! beside a bare baseline measured in the same run on the same database:
//! the store inserting the same runs, transitions and outbox rows in one
//! transaction, one statement per row, with nothing decided.
//!
//! `cargo bench --bench fanout` (`FANOUT_SIZES`, default `1000,10000`).
//! It starts `gantry serve` on SQLite in a temporary directory (and then
//! on PostgreSQL, when a throwaway cluster can be started), creates the
//! integration through the API against the simulated GitLab, inserts the
//! stacks straight into the database (creating 10,000 through the API
//! would measure GitLab lookups, not fan-out), measures the baseline,
//! posts one push, and polls the delivery until it is processed.

mod support;

use std::time::{Duration, Instant};

use gantry_store::stacks;
use gantry_store::{Millis, Store};
use serde_json::{Value, json};

struct Measured {
    fanout: Duration,
    baseline: Duration,
    runs: i64,
}

/// What the push's processing must write, written as plainly as can be.
async fn baseline(store: &Store, size: usize) -> Duration {
    let now = Millis::now().0;
    let started = Instant::now();
    let mut tx = store.begin().await.expect("tx");
    for i in (0..size).step_by(2) {
        let id = uuid::Uuid::now_v7().to_string();
        let stack = format!("stack-{i:05}");
        sqlx::query(
            "INSERT INTO runs (id, stack_id, kind, state, commit_sha, branch, trigger, created_at, updated_at) \
             VALUES ($1, $2, 'tracked', 'queued', '3333333333333333333333333333333333333333', 'main', 'push by bench', $3, $3)",
        )
        .bind(&id)
        .bind(&stack)
        .bind(now)
        .execute(&mut *tx)
        .await
        .expect("run");
        sqlx::query(
            "INSERT INTO run_transitions (run_id, seq, state, at, cause) VALUES ($1, 0, 'queued', $2, 'push by bench')",
        )
        .bind(&id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .expect("transition");
        // Written as already superseded, so the server's outbox leaves it.
        sqlx::query(
            "INSERT INTO outbox (integration_id, project_id, key, kind, run_id, state, status, next_attempt_at, created_at) \
             VALUES ('main', 42, $1, 'status', $2, 'queued', 'superseded', $3, $3)",
        )
        .bind(format!("status:42:3333333333333333333333333333333333333333:main:{stack}"))
        .bind(&id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .expect("outbox");
    }
    tx.commit().await.expect("commit");
    started.elapsed()
}

async fn measure(size: usize, database: Option<&str>) -> Measured {
    // No workers: the runs are counted while queued.
    let mut flags = vec!["--embedded-workers", "0"];
    if let Some(url) = database {
        flags.extend(["--database-url", url]);
    }
    let bench = support::start(&flags, "Main", true).await;
    let (base, data, secret) = (bench.base.clone(), bench.data.clone(), bench.secret.clone());
    let http = reqwest::Client::new();

    let url = database.map_or_else(
        || format!("sqlite://{}", data.join("gantry.db").display()),
        str::to_owned,
    );
    let store = Store::connect(&url).await.expect("open");
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
    let baseline = baseline(&store, size).await;

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
    let fanout = acknowledged.elapsed();
    let (runs,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM runs WHERE state = 'queued' AND commit_sha = '2222222222222222222222222222222222222222'",
    )
    .fetch_one(store.pool())
    .await
    .expect("count");
    drop(bench);
    Measured {
        fanout,
        baseline,
        runs,
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn report(label: &str, sizes: &[usize], database: impl AsyncFn() -> Option<String>) {
    println!("{label}:");
    let mut first: Option<(usize, Duration)> = None;
    for &size in sizes {
        let url = database().await;
        let measured = measure(size, url.as_deref()).await;
        assert_eq!(
            measured.runs as usize,
            size / 2 + size % 2,
            "half the stacks are affected"
        );
        let growth = first.map(|(n, t)| {
            format!(
                "; {:.1}x the time for {:.0}x the stacks",
                measured.fanout.as_secs_f64() / t.as_secs_f64(),
                size as f64 / n as f64
            )
        });
        println!(
            "  {size:>6} stacks: {} runs queued {:.0} ms after the acknowledgement; bare baseline {:.0} ms; ratio {:.2}{}",
            measured.runs,
            ms(measured.fanout),
            ms(measured.baseline),
            measured.fanout.as_secs_f64() / measured.baseline.as_secs_f64(),
            growth.unwrap_or_default()
        );
        first.get_or_insert((size, measured.fanout));
    }
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("FANOUT_SIZES")
        .unwrap_or_else(|_| "1000,10000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    report("SQLite", &sizes, async || None).await;
    if gantry_store::testing::postgres_url().await.is_some() {
        report("PostgreSQL", &sizes, async || {
            gantry_store::testing::postgres_url().await
        })
        .await;
    } else {
        println!("PostgreSQL: skipped, no throwaway cluster could be started");
    }
}
