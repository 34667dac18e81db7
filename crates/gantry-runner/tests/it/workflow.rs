//! Workflows end to end on a real directory: a shell workflow's exit codes
//! and summary line, and an OpenTofu workflow against a stand-in binary
//! that prints the documented JSON plan representation.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use gantry_runner::process::Limits;
use gantry_runner::redact::Redactor;
use gantry_runner::sandbox::{Mode, Sandbox};
use gantry_runner::workflow::{Context, Planned, Stopped, Workflow, apply, plan};
use tokio::sync::watch;

/// The sandbox every phase runs in, as workers run it, with `workspace`
/// handed to its user.
async fn sandbox(workspace: &Path) -> &'static Sandbox {
    static SANDBOX: tokio::sync::OnceCell<Sandbox> = tokio::sync::OnceCell::const_new();
    let sandbox = SANDBOX
        .get_or_init(|| async { Sandbox::open(Mode::Bwrap).await.expect("bwrap") })
        .await;
    sandbox.hand_over(workspace).expect("hand over");
    sandbox
}

fn context<'a>(
    workspace: &'a Path,
    dir: &'a Path,
    sandbox: &'a Sandbox,
    env: &[(&str, &str)],
    log: &'a mut (dyn FnMut(&[u8]) + Send),
    cancel: watch::Receiver<bool>,
) -> Context<'a> {
    Context {
        dir,
        workspace,
        sandbox,
        tools: Vec::new(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        limits: Limits {
            deadline: Instant::now() + Duration::from_secs(60),
            no_output: Duration::from_secs(60),
            grace: Duration::from_millis(500),
        },
        redactor: Redactor::new(["hunter2-SECRET"]),
        cancel,
        log,
    }
}

const PATH: (&str, &str) = ("PATH", "/usr/bin:/bin");

#[tokio::test]
async fn a_shell_workflow_plans_with_changes_and_applies() {
    let dir = tempfile::tempdir().expect("dir");
    let workflow = Workflow::Shell {
        init: "echo init > init.done".to_owned(),
        plan:
            "echo \"using $DB_PASSWORD\"; echo 'Plan: 2 to add, 0 to change, 1 to destroy.'; exit 2"
                .to_owned(),
        apply: "test -f init.done && echo applied > apply.done".to_owned(),
    };
    let (_tx, cancel) = watch::channel(false);
    let mut log = Vec::new();
    let mut sink = |chunk: &[u8]| log.extend_from_slice(chunk);
    let sandbox = sandbox(dir.path()).await;
    let mut ctx = context(
        dir.path(),
        dir.path(),
        sandbox,
        &[PATH, ("DB_PASSWORD", "hunter2-SECRET")],
        &mut sink,
        cancel,
    );
    let planned = plan(&workflow, &mut ctx).await.expect("plan");
    assert!(planned.changes);
    assert_eq!(
        (
            planned.summary.add,
            planned.summary.change,
            planned.summary.destroy
        ),
        (2, 0, 1)
    );
    apply(&workflow, &mut ctx).await.expect("apply");
    drop(ctx);
    assert!(dir.path().join("apply.done").exists());
    let log = String::from_utf8(log).expect("utf8");
    assert!(
        log.contains("using [REDACTED]") && !log.contains("hunter2"),
        "{log}"
    );
}

#[tokio::test]
async fn shell_exit_codes() {
    let dir = tempfile::tempdir().expect("dir");
    let (_tx, cancel) = watch::channel(false);
    let mut sink = |_: &[u8]| {};
    let sandbox = sandbox(dir.path()).await;
    let mut ctx = context(dir.path(), dir.path(), sandbox, &[PATH], &mut sink, cancel);
    let nothing = Workflow::Shell {
        init: String::new(),
        plan: "echo 'No changes.'".into(),
        apply: "false".into(),
    };
    assert_eq!(
        plan(&nothing, &mut ctx).await,
        Ok(Planned {
            changes: false,
            summary: Default::default()
        })
    );
    let broken = Workflow::Shell {
        init: String::new(),
        plan: "exit 1".into(),
        apply: "true".into(),
    };
    assert!(matches!(
        plan(&broken, &mut ctx).await,
        Err(Stopped::Failed { phase: "plan", .. })
    ));
    let bad_init = Workflow::Shell {
        init: "exit 3".into(),
        plan: "exit 2".into(),
        apply: "true".into(),
    };
    assert_eq!(
        plan(&bad_init, &mut ctx).await,
        Err(Stopped::Failed {
            phase: "init",
            reason: "exited with 3".into()
        })
    );
    assert!(matches!(
        apply(&nothing, &mut ctx).await,
        Err(Stopped::Failed { phase: "apply", .. })
    ));
}

/// A stand-in for `tofu`: checks its arguments as OpenTofu takes them and
/// answers with real output shapes.
fn fake_tofu(bin: &Path, fixture: &Path) {
    let script = format!(
        r#"#!/bin/sh
case "$1" in
  init) echo "OpenTofu has been successfully initialized!" ;;
  plan)
    for arg in "$@"; do case "$arg" in -out=*) out="${{arg#-out=}}" ;; esac; done
    [ -n "$out" ] || {{ echo "no -out" >&2; exit 1; }}
    echo "saved plan" > "$out"
    echo "Plan: 2 to add, 1 to change, 1 to destroy."
    exit 2 ;;
  show) [ "$2" = "-json" ] && [ -f "$3" ] && cat <<'GANTRY_JSON'
{fixture}
GANTRY_JSON
    ;;
  apply) for arg; do last="$arg"; done
    [ -f "$last" ] || {{ echo "no saved plan $last" >&2; exit 1; }}; echo "Apply complete! Resources: 2 added, 1 changed, 1 destroyed." > applied.txt ;;
  *) echo "unexpected $*" >&2; exit 1 ;;
esac
"#,
        fixture = std::fs::read_to_string(fixture)
            .expect("fixture")
            .trim_end()
    );
    std::fs::write(bin, script).expect("write");
    std::fs::set_permissions(bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test]
async fn an_opentofu_workflow_reads_the_json_plan() {
    let dir = tempfile::tempdir().expect("dir");
    let bin = dir.path().join("tofu");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plan.json");
    fake_tofu(&bin, &fixture);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    let workflow = Workflow::Opentofu {
        binary: Some(bin.display().to_string()),
    };
    let (_tx, cancel) = watch::channel(false);
    let mut log = Vec::new();
    let mut sink = |chunk: &[u8]| log.extend_from_slice(chunk);
    let sandbox = sandbox(&work).await;
    let mut ctx = context(&work, &work, sandbox, &[PATH], &mut sink, cancel);
    let planned = plan(&workflow, &mut ctx).await.expect("plan");
    assert!(planned.changes);
    let summary = &planned.summary;
    assert_eq!((summary.add, summary.change, summary.destroy), (2, 1, 1));
    assert_eq!(
        summary.resources,
        [
            "aws_vpc.main",
            "aws_subnet.public[0]",
            "aws_security_group.web"
        ]
    );
    apply(&workflow, &mut ctx).await.expect("apply");
    drop(ctx);
    assert!(work.join("applied.txt").exists());
    let log = String::from_utf8(log).expect("utf8");
    assert!(
        log.contains("successfully initialized") && !log.contains("resource_changes"),
        "the JSON plan is not logged: {log}"
    );
}
