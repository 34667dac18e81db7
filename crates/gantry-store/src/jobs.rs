//! A durable, lease-based job queue in the application database.
//!
//! - [`enqueue`] runs inside the caller's [`Tx`], so a job exists exactly when
//!   the change that caused it is committed. An optional idempotency key is
//!   unique across all jobs ever enqueued.
//! - [`claim_many`] hands due jobs to one claimer with a lease: a single
//!   `UPDATE … WHERE id IN (SELECT … LIMIT n [FOR UPDATE SKIP LOCKED])`,
//!   which SQLite runs as one writer transaction and PostgreSQL without
//!   blocking other claimers.
//! - The claimer renews the lease with [`heartbeat`] and ends it with
//!   [`complete_in`] (in the transaction of the job's effect) or [`fail`];
//!   every one of these checks the lease token, so a claimer whose lease
//!   lapsed cannot touch a job claimed by another.
//! - [`reap`] puts jobs whose lease lapsed back in the queue.
//! - [`claim_many_or_wait`] sleeps until a commit enqueues work (a local
//!   signal, and `LISTEN/NOTIFY` across PostgreSQL servers) or a retry
//!   falls due.
//!
//! Jobs carry ids, not copies of data, and handlers must be safe to run
//! twice: a claimer that dies after its work but before it completes the
//! job leaves a job that will be claimed again.

use std::time::Duration;

use sqlx::FromRow;

use crate::row::Fields;
use crate::{Backend, Conn, Millis, Store, StoreError, Tx};

/// The first retry waits this long; each later one twice as long as the last.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// No retry waits longer than this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// The wait before the retry that follows failed attempt number `attempt`
/// (1 for the first attempt).
pub fn backoff(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX)
}

#[derive(Clone, Debug)]
pub struct NewJob<'a> {
    /// The job's type, a stable name such as `process_delivery`.
    pub kind: &'a str,
    /// The job's arguments: ids, not copies of data.
    pub payload: serde_json::Value,
    /// Refuses a second job with the same key.
    pub idempotency_key: Option<&'a str>,
    pub max_attempts: u32,
    /// When the job becomes due; now if `None`.
    pub run_at: Option<Millis>,
}

/// Tries of a job unless it says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

impl<'a> NewJob<'a> {
    pub fn new(kind: &'a str, payload: serde_json::Value) -> Self {
        Self {
            kind,
            payload,
            idempotency_key: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            run_at: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("a job with idempotency key {0:?} was already enqueued")]
    Duplicate(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Proof of a claim: the job and the token of this claim's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub job_id: i64,
    pub token: String,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
}

#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub kind: String,
    pub payload: serde_json::Value,
    pub lease: Lease,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the lease on job {0} lapsed or was taken over; stop working on it")]
    Lost(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for LeaseError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(err.into())
    }
}

/// What became of a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    /// Queued again, due at this time.
    Retry(Millis),
    /// Out of attempts; the job stays `dead` with its last error.
    Dead,
}

/// A job as stored, for inspection.
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    pub idempotency_key: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub last_error: Option<String>,
}

/// Adds a job to the queue as part of `tx`.
pub async fn enqueue(tx: &mut Tx, job: &NewJob<'_>, now: Millis) -> Result<i64, EnqueueError> {
    let row: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO jobs (kind, payload, idempotency_key, state, attempts, max_attempts, run_at, created_at, updated_at) \
         VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $6) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(job.kind)
    .bind(job.payload.to_string())
    .bind(job.idempotency_key)
    .bind(i64::from(job.max_attempts.max(1)))
    .bind(job.run_at.unwrap_or(now).0)
    .bind(now.0)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)?;
    let Some((id,)) = row else {
        return Err(EnqueueError::Duplicate(
            job.idempotency_key.unwrap_or_default().to_owned(),
        ));
    };
    tx.enqueued(job.kind).await?;
    Ok(id)
}

/// Claims up to `limit` of the oldest due jobs of `kinds` in one statement,
/// oldest first, each with its own lease (one token for the batch).
pub async fn claim_many(
    store: &Store,
    kinds: &[&str],
    owner: &str,
    lease_for: Duration,
    now: Millis,
    limit: u32,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let token = uuid_like_token();
    let claimed = match store.sqlite_writer() {
        Some(writer) => {
            let claim = crate::sqlite_writer::Claim {
                kinds: kinds.iter().map(|kind| (*kind).to_owned()).collect(),
                owner: owner.to_owned(),
                token: token.clone(),
                expires_at: now.plus(lease_for).0,
                now: now.0,
                limit: i64::from(limit),
            };
            // A lost claim only hands its jobs out again: no sync needed.
            writer
                .run(false, move |conn| crate::sqlite_writer::claim(conn, &claim))
                .await?
        }
        None => claim_on_sqlx(store, owner, &token, lease_for, now, limit, kinds).await?,
    };
    claimed_jobs(claimed, &token)
}

async fn claim_on_sqlx(
    store: &Store,
    owner: &str,
    token: &str,
    lease_for: Duration,
    now: Millis,
    limit: u32,
    kinds: &[&str],
) -> Result<Vec<crate::sqlite_writer::ClaimedRow>, StoreError> {
    let lock = match store.backend() {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let sql = claim_sql('$', kinds.len(), lock);
    let mut query = sqlx::query_as::<_, (i64, String, String, i64, i64)>(&sql)
        .bind(owner)
        .bind(token)
        .bind(now.plus(lease_for).0)
        .bind(now.0)
        .bind(i64::from(limit));
    for kind in kinds {
        query = query.bind(*kind);
    }
    // In a transaction, so SQLite writers of this process take turns.
    let mut tx = store.begin().await?;
    let claimed = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// The claim: parameters 1 to 5 are owner, token, lease end, now and
/// limit, then the kinds; numbered after `mark` (`$` for sqlx, `?` for
/// rusqlite); `lock` locks the claimed rows where the database can.
pub(crate) fn claim_sql(mark: char, kinds: usize, lock: &str) -> String {
    let kinds: Vec<String> = (6..6 + kinds).map(|n| format!("{mark}{n}")).collect();
    format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = {mark}1, lease_token = {mark}2, \
             lease_expires_at = {mark}3, updated_at = {mark}4 \
         WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND run_at <= {mark}4 AND kind IN ({kinds}) \
                      ORDER BY run_at, id LIMIT {mark}5 {lock}) \
         RETURNING id, kind, payload, attempts, max_attempts",
        kinds = kinds.join(", ")
    )
}

fn claimed_jobs(
    mut claimed: Vec<crate::sqlite_writer::ClaimedRow>,
    token: &str,
) -> Result<Vec<ClaimedJob>, StoreError> {
    claimed.sort_by_key(|(job_id, ..)| *job_id);
    claimed
        .into_iter()
        .map(|(job_id, kind, payload, attempts, max_attempts)| {
            let id = job_id.to_string();
            let fields = Fields {
                table: "jobs",
                id: &id,
            };
            let count = |column, value: i64| {
                u32::try_from(value)
                    .map_err(|_| fields.corrupt(column, format!("{value} is out of range")))
            };
            Ok(ClaimedJob {
                payload: fields.json("payload", &payload)?,
                lease: Lease {
                    job_id,
                    token: token.to_owned(),
                    attempt: count("attempts", attempts)?,
                    max_attempts: count("max_attempts", max_attempts)?,
                },
                kind,
            })
        })
        .collect()
}

/// Extends the lease to `lease_for` from `now`.
pub async fn heartbeat(
    store: &Store,
    lease: &Lease,
    lease_for: Duration,
    now: Millis,
) -> Result<(), LeaseError> {
    let done = sqlx::query(
        "UPDATE jobs SET lease_expires_at = $1, updated_at = $2 \
         WHERE id = $3 AND lease_token = $4 AND state = 'running'",
    )
    .bind(now.plus(lease_for).0)
    .bind(now.0)
    .bind(lease.job_id)
    .bind(&lease.token)
    .execute(store.pool())
    .await?;
    lease_held(done.rows_affected(), lease)
}

/// Marks the job done as part of the caller's transaction, so the job's
/// effect and its completion commit together or not at all.
pub async fn complete_in(conn: &mut Conn, lease: &Lease, now: Millis) -> Result<(), LeaseError> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, \
             updated_at = $1 \
         WHERE id = $2 AND lease_token = $3 AND state = 'running'",
    )
    .bind(now.0)
    .bind(lease.job_id)
    .bind(&lease.token)
    .execute(conn)
    .await?;
    lease_held(done.rows_affected(), lease)
}

/// [`complete_in`] for every one of `leases` at once, when every one is
/// still held; `false`, changing nothing, when any was lost (then each
/// goes by [`complete_in`]).
pub async fn complete_all_in(
    tx: &mut Tx,
    leases: &[&Lease],
    now: Millis,
) -> Result<bool, StoreError> {
    if leases.is_empty() {
        return Ok(true);
    }
    let backend = tx.backend();
    let (check, update) = complete_all_sql(backend, leases.len());
    let mut query = sqlx::query_as::<_, (i64,)>(&check);
    for lease in leases {
        query = query.bind(lease.job_id).bind(&lease.token);
    }
    let rows = query.fetch_all(&mut **tx).await?;
    // The locked rows' ids, or one row with their count.
    let count = match backend {
        Backend::Postgres => rows.len(),
        Backend::Sqlite => rows
            .first()
            .map_or(0, |(n,)| usize::try_from(*n).unwrap_or(0)),
    };
    if count != leases.len() {
        return Ok(false);
    }
    let mut query = sqlx::query(&update).bind(now.0);
    for lease in leases {
        query = query.bind(lease.job_id).bind(&lease.token);
    }
    query.execute(&mut **tx).await?;
    Ok(true)
}

/// The statements of [`complete_all_in`] for `leases` leases: the check
/// that each is still held (its rows locked on PostgreSQL, counted on
/// SQLite, where the write transaction already excludes every other
/// writer), binding each lease's job id and token; then the update,
/// binding the time first.
pub(crate) fn complete_all_sql(backend: Backend, leases: usize) -> (String, String) {
    let pairs = crate::params::values(leases, "(?, ?)");
    let held = format!("state = 'running' AND (id, lease_token) IN (VALUES {pairs})");
    let check = match backend {
        Backend::Postgres => format!("SELECT id FROM jobs WHERE {held} FOR UPDATE"),
        Backend::Sqlite => format!("SELECT COUNT(*) FROM jobs WHERE {held}"),
    };
    let update = format!(
        "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, \
             updated_at = ? WHERE {held}"
    );
    (
        crate::params::numbered(backend, &check),
        crate::params::numbered(backend, &update),
    )
}

/// Records a failed attempt: the job is queued again after [`backoff`], or
/// becomes `dead` when it has used all its attempts.
pub async fn fail(
    store: &Store,
    lease: &Lease,
    error: &str,
    now: Millis,
) -> Result<Failed, LeaseError> {
    let outcome = if lease.attempt >= lease.max_attempts {
        Failed::Dead
    } else {
        Failed::Retry(now.plus(backoff(lease.attempt)))
    };
    let (state, run_at) = match outcome {
        Failed::Retry(at) => ("queued", at),
        Failed::Dead => ("dead", now),
    };
    let done = sqlx::query(
        "UPDATE jobs SET state = $1, run_at = $2, last_error = $3, lease_owner = NULL, lease_token = NULL, \
             lease_expires_at = NULL, updated_at = $4 \
         WHERE id = $5 AND lease_token = $6 AND state = 'running'",
    )
    .bind(state)
    .bind(run_at.0)
    .bind(error)
    .bind(now.0)
    .bind(lease.job_id)
    .bind(&lease.token)
    .execute(store.pool())
    .await?;
    lease_held(done.rows_affected(), lease)?;
    Ok(outcome)
}

/// Queues again every running job whose lease lapsed before `now` (the
/// attempt counts as failed), or marks it `dead` if it has no attempts
/// left. Returns how many jobs it touched.
pub async fn reap(store: &Store, now: Millis) -> Result<u64, StoreError> {
    let mut tx = store.begin().await?;
    let reaped: Vec<(String, String)> = sqlx::query_as(
        "UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
             run_at = $1, last_error = 'lease lapsed: the worker stopped heartbeating', \
             lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = $1 \
         WHERE state = 'running' AND lease_expires_at < $1 \
         RETURNING kind, state",
    )
    .bind(now.0)
    .fetch_all(&mut *tx)
    .await?;
    // Their claimers wake for the queued ones, not for the dead.
    for (kind, _) in reaped.iter().filter(|(_, state)| state == "queued") {
        tx.enqueued(kind).await?;
    }
    let reaped = reaped.len() as u64;
    tx.commit().await?;
    if reaped > 0 {
        tracing::warn!(jobs.reaped = reaped, "re-queued jobs whose lease lapsed");
    }
    Ok(reaped)
}

/// [`claim_many`], waiting until a commit that enqueued work signals (in
/// this process, or by `LISTEN/NOTIFY` from another) or a queued job falls
/// due; empty after `max_wait`.
pub async fn claim_many_or_wait(
    store: &Store,
    kinds: &[&str],
    owner: &str,
    lease_for: Duration,
    max_wait: Duration,
    limit: u32,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let deadline = Millis::now().plus(max_wait);
    let signals = store.jobs_signals().of(kinds);
    loop {
        // Registered before the claim, so an enqueue committed between the
        // claim and the wait is not missed.
        let mut notified: Vec<_> = signals
            .iter()
            .map(|signal| Box::pin(signal.notified()))
            .collect();
        for one in &mut notified {
            one.as_mut().enable();
        }

        let now = Millis::now();
        let jobs = claim_many(store, kinds, owner, lease_for, now, limit).await?;
        if !jobs.is_empty() || now >= deadline {
            return Ok(jobs);
        }
        let wake_at = match next_due(store, kinds).await? {
            Some(due) => due.min(deadline),
            None => deadline,
        };
        tokio::select! {
            _ = futures_util::future::select_all(notified) => {}
            () = tokio::time::sleep(now.until(wake_at)) => {}
        }
    }
}

/// How many jobs of `kinds` are due or being worked on at `now`: zero
/// when the queue of those kinds is idle.
pub async fn outstanding(store: &Store, kinds: &[&str], now: Millis) -> Result<i64, StoreError> {
    let sql = format!(
        "SELECT COUNT(*) FROM jobs WHERE ((state = 'queued' AND run_at <= $1) OR state = 'running') \
         AND kind IN ({})",
        placeholders(2, kinds.len())
    );
    let mut query = sqlx::query_as::<_, (i64,)>(&sql).bind(now.0);
    for kind in kinds {
        query = query.bind(*kind);
    }
    let (count,) = query.fetch_one(store.pool()).await?;
    Ok(count)
}

/// How many jobs of `kind` used all their attempts.
pub async fn dead(store: &Store, kind: &str) -> Result<i64, StoreError> {
    let (count,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE kind = $1 AND state = 'dead'")
            .bind(kind)
            .fetch_one(store.pool())
            .await?;
    Ok(count)
}

/// When the earliest queued job of `kinds` falls due.
async fn next_due(store: &Store, kinds: &[&str]) -> Result<Option<Millis>, StoreError> {
    let sql = format!(
        "SELECT MIN(run_at) FROM jobs WHERE state = 'queued' AND kind IN ({})",
        placeholders(1, kinds.len())
    );
    let mut query = sqlx::query_as::<_, (Option<i64>,)>(&sql);
    for kind in kinds {
        query = query.bind(*kind);
    }
    let (due,) = query.fetch_one(store.pool()).await?;
    Ok(due.map(Millis))
}

pub async fn get(conn: &mut Conn, id: i64) -> Result<Option<JobRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, kind, payload, idempotency_key, state, attempts, max_attempts, run_at, lease_owner, \
             lease_expires_at, last_error FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

fn lease_held(rows_affected: u64, lease: &Lease) -> Result<(), LeaseError> {
    if rows_affected == 1 {
        Ok(())
    } else {
        Err(LeaseError::Lost(lease.job_id))
    }
}

/// `$first, $first+1, …` for `count` parameters.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn uuid_like_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(60), BACKOFF_MAX);
    }
}
