//! Facts every server of one deployment shares.

use crate::{Conn, StoreError};

/// The name of the master-key canary.
pub const CANARY: &str = "master_key_canary";

/// Stores `value` under `name` unless another server stored one first;
/// the value that is stored now.
pub async fn setting_or_insert(
    conn: &mut Conn,
    name: &str,
    value: &str,
) -> Result<String, StoreError> {
    sqlx::query(
        "INSERT INTO cluster_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(value)
    .execute(&mut *conn)
    .await?;
    let (stored,): (String,) = sqlx::query_as("SELECT value FROM cluster_settings WHERE name = $1")
        .bind(name)
        .fetch_one(conn)
        .await?;
    Ok(stored)
}

/// Takes one of `limit` slots per `window` for `scope`, shared by every
/// server of the deployment: `Ok(Ok(()))`, or `Ok(Err(wait))` until a
/// slot frees up. The scope's row is locked while it is counted, so two
/// servers never both take the last slot.
pub async fn take_rate_slot(
    store: &crate::Store,
    scope: &str,
    limit: usize,
    window: std::time::Duration,
    now: crate::Millis,
) -> Result<Result<(), std::time::Duration>, StoreError> {
    let mut tx = store.begin().await?;
    sqlx::query("INSERT INTO rate_scopes (scope) VALUES ($1) ON CONFLICT (scope) DO NOTHING")
        .bind(scope)
        .execute(&mut *tx)
        .await?;
    if tx.backend() == crate::Backend::Postgres {
        sqlx::query("SELECT scope FROM rate_scopes WHERE scope = $1 FOR UPDATE")
            .bind(scope)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM rate_events WHERE scope = $1 AND at <= $2")
        .bind(scope)
        .bind(now.minus(window).0)
        .execute(&mut *tx)
        .await?;
    let (count, oldest): (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(at) FROM rate_events WHERE scope = $1")
            .bind(scope)
            .fetch_one(&mut *tx)
            .await?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= limit {
        let frees = crate::Millis(oldest.unwrap_or(now.0)).plus(window);
        tx.commit().await?;
        return Ok(Err(now
            .until(frees)
            .max(std::time::Duration::from_millis(1))));
    }
    sqlx::query("INSERT INTO rate_events (scope, at) VALUES ($1, $2)")
        .bind(scope)
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Ok(()))
}
