//! Delivering the outbox to GitLab: commit statuses, merge request
//! comments and deployments (`docs/reporting.md`). Every server runs one
//! loop; writes are leased, so servers share the work, and per key only
//! the newest pending write is sent (`gantry_store::outbox::claim`).

use std::time::Duration;

use futures_util::StreamExt;
use gantry_domain::report::{self, CommitStatus, NoteView, Write};
use gantry_gitlab::reporting::{self, Deployment, Status};
use gantry_gitlab::{GitLab, GitLabError};
use gantry_store::outbox::{self, Entry, Outcome, Remote};
use gantry_store::runs::{self, Run};
use gantry_store::{Millis, StoreError, integrations, stacks};

use crate::state::AppState;

/// Writes claimed per pass, and sent at once.
const BATCH: i64 = 32;
const PARALLEL: usize = 8;
/// After this many failed attempts a write is dropped.
const MAX_ATTEMPTS: i64 = 30;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// GitLab.com's limit on notes created per minute, per integration.
pub const NOTES_PER_MINUTE: usize = 60;

/// Note creations per integration in the last minute, counted in the
/// database, so the limit holds for all servers together.
pub struct NoteThrottle {
    store: gantry_store::Store,
}

impl NoteThrottle {
    pub fn new(store: gantry_store::Store) -> Self {
        Self { store }
    }

    /// Takes a slot for `integration`, or says when one frees up.
    async fn take(&self, integration: &str) -> Result<(), Failure> {
        let scope = format!("notes:{integration}");
        let taken = gantry_store::cluster::take_rate_slot(
            &self.store,
            &scope,
            NOTES_PER_MINUTE,
            Duration::from_secs(60),
            Millis::now(),
        )
        .await?;
        taken.map_err(Failure::Throttled)
    }
}

/// Delivers the outbox until `stopping` turns true; a pass under way is
/// finished first, so its outcomes are recorded.
pub async fn work(
    state: AppState,
    owner: String,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    while !*stopping.borrow() {
        // Registered before the pass: a write committed meanwhile wakes the
        // next wait at once. Other servers' writes, and retries that fall
        // due, are found by the poll.
        let recorded = state.store.outbox_signal().notified();
        tokio::pin!(recorded);
        recorded.as_mut().enable();
        let delivered = pass(&state, &owner).await;
        let pause = match delivered {
            Ok(0) => Duration::from_millis(250),
            Ok(_) => Duration::ZERO,
            Err(error) => {
                tracing::warn!(%error, "cannot claim outbox writes; trying again");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut recorded, if pause < Duration::from_secs(1) => {}
            // The server is gone when the signal's sender is.
            changed = stopping.changed() => if changed.is_err() { break },
        }
    }
}

/// Gives up the leases of a stopped (or stuck) reporter, so that its
/// unfinished writes go out from the next server at once instead of after
/// the lease.
pub async fn release(state: &AppState, owner: &str) {
    let released = async {
        let mut conn = state.store.conn().await?;
        outbox::release(&mut conn, owner).await
    };
    match released.await {
        Ok(0) => {}
        Ok(writes) => tracing::info!(writes, "released unfinished GitLab writes"),
        Err(error) => {
            tracing::warn!(%error, "cannot release GitLab writes; they go out after the lease")
        }
    }
}

/// Writes due or being sent, by any server.
pub async fn outstanding(state: &AppState) -> Result<i64, StoreError> {
    let mut conn = state.store.conn().await?;
    outbox::outstanding(&mut conn, Millis::now()).await
}

/// Claims the writes due now and sends them; how many it took.
pub async fn pass(state: &AppState, owner: &str) -> Result<usize, StoreError> {
    let throttle = &*state.note_throttle;
    let now = Millis::now();
    // A write leased by a server that died is sent again once the lease
    // (`--lease-seconds`) lapses.
    let until = now.plus(state.config.lease);
    let entries = outbox::claim(&state.store, owner, until, BATCH, now).await?;
    let count = entries.len();
    futures_util::stream::iter(entries)
        .for_each_concurrent(PARALLEL, |entry| async move {
            // The lease is renewed while GitLab is asked, however slow it is.
            let renew = async {
                loop {
                    tokio::time::sleep((state.config.lease / 3).max(Duration::from_millis(100))).await;
                    let until = Millis::now().plus(state.config.lease);
                    let renewed = async {
                        let mut conn = state.store.conn().await?;
                        outbox::renew(&mut conn, entry.id, owner, until).await
                    };
                    if let Err(error) = renewed.await {
                        tracing::warn!(outbox.key = %entry.key, %error, "cannot renew a write's lease");
                    }
                }
            };
            let outcome = tokio::select! {
                outcome = deliver(state, &entry, throttle) => outcome,
                () = renew => unreachable!("renewing a lease never ends"),
            };
            if let Outcome::Dropped { error } = &outcome {
                tracing::warn!(outbox.key = %entry.key, %error, "GitLab refused a write for good; dropped");
            }
            let finished = async {
                let mut conn = state.store.conn().await?;
                outbox::finish(&mut conn, entry.id, owner, &outcome, Millis::now()).await
            };
            if let Err(error) = finished.await {
                tracing::warn!(outbox.key = %entry.key, %error, "cannot record a delivery; its lease lapses and it is sent again");
            }
        })
        .await;
    Ok(count)
}

/// Why a delivery did not happen.
enum Failure {
    GitLab(GitLabError),
    Store(StoreError),
    /// The write can never be made (its integration is gone, …).
    Impossible(String),
    /// The note throttle is full; try again after this long.
    Throttled(Duration),
}

impl From<GitLabError> for Failure {
    fn from(error: GitLabError) -> Self {
        Self::GitLab(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

fn backoff(attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    let base = Duration::from_secs(1).saturating_mul(2u32.saturating_pow(exponent));
    let base = base.min(MAX_BACKOFF);
    // Up to 25 % jitter, so that writes hit by one outage spread out.
    base + base.mul_f64(rand::random::<f64>() * 0.25)
}

async fn deliver(state: &AppState, entry: &Entry, throttle: &NoteThrottle) -> Outcome {
    let now = Millis::now();
    let failure = match attempt(state, entry, throttle).await {
        Ok(outcome) => return outcome,
        Err(failure) => failure,
    };
    let retry = |wait: Duration, error: String| {
        if entry.attempts + 1 >= MAX_ATTEMPTS {
            Outcome::Dropped {
                error: format!("gave up after {MAX_ATTEMPTS} attempts: {error}"),
            }
        } else {
            Outcome::Retry {
                at: now.plus(wait),
                error,
            }
        }
    };
    let pause = |reason: String| async move {
        let marked = async {
            let mut conn = state.store.conn().await?;
            outbox::mark_unhealthy(&mut conn, &entry.integration_id, &reason, now).await
        };
        match marked.await {
            Ok(()) => Outcome::Paused,
            Err(store) => retry(backoff(entry.attempts), store.to_string()),
        }
    };
    match failure {
        Failure::GitLab(error @ GitLabError::Unauthorized { .. }) => {
            let reason = format!("GitLab rejected the token: {error}");
            tracing::warn!(integration.id = %entry.integration_id, %reason, "pausing the integration's writes until its token is fixed");
            pause(reason).await
        }
        Failure::GitLab(error @ GitLabError::NoAgent { .. }) => {
            // Resumed when an agent of the pool connects (`vcs_agents`).
            tracing::warn!(integration.id = %entry.integration_id, %error, "pausing the integration's writes until a VCS agent connects");
            let outcome = pause(error.to_string()).await;
            resume_if_connected(state, &entry.integration_id).await;
            outcome
        }
        Failure::GitLab(error) if error.is_transient() => {
            let wait = error
                .retry_after()
                .unwrap_or_else(|| backoff(entry.attempts));
            retry(wait, error.to_string())
        }
        Failure::GitLab(error) => Outcome::Dropped {
            error: error.to_string(),
        },
        Failure::Store(error) => retry(backoff(entry.attempts), error.to_string()),
        Failure::Impossible(error) => Outcome::Dropped { error },
        Failure::Throttled(wait) => Outcome::Retry {
            at: now.plus(wait),
            error: format!("waiting: at most {NOTES_PER_MINUTE} comments a minute per integration"),
        },
    }
}

/// An agent that connected while the pause was being recorded found
/// nothing to resume: resume now.
async fn resume_if_connected(state: &AppState, integration_id: &str) {
    let resumed = async {
        let mut conn = state.store.conn().await?;
        let Some(integration) = integrations::get(&mut conn, integration_id).await? else {
            return Ok(());
        };
        let url = integration.user_facing_host_url;
        match crate::vcs_agents::pool_of(&url) {
            Some(pool) if state.vcs_agents.connected(pool) > 0 => {
                outbox::resume_private(&mut conn, &url).await
            }
            _ => Ok(()),
        }
    };
    if let Err(error) = resumed.await {
        tracing::warn!(%error, "cannot resume an integration's writes");
    }
}

async fn attempt(
    state: &AppState,
    entry: &Entry,
    throttle: &NoteThrottle,
) -> Result<Outcome, Failure> {
    let mut conn = state.store.conn().await?;
    let Some(run) = runs::get(&mut conn, &entry.run_id).await? else {
        return Ok(Outcome::Superseded);
    };
    let integration = integrations::get(&mut conn, &entry.integration_id)
        .await?
        .ok_or_else(|| Failure::Impossible("the integration was deleted".into()))?;
    let client = state
        .gitlab
        .client(&integration)
        .map_err(|error| Failure::Impossible(error.to_string()))?;
    let remote = outbox::remote(&mut conn, &entry.key).await?;
    drop(conn);
    let project_id = u64::try_from(entry.project_id).map_err(|_| {
        Failure::Impossible(format!(
            "project id {} is not a GitLab id",
            entry.project_id
        ))
    })?;
    let entry_state = entry.state;
    let run_url = format!("{}/runs/{}", state.config.public_url, run.id);
    let stored = match entry.kind {
        Write::Status => {
            let status = CommitStatus::of(entry_state);
            // Never backwards within a run; a newer run on the same commit
            // and ref starts afresh, as GitLab does after a finished status.
            let same_run = remote.run_id.as_deref().is_none_or(|id| id == run.id);
            let earlier = same_run
                && remote
                    .last_state
                    .is_some_and(|last| CommitStatus::of(last).rank() > status.rank());
            if earlier {
                return Ok(Outcome::Superseded);
            }
            let description =
                report::description(entry_state, run.summary.as_ref(), run.reason.as_deref());
            reporting::set_status(
                &client,
                &Status {
                    project_id,
                    sha: &run.commit_sha,
                    state: status.as_str(),
                    name: &report::context_name(&run.stack_id),
                    git_ref: &run.branch,
                    target_url: &run_url,
                    description: &description,
                },
            )
            .await?;
            Remote {
                remote_id: None,
                last_state: Some(entry.state),
                run_id: Some(run.id.clone()),
            }
        }
        Write::Note => {
            let iid = run
                .merge_request_iid
                .and_then(|iid| u64::try_from(iid).ok())
                .ok_or_else(|| Failure::Impossible("the run has no merge request".into()))?;
            let log = {
                let mut conn = state.store.conn().await?;
                runs::log(&mut conn, &run.id).await?
            };
            let body = report::note_body(&NoteView {
                stack_id: &run.stack_id,
                run_id: &run.id,
                run_url: &run_url,
                log_url: &format!("{}/api/v1/runs/{}/logs", state.config.public_url, run.id),
                state: run.state,
                reason: run.reason.as_deref(),
                commit_sha: &run.commit_sha,
                changes: run.summary.as_ref(),
                log: &log,
            });
            let note = note(
                &client, throttle, entry, &remote, project_id, iid, &run, &body,
            )
            .await?;
            Remote {
                remote_id: Some(note),
                last_state: Some(run.state),
                run_id: Some(run.id.clone()),
            }
        }
        Write::Deployment => {
            let Some(status) = report::deployment_status(entry_state) else {
                return Ok(Outcome::Superseded);
            };
            let branch = {
                let mut conn = state.store.conn().await?;
                stacks::get(&mut conn, &run.stack_id)
                    .await?
                    .map_or_else(|| run.branch.clone(), |stack| stack.branch)
            };
            let environment = report::context_name(&run.stack_id);
            let known = match remote.remote_id {
                Some(id) => Some(id),
                None => {
                    reporting::find_deployment(&client, project_id, &environment, &run.commit_sha)
                        .await?
                }
            };
            let id = match known {
                Some(id) => {
                    reporting::edit_deployment(&client, project_id, id, status).await?;
                    id
                }
                None => {
                    reporting::create_deployment(
                        &client,
                        &Deployment {
                            project_id,
                            environment: &environment,
                            sha: &run.commit_sha,
                            git_ref: &branch,
                            status,
                        },
                    )
                    .await?
                }
            };
            Remote {
                remote_id: Some(id),
                last_state: Some(entry.state),
                run_id: Some(run.id.clone()),
            }
        }
    };
    let mut conn = state.store.conn().await?;
    outbox::set_remote(&mut conn, &entry.key, &stored, Millis::now()).await?;
    Ok(Outcome::Delivered)
}

/// Edits the stack's comment on the MR, finding it by its marker when its
/// id is not known (a restart, or a crash after GitLab created it), and
/// creates it only when there is none.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the parts of one note write"
)]
async fn note(
    client: &GitLab,
    throttle: &NoteThrottle,
    entry: &Entry,
    remote: &Remote,
    project_id: u64,
    iid: u64,
    run: &Run,
    body: &str,
) -> Result<u64, Failure> {
    let known = match remote.remote_id {
        Some(id) => Some(id),
        None => {
            let marker = report::note_marker(&run.stack_id);
            reporting::find_note(client, project_id, iid, &marker).await?
        }
    };
    if let Some(id) = known {
        match reporting::edit_note(client, project_id, iid, id, body).await {
            Ok(()) => return Ok(id),
            // Deleted by someone: a new one is made below.
            Err(GitLabError::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    throttle.take(&entry.integration_id).await?;
    Ok(reporting::create_note(client, project_id, iid, body).await?)
}
