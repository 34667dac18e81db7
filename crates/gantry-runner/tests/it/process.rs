//! Phases as processes: only the given environment, redacted output,
//! and the whole process group ended on cancel and on both timeouts.

use std::time::{Duration, Instant};

use gantry_runner::process::{Ended, Limits, Script, run};
use gantry_runner::redact::Redactor;
use gantry_runner::sandbox::{Mode, Sandbox};
use tokio::sync::watch;

fn limits(run_for: Duration, no_output: Duration) -> Limits {
    Limits {
        deadline: Instant::now() + run_for,
        no_output,
        grace: Duration::from_millis(500),
    }
}

async fn phase(
    script: &str,
    env: &[(&str, &str)],
    limits: Limits,
    secrets: &[&str],
    cancel_after: Option<Duration>,
) -> (Ended, String) {
    let dir = tempfile::tempdir().expect("dir");
    phase_in(dir.path(), script, env, limits, secrets, cancel_after).await
}

/// [`phase`] in the workspace `dir`.
async fn phase_in(
    dir: &std::path::Path,
    script: &str,
    env: &[(&str, &str)],
    limits: Limits,
    secrets: &[&str],
    cancel_after: Option<Duration>,
) -> (Ended, String) {
    // Every phase runs in the real sandbox, as workers run it.
    let sandbox = Sandbox::open(Mode::Bwrap).await.expect("bwrap");
    sandbox.hand_over(dir).expect("hand over");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let (cancel_tx, mut cancel) = watch::channel(false);
    // Held open until the phase ends: a dropped sender cancels.
    let _open = match cancel_after {
        Some(after) => {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = cancel_tx.send(true);
            });
            None
        }
        None => Some(cancel_tx),
    };
    let mut redactor = Redactor::new(secrets.iter().copied());
    let mut log = Vec::new();
    let ended = run(
        &Script {
            script,
            dir,
            env: &env,
            sandbox: &sandbox,
            workspace: dir,
            tools: &[],
        },
        limits,
        &mut redactor,
        &mut cancel,
        &mut |chunk: &[u8]| log.extend_from_slice(chunk),
    )
    .await
    .expect("run");
    (ended, String::from_utf8_lossy(&log).into_owned())
}

const PATH: (&str, &str) = ("PATH", "/usr/bin:/bin");

#[tokio::test]
async fn only_the_given_environment_and_the_exit_code() {
    let (ended, log) = phase(
        "echo \"home=$HOME stack=$GANTRY_STACK_ID\"; env | sort | cut -d= -f1 | tr '\\n' ' '; exit 2",
        &[PATH, ("HOME", "/tmp/x"), ("GANTRY_STACK_ID", "net")],
        limits(Duration::from_secs(30), Duration::from_secs(30)),
        &[],
        None,
    )
    .await;
    assert_eq!(ended, Ended::Exited(2));
    assert!(log.starts_with("home=/tmp/x stack=net\n"), "{log}");
    let names: Vec<&str> = log
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // `sh` adds PWD (and may add SHLVL and _); nothing of the parent leaks.
    for name in &names {
        assert!(
            [
                "GANTRY_STACK_ID",
                "HOME",
                "PATH",
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD"
            ]
            .contains(name),
            "{name} leaked: {log}"
        );
    }
}

#[tokio::test]
async fn a_secret_split_across_writes_is_redacted() {
    let (ended, log) = phase(
        "printf 'value=tok'; sleep 0.2; printf 'en-SECRET-42\\n'; printf '%s\\n' \"$AWS_SECRET\"",
        &[PATH, ("AWS_SECRET", "aws-CANARY")],
        limits(Duration::from_secs(30), Duration::from_secs(30)),
        &["token-SECRET-42", "aws-CANARY"],
        None,
    )
    .await;
    assert_eq!(ended, Ended::Exited(0));
    assert_eq!(log, "value=[REDACTED]\n[REDACTED]\n");
}

/// Whether a process of the sandbox still beats: it rewrites `beat` in the
/// workspace every 50 ms. (Its pid means nothing outside the sandbox's
/// PID namespace.)
async fn still_beating(dir: &std::path::Path) -> bool {
    let before = std::fs::read_to_string(dir.join("beat")).unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = std::fs::read_to_string(dir.join("beat")).unwrap_or_default();
    before != after
}

#[tokio::test]
async fn cancel_ends_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("dir");
    // A grandchild that ignores SIGTERM, beating until it is killed.
    let script = "(trap '' TERM; while true; do date +%s%N > beat; sleep 0.05; done) & \
                  sleep 0.2; wait";
    let (ended, _) = phase_in(
        dir.path(),
        script,
        &[PATH],
        limits(Duration::from_secs(60), Duration::from_secs(60)),
        &[],
        Some(Duration::from_millis(400)),
    )
    .await;
    assert_eq!(ended, Ended::Canceled);
    assert!(
        std::fs::read_to_string(dir.path().join("beat")).is_ok(),
        "the grandchild ran"
    );
    assert!(
        !still_beating(dir.path()).await,
        "the grandchild that ignores SIGTERM was killed with the sandbox"
    );
}

#[tokio::test]
async fn both_timeouts() {
    let (ended, _) = phase(
        "echo start; sleep 60",
        &[PATH],
        limits(Duration::from_secs(60), Duration::from_millis(300)),
        &[],
        None,
    )
    .await;
    assert_eq!(ended, Ended::NoOutput);
    let (ended, log) = phase(
        "while true; do echo tick; sleep 0.05; done",
        &[PATH],
        limits(Duration::from_millis(400), Duration::from_secs(60)),
        &[],
        None,
    )
    .await;
    assert_eq!(ended, Ended::TimedOut);
    assert!(log.contains("tick"));
}
