//! The server's side of workers. A worker claims a run (the stack lock is
//! honoured by `runs::start_next`), gets an `Assignment` with everything
//! the run needs (secrets opened, the clone URL asked of GitLab), and
//! reports back under its lease: heartbeats, log, steps, the planned
//! workspace. The embedded pool calls these functions through [`Local`];
//! external workers call the same functions through `routes::worker`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_domain::run::Command;
use gantry_domain::run::{Kind, State as RunState};
use gantry_runner::agent::{Assignment, Control, ControlError, Heartbeat, SecretVar, Stage, Step};
use gantry_store::runs::{self, Run};
use gantry_store::{Millis, StoreError, integrations, stacks};
use secrecy::ExposeSecret;

use crate::blobs::{ByteStream, workspace_key};
use crate::source::{self, SourceError};
use crate::state::AppState;

/// Why the server refused a worker's report.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("this worker no longer holds the run's lease (it lapsed, or the run ended)")]
    NotLeased,
    #[error(transparent)]
    Illegal(#[from] gantry_domain::run::IllegalTransition),
}

/// Takes the next run for `owner` and assembles what executing it needs.
/// A run that cannot be assembled (its stack or integration is gone, a
/// secret cannot be opened, GitLab does not answer) fails with the reason
/// in its log, and the next run is taken.
pub async fn claim(state: &AppState, owner: &str) -> Result<Option<Assignment>, StoreError> {
    loop {
        let Some(run) = take(state, owner).await? else {
            return Ok(None);
        };
        let stage = if run.state == RunState::Applying {
            Stage::Apply
        } else {
            Stage::Plan
        };
        match assemble(state, &run, stage).await {
            Ok(assignment) => return Ok(Some(assignment)),
            Err(Unassignable::Source(error)) if error.is_transient() => {
                if !retry_later(state, &run, owner, &error).await? {
                    let reason = format!(
                        "preparing failed: {error} (GitLab was unavailable for longer than {} s)",
                        state.config.prepare_patience.as_secs()
                    );
                    fail(state, &run.id, owner, reason).await?;
                }
            }
            Err(reason) => {
                fail(state, &run.id, owner, format!("preparing failed: {reason}")).await?
            }
        }
    }
}

/// Fails a run that could not be prepared, with the reason in its log.
async fn fail(
    state: &AppState,
    run_id: &str,
    owner: &str,
    reason: String,
) -> Result<(), StoreError> {
    log(state, run_id, owner, format!("{reason}\n")).await?;
    let _ = report(state, run_id, owner, &Step::Fail { reason }).await?;
    release(state, run_id, owner).await
}

/// A run whose preparation met an unavailable GitLab goes back to the
/// queue, to be tried again after a backoff (1 s, doubling to 60 s, with
/// jitter), while its first preparation is less than the server's
/// `prepare_patience` ago; `false` once that has passed.
async fn retry_later(
    state: &AppState,
    run: &Run,
    owner: &str,
    error: &SourceError,
) -> Result<bool, StoreError> {
    let mut tx = state.store.begin().await?;
    let preparations: Vec<i64> = runs::transitions(&mut tx, &run.id)
        .await?
        .into_iter()
        .filter(|t| t.state == RunState::Preparing)
        .map(|t| t.at)
        .collect();
    let now = Millis::now();
    let first = preparations.first().copied().unwrap_or(now.0);
    let patience = i64::try_from(state.config.prepare_patience.as_millis()).unwrap_or(i64::MAX);
    if now.0.saturating_sub(first) >= patience
        || !runs::holds_lease(&mut tx, &run.id, owner).await?
    {
        return Ok(false);
    }
    let tries = u32::try_from(preparations.len()).unwrap_or(u32::MAX);
    let backoff =
        Duration::from_secs(1u64 << tries.saturating_sub(1).min(6)).min(Duration::from_secs(60));
    let delay = backoff.mul_f64(0.75 + rand::random::<f64>() * 0.5);
    let note = format!(
        "preparing: {error}; trying again in {} s (try {tries})\n",
        delay.as_secs().max(1)
    );
    runs::append_log(&mut tx, &run.id, owner, &note, now).await?;
    let cause = "GitLab was unavailable while preparing";
    if runs::advance(&mut tx, &run.id, Command::HandBack, cause, false, now)
        .await?
        .is_err()
    {
        return Ok(false);
    }
    runs::release(&mut tx, &run.id, owner).await?;
    runs::set_not_before(&mut tx, &run.id, now.plus(delay)).await?;
    tx.commit().await?;
    state.logs_signal.notify_waiters();
    tracing::warn!(run.id = %run.id, error = %error, tries, "GitLab unavailable while preparing a run; it goes back to the queue");
    Ok(true)
}

/// [`claim`], waiting up to `wait` for a run to become ready (woken when
/// runs change on this server, looking again every 2 s for other servers'
/// runs); `None` when none did, or the server began to shut down.
pub async fn claim_within(
    state: &AppState,
    owner: &str,
    wait: Duration,
) -> Result<Option<Assignment>, StoreError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered first, so a run queued meanwhile is not missed.
        let notified = state.runs_signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(assignment) = claim(state, owner).await? {
            return Ok(Some(assignment));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut stopping = state.shutting_down.clone();
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(left.min(Duration::from_secs(2))) => {}
            _ = stopping.wait_for(|stop| *stop) => return Ok(None),
        }
    }
}

async fn take(state: &AppState, owner: &str) -> Result<Option<Run>, StoreError> {
    let cause = format!("taken by worker {owner}");
    let mut tx = state.store.begin().await?;
    let run = match runs::take_confirmed(&mut tx, &cause, Millis::now()).await? {
        Some(run) => Some(run),
        None => runs::start_next(&mut tx, &cause, Millis::now()).await?,
    };
    if let Some(run) = &run {
        let until = Millis::now().plus(state.config.lease);
        runs::lease(&mut tx, &run.id, owner, until).await?;
    }
    tx.commit().await?;
    Ok(run)
}

/// Why a claimed run could not be given to its worker; the run fails
/// with this reason.
#[derive(Debug, thiserror::Error)]
enum Unassignable {
    #[error("the stack was deleted")]
    StackGone,
    #[error("the stack has no integration")]
    NoIntegration,
    #[error("the stack's integration was deleted")]
    IntegrationGone,
    #[error("the stack's secret environment cannot be decrypted with this server's master key")]
    SealedSecrets,
    #[error("the stack's secret environment is not a JSON object of strings: {0}")]
    BadSecrets(serde_json::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the stack's timeouts are not positive")]
    BadLimits,
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn assemble(state: &AppState, run: &Run, stage: Stage) -> Result<Assignment, Unassignable> {
    let mut conn = state.store.conn().await?;
    let stack = stacks::get(&mut conn, &run.stack_id)
        .await?
        .ok_or(Unassignable::StackGone)?;
    let run_timeout_seconds = timeout_left(&mut conn, run, stack.run_timeout_seconds).await?;
    let mut env: Vec<(String, String)> = vec![
        ("GANTRY_RUN_ID".into(), run.id.clone()),
        ("GANTRY_STACK_ID".into(), stack.id.clone()),
        ("GANTRY_COMMIT_SHA".into(), run.commit_sha.clone()),
        ("GANTRY_BRANCH".into(), run.branch.clone()),
        ("GANTRY_RUN_KIND".into(), run.kind.as_str().into()),
    ];
    if let Some(iid) = run.merge_request_iid {
        env.push(("GANTRY_MERGE_REQUEST_IID".into(), iid.to_string()));
    }
    env.extend(stack.environment.clone());
    // A proposed run executes unreviewed code: it gets the stack's proposed
    // secrets when the stack has them, and then never the tracked ones.
    let (sealed, context) = match (run.kind, &stack.proposed_secret_environment_names) {
        (Kind::Proposed, Some(_)) => (
            &stack.proposed_secret_environment_sealed,
            stacks::proposed_secret_environment_context(&stack.id),
        ),
        _ => (
            &stack.secret_environment_sealed,
            stacks::secret_environment_context(&stack.id),
        ),
    };
    let mut secret_env = Vec::new();
    if let Some(sealed) = sealed {
        let opened = state
            .keyring
            .decrypt(&context, sealed)
            .map_err(|_| Unassignable::SealedSecrets)?;
        let values: BTreeMap<String, String> =
            serde_json::from_str(opened.expose_secret()).map_err(Unassignable::BadSecrets)?;
        secret_env = values
            .into_iter()
            .map(|(name, value)| SecretVar {
                name,
                value: value.into(),
            })
            .collect();
    }
    if stage == Stage::Plan {
        // The server fetches the commit (once for all its runs); the worker
        // gets the archive through the worker API, never a token.
        let integration_id = stack
            .integration_id
            .clone()
            .ok_or(Unassignable::NoIntegration)?;
        let integration = integrations::get(&mut conn, &integration_id)
            .await?
            .ok_or(Unassignable::IntegrationGone)?;
        drop(conn);
        source::ensure(state, &integration, stack.project_id, &run.commit_sha).await?;
    }
    let seconds = |value: i64| u64::try_from(value).map_err(|_| Unassignable::BadLimits);
    Ok(Assignment {
        run_id: run.id.clone(),
        stack_id: stack.id,
        kind: run.kind.as_str().to_owned(),
        commit_sha: run.commit_sha.clone(),
        stage,
        workflow: stack.vendor,
        project_root: stack.project_root,
        env,
        secret_env,
        run_timeout_seconds,
        no_output_timeout_seconds: seconds(stack.no_output_timeout_seconds)?,
        lease_seconds: state.config.lease.as_secs().max(1),
    })
}

/// What is left of a run's timeout of `limit` seconds: it counts from the
/// run's start across its phases (the wait for confirmation excluded), so
/// the apply gets what the plan left. At least a second, so that a run out
/// of time starts and times out with the usual reason.
async fn timeout_left(
    conn: &mut gantry_store::Conn,
    run: &Run,
    limit: i64,
) -> Result<u64, Unassignable> {
    let limit = u64::try_from(limit).map_err(|_| Unassignable::BadLimits)?;
    let transitions: Vec<_> = runs::transitions(conn, &run.id)
        .await?
        .into_iter()
        .map(|t| (t.state, t.at))
        .collect();
    let spent = gantry_domain::run::executed_millis(&transitions, Millis::now().0);
    let spent = u64::try_from(spent).unwrap_or(0) / 1000;
    Ok(limit.saturating_sub(spent).max(1))
}

/// Records a worker's step, with the summary of a plan in the same
/// transaction, and answers the run as it is now.
pub async fn report(
    state: &AppState,
    run_id: &str,
    owner: &str,
    step: &Step,
) -> Result<Result<Run, Refused>, StoreError> {
    let mut tx = state.store.begin().await?;
    if !runs::holds_lease(&mut tx, run_id, owner).await? {
        return Ok(Err(Refused::NotLeased));
    }
    let Some(run) = runs::get(&mut tx, run_id).await? else {
        return Ok(Err(Refused::NotLeased));
    };
    let autodeploy = stacks::get(&mut tx, &run.stack_id)
        .await?
        .is_some_and(|stack| stack.autodeploy);
    let now = Millis::now();
    let (command, cause) = match step {
        Step::Plan => (Command::Plan, format!("checked out by worker {owner}")),
        Step::Planned { changes, summary } => {
            runs::set_summary(&mut tx, run_id, summary, now).await?;
            (
                Command::Planned { changes: *changes },
                format!("planned: {summary}"),
            )
        }
        Step::Applied => (Command::Applied, "applied".to_owned()),
        Step::Fail { reason } => (Command::Fail, reason.clone()),
        Step::HandBack { reason } => (Command::HandBack, reason.clone()),
    };
    let moved = match runs::advance(&mut tx, run_id, command, &cause, autodeploy, now).await? {
        Ok(run) => run,
        Err(illegal) => return Ok(Err(illegal.into())),
    };
    if command == Command::HandBack {
        runs::release(&mut tx, run_id, owner).await?;
    }
    tx.commit().await?;
    state.runs_signal.notify_waiters();
    state.logs_signal.notify_waiters();
    Ok(Ok(moved))
}

/// Renews the lease; `keep_going` is `false` once the run was canceled or
/// the lease is no longer this worker's.
pub async fn heartbeat(
    state: &AppState,
    run_id: &str,
    owner: &str,
) -> Result<Heartbeat, StoreError> {
    let mut conn = state.store.conn().await?;
    let until = Millis::now().plus(state.config.lease);
    let keep_going = runs::heartbeat(&mut conn, run_id, owner, until).await?;
    Ok(Heartbeat { keep_going })
}

/// Appends redacted output to the run's log; `false` without the lease.
pub async fn log(
    state: &AppState,
    run_id: &str,
    owner: &str,
    text: String,
) -> Result<bool, StoreError> {
    let mut conn = state.store.conn().await?;
    let stored = runs::append_log(&mut conn, run_id, owner, &text, Millis::now()).await?;
    state.logs_signal.notify_waiters();
    Ok(stored)
}

pub async fn release(state: &AppState, run_id: &str, owner: &str) -> Result<(), StoreError> {
    let mut conn = state.store.conn().await?;
    runs::release(&mut conn, run_id, owner).await?;
    state.runs_signal.notify_waiters();
    Ok(())
}

/// Why a workspace could not be stored or fetched.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the run has no stored workspace")]
    Missing,
    #[error("the workspace store failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks that `owner` holds the run's lease; the run.
async fn leased(state: &AppState, run_id: &str, owner: &str) -> Result<Run, WorkspaceError> {
    let mut conn = state.store.conn().await?;
    if !runs::holds_lease(&mut conn, run_id, owner).await? {
        return Err(Refused::NotLeased.into());
    }
    runs::get(&mut conn, run_id)
        .await?
        .ok_or_else(|| Refused::NotLeased.into())
}

pub async fn put_workspace(
    state: &AppState,
    run_id: &str,
    owner: &str,
    body: ByteStream,
) -> Result<u64, WorkspaceError> {
    leased(state, run_id, owner).await?;
    Ok(state.blobs.put(&workspace_key(run_id), body).await?)
}

pub async fn get_workspace(
    state: &AppState,
    run_id: &str,
    owner: &str,
) -> Result<ByteStream, WorkspaceError> {
    leased(state, run_id, owner).await?;
    blob(state, &workspace_key(run_id)).await
}

/// The source of a run's commit, for the worker planning it.
pub async fn get_source(
    state: &AppState,
    run_id: &str,
    owner: &str,
) -> Result<ByteStream, WorkspaceError> {
    let run = leased(state, run_id, owner).await?;
    let mut conn = state.store.conn().await?;
    let stack = stacks::get(&mut conn, &run.stack_id).await?;
    drop(conn);
    let stack = stack.ok_or(WorkspaceError::Missing)?;
    let integration = stack.integration_id.ok_or(WorkspaceError::Missing)?;
    blob(
        state,
        &source::key(&integration, stack.project_id, &run.commit_sha),
    )
    .await
}

async fn blob(state: &AppState, key: &str) -> Result<ByteStream, WorkspaceError> {
    state.blobs.get(key).await?.ok_or(WorkspaceError::Missing)
}

/// Deletes the stored workspaces of runs that ended (or are gone): only a
/// run waiting for its apply needs one.
pub async fn sweep_workspaces(state: &AppState) -> Result<usize, anyhow::Error> {
    let mut swept = 0;
    for key in state.blobs.keys().await? {
        let mut conn = state.store.conn().await?;
        let ended = if let Some(run_id) = crate::blobs::run_of_workspace_key(&key) {
            runs::get(&mut conn, run_id)
                .await?
                .is_none_or(|run| run.state.is_terminal())
        } else if let Some(commit) = source::commit_of_key(&key) {
            // A source is kept while a run at its commit may still plan.
            !runs::any_waiting_at(&mut conn, commit).await?
        } else {
            continue;
        };
        drop(conn);
        if ended {
            state.blobs.delete(&key).await?;
            swept += 1;
        }
    }
    Ok(swept)
}

/// An embedded worker: the [`Control`] of a worker inside the server.
pub struct Local {
    pub state: AppState,
    pub name: String,
}

fn control_error(error: impl std::fmt::Display) -> ControlError {
    ControlError(error.to_string())
}

impl Control for Local {
    async fn claim(&self) -> Result<Option<Assignment>, ControlError> {
        claim_within(&self.state, &self.name, Duration::from_secs(2))
            .await
            .map_err(control_error)
    }

    async fn heartbeat(&self, run: &str) -> Result<Heartbeat, ControlError> {
        heartbeat(&self.state, run, &self.name)
            .await
            .map_err(control_error)
    }

    async fn log(&self, run: &str, text: String) -> Result<(), ControlError> {
        log(&self.state, run, &self.name, text)
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn step(&self, run: &str, step: &Step) -> Result<Option<String>, ControlError> {
        match report(&self.state, run, &self.name, step).await {
            Ok(Ok(run)) => Ok(Some(run.state.as_str().to_owned())),
            Ok(Err(refused)) => {
                tracing::info!(run.id = %run, %refused, "step refused");
                Ok(None)
            }
            Err(error) => Err(control_error(error)),
        }
    }

    async fn put_workspace(
        &self,
        run: &str,
        archive: &std::path::Path,
    ) -> Result<(), ControlError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(control_error)?;
        let body: ByteStream = Box::pin(tokio_util::io::ReaderStream::new(file));
        put_workspace(&self.state, run, &self.name, body)
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn get_source(&self, run: &str, archive: &std::path::Path) -> Result<(), ControlError> {
        let mut body = get_source(&self.state, run, &self.name)
            .await
            .map_err(control_error)?;
        write_stream(&mut body, archive)
            .await
            .map_err(control_error)
    }

    async fn get_workspace(
        &self,
        run: &str,
        archive: &std::path::Path,
    ) -> Result<(), ControlError> {
        let mut body = get_workspace(&self.state, run, &self.name)
            .await
            .map_err(control_error)?;
        write_stream(&mut body, archive)
            .await
            .map_err(control_error)
    }

    async fn release(&self, run: &str) -> Result<(), ControlError> {
        release(&self.state, run, &self.name)
            .await
            .map_err(control_error)
    }
}

async fn write_stream(body: &mut ByteStream, path: &std::path::Path) -> std::io::Result<()> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path).await?;
    while let Some(chunk) = body.next().await {
        file.write_all(&chunk?).await?;
    }
    file.flush().await
}

/// Starts the embedded pool: `count` workers that stop claiming when
/// `shutdown` turns `true` and end once their run is done or handed back.
pub fn spawn_pool(
    state: &AppState,
    owner: &str,
    count: u32,
    sandbox: gantry_runner::sandbox::Sandbox,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let options = gantry_runner::agent::Options {
        work_dir: state.config.data_dir.join("workspaces"),
        shutdown_grace: state.config.worker_shutdown_grace,
        kill_grace: Duration::from_secs(10),
        sandbox,
    };
    (0..count)
        .map(|n| {
            let control = Arc::new(Local {
                state: state.clone(),
                name: format!("{owner}-{n}"),
            });
            tokio::spawn(gantry_runner::agent::work(
                control,
                options.clone(),
                shutdown.clone(),
            ))
        })
        .collect()
}
