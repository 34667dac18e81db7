//! The space tree. `root` has no parent; every other space has one, fixed at
//! creation, so the tree can never form a cycle.

use sqlx::FromRow;

use crate::{Conn, Cursor, Millis, Page, StoreError, is_unique_violation};

pub const ROOT: &str = "root";

#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct Space {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateSpaceError {
    #[error("parent space {0:?} does not exist")]
    ParentNotFound(String),
    #[error("a space with id {0:?} already exists; choose another name or id")]
    IdTaken(String),
    #[error("space {parent:?} already has a child named {name:?}")]
    NameTaken { name: String, parent: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CreateSpaceError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(err.into())
    }
}

/// Creates a space. `parent` is `None` only for `root`.
pub async fn insert(
    conn: &mut Conn,
    id: &str,
    name: &str,
    parent: Option<&str>,
    now: Millis,
) -> Result<Space, CreateSpaceError> {
    if let Some(parent) = parent {
        if get(conn, parent).await?.is_none() {
            return Err(CreateSpaceError::ParentNotFound(parent.to_owned()));
        }
        let sibling: Option<(String,)> =
            sqlx::query_as("SELECT id FROM spaces WHERE parent_id = $1 AND name = $2")
                .bind(parent)
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
        if sibling.is_some() {
            return Err(CreateSpaceError::NameTaken {
                name: name.to_owned(),
                parent: parent.to_owned(),
            });
        }
    }
    let space = Space {
        id: id.to_owned(),
        name: name.to_owned(),
        parent_id: parent.map(str::to_owned),
        created_at: now.0,
    };
    sqlx::query("INSERT INTO spaces (id, name, parent_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&space.id)
        .bind(&space.name)
        .bind(&space.parent_id)
        .bind(space.created_at)
        .execute(&mut *conn)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                CreateSpaceError::IdTaken(id.to_owned())
            } else {
                err.into()
            }
        })?;
    Ok(space)
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<Space>, StoreError> {
    Ok(
        sqlx::query_as("SELECT id, name, parent_id, created_at FROM spaces WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn count(conn: &mut Conn) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM spaces")
        .fetch_one(conn)
        .await?;
    Ok(n)
}

/// The rule "a role on a space applies to all its descendants" in SQL:
/// `readable` holds every space on which API key `$1` has `read` or more.
/// The one copy of that rule for the queries that list what a key sees;
/// single resources are checked by `Principal::authorize` in the server.
pub const READABLE_SPACES: &str = "WITH RECURSIVE readable (id) AS ( \
    SELECT space_id FROM api_key_roles WHERE api_key_id = $1 AND role IN ('read', 'write', 'admin') \
    UNION \
    SELECT s.id FROM spaces s JOIN readable r ON s.parent_id = r.id)";

/// The space and its ancestors, the space itself first and `root` last;
/// empty when the space does not exist.
pub async fn ancestry(conn: &mut Conn, id: &str) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "WITH RECURSIVE up (id, parent_id, depth) AS ( \
             SELECT id, parent_id, 0 FROM spaces WHERE id = $1 \
             UNION ALL \
             SELECT s.id, s.parent_id, up.depth + 1 FROM spaces s JOIN up ON s.id = up.parent_id) \
         SELECT id FROM up ORDER BY depth",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The spaces an API key can read: those it holds `read`, `write` or
/// `admin` on, and all their descendants; newest first.
pub async fn list_readable(
    conn: &mut Conn,
    api_key_id: &str,
    page: &Page,
) -> Result<(Vec<Space>, Option<Cursor>), StoreError> {
    let sql = format!(
        "{READABLE_SPACES} \
         SELECT id, name, parent_id, created_at FROM spaces \
         WHERE id IN (SELECT id FROM readable) AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    let query = sqlx::query_as::<_, Space>(&sql).bind(api_key_id);
    page.fetch(conn, query, |s: &Space| (s.created_at, &s.id))
        .await
}
