use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_domain::{Grant, Role};
use gantry_store::api_keys::{self, CreateKeyError};
use gantry_store::spaces::{self, ROOT};
use gantry_store::{Conn, Millis};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Principal, Target, forbidden};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::views::{ApiKeyView, CreatedApiKeyView, List, ListParams, RoleView, timestamp};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// The key's id is the slug of its name.
    pub name: String,
    /// At least one role. `worker` can only be granted on `root`.
    pub roles: Vec<RoleView>,
}

/// Creates an API key. Needs `admin` on every space the key gets a role on
/// (`root` for the `worker` role). The secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys", security(("bearer" = [])), request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKeyView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKeyView>), ApiError> {
    let (name, id) = crate::routes::fields::named(&body.name)?;
    if body.roles.is_empty() {
        return Err(ApiError::invalid(
            "`roles` is empty: give the key at least one role, such as {\"space\": \"root\", \"role\": \"read\"}",
        ));
    }
    let grants: Vec<Grant> = body
        .roles
        .into_iter()
        .map(|r| Grant {
            space: r.space,
            role: r.role,
        })
        .collect();

    let mut tx = state.store.begin().await?;
    for grant in &grants {
        if grant.role == Role::Worker && grant.space != ROOT {
            return Err(ApiError::invalid(format!(
                "`roles`: the worker role can only be granted on \"root\", not on {:?}",
                grant.space
            )));
        }
        let ancestry = spaces::ancestry(&mut tx, &grant.space).await?;
        if ancestry.is_empty() {
            return Err(ApiError::invalid(format!(
                "`roles`: space {:?} does not exist",
                grant.space
            )));
        }
        if !principal.allows(Role::Admin, &ancestry) {
            return Err(forbidden(Role::Admin, &grant.space));
        }
    }
    let now = Millis::now();
    let (key, secret) = api_keys::insert(
        &mut tx,
        id.as_str(),
        name.as_str(),
        &grants,
        Some(&principal.key_id),
        now,
    )
    .await
    .map_err(|err| match err {
        CreateKeyError::IdTaken(_) => ApiError::conflict(err.to_string()),
        CreateKeyError::Store(err) => err.into(),
    })?;
    principal
        .audit(
            &mut tx,
            "api_key.create",
            Target {
                kind: "api_key",
                id: &key.id,
                space: None,
            },
            json!({ "name": key.name, "roles": key.roles }),
        )
        .await?;
    tx.commit().await?;
    tracing::info!(api_key.id = %key.id, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKeyView {
            id: key.id,
            name: key.name,
            roles: key.roles.into_iter().map(RoleView::from).collect(),
            created_at: timestamp(key.created_at),
            secret: secret.expose_secret().to_owned(),
        }),
    ))
}

/// The caller's own key and the keys it manages (all of whose roles lie in
/// spaces it administers), newest first. Secrets are never shown.
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = List<ApiKeyView>), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<List<ApiKeyView>>, ApiError> {
    let page = params.page()?;
    let mut conn = state.store.conn().await?;
    let (rows, next) = api_keys::list_manageable(&mut conn, &principal.key_id, &page).await?;
    Ok(Json(List::new(rows, next, ApiKeyView::from)))
}

/// Revokes a key: its secret stops working at once. A key can revoke
/// itself; otherwise this needs `admin` on every space the key has a role
/// on. The last key with `admin` on `root` cannot be revoked.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, body = ApiKeyView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyView>, ApiError> {
    let mut tx = state.store.begin().await?;
    let key = api_keys::get(&mut tx, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no API key {id:?}")))?;
    if key.id != principal.key_id {
        require_manages(&mut tx, &principal, &key.roles).await?;
    }
    let is_root_admin = key
        .roles
        .iter()
        .any(|g| g.space == ROOT && g.role == Role::Admin);
    if key.revoked_at.is_none()
        && is_root_admin
        && api_keys::active_holders_locked(&mut tx, ROOT, Role::Admin)
            .await?
            .iter()
            .all(|holder| *holder == key.id)
    {
        return Err(ApiError::conflict(format!(
            "{id:?} is the last key with admin on root; create another admin key before revoking it"
        )));
    }
    let now = Millis::now();
    let revoked = api_keys::revoke(&mut tx, &id, now)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no API key {id:?}")))?;
    principal
        .audit(
            &mut tx,
            "api_key.revoke",
            Target {
                kind: "api_key",
                id: &id,
                space: None,
            },
            json!({ "name": revoked.name }),
        )
        .await?;
    tx.commit().await?;
    tracing::info!(api_key.id = %id, "API key revoked");
    Ok(Json(revoked.into()))
}

async fn require_manages(
    conn: &mut Conn,
    principal: &Principal,
    roles: &[Grant],
) -> Result<(), ApiError> {
    for grant in roles {
        let ancestry = spaces::ancestry(conn, &grant.space).await?;
        if !principal.allows(Role::Admin, &ancestry) {
            return Err(forbidden(Role::Admin, &grant.space));
        }
    }
    Ok(())
}
