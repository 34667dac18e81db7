//! Stacks. Lists and objects are stored as JSON text; the secret
//! environment arrives sealed by the keyring, as one value, with its names
//! kept apart so they can be shown.

use sqlx::FromRow;

use crate::{Conn, Cursor, Page, StoreError, is_unique_violation};

#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct Stack {
    pub id: String,
    pub name: String,
    pub space_id: String,
    pub integration_id: Option<String>,
    pub project_id: i64,
    pub repository: String,
    pub branch: String,
    /// `network/`, or empty for the whole repository.
    pub project_root: String,
    /// JSON array of globs.
    pub additional_project_globs: String,
    /// JSON array of strings.
    pub labels: String,
    pub autodeploy: i64,
    pub allow_forks: i64,
    /// JSON object: `{"kind": "shell", …}` or `{"kind": "opentofu", …}`.
    pub vendor: String,
    /// JSON object of names to values.
    pub environment: String,
    /// JSON array of names.
    pub secret_environment_names: String,
    pub secret_environment_sealed: Option<String>,
    /// Limits of each phase's execution, in seconds.
    pub run_timeout_seconds: i64,
    pub no_output_timeout_seconds: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, name, space_id, integration_id, project_id, repository, branch, project_root, \
    additional_project_globs, labels, autodeploy, allow_forks, vendor, environment, secret_environment_names, \
    secret_environment_sealed, run_timeout_seconds, no_output_timeout_seconds, created_at, updated_at";

#[derive(Debug, thiserror::Error)]
pub enum SaveStackError {
    #[error("a stack with id {0:?} already exists; choose another name")]
    IdTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn insert(conn: &mut Conn, stack: &Stack) -> Result<(), SaveStackError> {
    let s = stack;
    sqlx::query(&format!(
        "INSERT INTO stacks ({COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
    ))
    .bind(&s.id)
    .bind(&s.name)
    .bind(&s.space_id)
    .bind(&s.integration_id)
    .bind(s.project_id)
    .bind(&s.repository)
    .bind(&s.branch)
    .bind(&s.project_root)
    .bind(&s.additional_project_globs)
    .bind(&s.labels)
    .bind(s.autodeploy)
    .bind(s.allow_forks)
    .bind(&s.vendor)
    .bind(&s.environment)
    .bind(&s.secret_environment_names)
    .bind(&s.secret_environment_sealed)
    .bind(s.run_timeout_seconds)
    .bind(s.no_output_timeout_seconds)
    .bind(s.created_at)
    .bind(s.updated_at)
    .execute(conn)
    .await
    .map_err(|err| {
        if is_unique_violation(&err) {
            SaveStackError::IdTaken(stack.id.clone())
        } else {
            StoreError::from(err).into()
        }
    })?;
    Ok(())
}

/// Writes every column but `id`, `name` and `created_at`.
pub async fn update(conn: &mut Conn, stack: &Stack) -> Result<(), StoreError> {
    let s = stack;
    sqlx::query(
        "UPDATE stacks SET space_id = $2, integration_id = $3, project_id = $4, repository = $5, branch = $6, \
         project_root = $7, additional_project_globs = $8, labels = $9, autodeploy = $10, allow_forks = $11, \
         vendor = $12, environment = $13, secret_environment_names = $14, secret_environment_sealed = $15, \
         updated_at = $16, run_timeout_seconds = $17, no_output_timeout_seconds = $18 WHERE id = $1",
    )
    .bind(&s.id)
    .bind(&s.space_id)
    .bind(&s.integration_id)
    .bind(s.project_id)
    .bind(&s.repository)
    .bind(&s.branch)
    .bind(&s.project_root)
    .bind(&s.additional_project_globs)
    .bind(&s.labels)
    .bind(s.autodeploy)
    .bind(s.allow_forks)
    .bind(&s.vendor)
    .bind(&s.environment)
    .bind(&s.secret_environment_names)
    .bind(&s.secret_environment_sealed)
    .bind(s.updated_at)
    .bind(s.run_timeout_seconds)
    .bind(s.no_output_timeout_seconds)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<Stack>, StoreError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM stacks WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn delete(conn: &mut Conn, id: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM stacks WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The ids of the stacks that use an integration, at most `limit`.
pub async fn using_integration(
    conn: &mut Conn,
    integration_id: &str,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM stacks WHERE integration_id = $1 ORDER BY id LIMIT $2")
            .bind(integration_id)
            .bind(limit)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The stacks of one GitLab project behind one integration: what an event
/// may affect.
pub async fn for_project(
    conn: &mut Conn,
    integration_id: &str,
    project_id: i64,
) -> Result<Vec<Stack>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM stacks WHERE integration_id = $1 AND project_id = $2 ORDER BY id"
    ))
    .bind(integration_id)
    .bind(project_id)
    .fetch_all(conn)
    .await?)
}

/// The stacks an API key can read, newest first.
pub async fn list_readable(
    conn: &mut Conn,
    api_key_id: &str,
    page: &Page,
) -> Result<(Vec<Stack>, Option<Cursor>), StoreError> {
    let (at, id) = page.bounds();
    let rows: Vec<Stack> = sqlx::query_as(&format!(
        "WITH RECURSIVE readable (id) AS ( \
             SELECT space_id FROM api_key_roles WHERE api_key_id = $1 AND role IN ('read', 'write', 'admin') \
             UNION \
             SELECT s.id FROM spaces s JOIN readable r ON s.parent_id = r.id) \
         SELECT {COLUMNS} FROM stacks WHERE space_id IN (SELECT id FROM readable) \
           AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(api_key_id)
    .bind(at)
    .bind(id)
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await?;
    Ok(page.finish(rows, |row| Cursor {
        at: row.created_at,
        id: row.id.clone(),
    }))
}
