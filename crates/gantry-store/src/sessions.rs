//! Sessions of the web UI. The browser holds a random secret in a cookie;
//! the database holds its SHA-256 and the API key the session acts as. A
//! session is as strong as its key: it ends when the key is revoked, on
//! sign-out, or after [`IDLE`] without a request.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::api_keys::{self, ApiKey};
use crate::crypto::{hash_secret, random_secret};
use crate::{Conn, Millis, StoreError};

/// How long a session lasts without a request.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);

/// How stale `last_seen_at` may get before a request writes it again, so
/// that reading pages does not write on every request.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Starts a session for `api_key_id`; the secret for the cookie.
pub async fn create(
    conn: &mut Conn,
    api_key_id: &str,
    now: Millis,
) -> Result<SecretString, StoreError> {
    let secret = random_secret("gantry_session_");
    sqlx::query(
        "INSERT INTO web_sessions (id, api_key_id, created_at, last_seen_at) VALUES ($1, $2, $3, $3)",
    )
    .bind(hash_secret(secret.expose_secret()))
    .bind(api_key_id)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(secret)
}

/// The unrevoked key of the live session whose secret this is, keeping
/// the session alive.
pub async fn authenticate(
    conn: &mut Conn,
    secret: &str,
    now: Millis,
) -> Result<Option<ApiKey>, StoreError> {
    let id = hash_secret(secret);
    let idle_since = now.minus(IDLE).0;
    let found: Option<(String, i64)> = sqlx::query_as(
        "SELECT api_key_id, last_seen_at FROM web_sessions WHERE id = $1 AND last_seen_at > $2",
    )
    .bind(&id)
    .bind(idle_since)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((key_id, last_seen)) = found else {
        return Ok(None);
    };
    let Some(key) = api_keys::get(conn, &key_id).await? else {
        return Ok(None);
    };
    if key.revoked_at.is_some() {
        return Ok(None);
    }
    if Millis(last_seen).until(now) >= TOUCH_EVERY {
        sqlx::query("UPDATE web_sessions SET last_seen_at = $1 WHERE id = $2")
            .bind(now.0)
            .bind(&id)
            .execute(conn)
            .await?;
    }
    Ok(Some(key))
}

/// Ends the session whose secret this is.
pub async fn end(conn: &mut Conn, secret: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM web_sessions WHERE id = $1")
        .bind(hash_secret(secret))
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes sessions idle past [`IDLE`] (and those of revoked keys);
/// how many.
pub async fn prune(conn: &mut Conn, now: Millis) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM web_sessions WHERE last_seen_at <= $1 \
           OR api_key_id IN (SELECT id FROM api_keys WHERE revoked_at IS NOT NULL)",
    )
    .bind(now.minus(IDLE).0)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
