//! Processing stored deliveries: the `process_delivery` job, run by every
//! server, and the same processing on replay.
//!
//! Each delivery is processed in two steps. Planning reads the delivery,
//! finds the stacks of its project and asks GitLab for the changed files
//! when the payload does not list them all, with no transaction open.
//! Applying then creates and cancels runs, records the outcome and
//! completes the job in one transaction, so a delivery takes effect once.

use std::sync::Arc;
use std::time::Duration;

use gantry_domain::event::Event;
use gantry_domain::rules::{self, ChangedFiles, Decision, StackFacts};
use gantry_domain::stack::Affects;
use gantry_gitlab::{GitLabError, projects, webhook};
use gantry_store::crypto::Keyring;
use gantry_store::deliveries::{self, Delivery, Processed, Status};
use gantry_store::jobs::{self, ClaimedJob, Lease, LeaseError};
use gantry_store::runs::{self, Created, NewRun};
use gantry_store::stacks::Stack;
use gantry_store::{Millis, Store, StoreError, Tx, integrations, stacks};

use crate::routes::integrations::token_context;

/// What processing needs: the database, the keyring to open integration
/// tokens, and the GitLab client.
#[derive(Clone)]
pub struct Processor {
    pub store: Store,
    pub keyring: Arc<Keyring>,
    pub gitlab: gantry_gitlab::Http,
    /// Woken after runs are created.
    pub runs_signal: Arc<tokio::sync::Notify>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("delivery {0} does not exist")]
    Missing(String),
    #[error("the body of delivery {0} was pruned by retention; it cannot be processed again")]
    Pruned(String),
    /// GitLab could not be asked now; the job is retried later.
    #[error("{0}")]
    GitLab(GitLabError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What applying a delivery will do.
struct Plan {
    delivery: String,
    status: Status,
    /// The outcome when there is nothing to decide, or its first words.
    outcome: String,
    error: Option<String>,
    decisions: Vec<Decision>,
    trigger: String,
}

impl Processor {
    /// Processes a delivery now and returns it (a replay).
    pub async fn process(&self, id: &str) -> Result<Delivery, ProcessError> {
        let plan = self.plan(id).await?;
        let mut tx = self.store.begin().await?;
        apply(&mut tx, plan, None).await?;
        tx.commit().await?;
        self.runs_signal.notify_waiters();
        let mut conn = self.store.conn().await?;
        deliveries::by_id(&mut conn, id)
            .await?
            .ok_or_else(|| ProcessError::Missing(id.to_owned()))
    }

    async fn plan(&self, id: &str) -> Result<Option<Plan>, ProcessError> {
        let mut conn = self.store.conn().await?;
        let Some((delivery, body)) = deliveries::with_body(&mut conn, id).await? else {
            return Ok(None);
        };
        let trigger = format!("delivery:{id}");
        let simple = |status, outcome: String, error: Option<String>| Plan {
            delivery: id.to_owned(),
            status,
            outcome,
            error,
            decisions: Vec::new(),
            trigger: trigger.clone(),
        };
        if delivery.status == Status::Duplicate.as_str() {
            // A duplicate causes nothing, however often it is processed.
            let outcome = delivery.outcome.clone().unwrap_or_default();
            return Ok(Some(simple(Status::Duplicate, outcome, None)));
        }
        let body = body.ok_or_else(|| ProcessError::Pruned(id.to_owned()))?;
        let parsed = webhook::kind_of(&delivery.event, &body).and_then(|kind| match kind {
            Some(kind) => webhook::parse(kind, &body).map(Some),
            None => Ok(None),
        });
        let event = match parsed {
            Ok(Some(event)) => event,
            Ok(None) => {
                let outcome = format!("Gantry does not act on {:?} events", delivery.event);
                return Ok(Some(simple(Status::Ignored, outcome, None)));
            }
            Err(error) => {
                let outcome = "the payload could not be read; replay it after a fix".to_owned();
                return Ok(Some(simple(
                    Status::Rejected,
                    outcome,
                    Some(error.to_string()),
                )));
            }
        };
        let project = event.project().clone();
        let project_id = i64::try_from(project.id).unwrap_or(i64::MAX);
        let found = stacks::for_project(&mut conn, &delivery.integration_id, project_id).await?;
        let path = if project.path.is_empty() {
            String::new()
        } else {
            format!(" ({})", project.path)
        };
        if found.is_empty() {
            let outcome = format!(
                "{}: no stack uses project {}{path}",
                event.describe(),
                project.id
            );
            return Ok(Some(simple(Status::Accepted, outcome, None)));
        }
        let integration = integrations::get(&mut conn, &delivery.integration_id).await?;
        drop(conn);
        let files = match integration {
            Some(integration) => self.changed_files(&integration, &event, &found).await,
            None => Ok(Vec::new()),
        };
        let files = match files {
            Ok(files) => files,
            Err(error) if error.is_transient() => return Err(ProcessError::GitLab(error)),
            Err(error) => {
                let outcome = format!(
                    "{}: the changed files could not be read from GitLab",
                    event.describe()
                );
                return Ok(Some(simple(
                    Status::Accepted,
                    outcome,
                    Some(error.to_string()),
                )));
            }
        };
        let mut affects = Vec::with_capacity(found.len());
        for stack in &found {
            let globs: Vec<String> =
                serde_json::from_str(&stack.additional_project_globs).unwrap_or_default();
            // Globs were checked when stored; a bad one matches nothing.
            let matcher = Affects::new(&stack.project_root, &globs)
                .unwrap_or_else(|_| Affects::root_only(&stack.project_root));
            affects.push(matcher);
        }
        let facts: Vec<StackFacts<'_>> = found
            .iter()
            .zip(&affects)
            .map(|(stack, affects)| StackFacts {
                id: &stack.id,
                branch: &stack.branch,
                affects,
                allow_forks: stack.allow_forks == 1,
            })
            .collect();
        let decisions = rules::decide(&event, &facts, &files);
        Ok(Some(Plan {
            delivery: id.to_owned(),
            status: Status::Accepted,
            outcome: event.describe(),
            error: None,
            decisions,
            trigger,
        }))
    }

    async fn changed_files(
        &self,
        integration: &integrations::Integration,
        event: &Event,
        stacks: &[Stack],
    ) -> Result<Vec<String>, GitLabError> {
        let needs_default =
            matches!(event, Event::Push(push) if push.creates_branch() && !push.deletes_branch());
        let quick = rules::changed_files(event, "");
        if matches!(quick, ChangedFiles::NotNeeded | ChangedFiles::Listed(_)) {
            return Ok(match quick {
                ChangedFiles::Listed(files) => files,
                _ => Vec::new(),
            });
        }
        let token = self
            .keyring
            .decrypt(&token_context(&integration.id), &integration.token_sealed)
            .map_err(|e| {
                GitLabError::Request(format!(
                    "cannot open the token of integration {:?}: {e}",
                    integration.id
                ))
            })?;
        let client = self.gitlab.client(&integration.api_host_url, token)?;
        let project_id = event.project().id;
        let default_branch = if needs_default {
            projects::find(&client, &project_id.to_string())
                .await?
                .default_branch
                .unwrap_or_else(|| stacks.first().map(|s| s.branch.clone()).unwrap_or_default())
        } else {
            String::new()
        };
        match rules::changed_files(event, &default_branch) {
            ChangedFiles::Compare { from, to } => {
                projects::changed_files(&client, project_id, &from, &to).await
            }
            ChangedFiles::Listed(files) => Ok(files),
            ChangedFiles::NotNeeded => Ok(Vec::new()),
        }
    }
}

/// Creates and cancels the runs a plan decided, records the outcome and,
/// with a lease, completes the job: all in `tx`.
async fn apply(tx: &mut Tx, plan: Option<Plan>, lease: Option<&Lease>) -> Result<(), ProcessError> {
    let now = Millis::now();
    // The lease first: a job another worker took over changes nothing here.
    if let Some(lease) = lease {
        jobs::complete_in(tx, lease, now).await?;
    }
    // Deleted with its integration: nothing left to do.
    let Some(plan) = plan else {
        return Ok(());
    };
    let mut created = Vec::new();
    let mut runs_of_delivery = Vec::new();
    let mut canceled = Vec::new();
    let mut skipped = Vec::new();
    for decision in &plan.decisions {
        match decision {
            Decision::Run {
                stack,
                kind,
                commit,
                branch,
                merge_request_iid,
            } => {
                let new = NewRun {
                    stack_id: stack,
                    kind: *kind,
                    commit_sha: commit,
                    branch,
                    merge_request_iid: *merge_request_iid,
                    trigger: &plan.trigger,
                };
                let (run, how, superseded) = runs::create(tx, &new, now).await?;
                if how == Created::New {
                    created.push(format!("{} run {} for {stack}", kind.as_str(), run.id));
                }
                runs_of_delivery.push(run.id);
                canceled.extend(superseded);
            }
            Decision::CancelBranch { stack, branch } => {
                let cause = format!("branch {branch} was deleted");
                canceled.extend(
                    runs::cancel_queued_proposed(tx, stack, Some(branch), None, &cause, now)
                        .await?,
                );
            }
            Decision::CancelMergeRequest { stack, iid } => {
                let cause = format!("merge request !{iid} was closed");
                canceled.extend(
                    runs::cancel_queued_proposed(tx, stack, None, Some(*iid), &cause, now).await?,
                );
            }
            Decision::Nothing { stack, why } => skipped.push(format!("{stack}: {why}")),
        }
    }
    let mut outcome = plan.outcome.clone();
    if !plan.decisions.is_empty() {
        let mut parts = Vec::new();
        if !created.is_empty() {
            parts.push(format!("created {}", created.join(", ")));
        }
        let reused = runs_of_delivery.len() - created.len();
        if reused > 0 {
            parts.push(format!(
                "{reused} run(s) for the same commit already existed"
            ));
        }
        if !canceled.is_empty() {
            parts.push(format!("canceled queued run(s) {}", canceled.join(", ")));
        }
        if !skipped.is_empty() {
            parts.push(format!("no run for {}", skipped.join("; ")));
        }
        if parts.is_empty() {
            parts.push("nothing to do".to_owned());
        }
        outcome = format!("{outcome}: {}", parts.join("; "));
    }
    let processed = Processed {
        status: plan.status,
        outcome: &outcome,
        error: plan.error.as_deref(),
        runs: &runs_of_delivery,
    };
    deliveries::finish(tx, &plan.delivery, &processed, None, now).await?;
    tracing::debug!(delivery.id = %plan.delivery, outcome, "delivery processed");
    Ok(())
}

/// The most delivery jobs one worker claims and commits together.
const BATCH: u32 = 16;

/// Claims and processes delivery jobs until the task is dropped: a batch
/// at a time, planned one by one, applied in one transaction.
pub async fn work(processor: Processor, owner: String, lease_for: Duration) {
    let store = processor.store.clone();
    loop {
        let claimed = jobs::claim_many_or_wait(
            &store,
            &[deliveries::PROCESS_JOB],
            &owner,
            lease_for,
            Duration::from_secs(60),
            BATCH,
        )
        .await;
        let batch = match claimed {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "cannot claim delivery jobs; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let mut plans = Vec::with_capacity(batch.len());
        for job in &batch {
            let id = job.payload["delivery"].as_str().unwrap_or_default();
            match processor.plan(id).await {
                Ok(plan) => plans.push((job, plan)),
                Err(error) => fail(&store, job, &error).await,
            }
        }
        let applied = apply_batch(&store, plans).await;
        processor.runs_signal.notify_waiters();
        if let Err(error) = applied {
            // Nothing was committed; the leases lapse and the reaper
            // queues the jobs again.
            tracing::warn!(%error, jobs = batch.len(), "a batch of deliveries failed to commit");
        }
    }
}

async fn fail(store: &Store, job: &ClaimedJob, error: &ProcessError) {
    let id = job.payload["delivery"].as_str().unwrap_or_default();
    tracing::warn!(delivery.id = %id, %error, "processing a delivery failed; it will be retried");
    if let Err(error) = jobs::fail(store, &job.lease, &error.to_string(), Millis::now()).await {
        tracing::warn!(delivery.id = %id, %error, "cannot record the failure");
    }
}

async fn apply_batch(
    store: &Store,
    plans: Vec<(&ClaimedJob, Option<Plan>)>,
) -> Result<(), StoreError> {
    if plans.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    for (job, plan) in plans {
        match apply(&mut tx, plan, Some(&job.lease)).await {
            Ok(()) => {}
            Err(ProcessError::Store(error) | ProcessError::Lease(LeaseError::Store(error))) => {
                return Err(error);
            }
            // A lost lease: another worker has the job now.
            Err(error) => tracing::warn!(%error, "skipped a delivery job"),
        }
    }
    tx.commit().await
}

/// Drops the bodies of deliveries processed longer ago than `retention`,
/// once an hour.
pub async fn prune(store: Store, retention: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        let before = Millis(Millis::now().0 - retention.as_millis() as i64);
        match deliveries::prune_bodies(&store, before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(
                deliveries.pruned = pruned,
                "pruned bodies of old deliveries"
            ),
            Err(error) => tracing::warn!(%error, "pruning old delivery bodies failed"),
        }
    }
}
