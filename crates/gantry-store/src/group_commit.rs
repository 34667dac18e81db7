//! The inbox's group commit on SQLite: a batch of deliveries in three
//! statements, whatever its size (the duplicates of all of them looked up
//! at once, the deliveries and their jobs inserted as multi-row inserts),
//! instead of three or four per delivery, each a round trip to SQLite's
//! thread. It decides exactly as [`crate::deliveries::receive`] does, one
//! delivery after another in the batch's order, so a delivery repeats an
//! earlier one of the same batch as it would an older one. (PostgreSQL
//! keeps the one-by-one path: other servers write at the same time, and
//! each delivery sits in a savepoint.)

use std::collections::HashMap;

use crate::deliveries::{NewDelivery, PROCESS_JOB, SAME_BODY_WINDOW, Status, Verdict};
use crate::jobs::DEFAULT_MAX_ATTEMPTS;
use crate::params::values;
use crate::{Backend, StoreError, Tx};

/// An accepted delivery a new one may repeat.
struct Accepted {
    id: String,
    key: Option<String>,
    sha: String,
    received_at: i64,
}

/// Writes `batch` (with each body's SHA-256, hex) in `tx`; each delivery's
/// id and status, in the batch's order.
pub(crate) async fn write(
    tx: &mut Tx,
    batch: &[&NewDelivery],
    shas: &[String],
    order: &[usize],
) -> Result<Vec<(String, Status)>, StoreError> {
    let mut known = earlier(tx, batch, shas).await?;
    let mut decided: Vec<
        Option<(
            String,
            Status,
            Option<String>,
            Option<String>,
            Option<String>,
        )>,
    > = batch.iter().map(|_| None).collect();
    for &index in order {
        let new = batch[index];
        let sha = &shas[index];
        let id = uuid::Uuid::now_v7().to_string();
        let (status, duplicate_of, outcome, error) = match &new.verdict {
            Verdict::Ignored { outcome } => (Status::Ignored, None, Some(outcome.clone()), None),
            Verdict::Rejected { error } => (
                Status::Rejected,
                None,
                Some("the payload could not be read; replay it after a fix".to_owned()),
                Some(error.clone()),
            ),
            Verdict::Supported => {
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
                    Some((original, why)) => (
                        Status::Duplicate,
                        Some(original.clone()),
                        Some(format!(
                            "duplicate of delivery {original} ({why}); nothing done"
                        )),
                        None,
                    ),
                    None => {
                        accepted.push(Accepted {
                            id: id.clone(),
                            key: new.idempotency_key.clone(),
                            sha: sha.clone(),
                            received_at: new.received_at.0,
                        });
                        (Status::Accepted, None, None, None)
                    }
                }
            }
        };
        decided[index] = Some((id, status, duplicate_of, outcome, error));
    }
    let decided: Vec<_> = decided.into_iter().flatten().collect();

    let sql = format!(
        "INSERT INTO deliveries (id, integration_id, event, status, body, body_sha256, idempotency_key, \
             event_uuid, webhook_uuid, instance, user_agent, duplicate_of, outcome, error, received_at, processed_at) \
         VALUES {}",
        values(
            Backend::Sqlite,
            batch.len(),
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
    );
    let mut insert = sqlx::query(&sql);
    for ((new, sha), (id, status, duplicate_of, outcome, error)) in
        batch.iter().zip(shas).zip(&decided)
    {
        let processed_at = (*status != Status::Accepted).then_some(new.received_at.0);
        insert = insert
            .bind(id)
            .bind(&new.integration_id)
            .bind(&new.event)
            .bind(status.as_str())
            .bind(new.body.as_slice())
            .bind(sha)
            .bind(&new.idempotency_key)
            .bind(&new.event_uuid)
            .bind(&new.webhook_uuid)
            .bind(&new.instance)
            .bind(&new.user_agent)
            .bind(duplicate_of)
            .bind(outcome)
            .bind(error)
            .bind(new.received_at.0)
            .bind(processed_at);
    }
    insert.execute(&mut **tx).await?;

    let jobs: Vec<(&NewDelivery, &String)> = batch
        .iter()
        .zip(&decided)
        .filter(|(_, (_, status, ..))| *status == Status::Accepted)
        .map(|(new, (id, ..))| (*new, id))
        .collect();
    if !jobs.is_empty() {
        let sql = format!(
            "INSERT INTO jobs (kind, payload, idempotency_key, state, attempts, max_attempts, run_at, created_at, updated_at) \
             VALUES {} ON CONFLICT (idempotency_key) DO NOTHING",
            values(
                Backend::Sqlite,
                jobs.len(),
                "(?, ?, ?, 'queued', 0, ?, ?, ?, ?)"
            )
        );
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
        tx.enqueued = true;
    }
    Ok(decided
        .into_iter()
        .map(|(id, status, ..)| (id, status))
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
        let by_key = if keys.is_empty() {
            String::new()
        } else {
            format!(
                "idempotency_key IN ({}) OR ",
                values(Backend::Sqlite, keys.len(), "?")
            )
        };
        let sql = format!(
            "SELECT id, idempotency_key, body_sha256, received_at FROM deliveries \
             WHERE integration_id = ? AND status = 'accepted' \
               AND ({by_key}(body_sha256 IN ({}) AND received_at > ?))",
            values(Backend::Sqlite, indexes.len(), "?")
        );
        let mut query =
            sqlx::query_as::<_, (String, Option<String>, String, i64)>(&sql).bind(integration);
        for key in &keys {
            query = query.bind(*key);
        }
        for &i in &indexes {
            query = query.bind(&shas[i]);
        }
        let rows = query.bind(since).fetch_all(&mut **tx).await?;
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
