//! Modules of the registry and their versions.

use sqlx::any::AnyRow;
use sqlx::{FromRow, Row as _};

use crate::row::{Fields, to_json};
use crate::spaces::READABLE_SPACES;
use crate::{Conn, Cursor, Millis, Page, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub id: String,
    pub name: String,
    pub space_id: String,
    pub integration_id: Option<String>,
    pub project_id: i64,
    pub repository: String,
    /// `network/`, or empty for the whole repository.
    pub project_root: String,
    pub provider: String,
    pub labels: Vec<String>,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, name, space_id, integration_id, project_id, repository, project_root, provider, \
    labels, description, created_at, updated_at";

impl FromRow<'_, AnyRow> for Module {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let id: String = row.try_get("id")?;
        let fields = Fields {
            table: "modules",
            id: &id,
        };
        Ok(Self {
            labels: fields.json_in(row, "labels")?,
            name: row.try_get("name")?,
            space_id: row.try_get("space_id")?,
            integration_id: row.try_get("integration_id")?,
            project_id: row.try_get("project_id")?,
            repository: row.try_get("repository")?,
            project_root: row.try_get("project_root")?,
            provider: row.try_get("provider")?,
            description: row.try_get("description")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            id,
        })
    }
}

pub async fn insert(conn: &mut Conn, m: &Module) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO modules ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(&m.id)
    .bind(&m.name)
    .bind(&m.space_id)
    .bind(&m.integration_id)
    .bind(m.project_id)
    .bind(&m.repository)
    .bind(&m.project_root)
    .bind(&m.provider)
    .bind(to_json(&m.labels))
    .bind(&m.description)
    .bind(m.created_at)
    .bind(m.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes every changeable column.
pub async fn update(conn: &mut Conn, m: &Module) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE modules SET integration_id = $1, project_id = $2, repository = $3, project_root = $4, \
           provider = $5, labels = $6, description = $7, updated_at = $8 WHERE id = $9",
    )
    .bind(&m.integration_id)
    .bind(m.project_id)
    .bind(&m.repository)
    .bind(&m.project_root)
    .bind(&m.provider)
    .bind(to_json(&m.labels))
    .bind(&m.description)
    .bind(m.updated_at)
    .bind(&m.id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<Module>, StoreError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM modules WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn delete(conn: &mut Conn, id: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM modules WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The modules of a project in an integration.
pub async fn for_project(
    conn: &mut Conn,
    integration_id: &str,
    project_id: i64,
) -> Result<Vec<Module>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM modules WHERE integration_id = $1 AND project_id = $2 ORDER BY id"
    ))
    .bind(integration_id)
    .bind(project_id)
    .fetch_all(conn)
    .await?)
}

/// The modules an API key can read, newest first.
pub async fn list_readable(
    conn: &mut Conn,
    api_key_id: &str,
    page: &Page,
) -> Result<(Vec<Module>, Option<Cursor>), StoreError> {
    let sql = format!(
        "{READABLE_SPACES} \
         SELECT {COLUMNS} FROM modules WHERE space_id IN (SELECT id FROM readable) \
           AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    let query = sqlx::query_as::<_, Module>(&sql).bind(api_key_id);
    page.fetch(conn, query, |m: &Module| (m.created_at, &m.id))
        .await
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub version: String,
    pub commit_sha: String,
    pub tag: String,
    /// `published` or `yanked`.
    pub state: String,
    pub published_at: i64,
}

/// The versions of a module, newest first.
pub async fn versions(conn: &mut Conn, module_id: &str) -> Result<Vec<Version>, StoreError> {
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT version, commit_sha, tag, state, published_at FROM module_versions WHERE module_id = $1 \
         ORDER BY published_at DESC, version DESC",
    )
    .bind(module_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(version, commit_sha, tag, state, published_at)| Version {
            version,
            commit_sha,
            tag,
            state,
            published_at,
        })
        .collect())
}

/// What publishing a version did.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    New,
    /// The same tag at the same commit again (GitLab resent it).
    Already,
    /// The version exists at another commit: never changed.
    Refused {
        commit_sha: String,
    },
}

/// Publishes `version` of a module at `commit_sha`, once.
pub async fn publish(
    conn: &mut Conn,
    module_id: &str,
    version: &str,
    commit_sha: &str,
    tag: &str,
    now: Millis,
) -> Result<Published, StoreError> {
    let existing: Option<(String,)> = sqlx::query_as(
        "SELECT commit_sha FROM module_versions WHERE module_id = $1 AND version = $2",
    )
    .bind(module_id)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    match existing {
        Some((sha,)) if sha == commit_sha => Ok(Published::Already),
        Some((sha,)) => Ok(Published::Refused { commit_sha: sha }),
        None => {
            sqlx::query(
                "INSERT INTO module_versions (module_id, version, commit_sha, tag, state, published_at) \
                 VALUES ($1, $2, $3, $4, 'published', $5)",
            )
            .bind(module_id)
            .bind(version)
            .bind(commit_sha)
            .bind(tag)
            .bind(now.0)
            .execute(conn)
            .await?;
            Ok(Published::New)
        }
    }
}

/// Yanks the versions published from `tag`; how many.
pub async fn yank(conn: &mut Conn, module_id: &str, tag: &str) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE module_versions SET state = 'yanked' WHERE module_id = $1 AND tag = $2 AND state = 'published'",
    )
    .bind(module_id)
    .bind(tag)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// A published version's commit.
pub async fn published(
    conn: &mut Conn,
    module_id: &str,
    version: &str,
) -> Result<Option<String>, StoreError> {
    let found: Option<(String,)> = sqlx::query_as(
        "SELECT commit_sha FROM module_versions WHERE module_id = $1 AND version = $2 AND state = 'published'",
    )
    .bind(module_id)
    .bind(version)
    .fetch_optional(conn)
    .await?;
    Ok(found.map(|(sha,)| sha))
}
