//! Bearer API keys and the role checks every route makes.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use gantry_domain::{Grant, Role, allows};
use gantry_store::{Conn, Millis, api_keys, audit, spaces};

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller: an unrevoked API key and its roles.
#[derive(Clone, Debug)]
pub struct Principal {
    pub key_id: String,
    pub name: String,
    pub roles: Vec<Grant>,
}

impl Principal {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("api-key:{}", self.key_id)
    }

    /// Checks that the caller holds `needed` on `space` or an ancestor.
    /// An unknown space is refused like a space the caller has no role on.
    pub async fn require(
        &self,
        state: &AppState,
        needed: Role,
        space: &str,
    ) -> Result<(), ApiError> {
        let mut conn = state.store.conn().await?;
        let ancestry = spaces::ancestry(&mut conn, space).await?;
        if allows(&self.roles, needed, ancestry.iter().map(String::as_str)) {
            Ok(())
        } else {
            Err(forbidden(needed, space))
        }
    }

    /// Whether the caller holds `needed` on a space with this ancestry.
    pub fn allows(&self, needed: Role, ancestry: &[String]) -> bool {
        allows(&self.roles, needed, ancestry.iter().map(String::as_str))
    }
}

/// What an audit entry is about.
pub struct Target<'a> {
    pub kind: &'static str,
    pub id: &'a str,
    pub space: Option<&'a str>,
}

impl Principal {
    /// Records a change, or a view of secret-bearing details, that this
    /// caller made, in `conn`'s transaction.
    pub async fn audit(
        &self,
        conn: &mut Conn,
        action: &str,
        target: Target<'_>,
        detail: serde_json::Value,
    ) -> Result<(), ApiError> {
        let entry = audit::NewAuditEntry {
            actor: &self.actor(),
            action,
            target_kind: target.kind,
            target_id: target.id,
            space_id: target.space,
            detail,
        };
        audit::record(conn, &entry, Millis::now()).await?;
        Ok(())
    }
}

/// What guards a resource: the space whose roles govern it, and whether
/// every caller may know it exists (the default integration).
pub struct Guard<'a> {
    pub space: &'a str,
    pub listed_to_all: bool,
}

/// The ancestry of a resource's space, once its caller passed the check,
/// for asking about further roles without reading it again.
pub struct Standing {
    ancestry: Vec<String>,
}

impl Principal {
    /// The one authorization rule of every route: 404 (`not_found`) when
    /// the caller cannot see the resource, so its existence does not leak;
    /// 403 when it can see it but lacks `needed` (`None`: seeing is all
    /// that is asked).
    pub async fn authorize(
        &self,
        conn: &mut Conn,
        guard: Guard<'_>,
        needed: Option<Role>,
        not_found: impl FnOnce() -> ApiError,
    ) -> Result<Standing, ApiError> {
        let ancestry = spaces::ancestry(conn, guard.space).await?;
        if !guard.listed_to_all && !self.allows(Role::Read, &ancestry) {
            return Err(not_found());
        }
        if let Some(needed) = needed
            && !self.allows(needed, &ancestry)
        {
            return Err(forbidden(needed, guard.space));
        }
        Ok(Standing { ancestry })
    }

    /// Whether the caller also holds `role` where it passed [`Self::authorize`].
    pub fn holds(&self, role: Role, standing: &Standing) -> bool {
        self.allows(role, &standing.ancestry)
    }

    /// The check before creating something in `space`: 422 when the space
    /// does not exist (it is a field of the request), 403 without `needed`.
    pub async fn may_create_in(
        &self,
        conn: &mut Conn,
        space: &str,
        needed: Role,
    ) -> Result<(), ApiError> {
        let ancestry = spaces::ancestry(conn, space).await?;
        if ancestry.is_empty() {
            return Err(ApiError::invalid(format!(
                "`space` {space:?} does not exist"
            )));
        }
        if !self.allows(needed, &ancestry) {
            return Err(forbidden(needed, space));
        }
        Ok(())
    }
}

pub fn forbidden(needed: Role, space: &str) -> ApiError {
    ApiError::forbidden(format!(
        "this needs the `{needed}` role on space {space:?} or one of its ancestors"
    ))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("no API key: send `Authorization: Bearer <key>`")
        })?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|secret| !secret.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <key>`")
            })?;
        let mut conn = state.store.conn().await?;
        let key = api_keys::authenticate(&mut conn, secret)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the API key is unknown or revoked"))?;
        Ok(Principal {
            key_id: key.id,
            name: key.name,
            roles: key.roles,
        })
    }
}
