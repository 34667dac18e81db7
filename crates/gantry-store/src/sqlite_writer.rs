//! The hottest writes on SQLite, the inbox's group commits and the job
//! claims, on a connection and a thread of their own. sqlx runs every
//! SQLite statement on its connection's thread and wakes the caller with
//! each answer: a few thread hops per statement, which cost more than the
//! statements themselves. Here a whole transaction, from `BEGIN IMMEDIATE`
//! to `COMMIT`, runs on the writer's thread with cached prepared
//! statements: one hop there and one back. Its transactions still take the
//! store's write lock first, so they queue with the other writers of this
//! process in order.
//!
//! A claim commits without waiting for the disk (`synchronous = NORMAL`):
//! a claim lost to a power cut only hands its jobs out again, and every
//! commit that depends on it (a job's outcome, a delivery) comes later in
//! the same write-ahead log and is synced with everything before it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params, params_from_iter};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::deliveries::{NewDelivery, PROCESS_JOB, SAME_BODY_WINDOW, Status, Verdict};
use crate::group_commit::{Accepted, decide};
use crate::jobs::DEFAULT_MAX_ATTEMPTS;

type Work = Box<dyn FnOnce(&mut Connection) + Send>;

/// A SQLite connection owned by a thread, which runs what it is sent in
/// order. The thread ends when the writer is dropped.
pub(crate) struct Writer {
    work: mpsc::Sender<Work>,
}

impl Writer {
    /// Opens `path` with the settings of the store's own connections.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
        )?;
        let (work, jobs) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("gantry-inbox".to_owned())
            .spawn(move || {
                for job in jobs {
                    // A panic fails its own caller (its answer is dropped),
                    // not the writes after it.
                    let done =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)));
                    if done.is_err() {
                        tracing::error!("a write on the SQLite writer connection panicked");
                    }
                }
            })
            .map_err(|err| {
                StoreError::GroupCommit(format!("cannot start the inbox thread: {err}"))
            })?;
        Ok(Self { work })
    }

    /// Runs `f` on the writer's thread and returns what it returns.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.work
            .send(Box::new(move |conn| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| StoreError::WriterClosed)?;
        answer.await.map_err(|_| StoreError::WriterClosed)
    }
}

/// Writes `batch` (with each body's SHA-256, hex) in one transaction, as
/// [`crate::group_commit::write`] does on sqlx: each delivery's id and
/// status in the batch's order, `None` where its integration is gone.
pub(crate) fn write(
    conn: &mut Connection,
    batch: &[NewDelivery],
    shas: &[String],
    order: &[usize],
) -> rusqlite::Result<Vec<Option<(String, Status)>>> {
    // Acknowledged deliveries: on disk before the answer.
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut gone = HashSet::new();
    {
        let mut exists = tx.prepare_cached("SELECT 1 FROM integrations WHERE id = ?1")?;
        for new in batch {
            let id = &new.integration_id;
            if !gone.contains(id) && !exists.exists([id])? {
                gone.insert(id.clone());
            }
        }
    }
    let mut known: HashMap<String, Vec<Accepted>> = HashMap::new();
    {
        // One indexed lookup per rule and delivery: no round trips here.
        let mut by_key = tx.prepare_cached(
            "SELECT id, idempotency_key, body_sha256, received_at FROM deliveries \
             WHERE integration_id = ?1 AND idempotency_key = ?2 AND status = 'accepted' \
               AND idempotency_key IS NOT NULL",
        )?;
        let mut by_body = tx.prepare_cached(
            "SELECT id, idempotency_key, body_sha256, received_at FROM deliveries \
             WHERE integration_id = ?1 AND body_sha256 = ?2 AND status = 'accepted' AND received_at > ?3 \
             LIMIT 1",
        )?;
        let accepted = |row: &rusqlite::Row<'_>| {
            Ok(Accepted {
                id: row.get(0)?,
                key: row.get(1)?,
                sha: row.get(2)?,
                received_at: row.get(3)?,
            })
        };
        for (new, sha) in batch.iter().zip(shas) {
            if !matches!(new.verdict, Verdict::Supported) || gone.contains(&new.integration_id) {
                continue;
            }
            let since = new.received_at.0 - SAME_BODY_WINDOW.as_millis() as i64;
            let found = [
                match &new.idempotency_key {
                    Some(key) => by_key
                        .query_row(params![new.integration_id, key], accepted)
                        .optional()?,
                    None => None,
                },
                by_body
                    .query_row(params![new.integration_id, sha, since], accepted)
                    .optional()?,
            ];
            known
                .entry(new.integration_id.clone())
                .or_default()
                .extend(found.into_iter().flatten());
        }
    }
    let refs: Vec<&NewDelivery> = batch.iter().collect();
    let decided = decide(&refs, shas, order, &mut known, &gone);
    {
        let mut delivery = tx.prepare_cached(
            "INSERT INTO deliveries (id, integration_id, event, status, body, body_sha256, idempotency_key, \
                 event_uuid, webhook_uuid, instance, user_agent, duplicate_of, outcome, error, received_at, processed_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        let mut job = tx.prepare_cached(
            "INSERT INTO jobs (kind, payload, idempotency_key, state, attempts, max_attempts, run_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, 'queued', 0, ?4, ?5, ?5, ?5) ON CONFLICT (idempotency_key) DO NOTHING",
        )?;
        for ((new, sha), one) in batch.iter().zip(shas).zip(&decided) {
            let Some(one) = one else { continue };
            let accepted = one.stored.status == Status::Accepted;
            let at = new.received_at.0;
            delivery.execute(params![
                one.id,
                new.integration_id,
                new.event,
                one.stored.status.as_str(),
                new.body,
                sha,
                new.idempotency_key,
                new.event_uuid,
                new.webhook_uuid,
                new.instance,
                new.user_agent,
                one.stored.duplicate_of,
                one.stored.outcome,
                one.stored.error,
                at,
                (!accepted).then_some(at),
            ])?;
            if accepted {
                job.execute(params![
                    PROCESS_JOB,
                    serde_json::json!({ "delivery": one.id }).to_string(),
                    format!("{PROCESS_JOB}:{}", one.id),
                    i64::from(DEFAULT_MAX_ATTEMPTS),
                    at,
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(decided
        .into_iter()
        .map(|one| one.map(|one| (one.id, one.stored.status)))
        .collect())
}

/// Whether a written batch holds a delivery that became a job.
pub(crate) fn enqueues(written: &[Option<(String, Status)>]) -> bool {
    written
        .iter()
        .flatten()
        .any(|(_, status)| *status == Status::Accepted)
}

/// A job as claimed: id, kind, payload, attempts, max_attempts.
pub(crate) type ClaimedRow = (i64, String, String, i64, i64);

/// What [`claim`] hands out, and to whom.
pub(crate) struct Claim {
    pub kinds: Vec<String>,
    pub owner: String,
    pub token: String,
    pub expires_at: i64,
    pub now: i64,
    pub limit: i64,
}

/// Claims up to `limit` of the oldest due jobs of `kinds`, as
/// [`crate::jobs::claim_many`] does on sqlx, committed without a sync.
pub(crate) fn claim(conn: &mut Connection, claim: &Claim) -> rusqlite::Result<Vec<ClaimedRow>> {
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let sql = crate::jobs::claim_sql('?', claim.kinds.len(), "");
    let mut values: Vec<Value> = vec![
        claim.owner.clone().into(),
        claim.token.clone().into(),
        claim.expires_at.into(),
        claim.now.into(),
        claim.limit.into(),
    ];
    values.extend(claim.kinds.iter().cloned().map(Value::from));
    let claimed = {
        let mut statement = tx.prepare_cached(&sql)?;
        let rows = statement.query_map(params_from_iter(values), |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
        rows.collect::<rusqlite::Result<Vec<ClaimedRow>>>()?
    };
    tx.commit()?;
    Ok(claimed)
}
