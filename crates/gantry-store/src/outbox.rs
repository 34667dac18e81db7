//! The outbox: every write to GitLab, stored in the transaction of the
//! run's change that causes it (`runs::advance` and `runs::create` call
//! [`record`]), then delivered by the server's outbox loop in order per
//! key. Only the newest pending write of a key is delivered; the older
//! ones are superseded, so a status never goes back to an earlier state.

use gantry_domain::report::{Write, writes};
use gantry_domain::run::State;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row as _};

use crate::params::numbered;
use crate::row::Fields;
use crate::runs::Run;
use crate::{Backend, Conn, Millis, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub integration_id: String,
    pub project_id: i64,
    pub key: String,
    pub kind: Write,
    pub run_id: String,
    /// The run state this write reports.
    pub state: State,
    pub attempts: i64,
    pub created_at: i64,
}

impl FromRow<'_, AnyRow> for Entry {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let id: i64 = row.try_get("id")?;
        let id_text = id.to_string();
        let fields = Fields {
            table: "outbox",
            id: &id_text,
        };
        Ok(Self {
            kind: fields.parse_in(row, "kind", Write::parse)?,
            state: fields.parse_in(row, "state", State::parse)?,
            id,
            integration_id: row.try_get("integration_id")?,
            project_id: row.try_get("project_id")?,
            key: row.try_get("key")?,
            run_id: row.try_get("run_id")?,
            attempts: row.try_get("attempts")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

const COLUMNS: &str =
    "id, integration_id, project_id, key, kind, run_id, state, attempts, created_at";

/// The order key of a write about `run`.
pub fn key(write: Write, project_id: i64, stack_id: &str, run: &Run) -> String {
    match write {
        // GitLab keeps a status per (commit, ref, name).
        Write::Status => format!(
            "status:{project_id}:{}:{}:{stack_id}",
            run.commit_sha, run.branch
        ),
        // Notes are written for runs of a merge request only.
        Write::Note => match run.merge_request_iid {
            Some(iid) => format!("note:{project_id}:{iid}:{stack_id}"),
            None => format!("note:{project_id}:none:{stack_id}"),
        },
        Write::Deployment => format!("deployment:{}", run.id),
    }
}

/// Stores the writes that `run` entering its current state (from `from`)
/// causes; nothing when its stack has no integration.
pub async fn record(
    conn: &mut Conn,
    run: &Run,
    from: Option<State>,
    only: Option<Write>,
    now: Millis,
) -> Result<(), StoreError> {
    let target: Option<(Option<String>, i64)> =
        sqlx::query_as("SELECT integration_id, project_id FROM stacks WHERE id = $1")
            .bind(&run.stack_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((Some(integration_id), project_id)) = target else {
        return Ok(());
    };
    let to = run.state;
    for write in writes(run.kind, from, to, run.merge_request_iid.is_some()) {
        if only.is_some_and(|only| only != write) {
            continue;
        }
        sqlx::query(
            "INSERT INTO outbox (integration_id, project_id, key, kind, run_id, state, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&integration_id)
        .bind(project_id)
        .bind(key(write, project_id, &run.stack_id, run))
        .bind(write.as_str())
        .bind(&run.id)
        .bind(to.as_str())
        .bind(now.0)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// [`record`] for runs just created (queued), many at once: one lookup of
/// their stacks and one multi-row insert of their writes.
pub async fn record_queued(
    tx: &mut crate::Tx,
    runs: &[&Run],
    now: Millis,
) -> Result<(), StoreError> {
    let backend = tx.backend();
    let conn: &mut Conn = tx;
    let mut stack_ids: Vec<&str> = runs.iter().map(|run| run.stack_id.as_str()).collect();
    stack_ids.sort_unstable();
    stack_ids.dedup();
    let list = crate::params::values(stack_ids.len(), "?");
    // The runs of one event are of one project: ask for its integration
    // and project once (rows come back from SQLite one message each), and
    // per stack only when they differ.
    let sql = format!(
        "SELECT integration_id, project_id, COUNT(*) FROM stacks WHERE id IN ({list}) \
         GROUP BY integration_id, project_id"
    );
    let sql = numbered(backend, &sql);
    let mut query = sqlx::query_as::<_, (Option<String>, i64, i64)>(&sql);
    for id in &stack_ids {
        query = query.bind(*id);
    }
    let groups = query.fetch_all(&mut *conn).await?;
    let targets: std::collections::HashMap<String, (String, i64)> = match groups.as_slice() {
        [(Some(integration), project, count)]
            if usize::try_from(*count).ok() == Some(stack_ids.len()) =>
        {
            stack_ids
                .iter()
                .map(|id| ((*id).to_owned(), (integration.clone(), *project)))
                .collect()
        }
        _ => {
            let sql = numbered(
                backend,
                &format!("SELECT id, integration_id, project_id FROM stacks WHERE id IN ({list})"),
            );
            let mut query = sqlx::query_as::<_, (String, Option<String>, i64)>(&sql);
            for id in &stack_ids {
                query = query.bind(*id);
            }
            query
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .filter_map(|(id, integration, project)| Some((id, (integration?, project))))
                .collect()
        }
    };
    let mut rows = Vec::new();
    for run in runs {
        let Some((integration_id, project_id)) = targets.get(&run.stack_id) else {
            continue;
        };
        for write in writes(run.kind, None, run.state, run.merge_request_iid.is_some()) {
            rows.push((
                integration_id.as_str(),
                *project_id,
                key(write, *project_id, &run.stack_id, run),
                write,
                run,
            ));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO outbox (integration_id, project_id, key, kind, run_id, state, next_attempt_at, created_at) VALUES {}",
        crate::params::values(rows.len(), "(?, ?, ?, ?, ?, ?, ?, ?)")
    );
    let sql = numbered(backend, &sql);
    let mut insert = sqlx::query(&sql);
    for (integration_id, project_id, key, write, run) in rows {
        insert = insert
            .bind(integration_id)
            .bind(project_id)
            .bind(key)
            .bind(write.as_str())
            .bind(&run.id)
            .bind(run.state.as_str())
            .bind(now.0)
            .bind(now.0);
    }
    insert.execute(conn).await?;
    Ok(())
}

/// Leases up to `limit` writes to deliver: per key, the newest pending
/// one whose time has come, when no write of its key is leased and its
/// integration is healthy. The older pending writes of those keys are
/// superseded.
pub async fn claim(
    store: &crate::Store,
    owner: &str,
    until: Millis,
    limit: i64,
    now: Millis,
) -> Result<Vec<Entry>, StoreError> {
    let mut tx = store.begin().await?;
    let candidates: Vec<Entry> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM outbox o WHERE o.status = 'pending' AND o.next_attempt_at <= $1 \
           AND NOT EXISTS (SELECT 1 FROM outbox n WHERE n.key = o.key AND n.status = 'pending' AND n.id > o.id) \
           AND NOT EXISTS (SELECT 1 FROM outbox l WHERE l.key = o.key AND l.lease_expires_at > $1) \
           AND NOT EXISTS (SELECT 1 FROM outbox w WHERE w.key = o.key AND w.status = 'pending' AND w.next_attempt_at > $1) \
           AND NOT EXISTS (SELECT 1 FROM integrations i WHERE i.id = o.integration_id AND i.unhealthy_since IS NOT NULL) \
         ORDER BY o.id LIMIT $2"
    ))
    .bind(now.0)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    // Keys are locked in one global order (by key), so that two servers
    // claiming overlapping keys at once never wait on each other in a
    // circle: candidates picked a moment apart differ in their ids.
    let mut candidates = candidates;
    candidates.sort_by(|a, b| a.key.cmp(&b.key));
    let mut claimed = Vec::new();
    for entry in candidates {
        if tx.backend() == Backend::Postgres {
            // Servers claiming the same key queue here, then see the lease.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
                .bind(&entry.key)
                .execute(&mut *tx)
                .await?;
        }
        let leased = sqlx::query(
            "UPDATE outbox SET lease_owner = $1, lease_expires_at = $2 WHERE id = $3 AND status = 'pending' \
             AND NOT EXISTS (SELECT 1 FROM outbox l WHERE l.key = $4 AND l.lease_expires_at > $5)",
        )
        .bind(owner)
        .bind(until.0)
        .bind(entry.id)
        .bind(&entry.key)
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
        if leased.rows_affected() == 0 {
            continue;
        }
        sqlx::query(
            "UPDATE outbox SET status = 'superseded', lease_owner = NULL, lease_expires_at = NULL \
             WHERE key = $1 AND status = 'pending' AND id < $2",
        )
        .bind(&entry.key)
        .bind(entry.id)
        .execute(&mut *tx)
        .await?;
        claimed.push(entry);
    }
    tx.commit().await?;
    Ok(claimed)
}

/// How many writes are due or being sent at `now` (those of paused
/// integrations wait and are not counted): zero when the outbox is idle.
pub async fn outstanding(conn: &mut Conn, now: Millis) -> Result<i64, StoreError> {
    let (count,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM outbox o WHERE o.status = 'pending' \
           AND (o.next_attempt_at <= $1 OR o.lease_expires_at > $1) \
           AND NOT EXISTS (SELECT 1 FROM integrations i WHERE i.id = o.integration_id AND i.unhealthy_since IS NOT NULL)",
    )
    .bind(now.0)
    .fetch_one(conn)
    .await?;
    Ok(count)
}

/// How a delivery attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// GitLab has it (or already had it).
    Delivered,
    /// Not sent: a later state was already delivered for its key.
    Superseded,
    /// Try again at the given time.
    Retry { at: Millis, error: String },
    /// GitLab will never take it (a permanent refusal); kept with the error.
    Dropped { error: String },
    /// Not attempted (the integration was paused): back to pending as is.
    Paused,
}

/// Records the outcome of a leased write, if `owner` still holds it.
pub async fn finish(
    conn: &mut Conn,
    id: i64,
    owner: &str,
    outcome: &Outcome,
    now: Millis,
) -> Result<(), StoreError> {
    let (status, attempts, next, error): (&str, i64, Option<i64>, Option<&str>) = match outcome {
        Outcome::Delivered => ("delivered", 1, None, None),
        Outcome::Superseded => ("superseded", 0, None, None),
        Outcome::Retry { at, error } => ("pending", 1, Some(at.0), Some(error)),
        Outcome::Dropped { error } => ("dropped", 1, None, Some(error)),
        Outcome::Paused => ("pending", 0, None, None),
    };
    sqlx::query(
        "UPDATE outbox SET status = $1, attempts = attempts + $2, next_attempt_at = COALESCE($3, next_attempt_at), \
         last_error = COALESCE($4, last_error), delivered_at = CASE WHEN $1 = 'delivered' THEN $5 ELSE delivered_at END, \
         lease_owner = NULL, lease_expires_at = NULL WHERE id = $6 AND lease_owner = $7",
    )
    .bind(status)
    .bind(attempts)
    .bind(next)
    .bind(error)
    .bind(now.0)
    .bind(id)
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(())
}

/// Extends `owner`'s lease on a write it is sending to `until`, so a slow
/// GitLab never lets another server take the write meanwhile; `false`
/// when the lease is no longer `owner`'s.
pub async fn renew(
    conn: &mut Conn,
    id: i64,
    owner: &str,
    until: Millis,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE outbox SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'pending'",
    )
    .bind(until.0)
    .bind(id)
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Gives up `owner`'s leases (a server stopping): its unfinished writes
/// stay pending, for the next server to send at once.
pub async fn release(conn: &mut Conn, owner: &str) -> Result<u64, StoreError> {
    let released = sqlx::query(
        "UPDATE outbox SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1",
    )
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(released.rows_affected())
}

/// What GitLab has for a key: the note or deployment id and the last
/// status delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remote {
    pub remote_id: Option<u64>,
    pub last_state: Option<State>,
    /// The run whose write set `last_state`.
    pub run_id: Option<String>,
}

/// What GitLab has for a key; nothing yet when no write of it was delivered.
pub async fn remote(conn: &mut Conn, key: &str) -> Result<Remote, StoreError> {
    let found: Option<(Option<i64>, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT remote_id, last_state, run_id FROM gitlab_refs WHERE key = $1")
            .bind(key)
            .fetch_optional(conn)
            .await?;
    let Some((remote_id, last_state, run_id)) = found else {
        return Ok(Remote::default());
    };
    let fields = Fields {
        table: "gitlab_refs",
        id: key,
    };
    Ok(Remote {
        remote_id: remote_id
            .map(|id| {
                u64::try_from(id)
                    .map_err(|_| fields.corrupt("remote_id", format!("{id} is negative")))
            })
            .transpose()?,
        last_state: last_state
            .map(|state| fields.parse("last_state", &state, State::parse))
            .transpose()?,
        run_id,
    })
}

pub async fn set_remote(
    conn: &mut Conn,
    key: &str,
    remote: &Remote,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO gitlab_refs (key, remote_id, last_state, run_id, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (key) DO UPDATE SET remote_id = excluded.remote_id, last_state = excluded.last_state, \
         run_id = excluded.run_id, updated_at = excluded.updated_at",
    )
    .bind(key)
    .bind(remote.remote_id.and_then(|id| i64::try_from(id).ok()))
    .bind(remote.last_state.map(State::as_str))
    .bind(remote.run_id.as_deref())
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// An integration's reporting health and backlog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Since when GitLab has rejected its token; `None` when healthy.
    pub unhealthy_since: Option<i64>,
    pub reason: Option<String>,
    /// Writes waiting to be delivered.
    pub pending: i64,
}

/// An integration's health; a deleted integration has no pause, only its
/// leftover writes.
pub async fn health(conn: &mut Conn, integration_id: &str) -> Result<Health, StoreError> {
    let paused: Option<(Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT unhealthy_since, unhealthy_reason FROM integrations WHERE id = $1")
            .bind(integration_id)
            .fetch_optional(&mut *conn)
            .await?;
    let (unhealthy_since, reason) = paused.unwrap_or((None, None));
    let (pending,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM outbox WHERE integration_id = $1 AND status = 'pending'",
    )
    .bind(integration_id)
    .fetch_one(conn)
    .await?;
    Ok(Health {
        unhealthy_since,
        reason,
        pending,
    })
}

/// Every integration's health and backlog, for the metrics.
pub async fn all_health(conn: &mut Conn) -> Result<Vec<(String, Health)>, StoreError> {
    let rows: Vec<(String, Option<i64>, Option<String>, i64)> = sqlx::query_as(
        "SELECT i.id, i.unhealthy_since, i.unhealthy_reason, \
           (SELECT COUNT(*) FROM outbox o WHERE o.integration_id = i.id AND o.status = 'pending') \
         FROM integrations i ORDER BY i.id",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, unhealthy_since, reason, pending)| {
            (
                id,
                Health {
                    unhealthy_since,
                    reason,
                    pending,
                },
            )
        })
        .collect())
}

/// Pauses the integration's outbox: GitLab rejected its token.
pub async fn mark_unhealthy(
    conn: &mut Conn,
    integration_id: &str,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE integrations SET unhealthy_since = COALESCE(unhealthy_since, $1), unhealthy_reason = $2 WHERE id = $3",
    )
    .bind(now.0)
    .bind(reason)
    .bind(integration_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Resumes the integration's outbox (its token was fixed).
pub async fn mark_healthy(conn: &mut Conn, integration_id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE integrations SET unhealthy_since = NULL, unhealthy_reason = NULL WHERE id = $1",
    )
    .bind(integration_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Resumes the outbox of every integration reached through this
/// `private://<pool>` URL: an agent connected. One whose token GitLab
/// rejects pauses again at its next write.
pub async fn resume_private(conn: &mut Conn, user_facing_host_url: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE integrations SET unhealthy_since = NULL, unhealthy_reason = NULL \
         WHERE user_facing_host_url = $1 AND unhealthy_since IS NOT NULL",
    )
    .bind(user_facing_host_url)
    .execute(conn)
    .await?;
    Ok(())
}
