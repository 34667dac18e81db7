//! Phases as processes: only the given environment, redacted output,
//! and the whole process group ended on cancel and on both timeouts.

use std::time::{Duration, Instant};

use gantry_runner::process::{Ended, Limits, Script, run};
use gantry_runner::redact::Redactor;
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
            dir: dir.path(),
            env: &env,
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

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
}

#[tokio::test]
async fn cancel_ends_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("dir");
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let (ended, _) = phase(
        &script,
        &[PATH],
        limits(Duration::from_secs(60), Duration::from_secs(60)),
        &[],
        Some(Duration::from_millis(300)),
    )
    .await;
    assert_eq!(ended, Ended::Canceled);
    let pid = std::fs::read_to_string(&pidfile).expect("pid");
    // The grandchild got the group's signal too (reaped by init shortly).
    for _ in 0..100 {
        if !alive(&pid)
            || std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .is_ok_and(|s| s.contains(") Z "))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sleep {pid} survived the cancel");
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
