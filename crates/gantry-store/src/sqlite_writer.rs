//! The hottest writes on SQLite, the inbox's group commits, the job
//! claims and the outcomes of delivery batches, on a connection and a
//! thread of their own. sqlx runs every SQLite statement on its
//! connection's thread and wakes the caller with each answer: a few thread
//! hops per statement, which cost more than the statements themselves.
//! Here a whole unit of work runs on the writer's thread with cached
//! prepared statements: one hop there and one back.
//!
//! The writer commits in groups: the units that arrive while it waits for
//! the store's write lock (the other writers of this process) or writes
//! the group before are written together, each in a savepoint of its own,
//! with one commit. A unit that fails is rolled back to its savepoint and
//! fails alone.
//!
//! The commit does not wait for the disk (`synchronous = NORMAL`): a
//! thread of its own syncs the write-ahead log, one sync for every group
//! committed meanwhile, and only then answers a durable group's units, so
//! nothing is acknowledged before it is on disk. The writer goes on with
//! the next group while the disk works. A group of claims alone is
//! answered at its commit: a claim lost to a power cut only hands its jobs
//! out again, and every commit that depends on it (a job's outcome, a
//! delivery) comes later in the same log and is synced with everything
//! before it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params, params_from_iter};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::deliveries::{NewDelivery, PROCESS_JOB, SAME_BODY_WINDOW, Status, Verdict};
use crate::group_commit::{Accepted, decide};
use crate::jobs::DEFAULT_MAX_ATTEMPTS;

/// How a unit is answered once its group's commit is known: with the
/// commit's error, if it failed.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// A unit's work: run in its savepoint (or given the error that kept it
/// from running), it says whether it succeeded (else its savepoint is
/// rolled back) and how to answer it.
type Run = Box<dyn FnOnce(Result<&Connection, &str>) -> (bool, Answer) + Send>;

struct Unit {
    run: Run,
    /// Whether its commit must reach the disk before it is answered.
    durable: bool,
}

/// How many prepared statements the writer keeps.
const STATEMENTS: usize = 512;

/// The most units one commit holds.
const GROUP: usize = 64;

/// A SQLite connection owned by a thread, which writes what it is sent in
/// groups. The thread ends when the writer is dropped.
pub(crate) struct Writer {
    units: mpsc::Sender<Unit>,
}

impl Writer {
    /// Opens `path` with the settings of the store's own connections; its
    /// groups take `write_lock`, the lock of the store's transactions.
    pub fn open(path: &Path, write_lock: Arc<tokio::sync::Mutex<()>>) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        // The syncer syncs the log, so a database without one would be
        // acknowledged unsynced: refused.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::GroupCommit(format!(
                "the SQLite database {} cannot use a write-ahead log (its journal mode is {mode})",
                path.display()
            )));
        }
        // The log is synced by the syncer thread, not by the commit.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA busy_timeout = 10000; PRAGMA temp_store = MEMORY;",
        )?;
        // A multi-row statement has a text for each batch size: room for
        // them all, so that the inbox's own statements are not prepared
        // again after every batch of claims and outcomes.
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        // Checkpoints are the checkpointer's (see [`Checkpointer`]).
        conn.execute_batch(&format!("PRAGMA wal_autocheckpoint = {LOG_LIMIT}"))?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let checkpoints = Checkpointer::spawn(Connection::open(path)?)?;
        let syncer = Syncer::spawn(PathBuf::from(wal), checkpoints)?;
        let (units, arrived) = mpsc::channel::<Unit>();
        std::thread::Builder::new()
            .name("gantry-writer".to_owned())
            .spawn(move || {
                while let Ok(first) = arrived.recv() {
                    let turn = write_lock.blocking_lock();
                    let mut group = vec![first];
                    group.extend(arrived.try_iter().take(GROUP - 1));
                    commit_group(&mut conn, group, &syncer);
                    drop(turn);
                }
            })
            .map_err(|err| {
                StoreError::GroupCommit(format!("cannot start the writer thread: {err}"))
            })?;
        Ok(Self { units })
    }

    /// Runs `f` in the next group and returns what it returns, once the
    /// group is committed (synced first when `durable`). An error of `f`
    /// undoes what `f` wrote, and only that.
    pub async fn run<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let run = Box::new(move |conn: Result<&Connection, &str>| -> (bool, Answer) {
            let done = match conn {
                Ok(conn) => f(conn).map_err(StoreError::from),
                Err(error) => Err(StoreError::GroupCommit(error.to_owned())),
            };
            let ok = done.is_ok();
            let answer: Answer = Box::new(move |commit_failed: Option<&str>| {
                let done = match commit_failed {
                    Some(error) => Err(StoreError::GroupCommit(error.to_owned())),
                    None => done,
                };
                let _ = reply.send(done);
            });
            (ok, answer)
        });
        self.units
            .send(Unit { run, durable })
            .map_err(|_| StoreError::WriterClosed)?;
        answer.await.map_err(|_| StoreError::WriterClosed)?
    }
}

/// Writes `group` in one transaction, each unit in a savepoint, and
/// answers every unit after the commit; a durable group's after the
/// `syncer` has synced the log too.
fn commit_group(conn: &mut Connection, group: Vec<Unit>, syncer: &Syncer) {
    let durable = group.iter().any(|unit| unit.durable);
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(error) => {
            let error = error.to_string();
            for unit in group {
                let (_, answer) = (unit.run)(Err(&error));
                answer(None);
            }
            return;
        }
    };
    // A unit alone needs no savepoint (whose journal costs a copy of each
    // page it changes): if it fails, its transaction is rolled back whole.
    let alone = group.len() == 1;
    let mut answers = Vec::with_capacity(group.len());
    let mut failed = false;
    // Set when SQLite itself rolled the transaction back (a full disk, an
    // I/O error): the units after it are not run, and the commit fails.
    let mut aborted: Option<String> = None;
    for unit in group {
        let saved = match &aborted {
            Some(error) => Err(error.clone()),
            None if alone => Ok(()),
            None => tx
                .execute_batch("SAVEPOINT unit")
                .map_err(|error| error.to_string()),
        };
        if let Err(error) = saved {
            let (_, answer) = (unit.run)(Err(&error));
            answer(None);
            continue;
        }
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (unit.run)(Ok(&tx))));
        let kept = match ran {
            Ok((ok, answer)) => {
                answers.push(answer);
                ok
            }
            // A panic fails its own unit (its answer is dropped).
            Err(_) => {
                tracing::error!("a write on the SQLite writer connection panicked");
                false
            }
        };
        if alone {
            // Answered with its own error when it failed, even one after
            // which SQLite rolled the transaction back itself.
            failed = !kept;
        } else if tx.is_autocommit() {
            aborted =
                Some("SQLite rolled back the group's transaction after a failed write".into());
        } else {
            let end = if kept {
                "RELEASE unit"
            } else {
                "ROLLBACK TO unit; RELEASE unit"
            };
            if let Err(error) = tx.execute_batch(end) {
                tracing::error!(%error, "cannot end a savepoint on the SQLite writer connection");
            }
        }
    }
    let committed = if failed {
        // The unit's own error answers it (SQLite may have rolled the
        // transaction back already).
        if !tx.is_autocommit()
            && let Err(error) = tx.rollback()
        {
            tracing::warn!(%error, "cannot roll back a failed write on the SQLite writer connection");
        }
        Ok(())
    } else {
        tx.commit().map_err(|error| error.to_string())
    };
    match committed {
        // A unit that failed alone wrote nothing: its error answers it.
        Ok(()) if durable && !failed => syncer.answer_when_synced(answers),
        _ => {
            for answer in answers {
                answer(committed.as_ref().err().map(String::as_str));
            }
        }
    }
}

/// Syncs the write-ahead log on a thread of its own and answers the units
/// of the durable groups committed before each sync.
struct Syncer {
    committed: mpsc::Sender<Vec<Answer>>,
}

impl Syncer {
    /// Starts the thread that syncs `wal` and wakes the checkpointer after
    /// each sync; it ends with the writer's.
    fn spawn(wal: PathBuf, checkpoints: Checkpointer) -> Result<Self, StoreError> {
        let (committed, waiting) = mpsc::channel::<Vec<Answer>>();
        std::thread::Builder::new()
            .name("gantry-wal-sync".to_owned())
            .spawn(move || {
                let mut log = Log::new(wal);
                while let Ok(first) = waiting.recv() {
                    // Every group committed by now is in the log: one sync
                    // makes them all durable.
                    let groups: Vec<Vec<Answer>> =
                        std::iter::once(first).chain(waiting.try_iter()).collect();
                    let failed = log.sync().err().map(|error| {
                        let error = format!(
                            "cannot sync the write-ahead log {}: {error}",
                            log.path.display()
                        );
                        tracing::error!("{error}");
                        error
                    });
                    for answer in groups.into_iter().flatten() {
                        answer(failed.as_deref());
                    }
                    checkpoints.wake();
                }
            })
            .map_err(|err| {
                StoreError::GroupCommit(format!("cannot start the log sync thread: {err}"))
            })?;
        Ok(Self { committed })
    }

    /// Answers a committed group's units once the log is synced.
    fn answer_when_synced(&self, answers: Vec<Answer>) {
        if let Err(mpsc::SendError(answers)) = self.committed.send(answers) {
            for answer in answers {
                answer(Some("the write-ahead log sync thread has stopped"));
            }
        }
    }
}

/// How many pages the log may hold before a connection that commits
/// checkpoints it itself (SQLite's default is 1,000). The log starts over
/// only after a checkpoint that caught up with every commit; under
/// sustained writes the checkpointer's passive ones rarely do, so the log
/// grows to this limit (64 MiB), where the committing connection finishes
/// the checkpoint (the checkpointer has copied most of it) and the log
/// starts over.
pub(crate) const LOG_LIMIT: u32 = 16_384;

/// The least time between two checkpoints: a page written many times
/// meanwhile is copied into the database once.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The most time between two checkpoints: the store's other connections
/// write too, and do not wake the checkpointer.
const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);

/// Copies the log into the database on a connection and a thread of its
/// own (a passive checkpoint, which writers do not wait for), so that the
/// writer never stops for a checkpoint as SQLite's automatic one does,
/// in the connection that commits. Woken after each sync of the log, and
/// at least every [`CHECKPOINT_IDLE`].
struct Checkpointer {
    wake: mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread; it ends when the checkpointer is dropped.
    fn spawn(conn: Connection) -> Result<Self, StoreError> {
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = {LOG_LIMIT};"
        ))?;
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("gantry-checkpoint".to_owned())
            .spawn(move || {
                while !matches!(
                    woken.recv_timeout(CHECKPOINT_IDLE),
                    Err(mpsc::RecvTimeoutError::Disconnected)
                ) {
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        // Another connection's checkpoint is running.
                        Err(rusqlite::Error::SqliteFailure(error, _))
                            if error.code == rusqlite::ErrorCode::DatabaseBusy => {}
                        Err(error) => {
                            tracing::warn!(%error, "cannot checkpoint the SQLite write-ahead log");
                        }
                        Ok(()) => {}
                    }
                    std::thread::sleep(CHECKPOINT_EVERY);
                }
            })
            .map_err(|err| {
                StoreError::GroupCommit(format!("cannot start the checkpoint thread: {err}"))
            })?;
        Ok(Self { wake })
    }

    /// Asks for a checkpoint: the next one, if one is asked for already.
    fn wake(&self) {
        let _ = self.wake.try_send(());
    }
}

/// The write-ahead log file, as the syncer syncs it.
struct Log {
    path: PathBuf,
    /// The file last synced, and its inode: SQLite creates the log again
    /// when every connection to the database has closed.
    file: Option<(File, u64)>,
}

impl Log {
    fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    /// Syncs the log's data; the first time for a file, the directory
    /// too, as SQLite does for a log it has created (the file is not
    /// durable until its name is).
    fn sync(&mut self) -> std::io::Result<()> {
        let now = std::fs::metadata(&self.path)?.ino();
        let (file, inode) = match self.file.take() {
            Some((file, synced)) if synced == now => (file, synced),
            _ => {
                let file = File::open(&self.path)?;
                let inode = file.metadata()?.ino();
                let dir = match self.path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                };
                File::open(dir)?.sync_all()?;
                (file, inode)
            }
        };
        file.sync_data()?;
        self.file = Some((file, inode));
        Ok(())
    }
}

/// Writes `batch` (with each body's SHA-256, hex), as
/// [`crate::group_commit::write`] does on sqlx: each delivery's id and
/// status in the batch's order, `None` where its integration is gone.
pub(crate) fn write(
    tx: &Connection,
    batch: &[NewDelivery],
    shas: &[String],
    order: &[usize],
) -> rusqlite::Result<Vec<Option<(String, Status)>>> {
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
/// [`crate::jobs::claim_many`] does on sqlx.
pub(crate) fn claim(tx: &Connection, claim: &Claim) -> rusqlite::Result<Vec<ClaimedRow>> {
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
    Ok(claimed)
}

/// [`crate::deliveries::complete_and_finish`] on the writer connection:
/// the jobs of `leases` (id, token) completed and `processed` (each
/// delivery's id, status, outcome, error and runs) recorded; `false`,
/// writing nothing, when a lease was lost.
pub(crate) fn complete_and_finish(
    tx: &Connection,
    leases: &[(i64, String)],
    processed: Vec<[Value; 5]>,
    now: crate::Millis,
) -> rusqlite::Result<bool> {
    if !leases.is_empty() {
        let (check, update) = crate::jobs::complete_all_sql(crate::Backend::Sqlite, leases.len());
        let pairs = || {
            leases
                .iter()
                .flat_map(|(id, token)| [Value::from(*id), Value::from(token.clone())])
        };
        let held: i64 = tx
            .prepare_cached(&check)?
            .query_row(params_from_iter(pairs()), |row| row.get(0))?;
        if usize::try_from(held).ok() != Some(leases.len()) {
            return Ok(false);
        }
        tx.prepare_cached(&update)?.execute(params_from_iter(
            std::iter::once(Value::from(now.0)).chain(pairs()),
        ))?;
    }
    if !processed.is_empty() {
        let [statuses, records] =
            crate::deliveries::finish_all_sql(crate::Backend::Sqlite, processed.len());
        let pairs = processed.iter().flat_map(|[id, status, ..]| [id, status]);
        tx.prepare_cached(&statuses)?
            .execute(params_from_iter(pairs))?;
        let records_values = processed
            .into_iter()
            .flat_map(|[id, _, outcome, error, runs]| [id, outcome, error, runs]);
        let values = std::iter::once(Value::from(now.0)).chain(records_values);
        tx.prepare_cached(&records)?
            .execute(params_from_iter(values))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Writer;

    async fn count(db: &std::path::Path) -> i64 {
        let conn = rusqlite::Connection::open(db).expect("open");
        conn.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .expect("count")
    }

    /// Units queued while the writer waits for the write lock are written in
    /// one group: a failing one undoes only its own writes, and none is
    /// answered before the group's commit.
    #[tokio::test]
    async fn a_group_commits_its_units_and_a_failing_one_alone_is_undone() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("w.db");
        rusqlite::Connection::open(&db)
            .and_then(|conn| conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)"))
            .expect("schema");
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let writer = Arc::new(Writer::open(&db, lock.clone()).expect("writer"));

        // Holding the lock, as a transaction of the store would.
        let held = lock.clone().lock_owned().await;
        let insert = |n: i64| {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .run(true, move |conn| {
                        conn.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
                        Ok(n)
                    })
                    .await
            })
        };
        let first = insert(1);
        let failing = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .run(true, |conn| {
                        conn.execute("INSERT INTO t (n) VALUES (2)", [])?;
                        // A second row 1: the unique key refuses it.
                        conn.execute("INSERT INTO t (n) VALUES (1)", [])
                    })
                    .await
            })
        };
        let third = insert(3);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !first.is_finished() && !failing.is_finished() && !third.is_finished(),
            "nothing is answered before its commit"
        );
        assert_eq!(count(&db).await, 0);
        drop(held);

        assert_eq!(first.await.expect("task").expect("first"), 1);
        assert_eq!(third.await.expect("task").expect("third"), 3);
        let refused = failing.await.expect("task").expect_err("a duplicate key");
        assert!(refused.to_string().contains("UNIQUE"), "{refused}");
        let conn = rusqlite::Connection::open(&db).expect("open");
        let rows: Vec<i64> = conn
            .prepare("SELECT n FROM t ORDER BY n")
            .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
            .expect("rows");
        assert_eq!(rows, [1, 3], "the failing unit's row 2 is undone");

        // Alone, a failing unit rolls its transaction back.
        let alone = writer
            .run(true, |conn| {
                conn.execute("INSERT INTO t (n) VALUES (4)", [])?;
                conn.execute("INSERT INTO t (n) VALUES (3)", [])
            })
            .await;
        assert!(alone.is_err());
        assert_eq!(count(&db).await, 2);
    }

    /// The writer's commits reach the database file through the
    /// checkpointer, long before the log holds `LOG_LIMIT` pages (where
    /// the writer would checkpoint it itself).
    #[tokio::test]
    async fn the_checkpointer_copies_the_log_into_the_database() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("w.db");
        rusqlite::Connection::open(&db)
            .and_then(|conn| {
                conn.execute_batch(
                    "PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY, pad BLOB)",
                )
            })
            .expect("schema");
        let before = std::fs::metadata(&db).expect("db").len();
        let writer = Writer::open(&db, Arc::new(tokio::sync::Mutex::new(()))).expect("writer");
        for n in 0..4 {
            writer
                .run(true, move |conn| {
                    conn.execute("INSERT INTO t (n, pad) VALUES (?1, zeroblob(100000))", [n])
                })
                .await
                .expect("insert");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // 400 kB of rows: about a hundred pages, far below the limit.
        while std::fs::metadata(&db).expect("db").len() < before + 400_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log was not checkpointed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A database that cannot keep a write-ahead log (here one in memory)
    /// is refused: the syncer would have no log to sync.
    #[test]
    fn a_database_without_a_log_is_refused() {
        let refused = Writer::open(
            std::path::Path::new(":memory:"),
            Arc::new(tokio::sync::Mutex::new(())),
        )
        .err()
        .expect("refused");
        assert!(
            refused.to_string().contains("cannot use a write-ahead log"),
            "{refused}"
        );
    }

    /// The syncer syncs the log that is at the path now: SQLite creates
    /// it again once every connection has closed.
    #[test]
    fn the_log_synced_is_the_one_at_its_path() {
        use std::os::unix::fs::MetadataExt as _;

        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w.db-wal");
        std::fs::write(&path, b"first").expect("write");
        let mut log = super::Log::new(path.clone());
        log.sync().expect("sync");
        let inode = |log: &super::Log| log.file.as_ref().map(|(_, inode)| *inode);
        let first = inode(&log);
        assert_eq!(first, Some(std::fs::metadata(&path).expect("log").ino()));

        let again = dir.path().join("again");
        std::fs::write(&again, b"second").expect("write");
        std::fs::rename(&again, &path).expect("rename");
        log.sync().expect("sync");
        assert_ne!(inode(&log), first);
        assert_eq!(
            inode(&log),
            Some(std::fs::metadata(&path).expect("log").ino())
        );

        std::fs::remove_file(&path).expect("remove");
        assert!(log.sync().is_err(), "a missing log is an error");
    }
}
