//! Run overhead: from `queued` to `finished` of a no-op shell workflow
//! (`plan` is `true`: no changes, so no apply) on a tiny repository that
//! the simulated GitLab serves over git smart HTTP, with one embedded
//! worker. Median of 20 runs, each at its own commit; the times are the
//! server's own transition timestamps.
//!
//! The baseline, measured in the same run: what any runner must do for
//! such a run, done directly by this process: `git init`, a shallow
//! `git fetch` of the same commit from the same server with the same
//! token header, `git checkout`, and `sh -c true`. The ratio says what
//! Gantry adds on top (claiming, the GitLab project lookup, the worker's
//! reports, the log).
//!
//! Measured twice in one run, with the bubblewrap sandbox and with
//! `--sandbox none`: the difference is what the sandbox costs a phase.
//!
//! `cargo bench --bench runs` (`RUNS`, default 20).

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use gantry_gitlab_sim::AccessLevel;
use serde_json::{Value, json};

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Checks `commit` out into a fresh directory the way a runner must, and
/// runs the no-op plan.
fn baseline_once(url: &str, token: &str, commit: &str) -> Duration {
    let dir = tempfile::tempdir().expect("dir");
    let header = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("oauth2:{token}"))
    );
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", &header)
            .env("GIT_TERMINAL_PROMPT", "0")
            .status()
            .expect("git");
        assert!(status.success(), "git {args:?}");
    };
    let started = Instant::now();
    git(&["init", "-q"]);
    git(&["remote", "add", "origin", url]);
    git(&["fetch", "-q", "--depth", "1", "--no-tags", "origin", commit]);
    git(&["checkout", "-q", "--detach", "FETCH_HEAD"]);
    let ran = std::process::Command::new("sh")
        .args(["-c", "true"])
        .current_dir(dir.path())
        .status()
        .expect("sh");
    assert!(ran.success());
    started.elapsed()
}

/// Starts a server with `flags`, and times `count` runs of the no-op
/// stack, each at its own commit; the overheads, and the commits with the
/// bench kept alive for the baseline.
async fn measure(
    flags: &[&str],
    count: usize,
) -> (Vec<Duration>, Vec<String>, support::Bench, u64) {
    let mut all = vec!["--embedded-workers", "1"];
    all.extend_from_slice(flags);
    let bench = support::start(&all, "Main", true).await;
    let http = reqwest::Client::new();
    let project = bench
        .sim
        .add_project("infra/tiny", "main")
        .expect("project");
    bench
        .sim
        .add_member(project, bench.user, AccessLevel::Maintainer);
    let mut commits = Vec::new();
    for n in 0..count {
        let (_, sha) = bench
            .sim
            .commit(
                project,
                "main",
                &[("main.tf", Some(&format!("# {n}\n")))],
                "bench",
            )
            .expect("commit");
        commits.push(sha);
    }
    let stack: Value = http
        .post(format!("{}/api/v1/stacks", bench.base))
        .bearer_auth(&bench.admin)
        .json(
            &json!({ "name": "Tiny", "repository": "infra/tiny", "branch": "main",
                       "vendor": { "kind": "shell", "plan": "true", "apply": "true" } }),
        )
        .send()
        .await
        .expect("stack")
        .json()
        .await
        .expect("json");
    assert_eq!(stack["id"], "tiny", "{stack}");
    let store = gantry_store::Store::connect(&format!(
        "sqlite://{}",
        bench.data.join("gantry.db").display()
    ))
    .await
    .expect("open");
    let mut overheads = Vec::new();
    for sha in &commits {
        let run: Value = http
            .post(format!("{}/api/v1/stacks/tiny/runs", bench.base))
            .bearer_auth(&bench.admin)
            .json(&json!({ "kind": "tracked", "commit_sha": sha }))
            .send()
            .await
            .expect("trigger")
            .json()
            .await
            .expect("json");
        let id = run["id"].as_str().expect("id").to_owned();
        loop {
            let shown: Value = http
                .get(format!("{}/api/v1/runs/{id}", bench.base))
                .bearer_auth(&bench.admin)
                .send()
                .await
                .expect("run")
                .json()
                .await
                .expect("json");
            match shown["state"].as_str() {
                Some("finished") => break,
                Some("failed" | "canceled") => panic!("the run did not finish: {shown}"),
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let mut conn = store.conn().await.expect("conn");
        let (first, last): (i64, i64) =
            sqlx::query_as("SELECT MIN(at), MAX(at) FROM run_transitions WHERE run_id = $1")
                .bind(&id)
                .fetch_one(&mut *conn)
                .await
                .expect("transitions");
        overheads.push(Duration::from_millis(
            u64::try_from(last - first).unwrap_or(0),
        ));
    }
    (overheads, commits, bench, project)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (bare, _, bare_bench, _) = measure(&["--sandbox", "none"], count).await;
    drop(bare_bench);
    let (sandboxed, commits, bench, project) = measure(&["--sandbox", "bwrap"], count).await;
    let url = bench.sim.clone_url(project).expect("url");
    let baselines: Vec<Duration> = commits
        .iter()
        .map(|sha| baseline_once(&url, &bench.token, sha))
        .collect();
    let (run, none, base) = (
        median(sandboxed.clone()),
        median(bare.clone()),
        median(baselines.clone()),
    );
    println!("runs: {count} per setting, one embedded worker, SQLite");
    println!(
        "queued -> finished, sandboxed (bwrap): median {:>6.1} ms   (min {:.1}, max {:.1})",
        ms(run),
        ms(*sandboxed.iter().min().expect("min")),
        ms(*sandboxed.iter().max().expect("max")),
    );
    println!(
        "queued -> finished, --sandbox none:    median {:>6.1} ms   (min {:.1}, max {:.1})",
        ms(none),
        ms(*bare.iter().min().expect("min")),
        ms(*bare.iter().max().expect("max")),
    );
    println!(
        "baseline (git checkout + sh -c true): median {:>6.1} ms",
        ms(base)
    );
    println!(
        "ratio sandboxed / none: {:.2}  (the sandbox's cost: {:.1} ms for the run's one phase)",
        run.as_secs_f64() / none.as_secs_f64(),
        ms(run) - ms(none)
    );
    println!(
        "ratio sandboxed run / baseline: {:.2}  (Gantry's own share: {:.1} ms)",
        run.as_secs_f64() / base.as_secs_f64(),
        ms(run) - ms(base)
    );
}
