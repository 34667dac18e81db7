//! Stacks. Lists and objects are stored as JSON text; the secret
//! environment arrives sealed by the keyring, as one value, with its names
//! kept apart so they can be shown.

use std::collections::BTreeMap;

use gantry_domain::Workflow;
use sqlx::FromRow;

use crate::row::{Fields, to_json};
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
    /// Limits of each phase's execution, in seconds.
    pub run_timeout_seconds: i64,
    pub no_output_timeout_seconds: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The keyring context that seals a stack's secret environment: the row
/// it belongs to, so a sealed value cannot be moved to another stack.
pub fn secret_environment_context(stack_id: &str) -> String {
    format!("stack:{stack_id}:secret_environment")
}

/// A stack as stored: lists and objects as JSON text, flags as 0 or 1.
#[derive(FromRow)]
struct Row {
    id: String,
    name: String,
    space_id: String,
    integration_id: Option<String>,
    project_id: i64,
    repository: String,
    branch: String,
    project_root: String,
    additional_project_globs: String,
    labels: String,
    autodeploy: i64,
    allow_forks: i64,
    vendor: String,
    environment: String,
    secret_environment_names: String,
    secret_environment_sealed: Option<String>,
    run_timeout_seconds: i64,
    no_output_timeout_seconds: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<Row> for Stack {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<Self, StoreError> {
        let fields = Fields {
            table: "stacks",
            id: &row.id,
        };
        let additional_project_globs: Vec<String> =
            fields.json("additional_project_globs", &row.additional_project_globs)?;
        gantry_domain::stack::globs(&additional_project_globs)
            .map_err(|error| fields.corrupt("additional_project_globs", error.to_string()))?;
        let vendor: Workflow = fields.json("vendor", &row.vendor)?;
        vendor
            .check()
            .map_err(|error| fields.corrupt("vendor", error.to_string()))?;
        Ok(Self {
            additional_project_globs,
            labels: fields.json("labels", &row.labels)?,
            autodeploy: fields.flag("autodeploy", row.autodeploy)?,
            allow_forks: fields.flag("allow_forks", row.allow_forks)?,
            vendor,
            environment: fields.json("environment", &row.environment)?,
            secret_environment_names: fields
                .json("secret_environment_names", &row.secret_environment_names)?,
            id: row.id,
            name: row.name,
            space_id: row.space_id,
            integration_id: row.integration_id,
            project_id: row.project_id,
            repository: row.repository,
            branch: row.branch,
            project_root: row.project_root,
            secret_environment_sealed: row.secret_environment_sealed,
            run_timeout_seconds: row.run_timeout_seconds,
            no_output_timeout_seconds: row.no_output_timeout_seconds,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

fn parse_all(rows: Vec<Row>) -> Result<Vec<Stack>, StoreError> {
    rows.into_iter().map(Stack::try_from).collect()
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
    .bind(to_json(&s.additional_project_globs))
    .bind(to_json(&s.labels))
    .bind(i64::from(s.autodeploy))
    .bind(i64::from(s.allow_forks))
    .bind(to_json(&s.vendor))
    .bind(to_json(&s.environment))
    .bind(to_json(&s.secret_environment_names))
    .bind(&s.secret_environment_sealed)
    .bind(s.updated_at)
    .bind(s.run_timeout_seconds)
    .bind(s.no_output_timeout_seconds)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<Stack>, StoreError> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM stacks WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(Stack::try_from).transpose()
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
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM stacks WHERE integration_id = $1 AND project_id = $2 ORDER BY id"
    ))
    .bind(integration_id)
    .bind(project_id)
    .fetch_all(conn)
    .await?;
    parse_all(rows)
}

/// The stacks an API key can read, newest first.
pub async fn list_readable(
    conn: &mut Conn,
    api_key_id: &str,
    page: &Page,
) -> Result<(Vec<Stack>, Option<Cursor>), StoreError> {
    let (at, id) = page.bounds();
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "{READABLE_SPACES} \
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
    Ok(page.finish(parse_all(rows)?, |row| Cursor {
        at: row.created_at,
        id: row.id.clone(),
    }))
}
