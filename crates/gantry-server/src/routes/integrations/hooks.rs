//! The project hooks Gantry keeps for an integration: what it last found
//! on each project, and a repair of all of them now.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_domain::Role;
use gantry_store::project_hooks;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::routes::integrations::authorized;
use crate::state::AppState;
use crate::views::timestamp;

/// The hook of one project.
#[derive(Serialize, ToSchema)]
pub struct HookView {
    pub project_id: i64,
    pub path: String,
    /// GitLab's id of the hook, once Gantry made or found it.
    pub hook_id: Option<i64>,
    /// `ok`, `missing` (not there, or not checked yet), `drifted` (its
    /// settings differ and could not be repaired yet), `forbidden` (the
    /// token's user is not a Maintainer of the project: add the hook by
    /// hand) or `unmanaged` (`manage_hooks` is off).
    pub state: String,
    pub checked_at: Option<String>,
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct HooksView {
    /// The webhook endpoint every hook points at.
    pub webhook_endpoint: String,
    pub manage_hooks: bool,
    pub items: Vec<HookView>,
}

async fn hooks_view(
    state: &AppState,
    principal: &Principal,
    id: &str,
    needed: Role,
) -> Result<HooksView, ApiError> {
    let mut conn = state.store.conn().await?;
    let (integration, _) = authorized(&mut conn, principal, id, Some(needed)).await?;
    let found = project_hooks::list(&mut conn, id).await?;
    let mut items: Vec<HookView> = project_hooks::projects(&mut conn, id)
        .await?
        .into_iter()
        .map(
            |(project_id, path)| match found.iter().find(|h| h.project_id == project_id) {
                Some(hook) => HookView {
                    project_id,
                    path: hook.path.clone(),
                    hook_id: hook.hook_id,
                    state: hook.state.clone(),
                    checked_at: Some(timestamp(hook.checked_at)),
                    error: hook.error.clone(),
                },
                None => HookView {
                    project_id,
                    path,
                    hook_id: None,
                    state: if integration.manage_hooks {
                        "missing"
                    } else {
                        "unmanaged"
                    }
                    .to_owned(),
                    checked_at: None,
                    error: None,
                },
            },
        )
        .collect();
    items.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(HooksView {
        webhook_endpoint: super::webhook_endpoint(state, id),
        manage_hooks: integration.manage_hooks,
        items,
    })
}

/// The hook of every project the integration's stacks use. Needs `read`.
#[utoipa::path(get, path = "/api/v1/integrations/gitlab/{id}/hooks", tag = "integrations", security(("bearer" = [])),
    responses((status = 200, body = HooksView), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<HooksView>, ApiError> {
    Ok(Json(hooks_view(&state, &principal, &id, Role::Read).await?))
}

/// Queues a check and repair of every project's hook now (202; the list
/// shows the outcome once it ran). Needs `admin`.
#[utoipa::path(post, path = "/api/v1/integrations/gitlab/{id}/hooks/sync", tag = "integrations", security(("bearer" = [])),
    responses((status = 202, body = HooksView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn sync(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<HooksView>), ApiError> {
    let view = hooks_view(&state, &principal, &id, Role::Admin).await?;
    let mut tx = state.store.begin().await?;
    crate::upkeep::queue_sync_all(&mut tx, &id, false, None).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}
