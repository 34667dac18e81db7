//! The audit log: who changed what, and who looked at which secret-bearing
//! details. Entries are written in the transaction of the change they record.

use sqlx::any::AnyRow;
use sqlx::{FromRow, Row as _};

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

impl FromRow<'_, AnyRow> for AuditEntry {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let id: i64 = row.try_get("id")?;
        let id_text = id.to_string();
        let fields = Fields {
            table: "audit_log",
            id: &id_text,
        };
        Ok(Self {
            detail: fields.json_in(row, "detail")?,
            id,
            at: row.try_get("at")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            target_kind: row.try_get("target_kind")?,
            target_id: row.try_get("target_id")?,
            space_id: row.try_get("space_id")?,
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
    let rows: Vec<AuditEntry> = sqlx::query_as(
        "SELECT id, at, actor, action, target_kind, target_id, space_id, detail FROM audit_log \
         WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await?;
    Ok(page.finish(rows, |e| Cursor {
        at: e.id,
        id: String::new(),
    }))
}
