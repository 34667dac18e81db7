//! Webhook acknowledgement throughput and latency, against a no-op
//! endpoint of the same server in the same run.
//!
//! `cargo bench --bench webhooks` (set `BENCH_SECONDS`, default 10, and
//! `BENCH_CONNECTIONS`, default 32). It starts `gantry serve` on SQLite in a
//! temporary directory, then for the same time and with the same number of
//! concurrent connections sends (1) `GET /healthz`, the no-op baseline, and
//! (2) real push payloads (`push-goscm-single-commit` from the corpus, made
//! unique per request) with random UUIDs as `Idempotency-Key`s, as GitLab
//! sends, to the webhook endpoint. It prints deliveries per second and
//! p50/p99 acknowledgement latency of both, their ratio, and checks that
//! every acknowledged delivery is in the database. Last, with the server
//! stopped, (3) the same deliveries go into the inbox of a store opened in
//! the bench: the store alone, the ceiling of what the endpoint could
//! acknowledge. Before the measured phase the server is
//! warmed up (`WARM_UP` of the same deliveries, processed; on PostgreSQL
//! then `ANALYZE`, as autovacuum does in a server's first minute), so the
//! figures are those of a server that has been running.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gantry_store::deliveries::{NewDelivery, Status, Verdict};
use serde_json::{Value, json};

/// How long deliveries are sent before the measured phase.
const WARM_UP: Duration = Duration::from_secs(2);

/// Where each request's unique commit goes in the payload.
const COMMIT_MARK: &str = "@@commit@@";

struct Phase {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
        sorted.get(index).copied().unwrap_or_default()
    }
}

async fn load<F, Fut>(connections: usize, duration: Duration, request: F) -> Phase
where
    F: Fn(reqwest::Client, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let counter = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (request, counter) = (request.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            // One client per task: one keep-alive connection each.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                assert!(request(http.clone(), n).await, "request {n} failed");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    Phase {
        requests: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

fn report(name: &str, phase: &Phase) {
    println!(
        "  {name:<10} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests)",
        phase.per_second(),
        phase.percentile(0.50).as_secs_f64() * 1000.0,
        phase.percentile(0.99).as_secs_f64() * 1000.0,
        phase.requests
    );
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let connections: usize = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let corpus = gantry_gitlab_sim::corpus_dir().expect("the GitLab corpus (GANTRY_GITLAB_CORPUS)");
    let template: Value = serde_json::from_slice(
        &std::fs::read(corpus.join("webhooks/push-goscm-single-commit.json")).expect("payload"),
    )
    .expect("json");
    let duration = Duration::from_secs(seconds);
    println!("{connections} connections, {seconds} s per phase");
    measure(
        "SQLite (WAL, the log synced before each answer)",
        None,
        &template,
        connections,
        duration,
    )
    .await;
    match gantry_store::testing::postgres_url().await {
        Some(url) => measure("PostgreSQL", Some(url), &template, connections, duration).await,
        None => println!("PostgreSQL: skipped, no throwaway cluster could be started"),
    }
}

async fn measure(
    label: &str,
    database: Option<String>,
    template: &Value,
    connections: usize,
    duration: Duration,
) {
    let flags: Vec<&str> = match &database {
        Some(url) => vec!["--database-url", url],
        None => Vec::new(),
    };
    let mut bench = support::start(&flags, "Bench", false).await;
    let (base, data, secret) = (bench.base.clone(), bench.data.clone(), bench.secret.clone());
    println!("{label}:");

    let healthz = format!("{base}/healthz");
    let baseline = load(connections, duration, move |http, _| {
        let url = healthz.clone();
        async move {
            http.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    report("no-op", &baseline);

    let url = format!("{base}/webhooks/gitlab/bench");
    let accepted = Arc::new(AtomicUsize::new(0));
    // Serialised once; each request only puts its own commit in, so the
    // load generator spends little of the machine's two cores.
    let mut marked = template.clone();
    marked["after"] = json!(COMMIT_MARK);
    marked["checkout_sha"] = json!(COMMIT_MARK);
    let template = marked.to_string();
    // Request `n` of a phase whose first request is `first`: a body and
    // an `Idempotency-Key` of its own.
    let webhooks = |first: usize| {
        let (url, secret, template, counted) = (
            url.clone(),
            secret.clone(),
            template.clone(),
            accepted.clone(),
        );
        move |http: reqwest::Client, n: usize| {
            let n = first + n;
            let payload = template.replace(COMMIT_MARK, &format!("{n:040x}"));
            let (url, secret, counted) = (url.clone(), secret.clone(), counted.clone());
            async move {
                let Ok(response) = http
                    .post(url)
                    .header("Content-Type", "application/json")
                    .header("X-Gitlab-Event", "Push Hook")
                    .header("X-Gitlab-Token", secret)
                    .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                    .body(payload)
                    .send()
                    .await
                else {
                    return false;
                };
                let ok = response.status().is_success();
                if ok
                    && response
                        .json::<Value>()
                        .await
                        .is_ok_and(|a| a["status"] == "accepted")
                {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                ok
            }
        }
    };

    let url = database.unwrap_or_else(|| format!("sqlite://{}", data.join("gantry.db").display()));
    let store = gantry_store::Store::connect(&url).await.expect("open");
    let count = async |sql: &str| -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql)
            .fetch_one(store.pool())
            .await
            .expect("count");
        n
    };
    let pending =
        "SELECT COUNT(*) FROM deliveries WHERE status = 'accepted' AND processed_at IS NULL";

    // A server that has been running: its tables hold deliveries, and on
    // PostgreSQL they have statistics (autovacuum analyzes a table within
    // a minute of its first thousand rows). Without them the planner
    // takes the deliveries table for a few rows and looks duplicates up
    // by scanning the integration's every delivery.
    let warm_up = load(connections, WARM_UP, webhooks(1 << 40)).await;
    // Until every acknowledged delivery has its outcome.
    let processed = async || {
        while count(pending).await > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    processed().await;
    let postgres = store.backend() == gantry_store::Backend::Postgres;
    if postgres {
        sqlx::query("ANALYZE")
            .execute(store.pool())
            .await
            .expect("analyze");
    }
    println!(
        "  warm-up    {} deliveries, processed{}",
        warm_up.requests,
        if postgres { ", then ANALYZE" } else { "" }
    );

    let before = count("SELECT COUNT(*) FROM deliveries WHERE status = 'accepted'").await;
    let started = Instant::now();
    let webhooks = load(connections, duration, webhooks(0)).await;
    report("webhooks", &webhooks);
    println!(
        "  ratio      {:.2} of the no-op throughput; p99 {:.1}x the no-op's",
        webhooks.per_second() / baseline.per_second(),
        webhooks.percentile(0.99).as_secs_f64() / baseline.percentile(0.99).as_secs_f64()
    );

    let stored = count("SELECT COUNT(*) FROM deliveries WHERE status = 'accepted'").await;
    let acknowledged = accepted.load(Ordering::Relaxed);
    assert_eq!(
        stored as usize, acknowledged,
        "every acknowledged delivery is stored"
    );
    println!("  durable    {stored} of {acknowledged} acknowledged deliveries are in the database");
    let backlog = count(pending).await;
    processed().await;
    let processing = started.elapsed();
    let burst = stored - before;
    println!(
        "  processing {:.0} deliveries/s: all {burst} processed {:.2} s after the burst began ({backlog} left when it ended)",
        burst as f64 / processing.as_secs_f64(),
        processing.as_secs_f64()
    );

    // The most the endpoint could acknowledge here: the same deliveries
    // put into the inbox of a store opened in this process, with the
    // server stopped (no HTTP, no processing, nothing else writing).
    bench.stop().await;
    let (integration,): (String,) =
        sqlx::query_as("SELECT id FROM integrations WHERE name = 'Bench'")
            .fetch_one(store.pool())
            .await
            .expect("integration");
    let inbox = gantry_store::deliveries::Inbox::spawn(store.clone());
    let alone = load(connections, duration, move |_, n| {
        let new = NewDelivery {
            integration_id: integration.clone(),
            event: "Push Hook".into(),
            verdict: Verdict::Supported,
            body: template
                .replace(COMMIT_MARK, &format!("{:040x}", (1 << 41) + n))
                .into_bytes(),
            idempotency_key: Some(uuid::Uuid::new_v4().to_string()),
            event_uuid: None,
            webhook_uuid: None,
            instance: None,
            user_agent: None,
            received_at: gantry_store::Millis::now(),
        };
        let inbox = inbox.clone();
        async move {
            inbox
                .receive(new)
                .await
                .is_ok_and(|(_, status)| status == Status::Accepted)
        }
    })
    .await;
    report("store only", &alone);
    println!(
        "  ceiling    the store alone takes {:.2} of the no-op throughput; the endpoint reaches {:.2} of it",
        alone.per_second() / baseline.per_second(),
        webhooks.per_second() / alone.per_second()
    );
}
