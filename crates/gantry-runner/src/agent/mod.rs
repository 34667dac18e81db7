//! The worker's side of a run, the same for the embedded pool of `gantry
//! serve` and for `gantry worker` on another machine: claim an
//! [`Assignment`], execute its phase, and report through a [`Control`].
//! The server implements `Control` over its database; an external worker
//! implements it over the HTTP API. Nothing here knows which one it has.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tokio::sync::watch as signal;

use self::watch::{LogSender, StopCause, log_writer, watch_run};
use crate::process::Limits;
use crate::redact::Redactor;
use crate::sandbox::Sandbox;
use crate::workflow::{self, Context, Stopped};

mod pack;
mod protocol;
mod watch;

pub use pack::{pack, unpack};
pub use protocol::*;

/// How a worker behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Runs' workspaces go in `<work_dir>/<run id>.<pid>.<n>`, one per
    /// phase, and are removed after it (the server keeps the archive a
    /// confirmed apply needs). A phase never shares its directory with the
    /// next one, which may start elsewhere in this worker while the last is
    /// still being removed.
    pub work_dir: PathBuf,
    /// On shutdown, how long a run may go on before it is stopped and
    /// handed back (or failed, when it was applying).
    pub shutdown_grace: Duration,
    /// Between SIGTERM and SIGKILL when a process group is stopped.
    pub kill_grace: Duration,
    /// Where the phases run.
    pub sandbox: Sandbox,
}

/// Why a run's phase ended before it succeeded; the run fails with this
/// reason (or is handed back when the worker was shutting down).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("cannot fetch the source of the run's commit: {0}")]
    FetchSource(ControlError),
    #[error("cannot fetch the planned workspace: {0}")]
    FetchWorkspace(ControlError),
    #[error("cannot unpack the run's files: {0}")]
    Restore(std::io::Error),
    #[error("cannot create the work directory: {0}")]
    WorkDir(std::io::Error),
    #[error("cannot create HOME: {0}")]
    Home(std::io::Error),
    #[error("cannot hand the workspace to the sandbox's user: {0}")]
    HandOver(std::io::Error),
    #[error("cannot archive the planned workspace: {0}")]
    Pack(std::io::Error),
    #[error("cannot store the planned workspace: {0}")]
    StoreWorkspace(ControlError),
    #[error(transparent)]
    Phase(#[from] Stopped),
    #[error("the run was stopped")]
    Stopped,
}

/// Claims and executes runs until `shutdown` turns `true`; then finishes
/// (or hands back) the run at hand within `options.shutdown_grace`.
pub async fn work<C: Control>(control: Arc<C>, options: Options, shutdown: signal::Receiver<bool>) {
    while !*shutdown.borrow() {
        // A claim is never abandoned half-way: a run taken just as the
        // shutdown came is handed back at once.
        match control.claim().await {
            Ok(Some(assignment)) if *shutdown.borrow() => {
                let step = Step::HandBack {
                    reason: "the worker is shutting down".to_owned(),
                };
                report(&*control, &assignment.run_id, &step).await;
                if let Err(error) = control.release(&assignment.run_id).await {
                    tracing::warn!(run.id = %assignment.run_id, %error, "cannot release the run's lease; it lapses");
                }
            }
            Ok(Some(assignment)) => {
                execute(&control, assignment, &options, shutdown.clone()).await;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot claim a run; trying again");
                let mut shutdown = shutdown.clone();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|stop| *stop) => {}
                }
            }
        }
    }
}

/// Phases this process has begun, which name their workspaces.
static PHASES: AtomicU64 = AtomicU64::new(0);

/// Executes one phase of a run and reports it. Never fails: what goes
/// wrong ends the run `failed` with the reason in its log.
pub async fn execute<C: Control>(
    control: &Arc<C>,
    assignment: Assignment,
    options: &Options,
    shutdown: signal::Receiver<bool>,
) {
    let run = assignment.run_id.clone();
    let (log, writer) = log_writer(control.clone(), run.clone());
    let cause = Arc::new(StopCause::default());
    let (cancel, watcher) = watch_run(
        control.clone(),
        run.clone(),
        Duration::from_secs(assignment.lease_seconds.max(1)),
        shutdown,
        options.shutdown_grace,
        cause.clone(),
    );
    let dir = options.work_dir.join(format!(
        "{run}.{}.{}",
        std::process::id(),
        PHASES.fetch_add(1, Ordering::Relaxed)
    ));
    let outcome = phases(&**control, &assignment, &dir, options, &log, cancel).await;
    watcher.abort();
    if let Err(reason) = outcome {
        log.line(&format!("\n{reason}"));
        log.flush().await;
        let shutting_down = cause.shutdown.load(Ordering::SeqCst);
        let step = if shutting_down && assignment.stage == Stage::Plan {
            Step::HandBack {
                reason: format!("the worker shut down: {reason}"),
            }
        } else if shutting_down {
            Step::Fail {
                reason: format!("the worker shut down during apply: {reason}"),
            }
        } else {
            Step::Fail {
                reason: reason.to_string(),
            }
        };
        report(&**control, &run, &step).await;
    }
    if let Err(error) = control.release(&run).await {
        tracing::warn!(run.id = %run, %error, "cannot release the run's lease; it lapses");
    }
    drop(log);
    let _ = writer.await;
    remove_dir(&dir).await;
}

/// Reports a step; `None` when it was refused or could not be sent.
async fn report<C: Control>(control: &C, run: &str, step: &Step) -> Option<String> {
    match control.step(run, step).await {
        Ok(Some(state)) => Some(state),
        Ok(None) => {
            tracing::info!(run.id = %run, "the run moved on without this worker; stopping");
            None
        }
        Err(error) => {
            tracing::warn!(run.id = %run, %error, "cannot report a step");
            None
        }
    }
}

async fn remove_dir(dir: &Path) {
    if let Err(error) = tokio::fs::remove_dir_all(dir).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), %error, "cannot remove a workspace");
    }
}

async fn phases<C: Control>(
    control: &C,
    a: &Assignment,
    workspace: &Path,
    options: &Options,
    log: &LogSender,
    cancel: signal::Receiver<bool>,
) -> Result<(), Failure> {
    remove_dir(workspace).await;
    tokio::fs::create_dir_all(&options.work_dir)
        .await
        .map_err(Failure::WorkDir)?;
    let archive = workspace.with_extension("tar.zst");
    match a.stage {
        Stage::Plan => {
            log.line(&format!("Checking out {}", a.commit_sha));
            control
                .get_source(&a.run_id, &archive)
                .await
                .map_err(Failure::FetchSource)?;
            let restored = unpack(&archive, workspace).await;
            let _ = tokio::fs::remove_file(&archive).await;
            restored.map_err(Failure::Restore)?;
        }
        Stage::Apply => {
            log.line("Restoring the planned workspace");
            control
                .get_workspace(&a.run_id, &archive)
                .await
                .map_err(Failure::FetchWorkspace)?;
            let restored = unpack(&archive, workspace).await;
            let _ = tokio::fs::remove_file(&archive).await;
            restored.map_err(Failure::Restore)?;
        }
    }
    let workspace = &workspace.canonicalize().map_err(Failure::Home)?;
    let home = workspace.join(".gantry-home");
    std::fs::create_dir_all(&home).map_err(Failure::Home)?;
    options
        .sandbox
        .hand_over(workspace)
        .map_err(Failure::HandOver)?;
    let mut env = vec![
        (
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        ),
        (
            "HOME".to_owned(),
            options
                .sandbox
                .inside(workspace, &home)
                .display()
                .to_string(),
        ),
    ];
    env.extend(a.env.iter().cloned());
    let mut secrets: Vec<&str> = Vec::new();
    for var in &a.secret_env {
        env.push((var.name.clone(), var.value.expose_secret().to_owned()));
        secrets.push(var.value.expose_secret());
    }
    let dir = workspace.join(&a.project_root);
    let sink_log = log.clone();
    let mut sink = move |chunk: &[u8]| sink_log.send(chunk.to_vec());
    let mut ctx = Context {
        dir: &dir,
        workspace,
        sandbox: &options.sandbox,
        tools: Vec::new(),
        env,
        limits: Limits {
            deadline: Instant::now() + Duration::from_secs(a.run_timeout_seconds),
            no_output: Duration::from_secs(a.no_output_timeout_seconds),
            grace: options.kill_grace,
        },
        redactor: Redactor::new(secrets),
        cancel,
        log: &mut sink,
    };
    if a.stage == Stage::Plan {
        report(control, &a.run_id, &Step::Plan)
            .await
            .ok_or(Failure::Stopped)?;
        let planned = workflow::plan(&a.workflow, &mut ctx).await?;
        if planned.changes && a.kind == "tracked" {
            // Stored before the plan is reported, so that whoever confirms
            // it finds the workspace, on any worker.
            pack(workspace, &archive).await.map_err(Failure::Pack)?;
            let stored = control.put_workspace(&a.run_id, &archive).await;
            let _ = tokio::fs::remove_file(&archive).await;
            stored.map_err(Failure::StoreWorkspace)?;
        }
        log.flush().await;
        let state = report(
            control,
            &a.run_id,
            &Step::Planned {
                changes: planned.changes,
                summary: planned.summary,
            },
        )
        .await
        .ok_or(Failure::Stopped)?;
        if state != "applying" {
            return Ok(());
        }
    }
    workflow::apply(&a.workflow, &mut ctx).await?;
    log.flush().await;
    report(control, &a.run_id, &Step::Applied).await;
    Ok(())
}
