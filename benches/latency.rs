//! From a push to GitLab hearing about it: the time from posting a push
//! webhook to its acknowledgement, beside the time until the run's first
//! commit status (`pending`) reaches the simulated GitLab, over the same
//! pushes, one after another, on `gantry serve` (release) with SQLite,
//! then with PostgreSQL (a throwaway cluster).
//! The outbox wakes on the commit that records a write, so the status
//! follows within a few acknowledgement times.
//!
//! `cargo bench --bench latency` (`PUSHES`, default 200).

mod support;

use std::time::{Duration, Instant};

use gantry_gitlab_sim::AccessLevel;
use serde_json::json;

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[index]
}

#[tokio::main]
async fn main() {
    let pushes: usize = std::env::var("PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!("{pushes} pushes, one after another:");
    measure("SQLite", &[], pushes).await;
    match gantry_store::testing::postgres_url().await {
        Some(url) => measure("PostgreSQL", &["--database-url", &url], pushes).await,
        None => println!("PostgreSQL: skipped, no throwaway cluster could be started"),
    }
}

async fn measure(label: &str, flags: &[&str], pushes: usize) {
    let mut flags = flags.to_vec();
    flags.extend(["--embedded-workers", "0"]);
    let bench = support::start(&flags, "Main", true).await;
    let sim = &bench.sim;
    let project = sim.add_project("infra/net", "main").expect("project");
    sim.add_member(project, bench.user, AccessLevel::Maintainer);
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/api/v1/stacks", bench.base))
        .bearer_auth(&bench.admin)
        .json(
            &json!({ "name": "Net", "repository": "infra/net", "branch": "main",
                       "vendor": { "kind": "shell", "plan": "true", "apply": "true" } }),
        )
        .send()
        .await
        .expect("stack");
    assert!(
        created.status().is_success(),
        "{}",
        created.text().await.unwrap_or_default()
    );
    // Gantry adds the project's hook itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.hooks(project).is_empty() {
        assert!(Instant::now() < deadline, "no hook was made");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (mut acks, mut firsts) = (Vec::new(), Vec::new());
    for n in 0..pushes {
        let (before, after) = sim
            .commit(
                project,
                "main",
                &[("main.tf", Some(&format!("v{n}")))],
                "change",
            )
            .expect("commit");
        let payload = sim
            .push_payload(project, "main", &before, &after)
            .expect("payload");
        let started = Instant::now();
        let answers = sim.deliver(project, "Push Hook", &payload).await;
        let ack = started.elapsed();
        assert_eq!(answers[0].status, 200, "{}", answers[0].body);
        loop {
            if !sim.status_history(project, &after, "gantry/net").is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no status for push {n}"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        acks.push(ack);
        firsts.push(started.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (ack50, ack99) = (percentile(&mut acks, 0.5), percentile(&mut acks, 0.99));
    let (first50, first99) = (percentile(&mut firsts, 0.5), percentile(&mut firsts, 0.99));
    println!("{label}:");
    println!(
        "  webhook acknowledged:       p50 {:7.2} ms   p99 {:7.2} ms",
        ms(ack50),
        ms(ack99)
    );
    println!(
        "  first status at GitLab:     p50 {:7.2} ms   p99 {:7.2} ms",
        ms(first50),
        ms(first99)
    );
    println!(
        "  ratio (p50):                {:.2} (goal: at most 10)",
        first50.as_secs_f64() / ack50.as_secs_f64()
    );
}
