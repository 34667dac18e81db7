//! VCS agent pools and the connections of their agents. A pool's token is
//! returned once, at creation; only its SHA-256 is stored. Each server
//! records the agent connections it holds and refreshes them while they
//! live, so any server can list every agent and a server that died leaves
//! only rows that go stale.

use secrecy::{ExposeSecret, SecretString};
use sqlx::FromRow;

use crate::crypto::{hash_secret, random_secret};
use crate::spaces::READABLE_SPACES;
use crate::{Conn, Cursor, Millis, Page, StoreError};

/// Every pool token starts with this, so a leaked one is easy to spot.
pub const TOKEN_PREFIX: &str = "gantry_pool_";

/// A connection not refreshed for this long is gone (its server died).
pub const STALE_AFTER_MILLIS: i64 = 30_000;

#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub space_id: String,
    pub created_at: i64,
}

/// One agent's connection to one server.
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct Connection {
    pub id: String,
    pub pool_id: String,
    /// The agent process's own id: one agent connects to every server.
    pub agent_id: String,
    pub name: String,
    pub version: String,
    pub connected_at: i64,
    pub last_seen_at: i64,
}

const COLUMNS: &str = "id, name, space_id, created_at";
const CONNECTION_COLUMNS: &str = "id, pool_id, agent_id, name, version, connected_at, last_seen_at";

/// Creates a pool and returns its token, which is not stored.
pub async fn insert(conn: &mut Conn, pool: &Pool) -> Result<SecretString, StoreError> {
    let token = random_secret(TOKEN_PREFIX);
    sqlx::query(
        "INSERT INTO vcs_agent_pools (id, name, space_id, token_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&pool.id)
    .bind(&pool.name)
    .bind(&pool.space_id)
    .bind(hash_secret(token.expose_secret()))
    .bind(pool.created_at)
    .execute(conn)
    .await?;
    Ok(token)
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<Pool>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM vcs_agent_pools WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// The pool whose token this is.
pub async fn authenticate(conn: &mut Conn, token: &str) -> Result<Option<Pool>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM vcs_agent_pools WHERE token_hash = $1"
    ))
    .bind(hash_secret(token))
    .fetch_optional(conn)
    .await?)
}

/// The pools on spaces `api_key_id` can read, newest first.
pub async fn list_readable(
    conn: &mut Conn,
    api_key_id: &str,
    page: &Page,
) -> Result<(Vec<Pool>, Option<Cursor>), StoreError> {
    let sql = format!(
        "{READABLE_SPACES} \
         SELECT {COLUMNS} FROM vcs_agent_pools WHERE space_id IN (SELECT id FROM readable) \
           AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    let query = sqlx::query_as::<_, Pool>(&sql).bind(api_key_id);
    page.fetch(conn, query, |p: &Pool| (p.created_at, &p.id))
        .await
}

/// Deletes a pool, which revokes its token; its connections' rows go with
/// it, and the servers holding them hang up at their next refresh.
pub async fn delete(conn: &mut Conn, id: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM vcs_agent_pools WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Records a new connection; stale rows of dead servers go at the same time.
pub async fn connected(conn: &mut Conn, connection: &Connection) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM vcs_agent_connections WHERE last_seen_at < $1")
        .bind(
            Millis(connection.connected_at)
                .minus(std::time::Duration::from_secs(3600))
                .0,
        )
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!(
        "INSERT INTO vcs_agent_connections ({CONNECTION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    ))
    .bind(&connection.id)
    .bind(&connection.pool_id)
    .bind(&connection.agent_id)
    .bind(&connection.name)
    .bind(&connection.version)
    .bind(connection.connected_at)
    .bind(connection.last_seen_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Refreshes a live connection; `false` once its pool was deleted (the
/// row went with it), when the connection must end.
pub async fn seen(conn: &mut Conn, connection_id: &str, now: Millis) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE vcs_agent_connections SET last_seen_at = $1 WHERE id = $2")
        .bind(now.0)
        .bind(connection_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn disconnected(conn: &mut Conn, connection_id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM vcs_agent_connections WHERE id = $1")
        .bind(connection_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The live connections of a pool, oldest first.
pub async fn connections(
    conn: &mut Conn,
    pool_id: &str,
    now: Millis,
) -> Result<Vec<Connection>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CONNECTION_COLUMNS} FROM vcs_agent_connections \
         WHERE pool_id = $1 AND last_seen_at >= $2 ORDER BY connected_at, id"
    ))
    .bind(pool_id)
    .bind(now.0 - STALE_AFTER_MILLIS)
    .fetch_all(conn)
    .await?)
}
