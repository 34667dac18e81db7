//! Gantry's storage: one set of query functions over SQLite (embedded, the
//! default) and PostgreSQL (scale-out), the lease-based job queue that later
//! work runs on, the audit log, and encryption of secrets at rest.
//!
//! Queries are written once in the SQL both databases understand and run
//! through sqlx's `Any` driver; the few places where the dialects differ
//! (`FOR UPDATE SKIP LOCKED`, `BEGIN IMMEDIATE`, `LISTEN/NOTIFY`) branch on
//! [`Backend`]. Times are stored as unix milliseconds.

pub mod api_keys;
pub mod audit;
pub mod cluster;
pub mod crypto;
pub mod deliveries;
pub mod gauges;
mod group_commit;
pub mod housekeeping;
pub mod integrations;
pub mod jobs;
pub mod modules;
pub mod outbox;
pub mod page;
mod params;
pub mod project_hooks;
mod row;
pub mod runs;
pub mod sessions;
pub mod spaces;
mod sqlite_writer;
pub mod stacks;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod time;
pub mod vcs_agent_pools;

pub use page::{Cursor, CursorError, Page};
pub use store::{Backend, Store, StoreError, Tx};
pub use time::Millis;

/// The connection type every query function takes: a pooled connection or
/// the inside of a [`Tx`].
pub type Conn = sqlx::AnyConnection;

/// Whether a database error is a violation of a unique constraint.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// Runs one statement without arguments (such as `SAVEPOINT x`) on `conn`.
pub async fn execute(conn: &mut Conn, sql: &str) -> Result<(), StoreError> {
    sqlx::query(sql).execute(conn).await?;
    Ok(())
}
