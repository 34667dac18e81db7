//! What the database sheds as it ages: bodies of processed deliveries,
//! logs of ended runs, writes already sent to GitLab, finished jobs and
//! idle web sessions.
//! What a user may still act on stays: deliveries' summaries (replay needs
//! the body, and says when it was pruned), runs and their transitions,
//! pending writes, dead jobs, and what GitLab has for each key.

use std::time::Duration;

use gantry_domain::run::STATES;

use crate::{Millis, Store, StoreError, deliveries, sessions};

/// How long each kind of record is kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Delivery bodies (after processing), sent or superseded outbox
    /// writes and done jobs.
    pub deliveries: Duration,
    /// Logs of runs, counted from the run's end.
    pub run_logs: Duration,
}

/// How many records one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub delivery_bodies: u64,
    pub run_logs: u64,
    pub outbox_writes: u64,
    pub jobs: u64,
    pub sessions: u64,
}

impl Pruned {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One pass of pruning at `now`.
pub async fn prune(store: &Store, retention: Retention, now: Millis) -> Result<Pruned, StoreError> {
    let cutoff = now.minus(retention.deliveries);
    let delivery_bodies = deliveries::prune_bodies(store, cutoff).await?;
    let outbox_writes =
        sqlx::query("DELETE FROM outbox WHERE status <> 'pending' AND created_at < $1")
            .bind(cutoff.0)
            .execute(store.pool())
            .await?
            .rows_affected();
    let jobs = sqlx::query("DELETE FROM jobs WHERE state = 'done' AND updated_at < $1")
        .bind(cutoff.0)
        .execute(store.pool())
        .await?
        .rows_affected();
    let ended: Vec<String> = STATES
        .iter()
        .filter(|state| state.is_terminal())
        .map(|state| format!("'{}'", state.as_str()))
        .collect();
    let run_logs = sqlx::query(&format!(
        "DELETE FROM run_logs WHERE run_id IN (SELECT id FROM runs \
           WHERE state IN ({}) AND updated_at < $1)",
        ended.join(", ")
    ))
    .bind(now.minus(retention.run_logs).0)
    .execute(store.pool())
    .await?
    .rows_affected();
    let mut conn = store.conn().await?;
    let sessions = sessions::prune(&mut conn, now).await?;
    Ok(Pruned {
        sessions,
        delivery_bodies,
        run_logs,
        outbox_writes,
        jobs,
    })
}
