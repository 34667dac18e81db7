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
