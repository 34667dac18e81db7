//! What `/metrics` shows of the database at the moment it is scraped:
//! deliveries by status, jobs by kind and state and how long the oldest
//! due one has waited, runs by state, the oldest unsent write to GitLab.

use crate::{Millis, Store, StoreError};

/// Counts read in one pass.
#[derive(Debug, Default)]
pub struct Gauges {
    /// `(status, count)` of deliveries.
    pub deliveries: Vec<(String, i64)>,
    /// Acknowledged deliveries whose processing ran out of attempts: their
    /// outcome holds the error until a replay succeeds.
    pub deliveries_failed: i64,
    /// `(kind, state, count)` of jobs.
    pub jobs: Vec<(String, String, i64)>,
    /// `(kind, seconds)`: how long the longest-waiting due job of each kind
    /// has been due.
    pub jobs_oldest_due_seconds: Vec<(String, f64)>,
    /// `(state, count)` of runs.
    pub runs: Vec<(String, i64)>,
    /// How long the oldest pending write to GitLab has waited, in seconds.
    pub outbox_oldest_pending_seconds: f64,
}

pub async fn read(store: &Store, now: Millis) -> Result<Gauges, StoreError> {
    let pool = store.pool();
    let deliveries = sqlx::query_as("SELECT status, COUNT(*) FROM deliveries GROUP BY status")
        .fetch_all(pool)
        .await?;
    let (deliveries_failed,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM deliveries WHERE status = 'accepted' AND error IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    let jobs = sqlx::query_as("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state")
        .fetch_all(pool)
        .await?;
    let due: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, MIN(run_at) FROM jobs WHERE state = 'queued' AND run_at <= $1 GROUP BY kind",
    )
    .bind(now.0)
    .fetch_all(pool)
    .await?;
    let runs = sqlx::query_as("SELECT state, COUNT(*) FROM runs GROUP BY state")
        .fetch_all(pool)
        .await?;
    let (oldest,): (Option<i64>,) =
        sqlx::query_as("SELECT MIN(created_at) FROM outbox WHERE status = 'pending'")
            .fetch_one(pool)
            .await?;
    let age = |since: i64| (now.0 - since).max(0) as f64 / 1000.0;
    Ok(Gauges {
        deliveries,
        deliveries_failed,
        jobs,
        jobs_oldest_due_seconds: due.into_iter().map(|(kind, at)| (kind, age(at))).collect(),
        runs,
        outbox_oldest_pending_seconds: oldest.map_or(0.0, age),
    })
}
