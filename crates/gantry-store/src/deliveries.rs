//! Webhook deliveries, the durable inbox. [`receive`] decides whether a
//! delivery is new or a duplicate and stores it, with the job that will
//! process it, in one transaction: when it returns, the delivery survives
//! any crash, and exactly one job exists for it.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row as _};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::jobs::{self, EnqueueError, NewJob};
use crate::row::{Fields, to_json};
use crate::{Backend, Conn, Cursor, Millis, Page, Store, StoreError, Tx, is_unique_violation};

/// The job that processes an accepted delivery.
pub const PROCESS_JOB: &str = "process_delivery";

/// Within this window a byte-identical body is a duplicate.
pub const SAME_BODY_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Accepted,
    Duplicate,
    Ignored,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "accepted" => Self::Accepted,
            "duplicate" => Self::Duplicate,
            "ignored" => Self::Ignored,
            "rejected" => Self::Rejected,
            _ => return None,
        })
    }
}

/// How the receiver judged a delivery before storing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A supported event with a readable payload: accepted unless a duplicate.
    Supported,
    /// An event Gantry does not act on; the outcome says which.
    Ignored { outcome: String },
    /// A supported event whose payload cannot be read.
    Rejected { error: String },
}

/// A delivery as received. Never holds the webhook token.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub integration_id: String,
    pub event: String,
    pub verdict: Verdict,
    pub body: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub event_uuid: Option<String>,
    pub webhook_uuid: Option<String>,
    pub instance: Option<String>,
    pub user_agent: Option<String>,
    pub received_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub integration_id: String,
    pub event: String,
    pub status: Status,
    pub idempotency_key: Option<String>,
    pub event_uuid: Option<String>,
    pub webhook_uuid: Option<String>,
    pub duplicate_of: Option<String>,
    pub outcome: Option<String>,
    /// The runs it created or found.
    pub runs: Vec<String>,
    pub error: Option<String>,
    pub received_at: i64,
    pub processed_at: Option<i64>,
    pub times_processed: i64,
}

impl FromRow<'_, AnyRow> for Delivery {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let id: String = row.try_get("id")?;
        let fields = Fields {
            table: "deliveries",
            id: &id,
        };
        Ok(Self {
            status: fields.parse_in(row, "status", Status::parse)?,
            runs: fields.json_in(row, "runs")?,
            id,
            integration_id: row.try_get("integration_id")?,
            event: row.try_get("event")?,
            idempotency_key: row.try_get("idempotency_key")?,
            event_uuid: row.try_get("event_uuid")?,
            webhook_uuid: row.try_get("webhook_uuid")?,
            duplicate_of: row.try_get("duplicate_of")?,
            outcome: row.try_get("outcome")?,
            error: row.try_get("error")?,
            received_at: row.try_get("received_at")?,
            processed_at: row.try_get("processed_at")?,
            times_processed: row.try_get("times_processed")?,
        })
    }
}

const COLUMNS: &str = "id, integration_id, event, status, idempotency_key, event_uuid, webhook_uuid, \
    duplicate_of, outcome, runs, error, received_at, processed_at, times_processed";

/// Stores a delivery and, when it is accepted, its processing job, and
/// commits. Returns its id and status.
pub async fn receive(store: &Store, new: &NewDelivery) -> Result<(String, Status), StoreError> {
    // A concurrent twin on another connection can win the unique index
    // between our check and our insert; the second try then sees it.
    let mut tries = 0;
    loop {
        tries += 1;
        let mut tx = store.begin().await?;
        match receive_in(&mut tx, new).await {
            Ok(stored) => {
                tx.commit().await?;
                return Ok(stored);
            }
            Err(StoreError::Database(err)) if tries < 3 && is_unique_violation(&err) => {
                drop(tx);
            }
            Err(err) => return Err(err),
        }
    }
}

/// The most deliveries one group commit writes.
const BATCH: usize = 256;

type Reply = oneshot::Sender<Result<(String, Status), StoreError>>;

/// Group commit for deliveries: one task writes every delivery waiting at
/// the moment in one transaction, so a burst costs one commit (one fsync)
/// instead of one per delivery. Each caller's answer still waits for the
/// commit that made its delivery durable.
#[derive(Clone)]
pub struct Inbox {
    sender: mpsc::Sender<(NewDelivery, Reply)>,
}

impl Inbox {
    /// Starts the writer task; it ends when every `Inbox` clone is dropped.
    /// On SQLite the batches are written on the store's writer connection.
    pub fn spawn(store: Store) -> Self {
        let (sender, receiver) = mpsc::channel(4 * BATCH);
        tokio::spawn(write_batches(store, receiver));
        Self { sender }
    }

    /// Stores a delivery (see [`receive`]) as part of the next group commit.
    pub async fn receive(&self, new: NewDelivery) -> Result<(String, Status), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((new, reply))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        answer.await.map_err(|_| StoreError::WriterClosed)?
    }
}

/// How many batches the inbox has at SQLite's writer at once: while one
/// waits for the sync of the log, the next is written.
const IN_FLIGHT: usize = 2;

async fn write_batches(store: Store, mut receiver: mpsc::Receiver<(NewDelivery, Reply)>) {
    if store.sqlite_writer().is_some() {
        return write_batches_on_sqlite(store, receiver).await;
    }
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let outcomes = write_batch(&store, &batch).await;
        for ((new, reply), outcome) in batch.drain(..).zip(outcomes) {
            let outcome = match outcome {
                // Lost a race on the unique index to another server: alone,
                // the retry sees the winner and answers `duplicate`.
                Err(StoreError::Database(err)) if is_unique_violation(&err) => {
                    receive(&store, &new).await
                }
                other => other,
            };
            let _ = reply.send(outcome);
        }
    }
}

/// [`write_batches`] on SQLite: up to [`IN_FLIGHT`] batches at the writer,
/// each taking every delivery that arrived while the others were written.
async fn write_batches_on_sqlite(store: Store, mut receiver: mpsc::Receiver<(NewDelivery, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Ok(turn) = in_flight.clone().acquire_owned().await else {
            return;
        };
        if receiver.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let (news, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        let store = store.clone();
        tokio::spawn(async move {
            let Some(writer) = store.sqlite_writer() else {
                return;
            };
            let outcomes = write_on_sqlite(&store, writer, news).await;
            drop(turn);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        });
    }
}

/// Each body's SHA-256 (hex), and the batch's order: by integration and
/// body, the order of PostgreSQL's advisory locks, so that two servers'
/// batches never wait on each other in a cycle.
fn shas_and_order<'a>(batch: impl Iterator<Item = &'a NewDelivery>) -> (Vec<String>, Vec<usize>) {
    let (shas, mut keys): (Vec<String>, Vec<(String, usize)>) = batch
        .enumerate()
        .map(|(index, new)| {
            let sha = hex(&Sha256::digest(&new.body));
            let key = format!("{}:{sha}", new.integration_id);
            (sha, (key, index))
        })
        .unzip();
    keys.sort();
    (shas, keys.into_iter().map(|(_, index)| index).collect())
}

/// Writes a batch on SQLite's writer connection (`sqlite_writer`), in
/// the next group it commits. SQLite has one writer at a time, so no other
/// server can have stored a twin meanwhile: there is nothing to write
/// again one by one.
async fn write_on_sqlite(
    store: &Store,
    writer: &crate::sqlite_writer::Writer,
    news: Vec<NewDelivery>,
) -> Vec<Result<(String, Status), StoreError>> {
    let count = news.len();
    let (shas, order) = shas_and_order(news.iter());
    // Acknowledged deliveries: on disk before the answer.
    let done = writer
        .run(true, move |conn| {
            crate::sqlite_writer::write(conn, &news, &shas, &order).map(|written| (news, written))
        })
        .await;
    match done {
        Ok((news, written)) => {
            if crate::sqlite_writer::enqueues(&written) {
                store.jobs_signals().notify(PROCESS_JOB);
            }
            answers(news.iter(), written)
        }
        Err(err) => {
            let error = err.to_string();
            (0..count)
                .map(|_| Err(StoreError::GroupCommit(error.clone())))
                .collect()
        }
    }
}

/// Writes a batch in one transaction, in a few statements
/// (`group_commit`). When that fails on the unique index (another server
/// stored the same `Idempotency-Key` meanwhile, on PostgreSQL), the batch
/// is written again one delivery at a time, each in a savepoint, so that
/// the one that lost the race does not undo the others.
async fn write_batch(
    store: &Store,
    batch: &[(NewDelivery, Reply)],
) -> Vec<Result<(String, Status), StoreError>> {
    let failed = |err: &StoreError| -> Vec<Result<(String, Status), StoreError>> {
        batch
            .iter()
            .map(|_| Err(StoreError::GroupCommit(err.to_string())))
            .collect()
    };
    let (shas, indexes) = shas_and_order(batch.iter().map(|(new, _)| new));
    let news: Vec<&NewDelivery> = batch.iter().map(|(new, _)| new).collect();
    let together = async {
        let mut tx = store.begin().await?;
        let written = crate::group_commit::write(&mut tx, &news, &shas, &indexes).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(written)
    };
    match together.await {
        Ok(written) => return answers(batch.iter().map(|(new, _)| new), written),
        Err(StoreError::Database(err)) if is_unique_violation(&err) => {}
        Err(err) => return failed(&err),
    }
    let mut tx = match store.begin().await {
        Ok(tx) => tx,
        Err(err) => return failed(&err),
    };
    let mut outcomes: Vec<Option<Result<(String, Status), StoreError>>> =
        batch.iter().map(|_| None).collect();
    for index in indexes {
        let new = &batch[index].0;
        if let Err(err) = crate::execute(&mut tx, "SAVEPOINT delivery").await {
            return failed(&err);
        }
        let outcome = receive_in(&mut tx, new).await;
        let end = if outcome.is_ok() {
            "RELEASE SAVEPOINT delivery"
        } else {
            "ROLLBACK TO SAVEPOINT delivery"
        };
        if let Err(err) = crate::execute(&mut tx, end).await {
            return failed(&err);
        }
        outcomes[index] = Some(outcome);
    }
    match tx.commit().await {
        Ok(()) => outcomes.into_iter().flatten().collect(),
        Err(err) => failed(&err),
    }
}

/// Each delivery's answer from what a group commit wrote: `None` where its
/// integration does not exist.
pub(crate) fn answers<'a>(
    batch: impl Iterator<Item = &'a NewDelivery>,
    written: Vec<Option<(String, Status)>>,
) -> Vec<Result<(String, Status), StoreError>> {
    batch
        .zip(written)
        .map(|(new, one)| {
            one.ok_or_else(|| StoreError::NotFound {
                what: "GitLab integration",
                id: new.integration_id.clone(),
            })
        })
        .collect()
}

/// How a delivery is stored: its status and, unless it is accepted, the
/// delivery it repeats, its outcome and error.
pub(crate) struct Stored {
    pub status: Status,
    pub duplicate_of: Option<String>,
    pub outcome: Option<String>,
    pub error: Option<String>,
}

impl Stored {
    /// What the verdict alone decides; `None` for a supported event, which
    /// is accepted unless it repeats an accepted delivery.
    pub fn of_verdict(verdict: &Verdict) -> Option<Self> {
        match verdict {
            Verdict::Supported => None,
            Verdict::Ignored { outcome } => Some(Self {
                status: Status::Ignored,
                duplicate_of: None,
                outcome: Some(outcome.clone()),
                error: None,
            }),
            Verdict::Rejected { error } => Some(Self {
                status: Status::Rejected,
                duplicate_of: None,
                outcome: Some("the payload could not be read; replay it after a fix".to_owned()),
                error: Some(error.clone()),
            }),
        }
    }

    pub fn duplicate(original: String, why: &str) -> Self {
        Self {
            status: Status::Duplicate,
            outcome: Some(format!(
                "duplicate of delivery {original} ({why}); nothing done"
            )),
            duplicate_of: Some(original),
            error: None,
        }
    }

    pub fn accepted() -> Self {
        Self {
            status: Status::Accepted,
            duplicate_of: None,
            outcome: None,
            error: None,
        }
    }
}

async fn receive_in(tx: &mut Tx, new: &NewDelivery) -> Result<(String, Status), StoreError> {
    let body_sha256 = hex(&Sha256::digest(&new.body));
    let id = uuid::Uuid::now_v7().to_string();
    let stored = match Stored::of_verdict(&new.verdict) {
        Some(stored) => stored,
        None => match find_original(tx, new, &body_sha256).await? {
            Some((original, why)) => Stored::duplicate(original, why),
            None => Stored::accepted(),
        },
    };
    let Stored {
        status,
        duplicate_of,
        outcome,
        error,
    } = stored;
    let processed_at = (status != Status::Accepted).then_some(new.received_at.0);
    sqlx::query(
        "INSERT INTO deliveries (id, integration_id, event, status, body, body_sha256, idempotency_key, \
             event_uuid, webhook_uuid, instance, user_agent, duplicate_of, outcome, error, received_at, processed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(&id)
    .bind(&new.integration_id)
    .bind(&new.event)
    .bind(status.as_str())
    .bind(new.body.as_slice())
    .bind(&body_sha256)
    .bind(&new.idempotency_key)
    .bind(&new.event_uuid)
    .bind(&new.webhook_uuid)
    .bind(&new.instance)
    .bind(&new.user_agent)
    .bind(duplicate_of)
    .bind(outcome)
    .bind(error)
    .bind(new.received_at.0)
    .bind(processed_at)
    .execute(&mut **tx)
    .await?;
    if status == Status::Accepted {
        let key = format!("{PROCESS_JOB}:{id}");
        let mut job = NewJob::new(PROCESS_JOB, serde_json::json!({ "delivery": id }));
        job.idempotency_key = Some(&key);
        match jobs::enqueue(tx, &job, new.received_at).await {
            Ok(_) => {}
            Err(EnqueueError::Store(err)) => return Err(err),
            // A fresh id cannot have a job yet.
            Err(EnqueueError::Duplicate(_)) => {}
        }
    }
    Ok((id, status))
}

/// The accepted delivery this one repeats: the same `Idempotency-Key`, or
/// the same body within [`SAME_BODY_WINDOW`].
async fn find_original(
    tx: &mut Tx,
    new: &NewDelivery,
    body_sha256: &str,
) -> Result<Option<(String, &'static str)>, StoreError> {
    if tx.backend() == Backend::Postgres {
        // Serialises identical bodies across servers; SQLite's write
        // transactions are serial already.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("{}:{body_sha256}", new.integration_id))
            .execute(&mut **tx)
            .await?;
    }
    // One statement for both rules: a matching key wins over a matching body.
    let since = new.received_at.0 - SAME_BODY_WINDOW.as_millis() as i64;
    let found: Option<(String, i64)> = sqlx::query_as(
        "SELECT id, 1 AS rule FROM deliveries \
           WHERE integration_id = $1 AND idempotency_key = $2 AND status = 'accepted' \
         UNION ALL \
         SELECT id, 2 AS rule FROM deliveries \
           WHERE integration_id = $1 AND body_sha256 = $3 AND status = 'accepted' AND received_at > $4 \
         ORDER BY rule LIMIT 1",
    )
    .bind(&new.integration_id)
    .bind(&new.idempotency_key)
    .bind(body_sha256)
    .bind(since)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(found.map(|(id, rule)| {
        let why = if rule == 1 {
            "same Idempotency-Key"
        } else {
            "same body within 24 hours"
        };
        (id, why)
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub async fn get(
    conn: &mut Conn,
    integration_id: &str,
    id: &str,
) -> Result<Option<Delivery>, StoreError> {
    let row: Option<Delivery> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM deliveries WHERE id = $1 AND integration_id = $2"
    ))
    .bind(id)
    .bind(integration_id)
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// A delivery by id alone, for the job that processes it.
pub async fn by_id(conn: &mut Conn, id: &str) -> Result<Option<Delivery>, StoreError> {
    let row: Option<Delivery> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM deliveries WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row)
}

/// Which deliveries to list.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub status: Option<Status>,
    /// The `X-Gitlab-Event` value, exactly.
    pub event: Option<String>,
}

/// An integration's deliveries, newest first.
pub async fn list(
    conn: &mut Conn,
    integration_id: &str,
    filter: &Filter,
    page: &Page,
) -> Result<(Vec<Delivery>, Option<Cursor>), StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM deliveries WHERE integration_id = $1 \
           AND ($2 = '' OR status = $2) AND ($3 = '' OR event = $3) \
           AND (received_at < $4 OR (received_at = $4 AND id < $5)) \
         ORDER BY received_at DESC, id DESC LIMIT $6"
    );
    let query = sqlx::query_as::<_, Delivery>(&sql)
        .bind(integration_id)
        .bind(filter.status.map_or("", Status::as_str))
        .bind(filter.event.as_deref().unwrap_or(""));
    page.fetch(conn, query, |d: &Delivery| (d.received_at, &d.id))
        .await
}

/// A delivery and its stored body (unless pruned), in one query.
pub async fn with_body(
    conn: &mut Conn,
    id: &str,
) -> Result<Option<(Delivery, Option<Vec<u8>>)>, StoreError> {
    Ok(with_bodies(conn, &[id]).await?.pop())
}

/// The deliveries of `ids` that exist, with their bodies (`None` once
/// pruned), in one statement.
pub async fn with_bodies(
    conn: &mut Conn,
    ids: &[&str],
) -> Result<Vec<(Delivery, Option<Vec<u8>>)>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    #[derive(FromRow)]
    struct WithBody {
        #[sqlx(flatten)]
        delivery: Delivery,
        body: Option<Vec<u8>>,
    }
    // Numbered for both databases: a batch is a few dozen ids.
    let list: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "SELECT {COLUMNS}, body FROM deliveries WHERE id IN ({})",
        list.join(", ")
    );
    let mut query = sqlx::query_as::<_, WithBody>(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    let rows = query.fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.delivery, row.body))
        .collect())
}

/// What processing found.
#[derive(Clone, Debug)]
pub struct Processed<'a> {
    /// A rejected delivery that now reads becomes accepted (on replay).
    pub status: Status,
    pub outcome: &'a str,
    pub error: Option<&'a str>,
    pub runs: &'a [String],
}

/// Records the result of processing, in the transaction that completes
/// the processing job (when there is one), so a delivery is processed
/// exactly once even if the worker dies before or after.
pub async fn finish(
    tx: &mut Tx,
    id: &str,
    processed: &Processed<'_>,
    now: Millis,
) -> Result<(), StoreError> {
    finish_all(tx, &[(id, processed.clone())], now).await
}

/// [`finish`] for many deliveries in two statements.
pub async fn finish_all(
    tx: &mut Tx,
    processed: &[(&str, Processed<'_>)],
    now: Millis,
) -> Result<(), StoreError> {
    if processed.is_empty() {
        return Ok(());
    }
    let [statuses, records] = finish_all_sql(tx.backend(), processed.len());
    let mut query = sqlx::query(&statuses);
    for (id, one) in processed {
        query = query.bind(*id).bind(one.status.as_str());
    }
    query.execute(&mut **tx).await?;
    let mut query = sqlx::query(&records).bind(now.0);
    for (id, one) in processed {
        query = query
            .bind(*id)
            .bind(one.outcome)
            .bind(one.error)
            .bind(to_json(&one.runs));
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// The statements of [`finish_all`] for `deliveries` deliveries. The first
/// sets the status of those whose status changes; it binds each delivery's
/// id and status. The second records the rest; it binds the time, then
/// each delivery's id, outcome, error and runs. Apart because SQLite
/// rewrites the entries of every index whose columns an `UPDATE` sets,
/// changed or not, and the indexes of accepted deliveries (one of them
/// keyed by the body's hash, so a page of its own for each delivery) name
/// the status.
pub(crate) fn finish_all_sql(backend: Backend, deliveries: usize) -> [String; 2] {
    let statuses = format!(
        "UPDATE deliveries SET status = v.column2 FROM (VALUES {}) AS v \
         WHERE deliveries.id = v.column1 AND deliveries.status <> v.column2",
        crate::params::values(deliveries, "(?, ?)")
    );
    let records = format!(
        "UPDATE deliveries SET outcome = v.column2, error = v.column3, runs = v.column4, \
             processed_at = ?, times_processed = times_processed + 1 \
         FROM (VALUES {}) AS v WHERE deliveries.id = v.column1",
        crate::params::values(deliveries, "(?, ?, ?, ?)")
    );
    [
        crate::params::numbered(backend, &statuses),
        crate::params::numbered(backend, &records),
    ]
}

/// Completes the jobs of `leases` and records what processing found of
/// their deliveries, in one transaction, when every lease is still held;
/// `false`, changing nothing, when any was lost (then the caller goes one
/// job at a time). For batches whose processing only records outcomes (no
/// run to create or cancel): on SQLite it runs whole on the writer
/// connection, so it holds the write lock for less time than a
/// transaction whose statements each cross to a connection's thread.
pub async fn complete_and_finish(
    store: &Store,
    leases: &[&jobs::Lease],
    processed: &[(&str, Processed<'_>)],
    now: Millis,
) -> Result<bool, StoreError> {
    let Some(writer) = store.sqlite_writer() else {
        let mut tx = store.begin().await?;
        if !jobs::complete_all_in(&mut tx, leases, now).await? {
            return Ok(false);
        }
        finish_all(&mut tx, processed, now).await?;
        tx.commit().await?;
        return Ok(true);
    };
    let leases: Vec<(i64, String)> = leases
        .iter()
        .map(|lease| (lease.job_id, lease.token.clone()))
        .collect();
    let processed: Vec<[rusqlite::types::Value; 5]> = processed
        .iter()
        .map(|(id, one)| {
            [
                (*id).to_owned().into(),
                one.status.as_str().to_owned().into(),
                one.outcome.to_owned().into(),
                one.error.map(str::to_owned).into(),
                to_json(&one.runs).into(),
            ]
        })
        .collect();
    writer
        .run(true, move |conn| {
            crate::sqlite_writer::complete_and_finish(conn, &leases, processed, now)
        })
        .await
}

/// Drops the bodies of deliveries processed before `before`, keeping their
/// summary. Returns how many were pruned.
pub async fn prune_bodies(store: &Store, before: Millis) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE deliveries SET body = NULL WHERE body IS NOT NULL AND processed_at < $1",
    )
    .bind(before.0)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected())
}
