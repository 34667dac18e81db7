//! The audit log: who changed what, and who looked at which secret-bearing
//! details. Entries are written in the transaction of the change they record.

use sqlx::FromRow;

use crate::row::Fields;
use crate::{Conn, Cursor, Millis, Page, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub space_id: Option<String>,
    /// A JSON object with what else is worth knowing; never a secret.
    pub detail: serde_json::Value,
}

#[derive(FromRow)]
struct Row {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    target_kind: String,
    target_id: String,
    space_id: Option<String>,
    detail: String,
}

impl TryFrom<Row> for AuditEntry {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<Self, StoreError> {
        let id = row.id.to_string();
        let fields = Fields {
            table: "audit_log",
            id: &id,
        };
        Ok(Self {
            detail: fields.json("detail", &row.detail)?,
            id: row.id,
            at: row.at,
            actor: row.actor,
            action: row.action,
            target_kind: row.target_kind,
            target_id: row.target_id,
            space_id: row.space_id,
        })
    }
}

/// What to record. `actor` is `api-key:<id>` or `system`.
#[derive(Clone, Debug)]
pub struct NewAuditEntry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target_id: &'a str,
    pub space_id: Option<&'a str>,
    pub detail: serde_json::Value,
}

pub async fn record(
    conn: &mut Conn,
    entry: &NewAuditEntry<'_>,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target_kind, target_id, space_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now.0)
    .bind(entry.actor)
    .bind(entry.action)
    .bind(entry.target_kind)
    .bind(entry.target_id)
    .bind(entry.space_id)
    .bind(entry.detail.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Entries newest first. The cursor's `at` holds the last entry's id.
pub async fn list(
    conn: &mut Conn,
    page: &Page,
) -> Result<(Vec<AuditEntry>, Option<Cursor>), StoreError> {
    let before = page.after.as_ref().map_or(i64::MAX, |c| c.at);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, at, actor, action, target_kind, target_id, space_id, detail FROM audit_log \
         WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await?;
    let rows = rows
        .into_iter()
        .map(AuditEntry::try_from)
        .collect::<Result<_, _>>()?;
    Ok(page.finish(rows, |e| Cursor {
        at: e.id,
        id: String::new(),
    }))
}
