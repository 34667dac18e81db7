//! Creating runs, one ([`create`]) or many at once ([`create_all`]: what one
//! event of a repository used by many stacks creates). Many runs, their
//! first transitions and their outbox writes go in as multi-row inserts, a
//! few statements per few hundred runs instead of several per run; a run
//! that already exists takes the path of [`create`] one by one.

use std::collections::HashSet;

use gantry_domain::report::Write;
use gantry_domain::run::{Command, Kind, State};

use super::{
    COLUMNS, Created, NewRun, Run, advance_in, get, iid_column, missing, record, wakes_outbox,
};
use crate::params::{numbered, values};
use crate::{Conn, Millis, StoreError};

/// Rows per statement: within every database's limit on parameters.
const CHUNK: usize = 400;

/// Creates a queued run, or returns the existing run for the same
/// (stack, commit, kind), linking it to the merge request when this event
/// names one and it has none. A new proposed run cancels the older queued
/// proposed runs of its stack and branch ("superseded by run …").
pub async fn create(
    tx: &mut crate::Tx,
    new: &NewRun<'_>,
    now: Millis,
) -> Result<(Run, Created, Vec<String>), StoreError> {
    wakes_outbox(tx).await?;
    create_in(tx, new, now).await
}

async fn create_in(
    conn: &mut Conn,
    new: &NewRun<'_>,
    now: Millis,
) -> Result<(Run, Created, Vec<String>), StoreError> {
    let id = uuid::Uuid::now_v7().to_string();
    let iid = new.merge_request_iid.map(iid_column).transpose()?;
    let inserted: Option<(String,)> = sqlx::query_as(
        "INSERT INTO runs (id, stack_id, kind, state, commit_sha, branch, merge_request_iid, trigger, created_at, updated_at) \
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $8) \
         ON CONFLICT (stack_id, commit_sha, kind) DO NOTHING RETURNING id",
    )
    .bind(&id)
    .bind(new.stack_id)
    .bind(new.kind.as_str())
    .bind(new.commit_sha)
    .bind(new.branch)
    .bind(iid)
    .bind(new.trigger)
    .bind(now.0)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_none() {
        let mut linked = false;
        if let Some(iid) = iid {
            linked = sqlx::query(
                "UPDATE runs SET merge_request_iid = $1, updated_at = $2 \
                 WHERE stack_id = $3 AND commit_sha = $4 AND kind = $5 AND merge_request_iid IS NULL",
            )
            .bind(iid)
            .bind(now.0)
            .bind(new.stack_id)
            .bind(new.commit_sha)
            .bind(new.kind.as_str())
            .execute(&mut *conn)
            .await?
            .rows_affected()
                > 0;
        }
        let run: Run = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM runs WHERE stack_id = $1 AND commit_sha = $2 AND kind = $3"
        ))
        .bind(new.stack_id)
        .bind(new.commit_sha)
        .bind(new.kind.as_str())
        .fetch_one(&mut *conn)
        .await?;
        if linked {
            // Its merge request gets the comment from now on.
            crate::outbox::record(conn, &run, None, Some(Write::Note), now).await?;
        }
        return Ok((run, Created::Existing, Vec::new()));
    }
    record(conn, &id, 0, State::Queued, new.trigger, now).await?;
    let queued = get(conn, &id).await?.ok_or_else(|| missing(&id))?;
    crate::outbox::record(conn, &queued, None, None, now).await?;
    let canceled = supersede(conn, new, &id, now).await?;
    let run = get(conn, &id).await?.ok_or_else(|| missing(&id))?;
    Ok((run, Created::New, canceled))
}

/// A new proposed run cancels the older queued proposed runs of its stack
/// and branch; their ids.
async fn supersede(
    conn: &mut Conn,
    new: &NewRun<'_>,
    id: &str,
    now: Millis,
) -> Result<Vec<String>, StoreError> {
    let mut canceled = Vec::new();
    if new.kind != Kind::Proposed {
        return Ok(canceled);
    }
    let older: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM runs WHERE stack_id = $1 AND kind = 'proposed' AND branch = $2 AND state = 'queued' \
         AND id <> $3 ORDER BY id",
    )
    .bind(new.stack_id)
    .bind(new.branch)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    for (older,) in older {
        let cause = format!("superseded by run {id}");
        if advance_in(conn, &older, Command::Cancel, &cause, false, now)
            .await?
            .is_ok()
        {
            canceled.push(older);
        }
    }
    Ok(canceled)
}

/// [`create`] for each of `news`, in one transaction, answering in
/// their order.
pub async fn create_all(
    tx: &mut crate::Tx,
    news: &[NewRun<'_>],
    now: Millis,
) -> Result<Vec<(Run, Created, Vec<String>)>, StoreError> {
    if news.is_empty() {
        return Ok(Vec::new());
    }
    wakes_outbox(tx).await?;
    let mut keys = HashSet::with_capacity(news.len());
    if !news
        .iter()
        .all(|new| keys.insert((new.stack_id, new.commit_sha, new.kind)))
    {
        // The same run twice: one by one, so the second finds the first.
        let mut created = Vec::with_capacity(news.len());
        for new in news {
            created.push(create_in(tx, new, now).await?);
        }
        return Ok(created);
    }
    let mut created = Vec::with_capacity(news.len());
    for chunk in news.chunks(CHUNK) {
        created.extend(create_chunk(tx, chunk, now).await?);
    }
    Ok(created)
}

async fn create_chunk(
    tx: &mut crate::Tx,
    news: &[NewRun<'_>],
    now: Millis,
) -> Result<Vec<(Run, Created, Vec<String>)>, StoreError> {
    let backend = tx.backend();
    let mut runs = Vec::with_capacity(news.len());
    for new in news {
        runs.push(Run {
            id: uuid::Uuid::now_v7().to_string(),
            stack_id: new.stack_id.to_owned(),
            kind: new.kind,
            state: State::Queued,
            reason: None,
            commit_sha: new.commit_sha.to_owned(),
            branch: new.branch.to_owned(),
            merge_request_iid: new.merge_request_iid.map(iid_column).transpose()?,
            trigger: new.trigger.to_owned(),
            summary: None,
            created_at: now.0,
            updated_at: now.0,
        });
    }
    let sql = format!(
        "INSERT INTO runs (id, stack_id, kind, state, commit_sha, branch, merge_request_iid, trigger, created_at, updated_at) \
         VALUES {} ON CONFLICT (stack_id, commit_sha, kind) DO NOTHING",
        values(runs.len(), "(?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)")
    );
    let sql = numbered(backend, &sql);
    let mut insert = sqlx::query(&sql);
    for run in &runs {
        insert = insert
            .bind(&run.id)
            .bind(&run.stack_id)
            .bind(run.kind.as_str())
            .bind(&run.commit_sha)
            .bind(&run.branch)
            .bind(run.merge_request_iid)
            .bind(&run.trigger)
            .bind(now.0)
            .bind(now.0);
    }
    // Rows come back from SQLite one channel message each: ask which were
    // new only when some were not (the run existed).
    let count = insert.execute(&mut **tx).await?.rows_affected();
    let inserted: HashSet<String> = if usize::try_from(count).ok() == Some(runs.len()) {
        runs.iter().map(|run| run.id.clone()).collect()
    } else {
        let sql = format!(
            "SELECT id FROM runs WHERE id IN ({})",
            values(runs.len(), "?")
        );
        let sql = numbered(backend, &sql);
        let mut query = sqlx::query_as::<_, (String,)>(&sql);
        for run in &runs {
            query = query.bind(&run.id);
        }
        query
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect()
    };
    let new_runs: Vec<&Run> = runs.iter().filter(|r| inserted.contains(&r.id)).collect();
    if !new_runs.is_empty() {
        let sql = format!(
            "INSERT INTO run_transitions (run_id, seq, state, at, cause) VALUES {}",
            values(new_runs.len(), "(?, 0, 'queued', ?, ?)")
        );
        let sql = numbered(backend, &sql);
        let mut transitions = sqlx::query(&sql);
        for run in &new_runs {
            transitions = transitions.bind(&run.id).bind(now.0).bind(&run.trigger);
        }
        transitions.execute(&mut **tx).await?;
        crate::outbox::record_queued(tx, &new_runs, now).await?;
    }
    let mut created = Vec::with_capacity(news.len());
    for (new, run) in news.iter().zip(runs) {
        if inserted.contains(&run.id) {
            let canceled = supersede(tx, new, &run.id, now).await?;
            created.push((run, Created::New, canceled));
        } else {
            created.push(create_in(tx, new, now).await?);
        }
    }
    Ok(created)
}
