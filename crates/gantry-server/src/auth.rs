//! Bearer API keys and the role checks every route makes.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use gantry_domain::{Grant, Role, allows};
use gantry_store::{api_keys, spaces};

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
