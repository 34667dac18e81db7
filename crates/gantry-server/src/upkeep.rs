//! Gantry keeps GitLab's side of the connection in order, as jobs on the
//! durable queue (retried, never blocking an API answer):
//!
//! - `sync_hooks` for one project of one integration: exactly one hook for
//!   the integration's endpoint while a stack of the integration uses the
//!   project, none once none does; drifted settings repaired, extras
//!   deleted, the token set again after a secret rotation. A token that
//!   may not manage hooks there leaves the project `forbidden`.
//! - `check_token` for one integration: the token asked about again, its
//!   facts and warnings recomputed, the integration marked unhealthy when
//!   GitLab refuses it (and healthy again when it accepts it), and, with
//!   `rotate_token_days_before_expiry`, the token rotated once.
//!
//! Every server schedules them: hook checks hourly, token checks at start
//! and daily; idempotency keys per hour and day keep several servers
//! from doing the same check twice.

use std::time::Duration;

use gantry_gitlab::GitLabError;
use gantry_gitlab::hooks::{self, WantedHook};
use gantry_gitlab::token::{self, TokenCheckError};
use gantry_store::integrations::{self, Integration, webhook_secret_context};
use gantry_store::jobs::{self, ClaimedJob, EnqueueError, NewJob};
use gantry_store::project_hooks::{self, ProjectHook};
use gantry_store::{Millis, StoreError, Tx, outbox};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::gitlab::AccessError;
use crate::routes::integrations::webhook_endpoint;
use crate::state::AppState;

pub const SYNC_HOOKS: &str = "sync_hooks";
pub const CHECK_TOKEN: &str = "check_token";
pub const MODULE_STATUS: &str = "module_status";

/// Queues the commit status `gantry/module/<id>` of a published version.
pub async fn queue_module_status(
    tx: &mut Tx,
    payload: serde_json::Value,
) -> Result<(), StoreError> {
    enqueue(tx, &NewJob::new(MODULE_STATUS, payload)).await
}

/// Writes the commit status of a published module version.
async fn module_status(state: &AppState, job: &ClaimedJob) -> Result<(), Failure> {
    let p = &job.payload;
    let (
        Some(integration_id),
        Some(project_id),
        Some(commit),
        Some(tag),
        Some(module),
        Some(version),
    ) = (
        p["integration"].as_str(),
        p["project_id"].as_u64(),
        p["commit"].as_str(),
        p["tag"].as_str(),
        p["module"].as_str(),
        p["version"].as_str(),
    )
    else {
        return Err(Failure::BadJob(MODULE_STATUS));
    };
    let mut conn = state.store.conn().await?;
    let Some(integration) = integrations::get(&mut conn, integration_id).await? else {
        return Ok(());
    };
    drop(conn);
    let client = state.gitlab.client(&integration)?;
    let name = format!("gantry/module/{module}");
    let target = format!(
        "{}/modules/{module}",
        state.config.public_url.trim_end_matches('/')
    );
    let description = format!("published {version}");
    let status = gantry_gitlab::reporting::Status {
        project_id,
        sha: commit,
        state: "success",
        name: &name,
        git_ref: tag,
        target_url: &target,
        description: &description,
    };
    gantry_gitlab::reporting::set_status(&client, &status).await?;
    Ok(())
}

/// Queues a check of the hook of `project_id` in `tx`; with `rotated`, the
/// hook's token is set again (the webhook secret changed). `key`, when
/// given, keeps a scheduled check from being queued twice.
pub async fn queue_sync(
    tx: &mut Tx,
    integration_id: &str,
    project_id: i64,
    path: &str,
    rotated: bool,
    key: Option<&str>,
) -> Result<(), StoreError> {
    let mut job = NewJob::new(
        SYNC_HOOKS,
        json!({ "integration": integration_id, "project_id": project_id, "path": path, "rotated": rotated }),
    );
    job.idempotency_key = key;
    enqueue(tx, &job).await
}

/// Queues a check of every project of an integration.
pub async fn queue_sync_all(
    tx: &mut Tx,
    integration_id: &str,
    rotated: bool,
    bucket: Option<i64>,
) -> Result<usize, StoreError> {
    let projects = project_hooks::projects(tx, integration_id).await?;
    for (project_id, path) in &projects {
        let key = bucket.map(|b| format!("{SYNC_HOOKS}:{integration_id}:{project_id}:{b}"));
        queue_sync(
            tx,
            integration_id,
            *project_id,
            path,
            rotated,
            key.as_deref(),
        )
        .await?;
    }
    Ok(projects.len())
}

/// Queues a check of an integration's token.
pub async fn queue_token_check(
    tx: &mut Tx,
    integration_id: &str,
    key: Option<&str>,
) -> Result<(), StoreError> {
    let mut job = NewJob::new(CHECK_TOKEN, json!({ "integration": integration_id }));
    job.idempotency_key = key;
    enqueue(tx, &job).await
}

async fn enqueue(tx: &mut Tx, job: &NewJob<'_>) -> Result<(), StoreError> {
    match jobs::enqueue(tx, job, Millis::now()).await {
        Ok(_) | Err(EnqueueError::Duplicate(_)) => Ok(()),
        Err(EnqueueError::Store(error)) => Err(error),
    }
}

/// Queues the scheduled checks: hooks every hour, tokens every day, and
/// tokens once at start (`at_start`).
pub async fn schedule(state: &AppState, at_start: bool) -> Result<(), StoreError> {
    let now = Millis::now();
    let hour = now.0 / 3_600_000;
    let day = now.0 / 86_400_000;
    let mut tx = state.store.begin().await?;
    for integration in integrations::all(&mut tx).await? {
        queue_sync_all(&mut tx, &integration.id, false, Some(hour)).await?;
        let daily = format!("{CHECK_TOKEN}:{}:{day}", integration.id);
        queue_token_check(&mut tx, &integration.id, Some(&daily)).await?;
        if at_start {
            queue_token_check(&mut tx, &integration.id, None).await?;
        }
    }
    tx.commit().await
}

/// Schedules the checks every hour until the task is dropped.
pub async fn scheduler(state: AppState) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    let mut first = true;
    loop {
        every.tick().await;
        if let Err(error) = schedule(&state, first).await {
            tracing::warn!(%error, "cannot schedule the hook and token checks");
        }
        first = false;
    }
}

/// Claims and runs upkeep jobs until the task is dropped.
pub async fn work(state: AppState, owner: String) {
    let lease = state.config.lease;
    loop {
        let claimed = jobs::claim_many_or_wait(
            &state.store,
            &[SYNC_HOOKS, CHECK_TOKEN, MODULE_STATUS],
            &owner,
            lease,
            Duration::from_secs(60),
            4,
        )
        .await;
        match claimed {
            Ok(batch) => {
                for job in batch {
                    run_one(&state, &job).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot claim upkeep jobs; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs every upkeep job that is due, in this task (for tests); how many.
pub async fn run_due(state: &AppState, owner: &str) -> Result<usize, StoreError> {
    let batch = jobs::claim_many(
        &state.store,
        &[SYNC_HOOKS, CHECK_TOKEN, MODULE_STATUS],
        owner,
        state.config.lease,
        Millis::now(),
        16,
    )
    .await?;
    for job in &batch {
        run_one(state, job).await;
    }
    Ok(batch.len())
}

/// Upkeep jobs due or under way, on any server.
pub async fn outstanding(state: &AppState) -> Result<i64, StoreError> {
    jobs::outstanding(
        &state.store,
        &[SYNC_HOOKS, CHECK_TOKEN, MODULE_STATUS],
        Millis::now(),
    )
    .await
}

/// Why an upkeep job failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("GitLab: {0}")]
    GitLab(#[from] GitLabError),
    #[error("the job's payload is not one of a {0} job")]
    BadJob(&'static str),
}

async fn run_one(state: &AppState, job: &ClaimedJob) {
    let lease = state.config.lease;
    // The job's lease is renewed while GitLab is asked.
    let renew = async {
        loop {
            tokio::time::sleep((lease / 3).max(Duration::from_millis(100))).await;
            if let Err(error) =
                jobs::heartbeat(&state.store, &job.lease, lease, Millis::now()).await
            {
                tracing::warn!(job.id = job.lease.job_id, %error, "cannot renew an upkeep job's lease");
            }
        }
    };
    let work = async {
        match job.kind.as_str() {
            SYNC_HOOKS => sync(state, job).await,
            MODULE_STATUS => module_status(state, job).await,
            _ => check_token(state, job).await,
        }
    };
    let done = tokio::select! {
        done = work => done,
        () = renew => unreachable!("renewing never ends"),
    };
    let outcome = match done {
        Ok(()) => match state.store.conn().await {
            Ok(mut conn) => jobs::complete_in(&mut conn, &job.lease, Millis::now())
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        },
        Err(failure) => {
            tracing::warn!(job.kind = %job.kind, job.payload = %job.payload, error = %failure, "an upkeep job failed; it is retried");
            jobs::fail(
                &state.store,
                &job.lease,
                &failure.to_string(),
                Millis::now(),
            )
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
        }
    };
    if let Err(error) = outcome {
        tracing::warn!(job.id = job.lease.job_id, %error, "cannot record an upkeep job's outcome");
    }
}

/// Makes the project's hooks what the integration wants, and records it.
async fn sync(state: &AppState, job: &ClaimedJob) -> Result<(), Failure> {
    let payload = &job.payload;
    let (Some(integration_id), Some(project_id), Some(path)) = (
        payload["integration"].as_str(),
        payload["project_id"].as_i64(),
        payload["path"].as_str(),
    ) else {
        return Err(Failure::BadJob(SYNC_HOOKS));
    };
    let rotated = payload["rotated"].as_bool().unwrap_or(false);
    let mut conn = state.store.conn().await?;
    let Some(integration) = integrations::get(&mut conn, integration_id).await? else {
        return Ok(());
    };
    let now = Millis::now();
    if !integration.manage_hooks {
        let hook = ProjectHook::new(integration_id, project_id, path, "unmanaged", now);
        project_hooks::record(&mut conn, &hook).await?;
        return Ok(());
    }
    let wanted_here = project_hooks::in_use(&mut conn, integration_id, project_id).await?;
    drop(conn);
    let project = u64::try_from(project_id).map_err(|_| Failure::BadJob(SYNC_HOOKS))?;
    let client = state.gitlab.client(&integration)?;
    let url = webhook_endpoint(state, integration_id);
    let ours: Vec<hooks::ProjectHook> = match hooks::list(&client, project).await {
        Ok(all) => all.into_iter().filter(|hook| hook.url == url).collect(),
        Err(error @ (GitLabError::Forbidden { .. } | GitLabError::NotFound { .. })) => {
            let mut hook = ProjectHook::new(integration_id, project_id, path, "forbidden", now);
            hook.error = Some(error.to_string());
            let mut conn = state.store.conn().await?;
            if wanted_here {
                project_hooks::record(&mut conn, &hook).await?;
            } else {
                project_hooks::forget(&mut conn, integration_id, project_id).await?;
            }
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    if !wanted_here {
        for hook in &ours {
            hooks::delete(&client, project, hook.id).await?;
        }
        let mut conn = state.store.conn().await?;
        project_hooks::forget(&mut conn, integration_id, project_id).await?;
        if !ours.is_empty() {
            tracing::info!(integration.id = %integration_id, gitlab.project_id = project_id, "removed the project hook: no stack uses the project");
        }
        return Ok(());
    }
    let secret = state
        .keyring
        .decrypt(
            &webhook_secret_context(integration_id),
            &integration.webhook_secret_sealed,
        )
        .map_err(|_| AccessError::Sealed(integration_id.to_owned()))?;
    let wanted = WantedHook {
        url: &url,
        token: secret.expose_secret(),
    };
    let (found, hook_id) = match ours.split_first() {
        None => ("missing", hooks::create(&client, project, &wanted).await?),
        Some((first, extras)) => {
            for extra in extras {
                hooks::delete(&client, project, extra.id).await?;
            }
            let drifted = first.drifted(&wanted);
            if drifted || rotated {
                hooks::repair(&client, project, first.id, &wanted).await?;
            }
            (if drifted { "drifted" } else { "ok" }, first.id)
        }
    };
    if found != "ok" {
        tracing::info!(integration.id = %integration_id, gitlab.project_id = project_id, found, "repaired the project hook");
    }
    // Recorded against the integration as it is now: `manage_hooks` may
    // have been turned off while GitLab was asked.
    let mut tx = state.store.begin().await?;
    let managed = integrations::get(&mut tx, integration_id)
        .await?
        .is_some_and(|i| i.manage_hooks);
    let mut hook = ProjectHook::new(
        integration_id,
        project_id,
        path,
        if managed { "ok" } else { "unmanaged" },
        Millis::now(),
    );
    hook.hook_id = i64::try_from(hook_id).ok();
    project_hooks::record(&mut tx, &hook).await?;
    tx.commit().await?;
    Ok(())
}

/// Asks GitLab about the integration's token again, records what it
/// said, and rotates the token when it is due.
async fn check_token(state: &AppState, job: &ClaimedJob) -> Result<(), Failure> {
    let Some(integration_id) = job.payload["integration"].as_str() else {
        return Err(Failure::BadJob(CHECK_TOKEN));
    };
    let mut conn = state.store.conn().await?;
    let Some(integration) = integrations::get(&mut conn, integration_id).await? else {
        return Ok(());
    };
    drop(conn);
    let client = state.gitlab.client(&integration)?;
    let today = time::OffsetDateTime::now_utc().date();
    let checked = token::check(&client, today).await;
    let now = Millis::now();
    let mut conn = state.store.conn().await?;
    let mut warnings = match &checked {
        Ok(facts) => facts.warnings.clone(),
        Err(TokenCheckError::Refused(refused)) => vec![refused.to_string()],
        Err(TokenCheckError::GitLab(error)) => {
            let mut kept: Vec<String> = integration
                .warnings
                .iter()
                .filter(|w| !w.starts_with("GitLab could not be asked"))
                .cloned()
                .collect();
            kept.push(format!(
                "GitLab could not be asked about the token: {error}"
            ));
            kept
        }
    };
    if let Some(started) = integration.token_rotation_started_at {
        warnings.push(format!(
            "a rotation of the token that Gantry asked of GitLab at {} did not finish, so Gantry will not \
             rotate it again (GitLab revokes every token of a family whose rotated token is reused): set a new `api_token`",
            crate::views::timestamp(started)
        ));
    }
    let facts = match checked {
        Ok(facts) => {
            let stored = integrations::TokenFacts {
                scopes: facts.scopes.clone(),
                expires_at: facts.expires_at.clone(),
                user_id: i64::try_from(facts.user_id).unwrap_or(i64::MAX),
                username: facts.username.clone(),
            };
            integrations::record_check(&mut conn, integration_id, Some(&stored), &warnings, now)
                .await?;
            outbox::mark_healthy(&mut conn, integration_id).await?;
            Some(facts)
        }
        Err(TokenCheckError::Refused(refused)) => {
            integrations::record_check(&mut conn, integration_id, None, &warnings, now).await?;
            outbox::mark_unhealthy(&mut conn, integration_id, &refused.to_string(), now).await?;
            None
        }
        Err(TokenCheckError::GitLab(_)) => {
            integrations::record_check(&mut conn, integration_id, None, &warnings, now).await?;
            None
        }
    };
    drop(conn);
    if let Some(facts) = facts {
        rotate_if_due(state, &integration, facts.expires_at.as_deref(), today).await?;
    }
    Ok(())
}

/// The date a token expires on.
fn date(raw: &str) -> Option<time::Date> {
    time::Date::parse(raw, &time::format_description::well_known::Iso8601::DATE).ok()
}

/// Rotates the token when `rotate_token_days_before_expiry` says it is
/// due, at most once per token: the intent is committed before GitLab is
/// asked, and an intent left by a crash is never retried.
async fn rotate_if_due(
    state: &AppState,
    integration: &Integration,
    expires_at: Option<&str>,
    today: time::Date,
) -> Result<(), Failure> {
    let (Some(days), Some(expires)) = (
        integration.rotate_token_days_before_expiry,
        expires_at.and_then(date),
    ) else {
        return Ok(());
    };
    if (expires - today).whole_days() > days || integration.token_rotation_started_at.is_some() {
        return Ok(());
    }
    let id = &integration.id;
    let mut conn = state.store.conn().await?;
    if !integrations::begin_rotation(&mut conn, id, Millis::now()).await? {
        return Ok(());
    }
    drop(conn);
    // As long as the old token lived (90 days when GitLab does not say),
    // within GitLab's limit of a year.
    let client = state.gitlab.client(integration)?;
    let lifetime = match hooks::own_token_lifetime_days(&client).await {
        Ok(days) => days.unwrap_or(90).clamp(1, 365),
        Err(error) => {
            let mut conn = state.store.conn().await?;
            integrations::abandon_rotation(&mut conn, id).await?;
            return Err(error.into());
        }
    };
    let new_expiry = today + time::Duration::days(lifetime);
    match hooks::rotate_own_token(&client, new_expiry).await {
        Ok(rotated) => {
            let sealed = state
                .keyring
                .encrypt(&integrations::api_token_context(id), &rotated.token);
            let mut conn = state.store.conn().await?;
            integrations::finish_rotation(
                &mut conn,
                id,
                &sealed,
                rotated.expires_at.as_deref(),
                Millis::now(),
            )
            .await?;
            tracing::info!(integration.id = %id, expires_at = ?rotated.expires_at, "rotated the integration's token");
            Ok(())
        }
        // GitLab answered and refused: nothing was rotated.
        Err(
            error @ (GitLabError::Invalid { .. }
            | GitLabError::Forbidden { .. }
            | GitLabError::NotFound { .. }),
        ) => {
            let mut conn = state.store.conn().await?;
            integrations::abandon_rotation(&mut conn, id).await?;
            tracing::warn!(integration.id = %id, %error, "GitLab refused to rotate the token");
            Ok(())
        }
        // No answer (or 401): the outcome is unknown; never ask again.
        Err(error) => {
            tracing::warn!(integration.id = %id, %error, "a token rotation has no known outcome; a new api_token is needed");
            Ok(())
        }
    }
}
