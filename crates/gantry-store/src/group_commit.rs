//! The inbox's group commit: a batch of deliveries in a few statements,
//! whatever its size (the duplicates of all of them looked up at once, the
//! deliveries and their jobs inserted as multi-row inserts), instead of
//! three to six per delivery, each a round trip. It decides exactly as
//! [`crate::deliveries::receive`] does, one delivery after another in the
//! batch's order, so a delivery repeats an earlier one of the same batch
//! as it would an older one. On PostgreSQL the batch first takes the
//! advisory locks of its bodies (in one order, as the one-by-one path
//! does), so identical deliveries at two servers are decided one after
//! the other; a key that another server stored meanwhile fails the batch
//! on the unique index, and the caller writes it again one by one.

use std::collections::{HashMap, HashSet};

use crate::deliveries::{NewDelivery, PROCESS_JOB, SAME_BODY_WINDOW, Status, Stored, Verdict};
use crate::jobs::DEFAULT_MAX_ATTEMPTS;
use crate::params::{numbered, values};
use crate::{Backend, StoreError, Tx};

/// An accepted delivery a new one may repeat.
pub(crate) struct Accepted {
    pub id: String,
    pub key: Option<String>,
    pub sha: String,
    pub received_at: i64,
}

/// What becomes of one delivery of the batch.
pub(crate) struct Decided {
    pub id: String,
    pub stored: Stored,
}

/// Writes `batch` (with each body's SHA-256, hex) in `tx`; each delivery's
/// id and status, in the batch's order, or `None` where its integration
/// does not exist (it was deleted since its secret was checked).
pub(crate) async fn write(
    tx: &mut Tx,
    batch: &[&NewDelivery],
    shas: &[String],
    order: &[usize],
) -> Result<Vec<Option<(String, Status)>>, StoreError> {
    let backend = tx.backend();
    if backend == Backend::Postgres {
        // Serialises identical bodies across servers, in one order.
        let sql = format!(
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM (VALUES {}) AS v (k)",
            values(order.len(), "(?)")
        );
        let sql = numbered(backend, &sql);
        let mut lock = sqlx::query(&sql);
        for &index in order {
            lock = lock.bind(format!("{}:{}", batch[index].integration_id, shas[index]));
        }
        lock.execute(&mut **tx).await?;
    }
    let gone = missing_integrations(tx, batch).await?;
    let mut known = earlier(tx, batch, shas).await?;
    let decided = decide(batch, shas, order, &mut known, &gone);
    let kept: Vec<usize> = (0..batch.len()).filter(|&i| decided[i].is_some()).collect();
    let answers = decided
        .iter()
        .map(|one| one.as_ref().map(|one| (one.id.clone(), one.stored.status)))
        .collect();
    if kept.is_empty() {
        return Ok(answers);
    }
    let batch: Vec<&NewDelivery> = kept.iter().map(|&i| batch[i]).collect();
    let shas: Vec<&String> = kept.iter().map(|&i| &shas[i]).collect();
    let decided: Vec<_> = decided.into_iter().flatten().collect();

    let sql = format!(
        "INSERT INTO deliveries (id, integration_id, event, status, body, body_sha256, idempotency_key, \
             event_uuid, webhook_uuid, instance, user_agent, duplicate_of, outcome, error, received_at, processed_at) \
         VALUES {}",
        values(
            batch.len(),
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
    );
    let sql = numbered(backend, &sql);
    let mut insert = sqlx::query(&sql);
    for ((new, sha), one) in batch.iter().zip(shas).zip(&decided) {
        let processed_at = (one.stored.status != Status::Accepted).then_some(new.received_at.0);
        insert = insert
            .bind(&one.id)
            .bind(&new.integration_id)
            .bind(&new.event)
            .bind(one.stored.status.as_str())
            .bind(new.body.as_slice())
            .bind(sha)
            .bind(&new.idempotency_key)
            .bind(&new.event_uuid)
            .bind(&new.webhook_uuid)
            .bind(&new.instance)
            .bind(&new.user_agent)
            .bind(&one.stored.duplicate_of)
            .bind(&one.stored.outcome)
            .bind(&one.stored.error)
            .bind(new.received_at.0)
            .bind(processed_at);
    }
    insert.execute(&mut **tx).await?;

    let jobs: Vec<(&NewDelivery, &String)> = batch
        .iter()
        .zip(&decided)
        .filter(|(_, one)| one.stored.status == Status::Accepted)
        .map(|(new, one)| (*new, &one.id))
        .collect();
    if !jobs.is_empty() {
        tx.enqueued(PROCESS_JOB).await?;
        let sql = format!(
            "INSERT INTO jobs (kind, payload, idempotency_key, state, attempts, max_attempts, run_at, created_at, updated_at) \
             VALUES {} ON CONFLICT (idempotency_key) DO NOTHING",
            values(jobs.len(), "(?, ?, ?, 'queued', 0, ?, ?, ?, ?)")
        );
        let sql = numbered(backend, &sql);
        let mut insert = sqlx::query(&sql);
        for (new, id) in &jobs {
            let at = new.received_at.0;
            insert = insert
                .bind(PROCESS_JOB)
                .bind(serde_json::json!({ "delivery": id }).to_string())
                .bind(format!("{PROCESS_JOB}:{id}"))
                .bind(i64::from(DEFAULT_MAX_ATTEMPTS))
                .bind(at)
                .bind(at)
                .bind(at);
        }
        insert.execute(&mut **tx).await?;
    }
    Ok(answers)
}

/// Decides each delivery of `batch`, in `order`, against the accepted
/// deliveries `known` by integration (which it extends with the batch's
/// own): accepted, a duplicate, or what its verdict says. `None` for a
/// delivery whose integration is `gone`.
pub(crate) fn decide(
    batch: &[&NewDelivery],
    shas: &[String],
    order: &[usize],
    known: &mut HashMap<String, Vec<Accepted>>,
    gone: &HashSet<String>,
) -> Vec<Option<Decided>> {
    let mut decided: Vec<Option<Decided>> = batch.iter().map(|_| None).collect();
    for &index in order {
        let new = batch[index];
        if gone.contains(&new.integration_id) {
            continue;
        }
        let sha = &shas[index];
        let id = uuid::Uuid::now_v7().to_string();
        let stored = match Stored::of_verdict(&new.verdict) {
            Some(stored) => stored,
            None => {
                let accepted = known.entry(new.integration_id.clone()).or_default();
                let since = new.received_at.0 - SAME_BODY_WINDOW.as_millis() as i64;
                let by_key = new
                    .idempotency_key
                    .as_ref()
                    .and_then(|key| accepted.iter().find(|a| a.key.as_ref() == Some(key)));
                let original = match by_key {
                    Some(a) => Some((a.id.clone(), "same Idempotency-Key")),
                    None => accepted
                        .iter()
                        .find(|a| &a.sha == sha && a.received_at > since)
                        .map(|a| (a.id.clone(), "same body within 24 hours")),
                };
                match original {
                    Some((original, why)) => Stored::duplicate(original, why),
                    None => {
                        accepted.push(Accepted {
                            id: id.clone(),
                            key: new.idempotency_key.clone(),
                            sha: sha.clone(),
                            received_at: new.received_at.0,
                        });
                        Stored::accepted()
                    }
                }
            }
        };
        decided[index] = Some(Decided { id, stored });
    }
    decided
}

/// The integrations of `batch` that do not exist.
async fn missing_integrations(
    tx: &mut Tx,
    batch: &[&NewDelivery],
) -> Result<HashSet<String>, StoreError> {
    let mut ids: Vec<&str> = batch
        .iter()
        .map(|new| new.integration_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let sql = format!(
        "SELECT id FROM integrations WHERE id IN ({})",
        values(ids.len(), "?")
    );
    let sql = numbered(tx.backend(), &sql);
    let mut query = sqlx::query_as::<_, (String,)>(&sql);
    for id in &ids {
        query = query.bind(*id);
    }
    let present: HashSet<String> = query
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|(id,)| id)
        .collect();
    Ok(ids
        .into_iter()
        .filter(|id| !present.contains(*id))
        .map(str::to_owned)
        .collect())
}

/// The accepted deliveries that the batch's supported ones may repeat, by
/// integration: one statement per integration in the batch (usually one).
async fn earlier(
    tx: &mut Tx,
    batch: &[&NewDelivery],
    shas: &[String],
) -> Result<HashMap<String, Vec<Accepted>>, StoreError> {
    let mut by_integration: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, new) in batch.iter().enumerate() {
        if matches!(new.verdict, Verdict::Supported) {
            by_integration
                .entry(&new.integration_id)
                .or_default()
                .push(index);
        }
    }
    let mut known: HashMap<String, Vec<Accepted>> = HashMap::new();
    for (integration, indexes) in by_integration {
        let keys: Vec<&str> = indexes
            .iter()
            .filter_map(|&i| batch[i].idempotency_key.as_deref())
            .collect();
        let since = indexes
            .iter()
            .map(|&i| batch[i].received_at.0)
            .min()
            .unwrap_or_default()
            - SAME_BODY_WINDOW.as_millis() as i64;
        // One select per rule, so that each uses its index.
        let mut sql = format!(
            "SELECT id, idempotency_key, body_sha256, received_at FROM deliveries \
             WHERE integration_id = ? AND body_sha256 IN ({}) AND status = 'accepted' AND received_at > ?",
            values(indexes.len(), "?")
        );
        if !keys.is_empty() {
            sql.push_str(&format!(
                " UNION ALL SELECT id, idempotency_key, body_sha256, received_at FROM deliveries \
                 WHERE integration_id = ? AND idempotency_key IN ({}) AND status = 'accepted' \
                   AND idempotency_key IS NOT NULL",
                values(keys.len(), "?")
            ));
        }
        let sql = numbered(tx.backend(), &sql);
        let mut query =
            sqlx::query_as::<_, (String, Option<String>, String, i64)>(&sql).bind(integration);
        for &i in &indexes {
            query = query.bind(&shas[i]);
        }
        query = query.bind(since);
        if !keys.is_empty() {
            query = query.bind(integration);
            for key in &keys {
                query = query.bind(*key);
            }
        }
        let rows = query.fetch_all(&mut **tx).await?;
        known.insert(
            integration.to_owned(),
            rows.into_iter()
                .map(|(id, key, sha, received_at)| Accepted {
                    id,
                    key,
                    sha,
                    received_at,
                })
                .collect(),
        );
    }
    Ok(known)
}
