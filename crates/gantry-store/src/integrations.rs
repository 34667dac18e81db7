//! GitLab integrations. The API token and webhook secrets arrive here
//! already sealed by the [`Keyring`](crate::crypto::Keyring); this module
//! never sees them in plaintext.

use sqlx::FromRow;

use crate::row::{Fields, to_json};
use crate::spaces::READABLE_SPACES;
use crate::{Conn, Cursor, Millis, Page, StoreError, is_unique_violation};

/// What the token check learnt about the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFacts {
    pub scopes: Vec<String>,
    /// A date as GitLab gives it (`2026-12-31`), or `None`.
    pub expires_at: Option<String>,
    pub user_id: i64,
    pub username: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Integration {
    pub id: String,
    pub name: String,
    pub space_id: String,
    pub is_default: bool,
    pub api_host_url: String,
    pub user_facing_host_url: String,
    pub labels: Vec<String>,
    pub description: String,
    pub token_sealed: String,
    pub token: TokenFacts,
    /// From the last token check.
    pub warnings: Vec<String>,
    pub webhook_secret_sealed: String,
    /// The secret before the last rotation, accepted until
    /// `previous_secret_expires_at`.
    pub previous_secret_sealed: Option<String>,
    pub previous_secret_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(FromRow)]
struct Row {
    id: String,
    name: String,
    space_id: String,
    is_default: i64,
    api_host_url: String,
    user_facing_host_url: String,
    labels: String,
    description: String,
    token_sealed: String,
    token_scopes: String,
    token_expires_at: Option<String>,
    token_user_id: i64,
    token_username: String,
    warnings: String,
    webhook_secret_sealed: String,
    previous_secret_sealed: Option<String>,
    previous_secret_expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

const COLUMNS: &str = "id, name, space_id, is_default, api_host_url, user_facing_host_url, labels, \
    description, token_sealed, token_scopes, token_expires_at, token_user_id, token_username, warnings, \
    webhook_secret_sealed, previous_secret_sealed, previous_secret_expires_at, created_at, updated_at";

fn json(list: &[String]) -> String {
    to_json(&list)
}

/// The keyring context that seals an integration's API token.
pub fn api_token_context(integration_id: &str) -> String {
    format!("integration:{integration_id}:api_token")
}

/// The keyring context that seals an integration's webhook secrets (the
/// current one and the one before the last rotation).
pub fn webhook_secret_context(integration_id: &str) -> String {
    format!("integration:{integration_id}:webhook_secret")
}

impl TryFrom<Row> for Integration {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<Self, StoreError> {
        let fields = Fields {
            table: "integrations",
            id: &row.id,
        };
        Ok(Self {
            is_default: fields.flag("is_default", row.is_default)?,
            labels: fields.json("labels", &row.labels)?,
            token: TokenFacts {
                scopes: fields.json("token_scopes", &row.token_scopes)?,
                expires_at: row.token_expires_at,
                user_id: row.token_user_id,
                username: row.token_username,
            },
            warnings: fields.json("warnings", &row.warnings)?,
            id: row.id,
            name: row.name,
            space_id: row.space_id,
            api_host_url: row.api_host_url,
            user_facing_host_url: row.user_facing_host_url,
            description: row.description,
            token_sealed: row.token_sealed,
            webhook_secret_sealed: row.webhook_secret_sealed,
            previous_secret_sealed: row.previous_secret_sealed,
            previous_secret_expires_at: row.previous_secret_expires_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SaveIntegrationError {
    #[error("an integration with id {0:?} already exists; choose another name")]
    IdTaken(String),
    #[error("there is already a default GitLab integration ({0}); there can be only one")]
    DefaultTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The default integration, if there is one.
pub async fn default(conn: &mut Conn) -> Result<Option<Integration>, StoreError> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM integrations WHERE is_default = 1"
    ))
    .fetch_optional(conn)
    .await?;
    row.map(Integration::try_from).transpose()
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<Integration>, StoreError> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM integrations WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    row.map(Integration::try_from).transpose()
}

/// Refuses a second default before the unique index would, to name it.
async fn check_default(
    conn: &mut Conn,
    integration: &Integration,
) -> Result<(), SaveIntegrationError> {
    if integration.is_default
        && let Some(existing) = default(conn).await?
        && existing.id != integration.id
    {
        return Err(SaveIntegrationError::DefaultTaken(format!(
            "{:?}",
            existing.id
        )));
    }
    Ok(())
}

pub async fn insert(
    conn: &mut Conn,
    integration: &Integration,
) -> Result<(), SaveIntegrationError> {
    check_default(conn, integration).await?;
    let i = integration;
    sqlx::query(&format!(
        "INSERT INTO integrations ({COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
    ))
    .bind(&i.id)
    .bind(&i.name)
    .bind(&i.space_id)
    .bind(i64::from(i.is_default))
    .bind(&i.api_host_url)
    .bind(&i.user_facing_host_url)
    .bind(json(&i.labels))
    .bind(&i.description)
    .bind(&i.token_sealed)
    .bind(json(&i.token.scopes))
    .bind(&i.token.expires_at)
    .bind(i.token.user_id)
    .bind(&i.token.username)
    .bind(json(&i.warnings))
    .bind(&i.webhook_secret_sealed)
    .bind(&i.previous_secret_sealed)
    .bind(i.previous_secret_expires_at)
    .bind(i.created_at)
    .bind(i.updated_at)
    .execute(&mut *conn)
    .await
    .map_err(|err| unique_to_conflict(err, integration))?;
    Ok(())
}

fn unique_to_conflict(err: sqlx::Error, integration: &Integration) -> SaveIntegrationError {
    if !is_unique_violation(&err) {
        return StoreError::from(err).into();
    }
    // Two concurrent defaults meet at the unique index.
    if integration.is_default && err.to_string().contains("one_default") {
        SaveIntegrationError::DefaultTaken("made at the same moment".to_owned())
    } else {
        SaveIntegrationError::IdTaken(integration.id.clone())
    }
}

/// Writes every column but `id`, `name` and `created_at`, which never change.
pub async fn update(
    conn: &mut Conn,
    integration: &Integration,
) -> Result<(), SaveIntegrationError> {
    check_default(conn, integration).await?;
    let i = integration;
    sqlx::query(
        "UPDATE integrations SET space_id = $2, is_default = $3, api_host_url = $4, \
         user_facing_host_url = $5, labels = $6, description = $7, token_sealed = $8, token_scopes = $9, \
         token_expires_at = $10, token_user_id = $11, token_username = $12, warnings = $13, \
         webhook_secret_sealed = $14, previous_secret_sealed = $15, previous_secret_expires_at = $16, \
         updated_at = $17 WHERE id = $1",
    )
    .bind(&i.id)
    .bind(&i.space_id)
    .bind(i64::from(i.is_default))
    .bind(&i.api_host_url)
    .bind(&i.user_facing_host_url)
    .bind(json(&i.labels))
    .bind(&i.description)
    .bind(&i.token_sealed)
    .bind(json(&i.token.scopes))
    .bind(&i.token.expires_at)
    .bind(i.token.user_id)
    .bind(&i.token.username)
    .bind(json(&i.warnings))
    .bind(&i.webhook_secret_sealed)
    .bind(&i.previous_secret_sealed)
    .bind(i.previous_secret_expires_at)
    .bind(i.updated_at)
    .execute(&mut *conn)
    .await
    .map_err(|err| unique_to_conflict(err, integration))?;
    Ok(())
}

/// Deletes an integration; `false` when there was none.
pub async fn delete(conn: &mut Conn, id: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM integrations WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The integrations an API key may see, newest first: the default one,
/// and those in spaces it holds `read`, `write` or `admin` on (or below).
pub async fn list_visible(
    conn: &mut Conn,
    api_key_id: &str,
    page: &Page,
) -> Result<(Vec<Integration>, Option<Cursor>), StoreError> {
    let (at, id) = page.bounds();
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "{READABLE_SPACES} \
         SELECT {COLUMNS} FROM integrations \
         WHERE (is_default = 1 OR space_id IN (SELECT id FROM readable)) \
           AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(api_key_id)
    .bind(at)
    .bind(id)
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await?;
    let (rows, next) = page.finish(rows, |row| Cursor {
        at: row.created_at,
        id: row.id.clone(),
    });
    let rows = rows
        .into_iter()
        .map(Integration::try_from)
        .collect::<Result<_, _>>()?;
    Ok((rows, next))
}

impl Integration {
    /// The sealed webhook secrets accepted at `now`: the current one, and
    /// the previous one during its grace period.
    pub fn accepted_secrets(&self, now: Millis) -> impl Iterator<Item = &str> {
        let previous = match (
            &self.previous_secret_sealed,
            self.previous_secret_expires_at,
        ) {
            (Some(sealed), Some(until)) if now.0 < until => Some(sealed.as_str()),
            _ => None,
        };
        std::iter::once(self.webhook_secret_sealed.as_str()).chain(previous)
    }
}
