//! The JSON shapes of the API's resources.

use gantry_domain::{Grant, Role};
use gantry_store::Cursor;
use gantry_store::api_keys::ApiKey;
use gantry_store::audit::AuditEntry;
use gantry_store::spaces::Space;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// A page of a list, newest first.
#[derive(Serialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> List<T> {
    pub fn new<R>(rows: Vec<R>, next: Option<Cursor>, view: impl Fn(R) -> T) -> Self {
        Self {
            items: rows.into_iter().map(view).collect(),
            next_cursor: next.map(|c| c.encode()),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Items per page: 1 to 500, default 50.
    pub limit: Option<u32>,
}

impl ListParams {
    pub fn page(&self) -> Result<gantry_store::Page, ApiError> {
        let after = self.cursor.as_deref().map(Cursor::decode).transpose()?;
        if let Some(limit) = self.limit
            && !(1..=gantry_store::page::MAX_LIMIT).contains(&limit)
        {
            return Err(ApiError::invalid(format!(
                "`limit` is {limit}; it must be between 1 and 500"
            )));
        }
        Ok(gantry_store::Page::new(after, self.limit))
    }
}

/// RFC 3339 in UTC, from stored unix milliseconds.
pub fn timestamp(millis: i64) -> String {
    // Always three digits of milliseconds: RFC 3339 that sorts as text.
    const FORMAT: &[time::format_description::FormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        // Past the year 9999: say what is stored rather than hide it.
        .unwrap_or_else(|| format!("unix-ms:{millis}"))
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq, Eq)]
pub struct RoleView {
    /// The id of a space; the role also applies to its descendants.
    pub space: String,
    #[schema(value_type = String, example = "admin")]
    pub role: Role,
}

impl From<Grant> for RoleView {
    fn from(grant: Grant) -> Self {
        Self {
            space: grant.space,
            role: grant.role,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SpaceView {
    pub id: String,
    pub name: String,
    /// The parent space; `null` for `root`.
    pub parent: Option<String>,
    pub created_at: String,
}

impl From<Space> for SpaceView {
    fn from(space: Space) -> Self {
        Self {
            id: space.id,
            name: space.name,
            parent: space.parent_id,
            created_at: timestamp(space.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub roles: Vec<RoleView>,
    /// The key that created this one; `null` for the initial admin key.
    pub created_by: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(key: ApiKey) -> Self {
        Self {
            id: key.id,
            name: key.name,
            roles: key.roles.into_iter().map(RoleView::from).collect(),
            created_by: key.created_by,
            created_at: timestamp(key.created_at),
            revoked_at: key.revoked_at.map(timestamp),
        }
    }
}

/// A new key, with its secret: shown this once, never again.
#[derive(Serialize, ToSchema)]
pub struct CreatedApiKeyView {
    pub id: String,
    pub name: String,
    pub roles: Vec<RoleView>,
    pub created_at: String,
    /// The bearer secret. Store it now: Gantry keeps only its hash.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEntryView {
    pub id: i64,
    pub at: String,
    /// `api-key:<id>` or `system`.
    pub actor: String,
    /// Such as `space.create` or `api_key.revoke`.
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub space: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(entry: AuditEntry) -> Self {
        Self {
            id: entry.id,
            at: timestamp(entry.at),
            actor: entry.actor,
            action: entry.action,
            target_kind: entry.target_kind,
            target_id: entry.target_id,
            space: entry.space_id,
            detail: entry.detail,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_keep_three_digits_so_they_sort_as_text() {
        assert_eq!(super::timestamp(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(super::timestamp(1_510), "1970-01-01T00:00:01.510Z");
        assert!(super::timestamp(1_500) < super::timestamp(1_510));
    }
}
