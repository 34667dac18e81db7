//! The embedded worker pool: takes runs (the stack lock honoured by
//! `runs::start_next`), executes them with `gantry-runner`, and records
//! transitions, the summary and the redacted log. A confirmed run is
//! applied in the workspace its plan left in the data directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_domain::run::{Command, State as RunState};
use gantry_gitlab::projects;
use gantry_runner::checkout::{Source, checkout};
use gantry_runner::process::Limits;
use gantry_runner::redact::Redactor;
use gantry_runner::workflow::{self, Context, Stopped, Workflow};
use gantry_store::crypto::Keyring;
use gantry_store::runs::{self, Run};
use gantry_store::{Millis, Store, StoreError, integrations, stacks};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};

use crate::routes::integrations::token_context;

/// The whole run's deadline and the no-output limit (per-stack settings
/// come later).
const RUN_TIMEOUT: Duration = Duration::from_secs(70 * 60);
const NO_OUTPUT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Clone)]
pub struct Worker {
    pub store: Store,
    pub keyring: Arc<Keyring>,
    pub gitlab: gantry_gitlab::Http,
    pub data_dir: PathBuf,
    pub name: String,
    /// How long a run's lease lasts without a heartbeat.
    pub lease: Duration,
    /// Woken when runs may have become runnable.
    pub signal: Arc<Notify>,
}

enum Next {
    Plan(Run),
    Apply(Run),
}

/// Takes and executes runs until the task is dropped.
pub async fn work(worker: Worker) {
    loop {
        // Registered first, so a run queued meanwhile is not missed.
        let notified = worker.signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match take(&worker).await {
            Ok(Some(Next::Plan(run))) => execute(&worker, run, false).await,
            Ok(Some(Next::Apply(run))) => execute(&worker, run, true).await,
            Ok(None) => {
                // Other servers' runs wake nobody here: look again now and then.
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot take a run; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn take(worker: &Worker) -> Result<Option<Next>, StoreError> {
    let cause = format!("taken by worker {}", worker.name);
    let mut tx = worker.store.begin().await?;
    let next = match runs::take_confirmed(&mut tx, &cause, Millis::now()).await? {
        Some(run) => Some(Next::Apply(run)),
        None => runs::start_next(&mut tx, &cause, Millis::now())
            .await?
            .map(Next::Plan),
    };
    if let Some(Next::Apply(run) | Next::Plan(run)) = &next {
        runs::lease(
            &mut tx,
            &run.id,
            &worker.name,
            Millis::now().plus(worker.lease),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(next)
}

/// Moves the run, logging a refusal (the run was canceled meanwhile).
async fn step(
    worker: &Worker,
    run: &Run,
    command: Command,
    cause: &str,
    autodeploy: bool,
) -> Option<Run> {
    let moved = async {
        let mut tx = worker.store.begin().await?;
        let moved =
            runs::apply(&mut tx, &run.id, command, cause, autodeploy, Millis::now()).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(moved)
    };
    match moved.await {
        Ok(Ok(run)) => {
            worker.signal.notify_waiters();
            Some(run)
        }
        Ok(Err(refused)) => {
            tracing::info!(run.id = %run.id, %refused, "run moved elsewhere; stopping");
            None
        }
        Err(error) => {
            tracing::warn!(run.id = %run.id, %error, "cannot record a run transition");
            None
        }
    }
}

fn workflow_of(vendor: &str) -> Workflow {
    let vendor: Value = serde_json::from_str(vendor).unwrap_or(Value::Null);
    let text = |key: &str| vendor[key].as_str().unwrap_or_default().to_owned();
    match vendor["kind"].as_str() {
        Some("shell") => Workflow::Shell {
            init: text("init"),
            plan: text("plan"),
            apply: text("apply"),
        },
        Some("terraform") => Workflow::Tool {
            binary: vendor["binary"].as_str().unwrap_or("terraform").to_owned(),
        },
        _ => Workflow::Tool {
            binary: vendor["binary"].as_str().unwrap_or("tofu").to_owned(),
        },
    }
}

/// Everything a run needs from the database and GitLab before it starts.
struct Prepared {
    workflow: Workflow,
    env: Vec<(String, String)>,
    secrets: Vec<String>,
    autodeploy: bool,
    project_root: String,
    source: Option<(String, SecretString)>,
}

async fn prepare(worker: &Worker, run: &Run, need_source: bool) -> Result<Prepared, String> {
    let mut conn = worker.store.conn().await.map_err(|e| e.to_string())?;
    let stack = stacks::get(&mut conn, &run.stack_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the stack was deleted")?;
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        ),
        ("GANTRY_RUN_ID".into(), run.id.clone()),
        ("GANTRY_STACK_ID".into(), stack.id.clone()),
        ("GANTRY_COMMIT_SHA".into(), run.commit_sha.clone()),
        ("GANTRY_BRANCH".into(), run.branch.clone()),
        ("GANTRY_RUN_KIND".into(), run.kind.clone()),
    ];
    if let Some(iid) = run.merge_request_iid {
        env.push(("GANTRY_MERGE_REQUEST_IID".into(), iid.to_string()));
    }
    let plain: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&stack.environment).unwrap_or_default();
    env.extend(plain);
    let mut secrets = Vec::new();
    if let Some(sealed) = &stack.secret_environment_sealed {
        let opened = worker
            .keyring
            .decrypt(&format!("stack:{}:secret_environment", stack.id), sealed)
            .map_err(|_| "the stack's secret environment cannot be decrypted with this server's master key")?;
        let values: std::collections::BTreeMap<String, String> =
            serde_json::from_str(opened.expose_secret()).unwrap_or_default();
        for (name, value) in values {
            secrets.push(value.clone());
            env.push((name, value));
        }
    }
    let mut source = None;
    if need_source {
        let integration_id = stack
            .integration_id
            .clone()
            .ok_or("the stack has no integration")?;
        let integration = integrations::get(&mut conn, &integration_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the stack's integration was deleted")?;
        drop(conn);
        let token = worker
            .keyring
            .decrypt(&token_context(&integration.id), &integration.token_sealed)
            .map_err(
                |_| "the integration's token cannot be decrypted with this server's master key",
            )?;
        secrets.push(token.expose_secret().to_owned());
        let client = worker
            .gitlab
            .client(&integration.api_host_url, token.clone())
            .map_err(|e| e.to_string())?;
        let project = projects::find(&client, &stack.project_id.to_string())
            .await
            .map_err(|e| e.to_string())?;
        let url = project
            .http_url_to_repo
            .ok_or("GitLab gave no HTTP clone URL for the project")?;
        source = Some((url, token));
    }
    Ok(Prepared {
        workflow: workflow_of(&stack.vendor),
        env,
        secrets,
        autodeploy: stack.autodeploy == 1,
        project_root: stack.project_root,
        source,
    })
}

/// What the log writer receives: output, or a request to confirm that
/// everything before it is stored.
enum LogItem {
    Chunk(Vec<u8>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Sends log output to the writer.
#[derive(Clone)]
struct LogSender(mpsc::UnboundedSender<LogItem>);

impl LogSender {
    fn send(&self, chunk: Vec<u8>) {
        let _ = self.0.send(LogItem::Chunk(chunk));
    }

    /// Waits until everything sent so far is stored, so that a transition
    /// recorded next is never ahead of its log.
    async fn flush(&self) {
        let (done, stored) = tokio::sync::oneshot::channel();
        if self.0.send(LogItem::Flush(done)).is_ok() {
            let _ = stored.await;
        }
    }
}

/// Writes log chunks to the database in order, as they come.
fn log_writer(store: Store, run_id: String) -> (LogSender, tokio::task::JoinHandle<()>) {
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
                let written = async {
                    let mut conn = store.conn().await?;
                    runs::append_log(&mut conn, &run_id, &text, Millis::now()).await
                };
                if let Err(error) = written.await {
                    tracing::warn!(run.id = %run_id, %error, "cannot store a log chunk");
                }
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    });
    (LogSender(sender), task)
}

/// Renews the run's lease a few times per lease, and turns `true` when the
/// run is canceled through the API or the lease was lost.
fn watch_run(
    worker: &Worker,
    run_id: String,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = watch::channel(false);
    let (store, owner, lease) = (worker.store.clone(), worker.name.clone(), worker.lease);
    let task = tokio::spawn(async move {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let check = async {
                let mut conn = store.conn().await?;
                let held = if renewed.elapsed() >= lease / 3 {
                    renewed = Instant::now();
                    runs::heartbeat(&mut conn, &run_id, &owner, Millis::now().plus(lease)).await?
                } else {
                    true
                };
                let ended = runs::get(&mut conn, &run_id).await?.is_none_or(|run| {
                    RunState::parse(&run.state).is_some_and(RunState::is_terminal)
                });
                Ok::<_, StoreError>(!held || ended)
            };
            if let Ok(true) = check.await {
                let _ = sender.send(true);
                return;
            }
        }
    });
    (receiver, task)
}

async fn execute(worker: &Worker, run: Run, applying: bool) {
    let (log, writer) = log_writer(worker.store.clone(), run.id.clone());
    let (cancel, watcher) = watch_run(worker, run.id.clone());
    let outcome = phases(worker, &run, applying, &log, cancel).await;
    watcher.abort();
    if let Err(reason) = outcome {
        log.send(format!("\n{reason}\n").into_bytes());
        log.flush().await;
        step(worker, &run, Command::Fail, &reason, false).await;
    }
    // Done executing: finished, failed, or waiting for confirmation.
    let released = async {
        let mut conn = worker.store.conn().await?;
        runs::release(&mut conn, &run.id, &worker.name).await
    };
    if let Err(error) = released.await {
        tracing::warn!(run.id = %run.id, %error, "cannot release the run's lease; it lapses");
    }
    drop(log);
    let _ = writer.await;
}

async fn phases(
    worker: &Worker,
    run: &Run,
    applying: bool,
    log: &LogSender,
    cancel: watch::Receiver<bool>,
) -> Result<(), String> {
    let prepared = prepare(worker, run, !applying)
        .await
        .map_err(|e| format!("preparing failed: {e}"))?;
    let workspace = worker.data_dir.join("workspaces").join(&run.id);
    if !applying {
        let (url, token) = prepared.source.as_ref().ok_or("no source")?;
        log.send(format!("Checking out {} at {}\n", url, run.commit_sha).into_bytes());
        let source = Source {
            clone_url: url,
            token,
            commit: &run.commit_sha,
        };
        checkout(&source, &workspace)
            .await
            .map_err(|e| format!("checkout failed: {e}"))?;
    } else if !workspace.is_dir() {
        return Err("the planned workspace is not on this server".into());
    }
    let dir = workspace.join(&prepared.project_root);
    let mut home = workspace.join(".gantry-home");
    std::fs::create_dir_all(&home).map_err(|e| format!("cannot create HOME: {e}"))?;
    home = home.canonicalize().unwrap_or(home);
    let mut env = prepared.env.clone();
    env.push(("HOME".into(), home.display().to_string()));
    let sink_log = log.clone();
    let mut sink = move |chunk: &[u8]| sink_log.send(chunk.to_vec());
    let mut ctx = Context {
        dir: &dir,
        env,
        limits: Limits {
            deadline: Instant::now() + RUN_TIMEOUT,
            no_output: NO_OUTPUT_TIMEOUT,
            grace: Duration::from_secs(10),
        },
        redactor: Redactor::new(prepared.secrets.iter().map(String::as_str)),
        cancel,
        log: &mut sink,
    };
    let stopped = |stop: Stopped| stop.to_string();
    if !applying {
        step(worker, run, Command::Plan, "checked out", false)
            .await
            .ok_or("the run was stopped")?;
        let planned = workflow::plan(&prepared.workflow, &mut ctx)
            .await
            .map_err(stopped)?;
        let summary = serde_json::to_value(&planned.summary).unwrap_or(Value::Null);
        {
            let mut conn = worker.store.conn().await.map_err(|e| e.to_string())?;
            runs::set_summary(&mut conn, &run.id, &summary, Millis::now())
                .await
                .map_err(|e| e.to_string())?;
        }
        log.flush().await;
        let cause = format!("planned: {}", planned.summary);
        let after = step(
            worker,
            run,
            Command::Planned {
                changes: planned.changes,
            },
            &cause,
            prepared.autodeploy,
        )
        .await
        .ok_or("the run was stopped")?;
        if after.state != RunState::Applying.as_str() {
            return Ok(());
        }
    }
    workflow::apply(&prepared.workflow, &mut ctx)
        .await
        .map_err(stopped)?;
    log.flush().await;
    step(worker, run, Command::Applied, "applied", false).await;
    Ok(())
}
