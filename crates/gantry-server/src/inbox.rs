//! Processing stored deliveries: the `process_delivery` job, run by every
//! server, and the same processing on replay.

use std::time::Duration;

use gantry_domain::event::Event;
use gantry_gitlab::webhook;
use gantry_store::deliveries::{self, Delivery, Processed, Status};
use gantry_store::jobs::{self, Lease, LeaseError};
use gantry_store::{Millis, Store, StoreError};

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

/// Processes a delivery and records the outcome. With a lease, the job is
/// completed in the same transaction.
pub async fn process(
    store: &Store,
    id: &str,
    lease: Option<&Lease>,
) -> Result<Delivery, ProcessError> {
    let mut tx = store.begin().await?;
    let delivery = deliveries::by_id(&mut tx, id)
        .await?
        .ok_or_else(|| ProcessError::Missing(id.to_owned()))?;
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
        deliveries::finish(&mut tx, id, &processed, lease, now).await?;
    } else {
        let body = deliveries::body(&mut tx, id)
            .await?
            .ok_or_else(|| ProcessError::Pruned(id.to_owned()))?;
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
        deliveries::finish(&mut tx, id, &processed, lease, now).await?;
    }
    tx.commit().await?;
    let mut conn = store.conn().await?;
    let delivery = deliveries::by_id(&mut conn, id)
        .await?
        .ok_or_else(|| ProcessError::Missing(id.to_owned()))?;
    tracing::info!(
        delivery.id = %delivery.id,
        integration.id = %delivery.integration_id,
        delivery.status = %delivery.status,
        outcome = delivery.outcome.as_deref().unwrap_or(""),
        "delivery processed"
    );
    Ok(delivery)
}

/// Claims and processes delivery jobs until the task is dropped.
pub async fn work(store: Store, owner: String, lease_for: Duration) {
    loop {
        let claimed = jobs::claim_or_wait(
            &store,
            &[deliveries::PROCESS_JOB],
            &owner,
            lease_for,
            Duration::from_secs(60),
        )
        .await;
        let job = match claimed {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot claim delivery jobs; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let id = job.payload["delivery"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match process(&store, &id, Some(&job.lease)).await {
            Ok(_) => {}
            Err(ProcessError::Lease(LeaseError::Lost(_))) => {
                tracing::warn!(delivery.id = %id, "lost the lease while processing; another worker has it");
            }
            Err(error) => {
                tracing::warn!(delivery.id = %id, %error, "processing a delivery failed");
                if let Err(error) =
                    jobs::fail(&store, &job.lease, &error.to_string(), Millis::now()).await
                {
                    tracing::warn!(delivery.id = %id, %error, "cannot record the failure");
                }
            }
        }
    }
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
