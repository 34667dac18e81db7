//! The cost of a VCS agent: the same GitLab work (the token check of an
//! integration `PATCH` with its `api_token`, a few GitLab API calls) on
//! an integration that dials GitLab directly and on one whose
//! `user_facing_host_url` is `private://<pool>`, carried by a `gantry
//! vcs-agent` process on this machine. Alternating, in one run, on
//! `gantry serve` (release) with SQLite; medians, their ratio, and the
//! overhead per GitLab call.
//!
//! `cargo bench --bench agent` (`ROUNDS`, default 200).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let bench = support::start(&["--embedded-workers", "0"], "Direct", true).await;
    let http = reqwest::Client::new();
    let pool: Value = http
        .post(format!("{}/api/v1/vcs-agent-pools", bench.base))
        .bearer_auth(&bench.admin)
        .json(&json!({ "name": "Bench" }))
        .send()
        .await
        .expect("pool")
        .json()
        .await
        .expect("json");
    let _agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "vcs-agent",
            "--server",
            &bench.base,
            "--target",
            bench.sim.url(),
        ])
        .env(
            "GANTRY_VCS_AGENT_TOKEN",
            pool["token"].as_str().expect("token"),
        )
        .env("GANTRY_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("gantry vcs-agent");
    let connected = Instant::now();
    loop {
        let shown: Value = http
            .get(format!("{}/api/v1/vcs-agent-pools/bench", bench.base))
            .bearer_auth(&bench.admin)
            .send()
            .await
            .expect("pool")
            .json()
            .await
            .expect("json");
        if shown["agents"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            connected.elapsed() < Duration::from_secs(30),
            "the agent never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let created = http
        .post(format!("{}/api/v1/integrations/gitlab", bench.base))
        .bearer_auth(&bench.admin)
        .json(&json!({ "name": "Private", "api_host_url": bench.sim.url(),
                       "user_facing_host_url": "private://bench", "api_token": bench.token }))
        .send()
        .await
        .expect("create");
    assert!(
        created.status().is_success(),
        "{}",
        created.text().await.unwrap_or_default()
    );

    let patch = async |integration: &str| {
        let started = Instant::now();
        let answer = http
            .patch(format!(
                "{}/api/v1/integrations/gitlab/{integration}",
                bench.base
            ))
            .bearer_auth(&bench.admin)
            .json(&json!({ "api_token": bench.token }))
            .send()
            .await
            .expect("patch");
        assert!(answer.status().is_success(), "{}", answer.status());
        started.elapsed()
    };
    for _ in 0..20 {
        patch("direct").await;
        patch("private").await;
    }
    let before = bench.sim.requests().len();
    patch("direct").await;
    let calls = bench.sim.requests().len() - before;
    let (mut direct, mut private) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.push(patch("direct").await);
        private.push(patch("private").await);
    }
    let (direct, private) = (median(&mut direct), median(&mut private));
    let per_call = private.saturating_sub(direct) / u32::try_from(calls.max(1)).unwrap_or(1);
    println!(
        "token check of an integration PATCH ({calls} GitLab calls), {rounds} rounds each, medians:"
    );
    println!("  direct:           {:>8.2} ms", direct.as_secs_f64() * 1e3);
    println!(
        "  through an agent: {:>8.2} ms",
        private.as_secs_f64() * 1e3
    );
    println!(
        "  ratio {:.2}; overhead per GitLab call {:.3} ms",
        private.as_secs_f64() / direct.as_secs_f64(),
        per_call.as_secs_f64() * 1e3
    );
}
