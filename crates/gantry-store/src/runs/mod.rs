//! Runs and their transitions. The state machine itself is
//! `gantry_domain::run`; this module stores what it decides, always with
//! the transition that led there.

use std::sync::LazyLock;

use gantry_domain::Summary;
use gantry_domain::run::{Command, EXECUTING, IllegalTransition, Kind, LOCKING, State, transition};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row as _};

use crate::row::{Fields, to_json};
use crate::{Conn, Cursor, Millis, Page, StoreError};

mod create;
mod logs;
pub use create::{create, create_all};
pub use logs::{append_log, log, log_since, log_tail};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub id: String,
    pub stack_id: String,
    pub kind: Kind,
    pub state: State,
    pub reason: Option<String>,
    pub commit_sha: String,
    pub branch: String,
    pub merge_request_iid: Option<i64>,
    /// `delivery:<id>` or `api-key:<id>`.
    pub trigger: String,
    /// The plan's change summary, once planned.
    pub summary: Option<Summary>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub seq: i64,
    pub state: State,
    pub at: i64,
    pub cause: String,
}

impl FromRow<'_, AnyRow> for Run {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let id: String = row.try_get("id")?;
        let fields = Fields {
            table: "runs",
            id: &id,
        };
        Ok(Self {
            kind: fields.parse_in(row, "kind", Kind::parse)?,
            state: fields.parse_in(row, "state", State::parse)?,
            summary: row
                .try_get::<Option<String>, _>("summary")?
                .map(|raw| fields.json("summary", &raw))
                .transpose()?,
            id,
            stack_id: row.try_get("stack_id")?,
            reason: row.try_get("reason")?,
            commit_sha: row.try_get("commit_sha")?,
            branch: row.try_get("branch")?,
            merge_request_iid: row.try_get("merge_request_iid")?,
            trigger: row.try_get("trigger")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// States as an SQL list: `'preparing', 'planning', …`.
fn sql_list(states: &[State]) -> String {
    states
        .iter()
        .map(|state| format!("'{}'", state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The domain's [`LOCKING`] and [`EXECUTING`] states, for queries.
static LOCKING_SQL: LazyLock<String> = LazyLock::new(|| sql_list(&LOCKING));
static EXECUTING_SQL: LazyLock<String> = LazyLock::new(|| sql_list(&EXECUTING));
/// The states of a run that has yet to check out its commit, or is planning.
static BEFORE_PLAN_SQL: LazyLock<String> =
    LazyLock::new(|| sql_list(&[State::Queued, State::Preparing, State::Planning]));

fn missing(id: &str) -> StoreError {
    StoreError::NotFound {
        what: "run",
        id: id.to_owned(),
    }
}

const COLUMNS: &str = "id, stack_id, kind, state, reason, commit_sha, branch, merge_request_iid, trigger, summary, \
    created_at, updated_at";

#[derive(Clone, Debug)]
pub struct NewRun<'a> {
    pub stack_id: &'a str,
    pub kind: Kind,
    pub commit_sha: &'a str,
    pub branch: &'a str,
    pub merge_request_iid: Option<u64>,
    pub trigger: &'a str,
}

/// Whether [`create`] made a run or found the one of that (stack, commit, kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

/// Makes the transaction wake every server's outbox when it commits: the
/// writes to GitLab it records go out at once (in this process through
/// the store's signal, on PostgreSQL also by `NOTIFY` to the others).
async fn wakes_outbox(tx: &mut crate::Tx) -> Result<(), StoreError> {
    if !tx.wrote_outbox && tx.backend() == crate::Backend::Postgres {
        sqlx::Executor::execute(
            &mut **tx,
            format!("NOTIFY {}", crate::store::OUTBOX_CHANNEL).as_str(),
        )
        .await?;
    }
    tx.wrote_outbox = true;
    Ok(())
}

async fn record(
    conn: &mut Conn,
    run_id: &str,
    seq: i64,
    state: State,
    cause: &str,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO run_transitions (run_id, seq, state, at, cause) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(run_id)
    .bind(seq)
    .bind(state.as_str())
    .bind(now.0)
    .bind(cause)
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies `command` to a run: the new state and its transition are
/// stored, or the state machine's refusal is returned and nothing changes.
/// Failed and canceled runs keep `cause` as their reason.
pub async fn advance(
    tx: &mut crate::Tx,
    run_id: &str,
    command: Command,
    cause: &str,
    autodeploy: bool,
    now: Millis,
) -> Result<Result<Run, IllegalTransition>, StoreError> {
    wakes_outbox(tx).await?;
    advance_in(tx, run_id, command, cause, autodeploy, now).await
}

async fn advance_in(
    conn: &mut Conn,
    run_id: &str,
    command: Command,
    cause: &str,
    autodeploy: bool,
    now: Millis,
) -> Result<Result<Run, IllegalTransition>, StoreError> {
    let run = get(conn, run_id).await?.ok_or_else(|| missing(run_id))?;
    let (kind, from) = (run.kind, run.state);
    let to = match transition(kind, from, command, autodeploy) {
        Ok(to) => to,
        Err(illegal) => return Ok(Err(illegal)),
    };
    let reason = matches!(to, State::Failed | State::Canceled).then_some(cause);
    // Guarded by the state read above, so two writers cannot both move it.
    let done = sqlx::query("UPDATE runs SET state = $1, reason = COALESCE($2, reason), updated_at = $3 WHERE id = $4 AND state = $5")
        .bind(to.as_str())
        .bind(reason)
        .bind(now.0)
        .bind(run_id)
        .bind(from.as_str())
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Ok(Err(IllegalTransition {
            kind: kind.as_str(),
            from,
            action: "moved: it changed meanwhile",
        }));
    }
    let (seq,): (i64,) =
        sqlx::query_as("SELECT COALESCE(MAX(seq), -1) + 1 FROM run_transitions WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&mut *conn)
            .await?;
    record(conn, run_id, seq, to, cause, now).await?;
    let moved = get(conn, run_id).await?.ok_or_else(|| missing(run_id))?;
    crate::outbox::record(conn, &moved, Some(from), None, now).await?;
    Ok(Ok(moved))
}

/// Cancels a stack's queued proposed runs of a branch, or of a merge
/// request; returns their ids.
pub async fn cancel_queued_proposed(
    tx: &mut crate::Tx,
    stack_id: &str,
    branch: Option<&str>,
    merge_request_iid: Option<u64>,
    cause: &str,
    now: Millis,
) -> Result<Vec<String>, StoreError> {
    wakes_outbox(tx).await?;
    let conn: &mut Conn = tx;
    let iid = merge_request_iid.map(iid_column).transpose()?;
    let ids: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM runs WHERE stack_id = $1 AND kind = 'proposed' AND state = 'queued' \
         AND (($2 IS NOT NULL AND branch = $2) OR ($3 IS NOT NULL AND merge_request_iid = $3)) ORDER BY id",
    )
    .bind(stack_id)
    .bind(branch)
    .bind(iid)
    .fetch_all(&mut *conn)
    .await?;
    let mut canceled = Vec::new();
    for (id,) in ids {
        if advance_in(conn, &id, Command::Cancel, cause, false, now)
            .await?
            .is_ok()
        {
            canceled.push(id);
        }
    }
    Ok(canceled)
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<Run>, StoreError> {
    let row: Option<Run> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM runs WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row)
}

pub async fn transitions(conn: &mut Conn, run_id: &str) -> Result<Vec<Transition>, StoreError> {
    let rows: Vec<(i64, String, i64, String)> = sqlx::query_as(
        "SELECT seq, state, at, cause FROM run_transitions WHERE run_id = $1 ORDER BY seq",
    )
    .bind(run_id)
    .fetch_all(conn)
    .await?;
    let id = format!("{run_id} (its transitions)");
    let fields = Fields {
        table: "run_transitions",
        id: &id,
    };
    rows.into_iter()
        .map(|(seq, state, at, cause)| {
            Ok(Transition {
                seq,
                state: fields.parse("state", &state, State::parse)?,
                at,
                cause,
            })
        })
        .collect()
}

/// A merge request's iid as its column holds it.
fn iid_column(iid: u64) -> Result<i64, StoreError> {
    i64::try_from(iid).map_err(|_| StoreError::Corrupt {
        table: "runs",
        id: String::new(),
        column: "merge_request_iid",
        problem: format!("{iid} is larger than a database integer"),
    })
}

/// A stack's runs, newest first, optionally of one state and kind.
pub async fn list(
    conn: &mut Conn,
    stack_id: &str,
    state: Option<State>,
    kind: Option<Kind>,
    page: &Page,
) -> Result<(Vec<Run>, Option<Cursor>), StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM runs WHERE stack_id = $1 AND ($2 = '' OR state = $2) AND ($3 = '' OR kind = $3) \
           AND (created_at < $4 OR (created_at = $4 AND id < $5)) ORDER BY created_at DESC, id DESC LIMIT $6"
    );
    let query = sqlx::query_as::<_, Run>(&sql)
        .bind(stack_id)
        .bind(state.map_or("", State::as_str))
        .bind(kind.map_or("", Kind::as_str));
    page.fetch(conn, query, |run: &Run| (run.created_at, &run.id))
        .await
}

/// Starts the next run a worker may take (queued → preparing), honouring
/// the stack lock: a tracked run starts only when no tracked run of its
/// stack holds the lock (preparing through applying, waiting for
/// confirmation included) and no older tracked run of its stack is still
/// queued; proposed runs start whenever they are queued. Oldest first;
/// never a run held back until later ([`set_not_before`]).
pub async fn start_next(
    tx: &mut crate::Tx,
    cause: &str,
    now: Millis,
) -> Result<Option<Run>, StoreError> {
    let skip_locked = match tx.backend() {
        crate::Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        crate::Backend::Sqlite => "",
    };
    loop {
        let locking = &*LOCKING_SQL;
        let candidate: Option<(String, String, String)> = sqlx::query_as(&format!(
            "SELECT r.id, r.stack_id, r.kind FROM runs r WHERE r.state = 'queued' \
               AND (r.not_before IS NULL OR r.not_before <= $1) AND (r.kind = 'proposed' OR ( \
               NOT EXISTS (SELECT 1 FROM runs h WHERE h.stack_id = r.stack_id AND h.kind = 'tracked' \
                           AND h.state IN ({locking})) \
               AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.stack_id = r.stack_id AND o.kind = 'tracked' \
                           AND o.state = 'queued' AND (o.created_at < r.created_at OR (o.created_at = r.created_at AND o.id < r.id))))) \
             ORDER BY r.created_at, r.id LIMIT 1 {skip_locked}"
        ))
        .bind(now.0)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((id, stack_id, kind)) = candidate else {
            return Ok(None);
        };
        if kind == Kind::Tracked.as_str() && tx.backend() == crate::Backend::Postgres {
            // Another server may be starting a tracked run of this stack:
            // the stack row serialises them, then the lock is checked again.
            sqlx::query("SELECT id FROM stacks WHERE id = $1 FOR UPDATE")
                .bind(&stack_id)
                .execute(&mut **tx)
                .await?;
            let (held,): (i64,) = sqlx::query_as(&format!(
                "SELECT COUNT(*) FROM runs WHERE stack_id = $1 AND kind = 'tracked' \
                 AND state IN ({locking})"
            ))
            .bind(&stack_id)
            .fetch_one(&mut **tx)
            .await?;
            if held > 0 {
                return Ok(None);
            }
        }
        match advance(tx, &id, Command::Start, cause, false, now).await? {
            Ok(run) => return Ok(Some(run)),
            // Taken meanwhile: look again.
            Err(_) => continue,
        }
    }
}

/// Whether a run at `commit` is queued or being prepared or planned:
/// one that will still need the commit's source.
pub async fn any_waiting_at(conn: &mut Conn, commit: &str) -> Result<bool, StoreError> {
    let found: Option<(i64,)> = sqlx::query_as(&format!(
        "SELECT 1 FROM runs WHERE commit_sha = $1 AND state IN ({}) LIMIT 1",
        *BEFORE_PLAN_SQL
    ))
    .bind(commit)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

/// Whether `owner` holds the run's lease.
pub async fn holds_lease(conn: &mut Conn, run_id: &str, owner: &str) -> Result<bool, StoreError> {
    let found: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM runs WHERE id = $1 AND lease_owner = $2")
            .bind(run_id)
            .bind(owner)
            .fetch_optional(conn)
            .await?;
    Ok(found.is_some())
}

/// Records the plan's change summary.
pub async fn set_summary(
    conn: &mut Conn,
    run_id: &str,
    summary: &Summary,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE runs SET summary = $1, updated_at = $2 WHERE id = $3")
        .bind(to_json(summary))
        .bind(now.0)
        .bind(run_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes a confirmed run for applying (confirmed → applying), oldest first.
pub async fn take_confirmed(
    tx: &mut crate::Tx,
    cause: &str,
    now: Millis,
) -> Result<Option<Run>, StoreError> {
    loop {
        let candidate: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM runs WHERE state = 'confirmed' ORDER BY updated_at, id LIMIT 1",
        )
        .fetch_optional(&mut **tx)
        .await?;
        let Some((id,)) = candidate else {
            return Ok(None);
        };
        if let Ok(run) = advance(tx, &id, Command::BeginApply, cause, false, now).await? {
            return Ok(Some(run));
        }
    }
}

/// Leases a run to the worker executing it until `until`.
pub async fn lease(
    conn: &mut Conn,
    run_id: &str,
    owner: &str,
    until: Millis,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE runs SET lease_owner = $1, lease_expires_at = $2 WHERE id = $3")
        .bind(owner)
        .bind(until.0)
        .bind(run_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Keeps a queued run from being taken before `at` (a preparation that
/// met an unavailable GitLab waits before it is tried again). The runs of
/// its stack queued after it wait too: tracked runs keep their order.
pub async fn set_not_before(conn: &mut Conn, run_id: &str, at: Millis) -> Result<(), StoreError> {
    sqlx::query("UPDATE runs SET not_before = $1 WHERE id = $2")
        .bind(at.0)
        .bind(run_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Extends the lease; `false` when the run is no longer this worker's or
/// no longer executing (it was canceled): the worker should stop.
pub async fn heartbeat(
    conn: &mut Conn,
    run_id: &str,
    owner: &str,
    until: Millis,
) -> Result<bool, StoreError> {
    let done = sqlx::query(&format!(
        "UPDATE runs SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 \
         AND state IN ({})",
        *EXECUTING_SQL
    ))
    .bind(until.0)
    .bind(run_id)
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Ends the worker's lease. A run that stopped executing (it ended, waits
/// for confirmation, or went back to the queue) is free; a run still
/// executing was given up by its worker, so its lease lapses now and the
/// reaper fails it ("worker lost") instead of leaving it stuck.
pub async fn release(conn: &mut Conn, run_id: &str, owner: &str) -> Result<(), StoreError> {
    let executing = &*EXECUTING_SQL;
    sqlx::query(&format!(
        "UPDATE runs SET \
           lease_owner = CASE WHEN state IN ({executing}) THEN lease_owner END, \
           lease_expires_at = CASE WHEN state IN ({executing}) THEN $3 END \
         WHERE id = $1 AND lease_owner = $2"
    ))
    .bind(run_id)
    .bind(owner)
    .bind(Millis::now().0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Fails the runs whose worker stopped heartbeating ("worker lost"), which
/// releases their stacks' locks. Returns their ids.
pub async fn reap_lost(store: &crate::Store, now: Millis) -> Result<Vec<String>, StoreError> {
    let mut tx = store.begin().await?;
    let lapsed: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
        "SELECT id, lease_owner FROM runs WHERE state IN ({}) \
         AND lease_expires_at IS NOT NULL AND lease_expires_at < $1 ORDER BY id",
        *EXECUTING_SQL
    ))
    .bind(now.0)
    .fetch_all(&mut *tx)
    .await?;
    let mut failed = Vec::new();
    for (id, owner) in lapsed {
        let cause = match owner {
            Some(owner) => format!("worker lost: {owner} stopped renewing its lease"),
            None => "worker lost: its lease lapsed".to_owned(),
        };
        if advance(&mut tx, &id, Command::Fail, &cause, false, now)
            .await?
            .is_ok()
        {
            sqlx::query(
                "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = $1",
            )
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            failed.push(id);
        }
    }
    tx.commit().await?;
    Ok(failed)
}
