//! What Gantry last found of its hook on each project of an integration:
//! `ok`, `missing`, `drifted`, `forbidden` (the token cannot manage hooks
//! there) or `unmanaged` (`manage_hooks` is off).

use crate::{Conn, Millis, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectHook {
    pub integration_id: String,
    pub project_id: i64,
    pub path: String,
    pub hook_id: Option<i64>,
    pub state: String,
    pub checked_at: i64,
    pub error: Option<String>,
}

type Row = (
    String,
    i64,
    String,
    Option<i64>,
    String,
    i64,
    Option<String>,
);

fn of((integration_id, project_id, path, hook_id, state, checked_at, error): Row) -> ProjectHook {
    ProjectHook {
        integration_id,
        project_id,
        path,
        hook_id,
        state,
        checked_at,
        error,
    }
}

const COLUMNS: &str = "integration_id, project_id, path, hook_id, state, checked_at, error";

/// Records what a check found.
pub async fn record(conn: &mut Conn, hook: &ProjectHook) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO project_hooks ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (integration_id, project_id) DO UPDATE SET path = excluded.path, \
           hook_id = excluded.hook_id, state = excluded.state, checked_at = excluded.checked_at, \
           error = excluded.error"
    ))
    .bind(&hook.integration_id)
    .bind(hook.project_id)
    .bind(&hook.path)
    .bind(hook.hook_id)
    .bind(&hook.state)
    .bind(hook.checked_at)
    .bind(&hook.error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets a project whose hook Gantry removed.
pub async fn forget(
    conn: &mut Conn,
    integration_id: &str,
    project_id: i64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM project_hooks WHERE integration_id = $1 AND project_id = $2")
        .bind(integration_id)
        .bind(project_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get(
    conn: &mut Conn,
    integration_id: &str,
    project_id: i64,
) -> Result<Option<ProjectHook>, StoreError> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM project_hooks WHERE integration_id = $1 AND project_id = $2"
    ))
    .bind(integration_id)
    .bind(project_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(of))
}

/// The hooks of an integration, by project.
pub async fn list(conn: &mut Conn, integration_id: &str) -> Result<Vec<ProjectHook>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM project_hooks WHERE integration_id = $1 ORDER BY path, project_id"
    ))
    .bind(integration_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(of).collect())
}

/// The projects whose hook an integration must see to: those of its
/// stacks and modules, and those it has a hook on (to remove it when none
/// is left), with their paths.
pub async fn projects(
    conn: &mut Conn,
    integration_id: &str,
) -> Result<Vec<(i64, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT project_id, MIN(repository) FROM ( \
           SELECT project_id, repository FROM stacks WHERE integration_id = $1 \
           UNION ALL SELECT project_id, repository FROM modules WHERE integration_id = $1 \
           UNION ALL SELECT project_id, path FROM project_hooks WHERE integration_id = $1 \
         ) used GROUP BY project_id ORDER BY 1",
    )
    .bind(integration_id)
    .fetch_all(conn)
    .await?)
}

/// Whether any stack or module of the integration is on the project.
pub async fn in_use(
    conn: &mut Conn,
    integration_id: &str,
    project_id: i64,
) -> Result<bool, StoreError> {
    let found: Option<(i64,)> = sqlx::query_as(
        "SELECT 1 FROM stacks WHERE integration_id = $1 AND project_id = $2 \
         UNION ALL SELECT 1 FROM modules WHERE integration_id = $1 AND project_id = $2 LIMIT 1",
    )
    .bind(integration_id)
    .bind(project_id)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

impl ProjectHook {
    pub fn new(
        integration_id: &str,
        project_id: i64,
        path: &str,
        state: &str,
        now: Millis,
    ) -> Self {
        Self {
            integration_id: integration_id.to_owned(),
            project_id,
            path: path.to_owned(),
            hook_id: None,
            state: state.to_owned(),
            checked_at: now.0,
            error: None,
        }
    }
}
