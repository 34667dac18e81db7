//! Stacks. Lists and objects are stored as JSON text; the secret
//! environment arrives sealed by the keyring, as one value, with its names
//! kept apart so they can be shown.

use std::collections::BTreeMap;

use gantry_domain::Workflow;
use sqlx::any::AnyArguments;
use sqlx::any::AnyRow;
use sqlx::query::Query;
use sqlx::{Any, FromRow, Row as _};

use crate::row::{Fields, insert_sql, to_json, update_sql};
use crate::spaces::READABLE_SPACES;
use crate::{Conn, Cursor, Page, StoreError, is_unique_violation};

#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub additional_project_globs: Vec<String>,
    pub labels: Vec<String>,
    pub autodeploy: bool,
    pub allow_forks: bool,
    pub vendor: Workflow,
    pub environment: BTreeMap<String, String>,
    /// The names of the secret environment; its values are sealed together.
    pub secret_environment_names: Vec<String>,
    pub secret_environment_sealed: Option<String>,
    /// The secret environment of proposed runs instead of
    /// `secret_environment`, when set (`Some`, even empty): its names, and
    /// its values sealed together.
    pub proposed_secret_environment_names: Option<Vec<String>>,
    pub proposed_secret_environment_sealed: Option<String>,
    /// The most of a run's log that is stored.
    pub log_limit_bytes: i64,
    /// Limits of each phase's execution, in seconds.
    pub run_timeout_seconds: i64,
    pub no_output_timeout_seconds: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A run's stored log is cut here unless its stack says otherwise: 50 MiB.
pub const DEFAULT_LOG_LIMIT_BYTES: i64 = 50 * 1024 * 1024;

/// The keyring context that seals a stack's secret environment: the row
/// it belongs to, so a sealed value cannot be moved to another stack.
pub fn secret_environment_context(stack_id: &str) -> String {
    format!("stack:{stack_id}:secret_environment")
}

/// The keyring context that seals a stack's proposed secret environment.
pub fn proposed_secret_environment_context(stack_id: &str) -> String {
    format!("stack:{stack_id}:proposed_secret_environment")
}

impl FromRow<'_, AnyRow> for Stack {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let id: String = row.try_get("id")?;
        let fields = Fields {
            table: "stacks",
            id: &id,
        };
        let additional_project_globs: Vec<String> =
            fields.json_in(row, "additional_project_globs")?;
        gantry_domain::stack::globs(&additional_project_globs)
            .map_err(|error| fields.corrupt("additional_project_globs", error.to_string()))?;
        let vendor: Workflow = fields.json_in(row, "vendor")?;
        vendor
            .check()
            .map_err(|error| fields.corrupt("vendor", error.to_string()))?;
        let proposed_secret_environment_names = row
            .try_get::<Option<String>, _>("proposed_secret_environment_names")?
            .map(|raw| fields.json("proposed_secret_environment_names", &raw))
            .transpose()?;
        Ok(Self {
            additional_project_globs,
            labels: fields.json_in(row, "labels")?,
            autodeploy: fields.flag_in(row, "autodeploy")?,
            allow_forks: fields.flag_in(row, "allow_forks")?,
            vendor,
            environment: fields.json_in(row, "environment")?,
            secret_environment_names: fields.json_in(row, "secret_environment_names")?,
            id,
            name: row.try_get("name")?,
            space_id: row.try_get("space_id")?,
            integration_id: row.try_get("integration_id")?,
            project_id: row.try_get("project_id")?,
            repository: row.try_get("repository")?,
            branch: row.try_get("branch")?,
            project_root: row.try_get("project_root")?,
            secret_environment_sealed: row.try_get("secret_environment_sealed")?,
            proposed_secret_environment_names,
            proposed_secret_environment_sealed: row
                .try_get("proposed_secret_environment_sealed")?,
            log_limit_bytes: row.try_get("log_limit_bytes")?,
            run_timeout_seconds: row.try_get("run_timeout_seconds")?,
            no_output_timeout_seconds: row.try_get("no_output_timeout_seconds")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

const COLUMNS: &str = "id, name, space_id, integration_id, project_id, repository, branch, project_root, \
    additional_project_globs, labels, autodeploy, allow_forks, vendor, environment, secret_environment_names, \
    secret_environment_sealed, run_timeout_seconds, no_output_timeout_seconds, created_at, updated_at, \
    proposed_secret_environment_names, proposed_secret_environment_sealed, log_limit_bytes";

#[derive(Debug, thiserror::Error)]
pub enum SaveStackError {
    #[error("a stack with id {0:?} already exists; choose another name")]
    IdTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn insert(conn: &mut Conn, stack: &Stack) -> Result<(), SaveStackError> {
    bind(sqlx::query(&insert_sql("stacks", COLUMNS)), stack)
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

/// Writes every column of the row; `id`, `name` and `created_at` never
/// change, so they are written as they were.
pub async fn update(conn: &mut Conn, stack: &Stack) -> Result<(), StoreError> {
    bind(sqlx::query(&update_sql("stacks", COLUMNS)), stack)
        .execute(conn)
        .await?;
    Ok(())
}

/// Binds every column, in the order of [`COLUMNS`].
fn bind<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    s: &'q Stack,
) -> Query<'q, Any, AnyArguments<'q>> {
    query
        .bind(&s.id)
        .bind(&s.name)
        .bind(&s.space_id)
        .bind(&s.integration_id)
        .bind(s.project_id)
        .bind(&s.repository)
        .bind(&s.branch)
        .bind(&s.project_root)
        .bind(to_json(&s.additional_project_globs))
        .bind(to_json(&s.labels))
        .bind(i64::from(s.autodeploy))
        .bind(i64::from(s.allow_forks))
        .bind(to_json(&s.vendor))
        .bind(to_json(&s.environment))
        .bind(to_json(&s.secret_environment_names))
        .bind(&s.secret_environment_sealed)
        .bind(s.run_timeout_seconds)
        .bind(s.no_output_timeout_seconds)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.proposed_secret_environment_names.as_ref().map(to_json))
        .bind(&s.proposed_secret_environment_sealed)
        .bind(s.log_limit_bytes)
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
    let sql = format!(
        "{READABLE_SPACES} \
         SELECT {COLUMNS} FROM stacks WHERE space_id IN (SELECT id FROM readable) \
           AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    let query = sqlx::query_as::<_, Stack>(&sql).bind(api_key_id);
    page.fetch(conn, query, |s: &Stack| (s.created_at, &s.id))
        .await
}
