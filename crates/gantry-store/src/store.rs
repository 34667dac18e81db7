use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, ConnectOptions, Executor, Transaction};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// The PostgreSQL channel on which committed enqueues wake workers.
pub(crate) const JOBS_CHANNEL: &str = "gantry_jobs";
/// Notified by a commit that recorded writes to GitLab, for every server's
/// outbox.
pub(crate) const OUTBOX_CHANNEL: &str = "gantry_outbox";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {0:?} is not supported: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that a statement needs is not there (it was deleted meanwhile).
    #[error("{what} {id:?} does not exist")]
    NotFound { what: &'static str, id: String },
    /// A stored value that does not parse: the database was edited by hand,
    /// or written by another program.
    #[error("{table} row {id:?} holds a bad `{column}`: {problem}")]
    Corrupt {
        table: &'static str,
        id: String,
        column: &'static str,
        problem: String,
    },
    /// The delivery writer stopped (the server is shutting down).
    #[error("the delivery writer has stopped; the server is shutting down")]
    WriterClosed,
    /// The group commit that held a delivery failed.
    #[error("the group commit of deliveries failed: {0}")]
    GroupCommit(String),
    /// A statement on SQLite's own writer connection failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A row that did not parse (see `row::Corrupt`) is named as such; any
/// other error is the database's.
impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Decode(source) => match source.downcast::<crate::row::Corrupt>() {
                Ok(corrupt) => (*corrupt).into(),
                Err(source) => StoreError::Database(sqlx::Error::Decode(source)),
            },
            other => StoreError::Database(other),
        }
    }
}

/// The handle to Gantry's database: a pool, its dialect, and the signal that
/// wakes job claimers. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    /// On SQLite, the connection of the inbox's group commits and the job
    /// claims (`sqlite_writer`).
    writer: Option<crate::sqlite_writer::Writer>,
    /// SQLite allows one writer: transactions of this process queue here,
    /// in order, instead of meeting SQLite's busy handler, which sleeps.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    jobs_signals: Arc<JobSignals>,
    /// Woken when a commit in this process recorded writes to GitLab.
    outbox_signal: Arc<Notify>,
    listener: Option<AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`). SQLite databases
    /// are created if missing and run in WAL mode with a busy timeout, full
    /// synchronous commits and foreign keys on.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options = AnyConnectOptions::from_str(url)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool_options = match backend {
            // A connection to a local file does not go stale: no ping (a
            // round trip to the connection's thread) before each use.
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(8)
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // Checkpoints are the writer's checkpointer's.
                        conn.execute(
                            format!(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                                 PRAGMA wal_autocheckpoint = {};",
                                crate::sqlite_writer::LOG_LIMIT
                            )
                            .as_str(),
                        )
                        .await?;
                        Ok(())
                    })
                }),
            Backend::Postgres => AnyPoolOptions::new().max_connections(16),
        };
        let pool = pool_options
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        let write_lock = Arc::new(tokio::sync::Mutex::new(()));
        let writer = match backend {
            Backend::Sqlite => Some(crate::sqlite_writer::Writer::open(
                sqlx::sqlite::SqliteConnectOptions::from_str(url)?.get_filename(),
                write_lock.clone(),
            )?),
            Backend::Postgres => None,
        };
        let jobs_signals = Arc::new(JobSignals::default());
        let outbox_signal = Arc::new(Notify::new());
        let listener = match backend {
            Backend::Postgres => Some(
                spawn_listener(url.to_owned(), jobs_signals.clone(), outbox_signal.clone()).await?,
            ),
            Backend::Sqlite => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                backend,
                writer,
                write_lock,
                jobs_signals,
                outbox_signal,
                listener,
            }),
        })
    }

    /// Applies the migrations this binary carries that the database lacks.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend() {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        // PostgreSQL serialises migrators with an advisory lock. SQLite has
        // none: a second process that started the same migration at the
        // same moment fails it (its transaction rolls back) and, asked
        // again, finds it applied.
        let mut attempt = 0;
        loop {
            match migrator.run(&self.inner.pool).await {
                Ok(()) => return Ok(()),
                Err(_) if self.backend() == Backend::Sqlite && attempt < 10 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// A pooled connection for reads and single-statement writes.
    pub async fn conn(&self) -> Result<PoolConnection<Any>, StoreError> {
        Ok(self.inner.pool.acquire().await?)
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so a transaction that reads before it writes
    /// waits for other writers instead of failing.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let (inner, write_guard) = match self.backend() {
            Backend::Sqlite => {
                let guard = self.inner.write_lock.clone().lock_owned().await;
                (
                    self.inner.pool.begin_with("BEGIN IMMEDIATE").await?,
                    Some(guard),
                )
            }
            Backend::Postgres => (self.inner.pool.begin().await?, None),
        };
        Ok(Tx {
            inner,
            _write_guard: write_guard,
            backend: self.backend(),
            jobs_signals: self.inner.jobs_signals.clone(),
            enqueued: Vec::new(),
            outbox_signal: self.inner.outbox_signal.clone(),
            wrote_outbox: false,
        })
    }

    /// On SQLite, the connection that writes group commits, job claims and
    /// the outcomes of delivery batches on a thread of its own.
    pub(crate) fn sqlite_writer(&self) -> Option<&crate::sqlite_writer::Writer> {
        self.inner.writer.as_ref()
    }

    /// Woken by every commit in this process that recorded writes to
    /// GitLab (the outbox waits on it rather than polling).
    pub fn outbox_signal(&self) -> &Notify {
        &self.inner.outbox_signal
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    pub(crate) fn jobs_signals(&self) -> &JobSignals {
        &self.inner.jobs_signals
    }

    pub async fn close(&self) {
        self.inner.pool.close().await;
    }
}

/// A write transaction. Jobs enqueued in it become visible, and wake
/// claimers, when it commits; dropping it rolls everything back.
pub struct Tx {
    inner: Transaction<'static, Any>,
    /// Held until the transaction ends (declared after it, so dropped after).
    _write_guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    backend: Backend,
    jobs_signals: Arc<JobSignals>,
    /// The kinds of job enqueued in this transaction.
    enqueued: Vec<String>,
    outbox_signal: Arc<Notify>,
    pub(crate) wrote_outbox: bool,
}

impl Tx {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Notes that a job of `kind` is enqueued in this transaction: its
    /// claimers wake when it commits (on PostgreSQL, at every server).
    pub(crate) async fn enqueued(&mut self, kind: &str) -> Result<(), StoreError> {
        if self.enqueued.iter().any(|known| known == kind) {
            return Ok(());
        }
        if self.backend == Backend::Postgres {
            // Delivered to the listeners when the transaction commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(JOBS_CHANNEL)
                .bind(kind)
                .execute(&mut *self.inner)
                .await?;
        }
        self.enqueued.push(kind.to_owned());
        Ok(())
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.inner.commit().await?;
        // Claimers in this process; PostgreSQL's notifications, sent inside
        // the transaction, reach the other processes.
        for kind in &self.enqueued {
            self.jobs_signals.notify(kind);
        }
        if self.wrote_outbox {
            self.outbox_signal.notify_waiters();
        }
        Ok(())
    }
}

impl Deref for Tx {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// Wakes the claimers of each kind of job when a commit enqueues one of
/// that kind, and only them: a burst of deliveries wakes the delivery
/// worker, not every claimer in the process.
#[derive(Default)]
pub(crate) struct JobSignals {
    by_kind: std::sync::Mutex<std::collections::HashMap<String, Arc<Notify>>>,
}

impl JobSignals {
    /// The signals of `kinds`, made on first use.
    pub fn of(&self, kinds: &[&str]) -> Vec<Arc<Notify>> {
        let mut by_kind = self.lock();
        kinds
            .iter()
            .map(|kind| by_kind.entry((*kind).to_owned()).or_default().clone())
            .collect()
    }

    /// Wakes the claimers of `kind` that wait now.
    pub fn notify(&self, kind: &str) {
        if let Some(signal) = self.lock().get(kind) {
            signal.notify_waiters();
        }
    }

    /// Wakes every claimer that waits now.
    pub fn notify_all(&self) {
        for signal in self.lock().values() {
            signal.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<Notify>>> {
        self.by_kind
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Listens on [`JOBS_CHANNEL`] and [`OUTBOX_CHANNEL`] and turns each notification into a local
/// wake-up: a job notification names its kind (one without a kind wakes
/// every claimer). After a reconnect it wakes everyone once, since
/// notifications sent while disconnected are lost.
async fn spawn_listener(
    url: String,
    jobs: Arc<JobSignals>,
    outbox: Arc<Notify>,
) -> Result<AbortHandle, StoreError> {
    let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
    listener.listen_all([JOBS_CHANNEL, OUTBOX_CHANNEL]).await?;
    let task = tokio::spawn(async move {
        let both = || {
            jobs.notify_all();
            outbox.notify_waiters();
        };
        loop {
            match listener.try_recv().await {
                Ok(Some(note)) if note.channel() == OUTBOX_CHANNEL => outbox.notify_waiters(),
                Ok(Some(note)) if note.payload().is_empty() => jobs.notify_all(),
                Ok(Some(note)) => jobs.notify(note.payload()),
                Ok(None) => {
                    tracing::warn!("wake-up listener lost its connection; reconnecting");
                    both();
                }
                Err(err) => {
                    tracing::warn!(error = %err, "wake-up listener failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    both();
                }
            }
        }
    });
    Ok(task.abort_handle())
}

/// The URL without its password, for error messages.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::JobSignals;

    #[test]
    fn a_commit_wakes_the_claimers_of_its_kinds_only() {
        let signals = JobSignals::default();
        let deliveries = signals.of(&["process_delivery"]).remove(0);
        let upkeep = signals.of(&["sync_hooks", "check_token"]);
        let mut delivery_wait = Box::pin(deliveries.notified());
        delivery_wait.as_mut().enable();
        let mut upkeep_waits: Vec<_> = upkeep.iter().map(|s| Box::pin(s.notified())).collect();
        for wait in &mut upkeep_waits {
            wait.as_mut().enable();
        }

        signals.notify("process_delivery");
        assert!(delivery_wait.now_or_never().is_some());
        assert!(
            upkeep_waits
                .iter_mut()
                .all(|wait| wait.as_mut().now_or_never().is_none()),
            "a delivery's job wakes no upkeep claimer"
        );

        signals.notify("check_token");
        assert!(upkeep_waits[1].as_mut().now_or_never().is_some());
        assert!(upkeep_waits[0].as_mut().now_or_never().is_none());

        // A notification without a kind (a reconnect) wakes everyone.
        let mut again = Box::pin(upkeep[0].notified());
        again.as_mut().enable();
        signals.notify_all();
        assert!(again.now_or_never().is_some());
    }
}
