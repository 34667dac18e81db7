//! GitLab integrations. The API token and webhook secrets arrive here
//! already sealed by the [`Keyring`](crate::crypto::Keyring); this module
//! never sees them in plaintext.

use sqlx::any::AnyArguments;
use sqlx::any::AnyRow;
use sqlx::query::Query;
use sqlx::{Any, FromRow, Row as _};

use crate::row::{Fields, insert_sql, to_json, update_sql};
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
    /// Whether Gantry keeps the project hooks for this integration.
    pub manage_hooks: bool,
    /// Rotate the token when it expires within this many days.
    pub rotate_token_days_before_expiry: Option<i64>,
    /// When GitLab last answered a check of the token.
    pub token_checked_at: Option<i64>,
    /// A rotation asked of GitLab and not finished (see [`begin_rotation`]).
    pub token_rotation_started_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, name, space_id, is_default, api_host_url, user_facing_host_url, labels, \
    description, token_sealed, token_scopes, token_expires_at, token_user_id, token_username, warnings, \
    webhook_secret_sealed, previous_secret_sealed, previous_secret_expires_at, manage_hooks, \
    rotate_token_days_before_expiry, token_checked_at, token_rotation_started_at, created_at, updated_at";

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

impl FromRow<'_, AnyRow> for Integration {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let id: String = row.try_get("id")?;
        let fields = Fields {
            table: "integrations",
            id: &id,
        };
        Ok(Self {
            is_default: fields.flag_in(row, "is_default")?,
            labels: fields.json_in(row, "labels")?,
            token: TokenFacts {
                scopes: fields.json_in(row, "token_scopes")?,
                expires_at: row.try_get("token_expires_at")?,
                user_id: row.try_get("token_user_id")?,
                username: row.try_get("token_username")?,
            },
            warnings: fields.json_in(row, "warnings")?,
            manage_hooks: fields.flag_in(row, "manage_hooks")?,
            id,
            name: row.try_get("name")?,
            space_id: row.try_get("space_id")?,
            api_host_url: row.try_get("api_host_url")?,
            user_facing_host_url: row.try_get("user_facing_host_url")?,
            description: row.try_get("description")?,
            token_sealed: row.try_get("token_sealed")?,
            webhook_secret_sealed: row.try_get("webhook_secret_sealed")?,
            previous_secret_sealed: row.try_get("previous_secret_sealed")?,
            previous_secret_expires_at: row.try_get("previous_secret_expires_at")?,
            rotate_token_days_before_expiry: row.try_get("rotate_token_days_before_expiry")?,
            token_checked_at: row.try_get("token_checked_at")?,
            token_rotation_started_at: row.try_get("token_rotation_started_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
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
    let row: Option<Integration> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM integrations WHERE is_default = 1"
    ))
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<Integration>, StoreError> {
    let row: Option<Integration> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM integrations WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row)
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
    bind(
        sqlx::query(&insert_sql("integrations", COLUMNS)),
        integration,
    )
    .execute(&mut *conn)
    .await
    .map_err(|err| unique_to_conflict(err, integration))?;
    Ok(())
}

/// Binds every column, in the order of [`COLUMNS`].
fn bind<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    i: &'q Integration,
) -> Query<'q, Any, AnyArguments<'q>> {
    query
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
        .bind(i64::from(i.manage_hooks))
        .bind(i.rotate_token_days_before_expiry)
        .bind(i.token_checked_at)
        .bind(i.token_rotation_started_at)
        .bind(i.created_at)
        .bind(i.updated_at)
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

/// Writes every column of the row; `id`, `name` and `created_at` never
/// change, so they are written as they were.
pub async fn update(
    conn: &mut Conn,
    integration: &Integration,
) -> Result<(), SaveIntegrationError> {
    check_default(conn, integration).await?;
    bind(
        sqlx::query(&update_sql("integrations", COLUMNS)),
        integration,
    )
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
    let sql = format!(
        "{READABLE_SPACES} \
         SELECT {COLUMNS} FROM integrations \
         WHERE (is_default = 1 OR space_id IN (SELECT id FROM readable)) \
           AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    let query = sqlx::query_as::<_, Integration>(&sql).bind(api_key_id);
    page.fetch(conn, query, |i: &Integration| (i.created_at, &i.id))
        .await
}

impl Integration {
    /// The sealed webhook secrets with the end of their acceptance: the
    /// current one (`None`, no end), and the previous one with the end of
    /// its grace period.
    pub fn webhook_secrets(&self) -> impl Iterator<Item = (&str, Option<i64>)> {
        let previous = match (
            &self.previous_secret_sealed,
            self.previous_secret_expires_at,
        ) {
            (Some(sealed), Some(until)) => Some((sealed.as_str(), Some(until))),
            _ => None,
        };
        std::iter::once((self.webhook_secret_sealed.as_str(), None)).chain(previous)
    }

    /// The sealed webhook secrets accepted at `now`.
    pub fn accepted_secrets(&self, now: Millis) -> impl Iterator<Item = &str> {
        self.webhook_secrets()
            .filter(move |(_, until)| accepted_until(*until, now))
            .map(|(sealed, _)| sealed)
    }
}

/// Whether a webhook secret accepted until `until` (`None`: no end) is
/// accepted at `now`.
pub fn accepted_until(until: Option<i64>, now: Millis) -> bool {
    until.is_none_or(|until| now.0 < until)
}

/// Every integration, oldest first (for the periodic checks).
pub async fn all(conn: &mut Conn) -> Result<Vec<Integration>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM integrations ORDER BY created_at, id"
    ))
    .fetch_all(conn)
    .await?)
}

/// Records the intent to rotate the integration's token, before GitLab is
/// asked; `false` when a rotation is already under way or was left
/// unfinished, so the same token is never rotated twice.
pub async fn begin_rotation(conn: &mut Conn, id: &str, now: Millis) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE integrations SET token_rotation_started_at = $1 \
         WHERE id = $2 AND token_rotation_started_at IS NULL",
    )
    .bind(now.0)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Stores the token a rotation gave, sealed, with its facts, and ends the
/// rotation.
pub async fn finish_rotation(
    conn: &mut Conn,
    id: &str,
    token_sealed: &str,
    expires_at: Option<&str>,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE integrations SET token_sealed = $1, token_expires_at = $2, \
           token_rotation_started_at = NULL, token_checked_at = $3, updated_at = $3 WHERE id = $4",
    )
    .bind(token_sealed)
    .bind(expires_at)
    .bind(now.0)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends a rotation that GitLab refused (so nothing was rotated).
pub async fn abandon_rotation(conn: &mut Conn, id: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE integrations SET token_rotation_started_at = NULL WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records what a check of the token found: its facts and warnings (or,
/// with `facts` `None`, only the warnings: GitLab refused the token or
/// could not be asked).
pub async fn record_check(
    conn: &mut Conn,
    id: &str,
    facts: Option<&TokenFacts>,
    warnings: &[String],
    now: Millis,
) -> Result<(), StoreError> {
    match facts {
        Some(facts) => sqlx::query(
            "UPDATE integrations SET token_scopes = $1, token_expires_at = $2, token_user_id = $3, \
                   token_username = $4, warnings = $5, token_checked_at = $6 WHERE id = $7",
        )
        .bind(json(&facts.scopes))
        .bind(&facts.expires_at)
        .bind(facts.user_id)
        .bind(&facts.username)
        .bind(json(warnings))
        .bind(now.0)
        .bind(id)
        .execute(conn)
        .await?,
        None => {
            sqlx::query("UPDATE integrations SET warnings = $1 WHERE id = $2")
                .bind(json(warnings))
                .bind(id)
                .execute(conn)
                .await?
        }
    };
    Ok(())
}
