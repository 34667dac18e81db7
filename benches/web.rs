//! Web UI pages stay fast as data grows: the stack page of a stack with
//! 10,000 runs against one with 10 (it shows a page of the newest runs),
//! and the run page of a run with a 10 MiB log against one with a 1 KiB
//! log (it shows the log's end and streams the rest). Each pair is
//! measured in the same run, requests alternating, on `gantry serve`
//! (release) with SQLite; runs and logs are inserted straight into the
//! database. Reports the median time to the last byte of each page and
//! the ratio.
//!
//! `cargo bench --bench web` (`WEB_REQUESTS`, default 200 per page).

mod support;

use std::time::{Duration, Instant};

use gantry_store::{Millis, Store, stacks};

/// Inserts `count` finished runs of `stack`, each with one transition.
async fn runs(store: &Store, stack: &str, count: usize) -> Vec<String> {
    let now = Millis::now().0;
    let mut ids = Vec::with_capacity(count);
    let mut tx = store.begin().await.expect("tx");
    for n in 0..count {
        let id = format!("{stack}-run-{n:05}");
        let at = now - (count - n) as i64 * 1000;
        sqlx::query(
            "INSERT INTO runs (id, stack_id, kind, state, commit_sha, branch, trigger, created_at, updated_at) \
             VALUES ($1, $2, 'tracked', 'finished', $3, 'main', 'api-key:bench', $4, $4)",
        )
        .bind(&id)
        .bind(stack)
        .bind(format!("{n:040x}"))
        .bind(at)
        .execute(&mut *tx)
        .await
        .expect("run");
        sqlx::query("INSERT INTO run_transitions (run_id, seq, state, at, cause) VALUES ($1, 0, 'finished', $2, 'bench')")
            .bind(&id)
            .bind(at)
            .execute(&mut *tx)
            .await
            .expect("transition");
        ids.push(id);
    }
    tx.commit().await.expect("commit");
    ids
}

/// Gives `run` a log of `bytes` in chunks of up to 64 KiB, as workers
/// store it.
async fn log(store: &Store, run: &str, bytes: usize) {
    let line = "module.network.aws_subnet.private[3]: Still creating... [10s elapsed]\n";
    let text = line.repeat(bytes / line.len() + 1);
    let mut tx = store.begin().await.expect("tx");
    for (seq, chunk) in text.as_bytes()[..bytes].chunks(64 * 1024).enumerate() {
        sqlx::query("INSERT INTO run_logs (run_id, seq, at, chunk) VALUES ($1, $2, 0, $3)")
            .bind(run)
            .bind(seq as i64)
            .bind(String::from_utf8_lossy(chunk).into_owned())
            .execute(&mut *tx)
            .await
            .expect("chunk");
    }
    tx.commit().await.expect("commit");
}

/// Signs in through the form; the `Cookie` header of the session.
async fn session(base: &str, key: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let form = http
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login");
    let cookie = form
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("login cookie")
        .to_owned();
    let body = form.text().await.expect("body");
    let marker = "name=\"login_csrf\" value=\"";
    let start = body.find(marker).expect("token") + marker.len();
    let token = body[start..].split('"').next().expect("token");
    let signed_in = http
        .post(format!("{base}/login"))
        .header("cookie", cookie)
        .form(&[("api_key", key), ("next", "/"), ("login_csrf", token)])
        .send()
        .await
        .expect("sign in");
    signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gantry_session="))
        .and_then(|v| v.split(';').next())
        .expect("session")
        .to_owned()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Fetches `small` and `large` alternately `requests` times each; their
/// median times and the largest body of each.
async fn compare(
    http: &reqwest::Client,
    cookie: &str,
    small: &str,
    large: &str,
    requests: usize,
) -> ((Duration, usize), (Duration, usize)) {
    let mut times = [Vec::new(), Vec::new()];
    let mut sizes = [0, 0];
    for _ in 0..requests {
        for (which, url) in [small, large].into_iter().enumerate() {
            let started = Instant::now();
            let response = http
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .expect("page");
            assert_eq!(response.status(), 200, "{url}");
            let body = response.bytes().await.expect("body");
            times[which].push(started.elapsed());
            sizes[which] = sizes[which].max(body.len());
        }
    }
    let [a, b] = times;
    ((median(a), sizes[0]), (median(b), sizes[1]))
}

#[tokio::main]
async fn main() {
    let requests: usize = std::env::var("WEB_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let bench = support::start(&["--embedded-workers", "0"], "Main", true).await;
    let store = Store::connect(&format!(
        "sqlite://{}",
        bench.data.join("gantry.db").display()
    ))
    .await
    .expect("open");
    let now = Millis::now();
    let mut tx = store.begin().await.expect("tx");
    for id in ["few", "many"] {
        let stack = gantry_store::testing::stack(id, "main", 42, "infra/network", "", now);
        stacks::insert(&mut tx, &stack).await.expect("stack");
    }
    tx.commit().await.expect("commit");
    let few = runs(&store, "few", 10).await;
    runs(&store, "many", 10_000).await;
    log(&store, &few[0], 1024).await;
    log(&store, &few[1], 10 * 1024 * 1024).await;

    let cookie = session(&bench.base, &bench.admin).await;
    let http = reqwest::Client::new();
    let base = &bench.base;
    // Warm the server and the database's page cache.
    compare(
        &http,
        &cookie,
        &format!("{base}/stacks/few"),
        &format!("{base}/stacks/many"),
        10,
    )
    .await;
    let ((ten, ten_size), (many, many_size)) = compare(
        &http,
        &cookie,
        &format!("{base}/stacks/few"),
        &format!("{base}/stacks/many"),
        requests,
    )
    .await;
    let small_log = format!("{base}/runs/{}", few[0]);
    let large_log = format!("{base}/runs/{}", few[1]);
    compare(&http, &cookie, &small_log, &large_log, 10).await;
    let ((kib, kib_size), (mib, mib_size)) =
        compare(&http, &cookie, &small_log, &large_log, requests).await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("web pages, median of {requests} requests each, alternating:");
    println!(
        "  stack page, 10 runs:        {:7.2} ms ({ten_size} bytes)",
        ms(ten)
    );
    println!(
        "  stack page, 10,000 runs:    {:7.2} ms ({many_size} bytes)   ratio {:.2} (goal: at most 2)",
        ms(many),
        many.as_secs_f64() / ten.as_secs_f64()
    );
    println!(
        "  run page, 1 KiB log:        {:7.2} ms ({kib_size} bytes)",
        ms(kib)
    );
    println!(
        "  run page, 10 MiB log:       {:7.2} ms ({mib_size} bytes)   ratio {:.2} (goal: at most 2)",
        ms(mib),
        mib.as_secs_f64() / kib.as_secs_f64()
    );
}
