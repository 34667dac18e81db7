//! GitLab integrations: create with a token check, list by visibility,
//! details for admins only, change, rotate the webhook secret, delete.
//! Every change and every view of details is audited.

pub mod hooks;
mod input;
mod view;

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_domain::Role;
use gantry_store::integrations::{self, Integration, SaveIntegrationError, webhook_secret_context};
use gantry_store::outbox;
use gantry_store::spaces::ROOT;
use gantry_store::{Conn, Millis, crypto};
use secrecy::SecretString;
use serde_json::json;

use crate::auth::{Guard, Principal, Standing, Target};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::fields::{labels, named, space_or_root};
use crate::state::AppState;
use crate::views::{List, ListParams};

pub use input::{CreateIntegration, DeleteParams, RotateParams, UpdateIntegration};
use input::{
    MAX_GRACE, api_token, check_token, description, facts, host_url, rotation_days, user_facing_url,
};
use view::{Details, view};
pub use view::{IntegrationView, webhook_endpoint};

async fn health(state: &AppState, id: &str) -> Result<outbox::Health, ApiError> {
    let mut conn = state.store.conn().await?;
    Ok(outbox::health(&mut conn, id).await?)
}

pub(crate) fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no GitLab integration {id:?} that you can see"))
}

/// The space whose roles govern an integration: `root` for the default.
pub(crate) fn governing_space(integration: &Integration) -> &str {
    if integration.is_default {
        ROOT
    } else {
        &integration.space_id
    }
}

/// Loads an integration on which the caller holds `needed` (`None`: that
/// it may see it), by the one authorization rule; the default integration
/// is listed to everyone.
pub(crate) async fn authorized(
    conn: &mut Conn,
    principal: &Principal,
    id: &str,
    needed: Option<Role>,
) -> Result<(Integration, Standing), ApiError> {
    let integration = integrations::get(conn, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let guard = Guard {
        space: governing_space(&integration),
        listed_to_all: integration.is_default,
    };
    let standing = principal
        .authorize(conn, guard, needed, || not_found(id))
        .await?;
    Ok((integration, standing))
}

fn reveal(state: &AppState, integration: &Integration) -> Result<SecretString, ApiError> {
    state
        .keyring
        .decrypt(&webhook_secret_context(&integration.id), &integration.webhook_secret_sealed)
        .map_err(|error| {
            tracing::error!(integration.id = %integration.id, %error, "cannot open the webhook secret");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the webhook secret cannot be decrypted with this server's master key; see the server log",
            )
        })
}

fn target(integration: &Integration) -> Target<'_> {
    Target {
        kind: "integration",
        id: &integration.id,
        space: Some(&integration.space_id),
    }
}

/// Creates an integration after checking its token with GitLab. Needs
/// `admin` on its space (`root` for the default integration).
#[utoipa::path(post, path = "/api/v1/integrations/gitlab", tag = "integrations", security(("bearer" = [])),
    request_body = CreateIntegration,
    responses((status = 201, body = IntegrationView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateIntegration>,
) -> Result<(StatusCode, Json<IntegrationView>), ApiError> {
    let (name, id) = named(&body.name)?;
    let space = space_or_root(body.space.as_deref());
    if body.default && space != ROOT {
        return Err(ApiError::invalid(format!(
            "the default integration must live in space \"root\", not {space:?}; leave out `space` or set `default` to false"
        )));
    }
    let api_host_url = host_url("api_host_url", &body.api_host_url)?;
    let user_facing_host_url = match &body.user_facing_host_url {
        Some(raw) => user_facing_url(raw)?,
        None => api_host_url.clone(),
    };
    let labels = labels(body.labels)?;
    let description = description(body.description)?;
    let token = api_token(&body.api_token)?;
    let rotate_days = rotation_days(body.rotate_token_days_before_expiry.unwrap_or(0))?;

    // Cheap refusals first, so a bad request never reaches GitLab.
    {
        let mut conn = state.store.conn().await?;
        principal
            .may_create_in(&mut conn, &space, Role::Admin)
            .await?;
        if integrations::get(&mut conn, id.as_str()).await?.is_some() {
            return Err(SaveIntegrationError::IdTaken(id.as_str().to_owned()).into());
        }
        if body.default
            && let Some(existing) = integrations::default(&mut conn).await?
        {
            return Err(SaveIntegrationError::DefaultTaken(format!("{:?}", existing.id)).into());
        }
    }
    input::known_pool(&state, &principal, &user_facing_host_url).await?;
    let (token_facts, warnings) =
        facts(check_token(&state, &api_host_url, &user_facing_host_url, token.clone()).await?)?;

    let now = Millis::now();
    let secret = crypto::random_secret("");
    let integration = Integration {
        id: id.as_str().to_owned(),
        name: name.as_str().to_owned(),
        space_id: space,
        is_default: body.default,
        api_host_url,
        user_facing_host_url,
        labels,
        description,
        token_sealed: state
            .keyring
            .encrypt(&integrations::api_token_context(id.as_str()), &token),
        token: token_facts,
        warnings,
        webhook_secret_sealed: state
            .keyring
            .encrypt(&webhook_secret_context(id.as_str()), &secret),
        previous_secret_sealed: None,
        previous_secret_expires_at: None,
        manage_hooks: body.manage_hooks.unwrap_or(true),
        rotate_token_days_before_expiry: rotate_days,
        token_checked_at: Some(now.0),
        token_rotation_started_at: None,
        created_at: now.0,
        updated_at: now.0,
    };
    let mut tx = state.store.begin().await?;
    integrations::insert(&mut tx, &integration).await?;
    let detail = json!({
        "name": integration.name,
        "default": integration.is_default,
        "api_host_url": integration.api_host_url,
        "token_user": integration.token.username,
    });
    principal
        .audit(&mut tx, "integration.create", target(&integration), detail)
        .await?;
    tx.commit().await?;
    tracing::info!(integration.id = %integration.id, integration.space = %integration.space_id, "GitLab integration created");
    Ok((
        StatusCode::CREATED,
        Json(view(
            &state,
            integration,
            Details::Shown(secret),
            &outbox::Health::default(),
        )),
    ))
}

/// The integrations the caller can see, newest first, without webhook details.
#[utoipa::path(get, path = "/api/v1/integrations/gitlab", tag = "integrations", security(("bearer" = [])),
    params(ListParams), responses((status = 200, body = List<IntegrationView>), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<List<IntegrationView>>, ApiError> {
    let page = params.page()?;
    let mut conn = state.store.conn().await?;
    let (rows, next) = integrations::list_visible(&mut conn, &principal.key_id, &page).await?;
    let healths: std::collections::HashMap<String, outbox::Health> =
        outbox::all_health(&mut conn).await?.into_iter().collect();
    Ok(Json(List::new(rows, next, |row| {
        let health = healths.get(&row.id).cloned().unwrap_or_default();
        view(&state, row, Details::Hidden, &health)
    })))
}

/// One integration; admins also see its webhook endpoint and secret, and
/// that view is audited.
#[utoipa::path(get, path = "/api/v1/integrations/gitlab/{id}", tag = "integrations", security(("bearer" = [])),
    responses((status = 200, body = IntegrationView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<IntegrationView>, ApiError> {
    let mut tx = state.store.begin().await?;
    let (integration, standing) = authorized(&mut tx, &principal, &id, None).await?;
    if !principal.holds(Role::Admin, &standing) {
        let health = health(&state, &integration.id).await?;
        return Ok(Json(view(&state, integration, Details::Hidden, &health)));
    }
    let secret = reveal(&state, &integration)?;
    principal
        .audit(
            &mut tx,
            "integration.view_details",
            target(&integration),
            json!({}),
        )
        .await?;
    tx.commit().await?;
    let health = health(&state, &integration.id).await?;
    Ok(Json(view(
        &state,
        integration,
        Details::Shown(secret),
        &health,
    )))
}

/// Changes an integration. The name is immutable (422 on a new one); a new
/// token, or a new API host, is checked with GitLab first.
#[utoipa::path(patch, path = "/api/v1/integrations/gitlab/{id}", tag = "integrations", security(("bearer" = [])),
    request_body = UpdateIntegration,
    responses((status = 200, body = IntegrationView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateIntegration>,
) -> Result<Json<IntegrationView>, ApiError> {
    let mut conn = state.store.conn().await?;
    let (current, _) = authorized(&mut conn, &principal, &id, Some(Role::Admin)).await?;
    if let Some(name) = &body.name
        && name.trim() != current.name
    {
        return Err(ApiError::invalid(format!(
            "`name` is immutable: the webhook endpoint is built from it; create a new integration to use the name {:?}",
            name.trim()
        )));
    }
    // Every refusal that needs no GitLab comes first.
    let (planned, _) = changes(&mut conn, &principal, &current, &body).await?;
    let new_token = body.api_token.as_ref().map(api_token).transpose()?;
    drop(conn);
    input::known_pool(&state, &principal, &planned.user_facing_host_url).await?;
    // A new host comes with a new token (`changes`), so only a new token
    // is checked, on the host it is for. This may take seconds.
    let checked = match new_token {
        Some(token) => {
            let found = facts(
                check_token(
                    &state,
                    &planned.api_host_url,
                    &planned.user_facing_host_url,
                    token.clone(),
                )
                .await?,
            )?;
            Some((token, found))
        }
        None => None,
    };
    let mut tx = state.store.begin().await?;
    // The row as it is now: what changed meanwhile (a rotated webhook
    // secret, another field) stays; only the fields asked for are set.
    let (fresh, _) = authorized(&mut tx, &principal, &id, Some(Role::Admin)).await?;
    let (mut next, mut changed) = changes(&mut tx, &principal, &fresh, &body).await?;
    let token_checked = checked.is_some();
    if let Some((token, (token_facts, warnings))) = checked {
        if next.api_host_url != planned.api_host_url {
            return Err(ApiError::conflict(format!(
                "integration {id:?} moved to another API host while the token was checked; send the request again"
            )));
        }
        next.token_sealed = state
            .keyring
            .encrypt(&integrations::api_token_context(&id), &token);
        next.token = token_facts;
        next.warnings = warnings;
        // A new token ends any rotation left unfinished.
        next.token_rotation_started_at = None;
        next.token_checked_at = Some(Millis::now().0);
        changed.push("api_token");
    }
    next.updated_at = Millis::now().0;
    integrations::update(&mut tx, &next).await?;
    if changed.contains(&"manage_hooks") {
        crate::upkeep::queue_sync_all(&mut tx, &id, false, None).await?;
    }
    if token_checked {
        // GitLab accepts the token again: its paused writes resume.
        outbox::mark_healthy(&mut tx, &id).await?;
    }
    principal
        .audit(
            &mut tx,
            "integration.update",
            target(&next),
            json!({ "changed": changed }),
        )
        .await?;
    tx.commit().await?;
    state.webhook_secrets.forget(&id);
    tracing::info!(integration.id = %id, changed = ?changed, "GitLab integration updated");
    let secret = reveal(&state, &next)?;
    let health = health(&state, &next.id).await?;
    Ok(Json(view(&state, next, Details::Shown(secret), &health)))
}

/// The integration as the request would leave it, and the fields that
/// changed; every rule but the token check, which asks GitLab.
async fn changes(
    conn: &mut Conn,
    principal: &Principal,
    current: &Integration,
    body: &UpdateIntegration,
) -> Result<(Integration, Vec<&'static str>), ApiError> {
    let mut next = current.clone();
    let mut changed = Vec::new();
    if let Some(space) = body.space.as_deref().map(str::trim)
        && space != next.space_id
    {
        principal.may_create_in(conn, space, Role::Admin).await?;
        next.space_id = space.to_owned();
        changed.push("space");
    }
    if let Some(default) = body.default
        && default != next.is_default
    {
        principal.may_create_in(conn, ROOT, Role::Admin).await?;
        next.is_default = default;
        changed.push("default");
    }
    if next.is_default && next.space_id != ROOT {
        return Err(ApiError::invalid(format!(
            "the default integration must live in space \"root\", not {:?}",
            next.space_id
        )));
    }
    if let Some(raw) = &body.api_host_url {
        let url = host_url("api_host_url", raw)?;
        if url != next.api_host_url && body.api_token.is_none() {
            return Err(ApiError::invalid(format!(
                "`api_host_url` changes only with a new `api_token` in the same request: the stored \
                 token is never sent to a host it was not given for; send the token for {url}"
            )));
        }
        if url != next.api_host_url {
            // Links followed the API host unless they were set apart.
            if next.user_facing_host_url == next.api_host_url && body.user_facing_host_url.is_none()
            {
                next.user_facing_host_url = url.clone();
            }
            next.api_host_url = url;
            changed.push("api_host_url");
        }
    }
    if let Some(raw) = &body.user_facing_host_url {
        let url = user_facing_url(raw)?;
        if url != next.user_facing_host_url {
            next.user_facing_host_url = url;
            changed.push("user_facing_host_url");
        }
    }
    if let Some(raw) = &body.labels {
        next.labels = labels(raw.clone())?;
        changed.push("labels");
    }
    if let Some(raw) = &body.description {
        next.description = description(raw.clone())?;
        changed.push("description");
    }
    if let Some(manage) = body.manage_hooks
        && manage != next.manage_hooks
    {
        next.manage_hooks = manage;
        changed.push("manage_hooks");
    }
    if let Some(days) = body.rotate_token_days_before_expiry {
        next.rotate_token_days_before_expiry = rotation_days(days)?;
        changed.push("rotate_token_days_before_expiry");
    }
    if next.is_default
        && let Some(existing) = integrations::default(conn).await?
        && existing.id != next.id
    {
        return Err(SaveIntegrationError::DefaultTaken(format!("{:?}", existing.id)).into());
    }
    Ok((next, changed))
}

/// Deletes an integration. Needs `admin` on its space.
#[utoipa::path(delete, path = "/api/v1/integrations/gitlab/{id}", tag = "integrations", security(("bearer" = [])),
    params(DeleteParams),
    responses((status = 200, body = IntegrationView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<DeleteParams>,
) -> Result<Json<IntegrationView>, ApiError> {
    let mut tx = state.store.begin().await?;
    let (integration, _) = authorized(&mut tx, &principal, &id, Some(Role::Admin)).await?;
    let users = gantry_store::stacks::using_integration(&mut tx, &id, 10_000).await?;
    if !users.is_empty() && !params.force {
        let shown: Vec<&str> = users.iter().take(5).map(String::as_str).collect();
        let more = if users.len() > 5 { ", …" } else { "" };
        return Err(ApiError::conflict(format!(
            "stacks still use integration {id:?} ({}{more}); move them to another integration, or delete with ?force=true \
             to leave them without one",
            shown.join(", ")
        )));
    }
    integrations::delete(&mut tx, &id).await?;
    principal
        .audit(
            &mut tx,
            "integration.delete",
            target(&integration),
            json!({ "force": params.force, "stacks_left_without_integration": users.len() }),
        )
        .await?;
    tx.commit().await?;
    state.webhook_secrets.forget(&id);
    tracing::info!(integration.id = %id, "GitLab integration deleted");
    Ok(Json(view(
        &state,
        integration,
        Details::Hidden,
        &outbox::Health::default(),
    )))
}

/// Makes a new webhook secret. The previous one keeps working for
/// `grace_seconds` (default a day) so hooks can be updated without dropping
/// deliveries; a secret from before that is dropped at once.
#[utoipa::path(post, path = "/api/v1/integrations/gitlab/{id}/webhook-secret/rotate", tag = "integrations",
    security(("bearer" = [])), params(RotateParams),
    responses((status = 200, body = IntegrationView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<RotateParams>,
) -> Result<Json<IntegrationView>, ApiError> {
    let grace = match params.grace_seconds {
        Some(seconds) if Duration::from_secs(seconds) > MAX_GRACE => {
            return Err(ApiError::invalid(format!(
                "`grace_seconds` is {seconds}; it must be between 0 and {}",
                MAX_GRACE.as_secs()
            )));
        }
        Some(seconds) => Duration::from_secs(seconds),
        None => state.config.webhook_secret_grace,
    };
    let mut tx = state.store.begin().await?;
    let (mut integration, _) = authorized(&mut tx, &principal, &id, Some(Role::Admin)).await?;
    let now = Millis::now();
    let secret = crypto::random_secret("");
    integration.previous_secret_sealed = Some(std::mem::replace(
        &mut integration.webhook_secret_sealed,
        state.keyring.encrypt(&webhook_secret_context(&id), &secret),
    ));
    integration.previous_secret_expires_at = Some(now.plus(grace).0);
    integration.updated_at = now.0;
    integrations::update(&mut tx, &integration).await?;
    // Every managed hook gets the new secret as its token.
    crate::upkeep::queue_sync_all(&mut tx, &id, true, None).await?;
    let detail = json!({ "grace_seconds": grace.as_secs() });
    principal
        .audit(
            &mut tx,
            "integration.rotate_webhook_secret",
            target(&integration),
            detail,
        )
        .await?;
    tx.commit().await?;
    state.webhook_secrets.forget(&id);
    tracing::info!(integration.id = %id, grace_seconds = grace.as_secs(), "webhook secret rotated");
    let health = health(&state, &integration.id).await?;
    Ok(Json(view(
        &state,
        integration,
        Details::Shown(secret),
        &health,
    )))
}
