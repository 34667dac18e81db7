//! The worker's side of a run, the same for the embedded pool of `gantry
//! serve` and for `gantry worker` on another machine: claim an
//! [`Assignment`], execute its phase, and report through a [`Control`].
//! The server implements `Control` over its database; an external worker
//! implements it over the HTTP API. Nothing here knows which one it has.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::{mpsc, oneshot, watch};

use crate::checkout::{Source, checkout};
use crate::process::Limits;
use crate::redact::Redactor;
use crate::summary::Summary;
use crate::workflow::{self, Context, Stopped, Workflow};

/// Which phase a claim is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Check out, init and plan (and apply at once when the server says so).
    Plan,
    /// Restore the planned workspace and apply it.
    Apply,
}

/// Everything a worker needs to execute one phase of a run. It carries
/// the run's secrets, so it has no `Debug`.
#[derive(Serialize, Deserialize)]
pub struct Assignment {
    pub run_id: String,
    pub stack_id: String,
    /// `tracked` or `proposed`.
    pub kind: String,
    pub commit_sha: String,
    pub phase: Phase,
    pub workflow: Workflow,
    /// The directory inside the checkout the phases run in (`""` or `dir/`).
    pub project_root: String,
    /// The stack's variables and the `GANTRY_*` metadata.
    pub env: Vec<(String, String)>,
    /// The stack's secret variables, redacted from the log.
    pub secret_env: Vec<SecretVar>,
    /// Where to fetch the commit from; only for [`Phase::Plan`].
    pub source: Option<RemoteSource>,
    pub run_timeout_seconds: u64,
    pub no_output_timeout_seconds: u64,
    /// How long the lease lasts without a heartbeat.
    pub lease_seconds: u64,
}

#[derive(Serialize, Deserialize)]
pub struct SecretVar {
    pub name: String,
    #[serde(serialize_with = "expose")]
    pub value: SecretString,
}

/// The repository to check out, and the token to do it with.
#[derive(Serialize, Deserialize)]
pub struct RemoteSource {
    pub clone_url: String,
    #[serde(serialize_with = "expose")]
    pub token: SecretString,
}

fn expose<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

/// What a worker reports about its run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Checked out and ready: preparing → planning.
    Plan,
    /// The plan is done.
    Planned { changes: bool, summary: Summary },
    /// The apply succeeded.
    Applied,
    /// A phase failed; `reason` says why.
    Fail { reason: String },
    /// The worker is shutting down before the plan was done: the run goes
    /// back to the queue for another worker.
    HandBack { reason: String },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(pub String);

/// What the worker is told after a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// `false` when the run was canceled or its lease lost: stop now.
    pub keep_going: bool,
}

/// The worker's line to the server. `step` answers the run's new state, or
/// `None` when the server refused the step (the run was canceled, or the
/// lease went to someone else).
pub trait Control: Send + Sync + 'static {
    /// The next run to execute, waiting a few seconds at most for one.
    fn claim(&self) -> impl Future<Output = Result<Option<Assignment>, ControlError>> + Send;
    fn heartbeat(&self, run: &str) -> impl Future<Output = Result<Heartbeat, ControlError>> + Send;
    /// Appends already redacted output to the run's log.
    fn log(&self, run: &str, text: String)
    -> impl Future<Output = Result<(), ControlError>> + Send;
    fn step(
        &self,
        run: &str,
        step: &Step,
    ) -> impl Future<Output = Result<Option<String>, ControlError>> + Send;
    /// Stores the planned workspace's archive (a file).
    fn put_workspace(
        &self,
        run: &str,
        archive: &Path,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// Fetches the planned workspace's archive into a file.
    fn get_workspace(
        &self,
        run: &str,
        archive: &Path,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// Ends the lease: the worker is done with the run for now.
    fn release(&self, run: &str) -> impl Future<Output = Result<(), ControlError>> + Send;
}

/// How a worker behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Runs' workspaces go in `<work_dir>/<run id>` and are removed after
    /// each phase (the server keeps the archive a confirmed apply needs).
    pub work_dir: PathBuf,
    /// On shutdown, how long a run may go on before it is stopped and
    /// handed back (or failed, when it was applying).
    pub shutdown_grace: Duration,
    /// Between SIGTERM and SIGKILL when a process group is stopped.
    pub kill_grace: Duration,
}

/// Claims and executes runs until `shutdown` turns `true`; then finishes
/// (or hands back) the run at hand within `options.shutdown_grace`.
pub async fn work<C: Control>(control: Arc<C>, options: Options, shutdown: watch::Receiver<bool>) {
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

/// What the log writer receives: output, or a request to confirm that
/// everything before it is stored.
enum LogItem {
    Chunk(Vec<u8>),
    Flush(oneshot::Sender<()>),
}

/// Sends log output to the writer.
#[derive(Clone)]
struct LogSender(mpsc::UnboundedSender<LogItem>);

impl LogSender {
    fn send(&self, chunk: Vec<u8>) {
        let _ = self.0.send(LogItem::Chunk(chunk));
    }

    fn line(&self, line: &str) {
        self.send(format!("{line}\n").into_bytes());
    }

    /// Waits until everything sent so far is stored, so that a step
    /// reported next is never ahead of its log.
    async fn flush(&self) {
        let (done, stored) = oneshot::channel();
        if self.0.send(LogItem::Flush(done)).is_ok() {
            let _ = stored.await;
        }
    }
}

/// Sends log chunks to the server in order, as they come, joining what
/// arrived while the previous chunk was being sent.
fn log_writer<C: Control>(
    control: Arc<C>,
    run: String,
) -> (LogSender, tokio::task::JoinHandle<()>) {
    let (sender, mut receiver) = mpsc::unbounded_channel::<LogItem>();
    let task = tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        while let Some(item) = receiver.recv().await {
            let mut flushes = Vec::new();
            let mut next = Some(item);
            while let Some(item) = next {
                match item {
                    LogItem::Chunk(chunk) => pending.extend(chunk),
                    LogItem::Flush(done) => flushes.push(done),
                }
                next = receiver.try_recv().ok();
            }
            if !pending.is_empty() {
                let text = String::from_utf8_lossy(&pending).into_owned();
                pending.clear();
                if let Err(error) = control.log(&run, text).await {
                    tracing::warn!(run.id = %run, %error, "cannot store a log chunk");
                }
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    });
    (LogSender(sender), task)
}

/// Why a run's processes were told to stop.
#[derive(Default)]
struct StopCause {
    /// The worker is shutting down and the grace period ran out.
    shutdown: AtomicBool,
}

/// Heartbeats a few times per lease and turns the cancel signal on when
/// the run was canceled, its lease lost, or the shutdown grace ran out.
fn watch_run<C: Control>(
    control: Arc<C>,
    run: String,
    lease: Duration,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    cause: Arc<StopCause>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (cancel, canceled) = watch::channel(false);
    let task = tokio::spawn(async move {
        let every = (lease / 3).max(Duration::from_millis(200));
        let mut grace_ends = shutdown.borrow().then(|| Instant::now() + grace);
        loop {
            let wake = grace_ends.map_or(every, |end| {
                every.min(end.saturating_duration_since(Instant::now()))
            });
            tokio::select! {
                () = tokio::time::sleep(wake) => {}
                changed = shutdown.changed(), if grace_ends.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        grace_ends = Some(Instant::now() + grace);
                    }
                    continue;
                }
            }
            if grace_ends.is_some_and(|end| Instant::now() >= end) {
                cause.shutdown.store(true, Ordering::SeqCst);
                let _ = cancel.send(true);
                return;
            }
            match control.heartbeat(&run).await {
                Ok(Heartbeat { keep_going: false }) => {
                    let _ = cancel.send(true);
                    return;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(run.id = %run, %error, "heartbeat failed; trying again");
                }
            }
        }
    });
    (canceled, task)
}

/// Executes one phase of a run and reports it. Never fails: what goes
/// wrong ends the run `failed` with the reason in its log.
pub async fn execute<C: Control>(
    control: &Arc<C>,
    assignment: Assignment,
    options: &Options,
    shutdown: watch::Receiver<bool>,
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
    let dir = options.work_dir.join(&run);
    let outcome = phases(&**control, &assignment, &dir, options, &log, cancel).await;
    watcher.abort();
    if let Err(reason) = outcome {
        log.line(&format!("\n{reason}"));
        log.flush().await;
        let shutting_down = cause.shutdown.load(Ordering::SeqCst);
        let step = if shutting_down && assignment.phase == Phase::Plan {
            Step::HandBack {
                reason: format!("the worker shut down: {reason}"),
            }
        } else if shutting_down {
            Step::Fail {
                reason: format!("the worker shut down during apply: {reason}"),
            }
        } else {
            Step::Fail { reason }
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
    cancel: watch::Receiver<bool>,
) -> Result<(), String> {
    remove_dir(workspace).await;
    let archive = workspace.with_extension("tar.zst");
    match a.phase {
        Phase::Plan => {
            let source = a.source.as_ref().ok_or("the server sent no source")?;
            log.line(&format!(
                "Checking out {} at {}",
                source.clone_url, a.commit_sha
            ));
            let source = Source {
                clone_url: &source.clone_url,
                token: &source.token,
                commit: &a.commit_sha,
            };
            checkout(&source, workspace)
                .await
                .map_err(|e| format!("checkout failed: {e}"))?;
        }
        Phase::Apply => {
            log.line("Restoring the planned workspace");
            control
                .get_workspace(&a.run_id, &archive)
                .await
                .map_err(|e| format!("cannot fetch the planned workspace: {e}"))?;
            let restored = unpack(&archive, workspace).await;
            let _ = tokio::fs::remove_file(&archive).await;
            restored.map_err(|e| format!("cannot restore the planned workspace: {e}"))?;
        }
    }
    let home = workspace.join(".gantry-home");
    std::fs::create_dir_all(&home).map_err(|e| format!("cannot create HOME: {e}"))?;
    let home = home.canonicalize().unwrap_or(home);
    let mut env = vec![
        (
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        ),
        ("HOME".to_owned(), home.display().to_string()),
    ];
    env.extend(a.env.iter().cloned());
    let mut secrets: Vec<&str> = Vec::new();
    for var in &a.secret_env {
        env.push((var.name.clone(), var.value.expose_secret().to_owned()));
        secrets.push(var.value.expose_secret());
    }
    if let Some(source) = &a.source {
        secrets.push(source.token.expose_secret());
    }
    let dir = workspace.join(&a.project_root);
    let sink_log = log.clone();
    let mut sink = move |chunk: &[u8]| sink_log.send(chunk.to_vec());
    let mut ctx = Context {
        dir: &dir,
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
    let stopped = |stop: Stopped| stop.to_string();
    if a.phase == Phase::Plan {
        report(control, &a.run_id, &Step::Plan)
            .await
            .ok_or("the run was stopped")?;
        let planned = workflow::plan(&a.workflow, &mut ctx)
            .await
            .map_err(stopped)?;
        if planned.changes && a.kind == "tracked" {
            // Stored before the plan is reported, so that whoever confirms
            // it finds the workspace, on any worker.
            pack(workspace, &archive)
                .await
                .map_err(|e| format!("cannot archive the planned workspace: {e}"))?;
            let stored = control.put_workspace(&a.run_id, &archive).await;
            let _ = tokio::fs::remove_file(&archive).await;
            stored.map_err(|e| format!("cannot store the planned workspace: {e}"))?;
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
        .ok_or("the run was stopped")?;
        if state != "applying" {
            return Ok(());
        }
    }
    workflow::apply(&a.workflow, &mut ctx)
        .await
        .map_err(stopped)?;
    log.flush().await;
    report(control, &a.run_id, &Step::Applied).await;
    Ok(())
}

/// Archives `dir` (tar + zstd) into the file `archive`.
pub async fn pack(dir: &Path, archive: &Path) -> std::io::Result<()> {
    let (dir, archive) = (dir.to_owned(), archive.to_owned());
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::create(&archive)?;
        let encoder = zstd::Encoder::new(file, 3)?;
        let mut tar = tar::Builder::new(encoder);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", &dir)?;
        tar.into_inner()?.finish()?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Unpacks an archive made by [`pack`] into `dir`.
pub async fn unpack(archive: &Path, dir: &Path) -> std::io::Result<()> {
    let (dir, archive) = (dir.to_owned(), archive.to_owned());
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let decoder = zstd::Decoder::new(std::fs::File::open(&archive)?)?;
        let mut tar = tar::Archive::new(decoder);
        tar.set_preserve_permissions(true);
        tar.set_preserve_mtime(true);
        tar.unpack(&dir)
    })
    .await
    .map_err(std::io::Error::other)?
}
