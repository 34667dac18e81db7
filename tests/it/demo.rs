//! `gantry demo` as a user runs it: the whole scenario (webhooks from the
//! simulated GitLab, runs, statuses, the comment and the deployments) in
//! the order the timeline promises; a tour that cannot complete exits 1
//! and says what it waited for; `--keep` leaves a server to explore.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::process::terminate;

fn demo(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"));
    command
        .arg("demo")
        .args(args)
        .env_remove("GANTRY_LOG")
        .env_remove("GANTRY_URL")
        .env_remove("GANTRY_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// The index of the first line after `from` that contains every one of
/// `parts`.
fn after(lines: &[&str], from: usize, parts: &[&str]) -> usize {
    lines[from..]
        .iter()
        .position(|line| parts.iter().all(|part| line.contains(part)))
        .map(|at| from + at)
        .unwrap_or_else(|| {
            panic!(
                "no line with {parts:?} after line {from}:\n{}",
                lines.join("\n")
            )
        })
}

/// Asserts that lines with these parts come in this order.
fn in_order(lines: &[&str], steps: &[&[&str]]) {
    let mut at = 0;
    for parts in steps {
        at = after(lines, at, parts) + 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_the_whole_flow_in_order() {
    let output = tokio::time::timeout(Duration::from_secs(120), demo(&[]).output())
        .await
        .expect("the demo ends")
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();

    // Set-up through the API, then GitLab's webhooks.
    in_order(
        &lines,
        &[
            &["gitlab", "simulated GitLab at http://127.0.0.1:"],
            &["gantry", "server at http://127.0.0.1:"],
            &["integration demo-gitlab created", "@gantry-bot"],
            &["stack network created", "waits for confirmation"],
            &["stack dns created", "applies without confirmation"],
            &["project hook added", "/webhooks/gitlab/demo-gitlab"],
            &["webhook", "Push Hook (main", "200 accepted"],
            &["webhook", "Push Hook (bigger-subnets", "200 accepted"],
            &["webhook", "Merge Request Hook (!1 opened)", "200 accepted"],
        ],
    );
    after(
        &lines,
        0,
        &[
            "Push Hook accepted: push to main",
            "tracked run",
            "for dns",
            "for network",
        ],
    );
    after(&lines, 0, &["Merge Request Hook accepted"]);
    // Each run's transitions, in order; only the network's tracked plan
    // waits for the confirmation.
    in_order(
        &lines,
        &[
            &["network tracked run: queued"],
            &["network tracked run: planning"],
            &["network tracked run: unconfirmed (3 to add, 0 to change, 0 to destroy)"],
            &["you", "confirmed the plan of the network tracked run"],
            &["network tracked run: applying"],
            &["network tracked run: finished"],
        ],
    );
    in_order(
        &lines,
        &[
            &["dns tracked run: queued"],
            &["dns tracked run: planning"],
            &["dns tracked run: applying"],
            &["dns tracked run: finished"],
        ],
    );
    in_order(
        &lines,
        &[
            &["network proposed run: queued"],
            &["network proposed run: planning"],
            &["network proposed run: finished"],
        ],
    );
    for never in [
        "dns tracked run: unconfirmed",
        "proposed run: applying",
        "dns proposed run",
    ] {
        assert!(!stdout.contains(never), "{never}:\n{stdout}");
    }
    // What GitLab got: each status ends in success, one comment created
    // then edited to finished, two deployments that succeeded.
    let statuses: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("commit status gantry/"))
        .collect();
    for stack in ["gantry/network", "gantry/dns"] {
        let last = statuses
            .iter()
            .rev()
            .find(|l| l.contains(stack))
            .unwrap_or_else(|| panic!("no status of {stack}:\n{stdout}"));
        assert!(last.ends_with(": success"), "{last}");
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("comment on !1 created"))
            .count(),
        1,
        "{stdout}"
    );
    // Later states of the comment edit it; a quick run may be written
    // once, already finished.
    let last_comment = lines
        .iter()
        .rev()
        .find(|l| l.contains("comment on !1"))
        .expect("a comment");
    assert!(
        last_comment.ends_with("the network proposed run is finished"),
        "{last_comment}"
    );
    after(&lines, 0, &["deployment to gantry/network", ": success"]);
    after(&lines, 0, &["deployment to gantry/dns", ": success"]);
    let done = lines.last().expect("lines");
    assert!(
        done.contains("done") && done.contains("3 runs finished"),
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tour_that_cannot_complete_exits_1_and_says_what_it_waited_for() {
    let output = demo(&["--timeout-seconds", "0"])
        .output()
        .await
        .expect("the demo runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: the tour did not complete within 0 s: still waiting for"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_leaves_a_server_to_explore_until_sigterm() {
    let mut child = demo(&["--keep"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the demo starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut url, mut key) = (None, None);
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(rest) = line.trim().strip_prefix("Gantry server:") {
                url = Some(rest.trim().to_owned());
            }
            if let Some(rest) = line.trim().strip_prefix("admin API key:") {
                key = Some(rest.trim().to_owned());
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the demo prints how to reach it");
    let (url, key) = (url.expect("url"), key.expect("key"));
    let stacks = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["stack", "list"])
        .env("GANTRY_URL", &url)
        .env("GANTRY_TOKEN", &key)
        .output()
        .await
        .expect("gantry stack list");
    let table = String::from_utf8_lossy(&stacks.stdout);
    assert!(stacks.status.success(), "{table}");
    assert!(
        table.contains("network") && table.contains("dns"),
        "{table}"
    );
    let status = terminate(&mut child).await;
    assert!(status.success(), "{status}");
}
