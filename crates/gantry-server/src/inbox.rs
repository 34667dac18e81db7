//! Processing stored deliveries: the `process_delivery` job, run by every
//! server, and the same processing on replay.

use std::time::Duration;

use gantry_domain::event::Event;
use gantry_gitlab::webhook;
use gantry_store::deliveries::{self, Delivery, Processed, Status};
use gantry_store::jobs::{self, ClaimedJob, Lease, LeaseError};
use gantry_store::{Millis, Store, StoreError, Tx};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("delivery {0} does not exist")]
    Missing(String),
    #[error("the body of delivery {0} was pruned by retention; it cannot be processed again")]
    Pruned(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an event leads to. Stacks do not exist yet, so every supported
/// event ends in "no stack uses project …".
fn outcome_of(event: &Event) -> String {
    let project = event.project();
    let path = if project.path.is_empty() {
        String::new()
    } else {
        format!(" ({})", project.path)
    };
    format!(
        "{}: no stack uses project {}{path}",
        event.describe(),
        project.id
    )
}

/// Processes a delivery and records the outcome (a replay).
pub async fn process(store: &Store, id: &str) -> Result<Delivery, ProcessError> {
    let mut tx = store.begin().await?;
    process_in(&mut tx, id, None).await?;
    tx.commit().await?;
    let mut conn = store.conn().await?;
    deliveries::by_id(&mut conn, id)
        .await?
        .ok_or_else(|| ProcessError::Missing(id.to_owned()))
}

/// Processes a delivery inside `tx`; with a lease, its job is completed in
/// the same transaction.
async fn process_in(tx: &mut Tx, id: &str, lease: Option<&Lease>) -> Result<(), ProcessError> {
    let Some((delivery, body)) = deliveries::with_body(tx, id).await? else {
        // Deleted with its integration: the job has nothing left to do.
        if let Some(lease) = lease {
            jobs::complete_in(tx, lease, Millis::now()).await?;
            return Ok(());
        }
        return Err(ProcessError::Missing(id.to_owned()));
    };
    let status = Status::parse(&delivery.status).unwrap_or(Status::Rejected);
    let now = Millis::now();
    if status == Status::Duplicate {
        // A duplicate causes nothing, however often it is processed.
        let outcome = delivery.outcome.clone().unwrap_or_default();
        let processed = Processed {
            status,
            outcome: &outcome,
            error: None,
            runs: &[],
        };
        deliveries::finish(tx, id, &processed, lease, now).await?;
        return Ok(());
    }
    let body = body.ok_or_else(|| ProcessError::Pruned(id.to_owned()))?;
    let parsed = webhook::kind_of(&delivery.event, &body).and_then(|kind| match kind {
        Some(kind) => webhook::parse(kind, &body).map(Some),
        None => Ok(None),
    });
    let (status, outcome, error) = match parsed {
        Ok(Some(event)) => (Status::Accepted, outcome_of(&event), None),
        Ok(None) => (
            Status::Ignored,
            format!("Gantry does not act on {:?} events", delivery.event),
            None,
        ),
        Err(error) => (
            Status::Rejected,
            "the payload could not be read; replay it after a fix".to_owned(),
            Some(error.to_string()),
        ),
    };
    let processed = Processed {
        status,
        outcome: &outcome,
        error: error.as_deref(),
        runs: &[],
    };
    deliveries::finish(tx, id, &processed, lease, now).await?;
    tracing::debug!(delivery.id = %id, delivery.status = status.as_str(), outcome, "delivery processed");
    Ok(())
}

/// The most delivery jobs one worker claims and commits together.
const BATCH: u32 = 16;

/// Claims and processes delivery jobs until the task is dropped: a batch
/// at a time, in one transaction, each job inside a savepoint so that one
/// failure is retried alone.
pub async fn work(store: Store, owner: String, lease_for: Duration) {
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
        match process_batch(&store, &batch).await {
            Ok(failures) => {
                for (job, error) in failures {
                    let id = job.payload["delivery"].as_str().unwrap_or_default();
                    tracing::warn!(delivery.id = %id, %error, "processing a delivery failed");
                    if let Err(error) =
                        jobs::fail(&store, &job.lease, &error.to_string(), Millis::now()).await
                    {
                        tracing::warn!(delivery.id = %id, %error, "cannot record the failure");
                    }
                }
            }
            // Nothing was committed; the leases lapse and the reaper
            // queues the jobs again.
            Err(error) => {
                tracing::warn!(%error, jobs = batch.len(), "a batch of deliveries failed to commit")
            }
        }
    }
}

/// One transaction for the batch. Jobs that fail before writing (a
/// missing or pruned delivery, a lost lease) are left out and reported; a
/// database error fails the whole batch, whose leases then lapse.
async fn process_batch<'a>(
    store: &Store,
    batch: &'a [ClaimedJob],
) -> Result<Vec<(&'a ClaimedJob, ProcessError)>, StoreError> {
    let mut tx = store.begin().await?;
    let mut failures = Vec::new();
    for job in batch {
        let id = job.payload["delivery"].as_str().unwrap_or_default();
        match process_in(&mut tx, id, Some(&job.lease)).await {
            Ok(()) => {}
            Err(ProcessError::Store(error) | ProcessError::Lease(LeaseError::Store(error))) => {
                return Err(error);
            }
            Err(error) => failures.push((job, error)),
        }
    }
    tx.commit().await?;
    Ok(failures)
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
