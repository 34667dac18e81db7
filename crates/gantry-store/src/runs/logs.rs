//! A run's log: redacted chunks in order, appended only by the worker
//! that holds the run's lease.

use crate::{Conn, Millis, StoreError};

/// Appends a chunk of (already redacted) log to a run, if `owner` holds
/// its lease; `false` when it does not (the run was taken from it).
pub async fn append_log(
    conn: &mut Conn,
    run_id: &str,
    owner: &str,
    chunk: &str,
    now: Millis,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO run_logs (run_id, seq, at, chunk) \
         SELECT $1, COALESCE((SELECT MAX(seq) FROM run_logs WHERE run_id = $1), -1) + 1, $2, $3 \
         WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1 AND lease_owner = $4)",
    )
    .bind(run_id)
    .bind(now.0)
    .bind(chunk)
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The log chunks of a run after chunk `after` (-1 for all), in order, at
/// most `limit`.
pub async fn log_since(
    conn: &mut Conn,
    run_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT seq, chunk FROM run_logs WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(run_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// A run's whole log, in order.
pub async fn log(conn: &mut Conn, run_id: &str) -> Result<String, StoreError> {
    let chunks: Vec<(String,)> =
        sqlx::query_as("SELECT chunk FROM run_logs WHERE run_id = $1 ORDER BY seq")
            .bind(run_id)
            .fetch_all(conn)
            .await?;
    Ok(chunks.into_iter().map(|(chunk,)| chunk).collect())
}
