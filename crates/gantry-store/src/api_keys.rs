//! API keys: bearer credentials with roles on spaces. Only the SHA-256 of a
//! key's secret is stored; the secret itself is returned once, at creation.

use gantry_domain::{Grant, Role};
use secrecy::{ExposeSecret, SecretString};
use sqlx::FromRow;

use crate::crypto::{hash_secret, random_secret};
use crate::{Conn, Cursor, Millis, Page, StoreError, is_unique_violation};

/// Every API key secret starts with this, so leaked keys are easy to spot.
pub const SECRET_PREFIX: &str = "gantry_";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub roles: Vec<Grant>,
}

#[derive(FromRow)]
struct KeyRow {
    id: String,
    name: String,
    created_by: Option<String>,
    created_at: i64,
    revoked_at: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    #[error("an API key with id {0:?} already exists; choose another name")]
    IdTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates a key and returns it with its secret, which is not stored.
pub async fn insert(
    conn: &mut Conn,
    id: &str,
    name: &str,
    roles: &[Grant],
    created_by: Option<&str>,
    now: Millis,
) -> Result<(ApiKey, SecretString), CreateKeyError> {
    let secret = random_secret(SECRET_PREFIX);
    sqlx::query("INSERT INTO api_keys (id, name, secret_hash, created_by, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(name)
        .bind(hash_secret(secret.expose_secret()))
        .bind(created_by)
        .bind(now.0)
        .execute(&mut *conn)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) { CreateKeyError::IdTaken(id.to_owned()) } else { StoreError::from(err).into() }
        })?;
    let mut unique_roles: Vec<Grant> = Vec::with_capacity(roles.len());
    for grant in roles {
        if !unique_roles.contains(grant) {
            unique_roles.push(grant.clone());
        }
    }
    for grant in &unique_roles {
        sqlx::query("INSERT INTO api_key_roles (api_key_id, space_id, role) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(&grant.space)
            .bind(grant.role.as_str())
            .execute(&mut *conn)
            .await
            .map_err(StoreError::from)?;
    }
    let key = ApiKey {
        id: id.to_owned(),
        name: name.to_owned(),
        created_by: created_by.map(str::to_owned),
        created_at: now.0,
        revoked_at: None,
        roles: unique_roles,
    };
    Ok((key, secret))
}

/// The unrevoked key whose secret this is.
pub async fn authenticate(conn: &mut Conn, secret: &str) -> Result<Option<ApiKey>, StoreError> {
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT id, name, created_by, created_at, revoked_at FROM api_keys \
         WHERE secret_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash_secret(secret))
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(Some(with_roles(conn, vec![row]).await?.remove(0))),
        None => Ok(None),
    }
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<ApiKey>, StoreError> {
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT id, name, created_by, created_at, revoked_at FROM api_keys WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(Some(with_roles(conn, vec![row]).await?.remove(0))),
        None => Ok(None),
    }
}

/// The keys `viewer` may manage, and `viewer` itself, newest first. A key is
/// manageable when every space it has a role on lies in a subtree that
/// `viewer` administers.
pub async fn list_manageable(
    conn: &mut Conn,
    viewer: &str,
    page: &Page,
) -> Result<(Vec<ApiKey>, Option<Cursor>), StoreError> {
    let (at, id) = page.bounds();
    let rows: Vec<KeyRow> = sqlx::query_as(
        "WITH RECURSIVE managed (id) AS ( \
             SELECT space_id FROM api_key_roles WHERE api_key_id = $1 AND role = 'admin' \
             UNION \
             SELECT s.id FROM spaces s JOIN managed m ON s.parent_id = m.id) \
         SELECT k.id, k.name, k.created_by, k.created_at, k.revoked_at FROM api_keys k \
         WHERE (k.id = $1 OR (EXISTS (SELECT 1 FROM managed) AND NOT EXISTS ( \
                SELECT 1 FROM api_key_roles r WHERE r.api_key_id = k.id \
                AND r.space_id NOT IN (SELECT id FROM managed)))) \
           AND (k.created_at < $2 OR (k.created_at = $2 AND k.id < $3)) \
         ORDER BY k.created_at DESC, k.id DESC LIMIT $4",
    )
    .bind(viewer)
    .bind(at)
    .bind(id)
    .bind(page.fetch_limit())
    .fetch_all(&mut *conn)
    .await?;
    let (rows, next) = page.finish(rows, |k| Cursor {
        at: k.created_at,
        id: k.id.clone(),
    });
    Ok((with_roles(conn, rows).await?, next))
}

/// Revokes a key; its secret stops working at once. Revoking twice keeps
/// the first revocation time.
pub async fn revoke(conn: &mut Conn, id: &str, now: Millis) -> Result<Option<ApiKey>, StoreError> {
    sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now.0)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    get(conn, id).await
}

async fn with_roles(conn: &mut Conn, rows: Vec<KeyRow>) -> Result<Vec<ApiKey>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=rows.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT api_key_id, space_id, role FROM api_key_roles WHERE api_key_id IN ({}) ORDER BY space_id, role",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_as::<_, (String, String, String)>(&sql);
    for row in &rows {
        query = query.bind(&row.id);
    }
    let grants = query.fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let roles = grants
                .iter()
                .filter(|(key, _, _)| *key == row.id)
                .filter_map(|(_, space, role)| {
                    Some(Grant {
                        space: space.clone(),
                        role: role.parse::<Role>().ok()?,
                    })
                })
                .collect();
            ApiKey {
                id: row.id,
                name: row.name,
                created_by: row.created_by,
                created_at: row.created_at,
                revoked_at: row.revoked_at,
                roles,
            }
        })
        .collect())
}

/// The unrevoked keys that hold `role` on `space` itself (not inherited),
/// locked for the rest of the transaction: two transactions that each
/// revoke one of the last two admin keys cannot both see the other one
/// still active (on PostgreSQL the second waits and then sees the first's
/// revocation; SQLite runs write transactions one at a time).
pub async fn active_holders_locked(
    tx: &mut crate::Tx,
    space: &str,
    role: Role,
) -> Result<Vec<String>, StoreError> {
    let lock = match tx.backend() {
        crate::Backend::Postgres => " ORDER BY k.id FOR UPDATE OF k",
        crate::Backend::Sqlite => " ORDER BY k.id",
    };
    let rows: Vec<(String,)> = sqlx::query_as(&format!(
        "SELECT k.id FROM api_keys k JOIN api_key_roles r ON r.api_key_id = k.id \
         WHERE r.space_id = $1 AND r.role = $2 AND k.revoked_at IS NULL{lock}"
    ))
    .bind(space)
    .bind(role.as_str())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
