//! GitLab integrations (DESIGN.md section 2): create with a token check,
//! list by visibility, details for admins only, change, rotate the webhook
//! secret, delete. Every change and every view of details is audited.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_domain::{Name, Role};
use gantry_gitlab::GitLabError;
use gantry_gitlab::token::{self, TokenCheckError};
use gantry_store::integrations::{self, Integration, SaveIntegrationError, TokenFacts};
use gantry_store::outbox;
use gantry_store::spaces::{self, ROOT};
use gantry_store::{Conn, Millis, audit, crypto};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Principal, forbidden};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::views::{List, ListParams, timestamp};

const MAX_LABELS: usize = 50;
const MAX_LABEL_CHARS: usize = 100;
const MAX_DESCRIPTION_CHARS: usize = 20_000;
/// The longest grace period a rotation may ask for: a week.
const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegration {
    /// Free text, unique and immutable; the id is its slug.
    pub name: String,
    /// Defaults to `root`.
    pub space: Option<String>,
    /// The default integration, available to every space; only in `root`.
    #[serde(default)]
    pub default: bool,
    /// Where Gantry calls the GitLab API, such as `https://gitlab.com`.
    pub api_host_url: String,
    /// Shown to users and used in links; defaults to `api_host_url`. May be
    /// `private://<agent-pool>`.
    pub user_facing_host_url: Option<String>,
    /// A GitLab access token with the `api` scope. Write-only.
    #[schema(value_type = String, format = Password)]
    pub api_token: SecretString,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Markdown.
    #[serde(default)]
    pub description: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIntegration {
    /// Immutable: only the current name is accepted.
    pub name: Option<String>,
    pub space: Option<String>,
    pub default: Option<bool>,
    pub api_host_url: Option<String>,
    pub user_facing_host_url: Option<String>,
    /// A new token; checked with GitLab like on create. Write-only.
    #[schema(value_type = Option<String>, format = Password)]
    pub api_token: Option<SecretString>,
    pub labels: Option<Vec<String>>,
    pub description: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Delete even while stacks use the integration.
    #[serde(default)]
    pub force: bool,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RotateParams {
    /// How long the previous secret keeps working: 0 to 604800 seconds,
    /// default 86400 (a day).
    pub grace_seconds: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenUserView {
    pub id: i64,
    pub username: String,
}

/// Whether GitLab accepts the integration's token, and its writes waiting
/// to be delivered.
#[derive(Serialize, ToSchema)]
pub struct HealthView {
    /// `ok`, or `token_rejected` once GitLab answered 401: the
    /// integration's writes to GitLab are paused until a new token is set.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Writes to GitLab (statuses, comments, deployments) not yet delivered.
    pub pending_writes: i64,
}

fn health_view(health: &outbox::Health) -> HealthView {
    HealthView {
        status: if health.unhealthy_since.is_some() {
            "token_rejected"
        } else {
            "ok"
        },
        reason: health.reason.clone(),
        since: health.unhealthy_since.map(timestamp),
        pending_writes: health.pending,
    }
}

async fn health(state: &AppState, id: &str) -> Result<outbox::Health, ApiError> {
    let mut conn = state.store.conn().await?;
    Ok(outbox::health(&mut conn, id).await?)
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    /// Empty when GitLab was too old to tell.
    pub scopes: Vec<String>,
    /// A date as GitLab gives it, or `null` for none.
    pub expires_at: Option<String>,
    pub user: TokenUserView,
}

/// An integration. `webhook_endpoint` and `webhook_secret` are present only
/// for admins of its space (of `root` for the default integration), and
/// only on single-integration answers, never in lists.
#[derive(Serialize, ToSchema)]
pub struct IntegrationView {
    pub id: String,
    pub name: String,
    pub space: String,
    pub default: bool,
    pub api_host_url: String,
    pub user_facing_host_url: String,
    pub labels: Vec<String>,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Until when the secret before the last rotation is still accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_webhook_secret_valid_until: Option<String>,
    pub token: TokenView,
    pub warnings: Vec<String>,
    pub health: HealthView,
    pub created_at: String,
    pub updated_at: String,
}

/// What a view may show: everything, or everything but the webhook details.
enum Details {
    Shown(SecretString),
    Hidden,
}

fn view(
    state: &AppState,
    integration: Integration,
    details: Details,
    health: &outbox::Health,
) -> IntegrationView {
    let (webhook_endpoint, webhook_secret) = match details {
        Details::Shown(secret) => (
            Some(webhook_endpoint(state, &integration.id)),
            Some(secret.expose_secret().to_owned()),
        ),
        Details::Hidden => (None, None),
    };
    let previous_valid_until = match (&webhook_secret, integration.previous_secret_expires_at) {
        (Some(_), Some(until)) if Millis::now().0 < until => Some(timestamp(until)),
        _ => None,
    };
    IntegrationView {
        id: integration.id,
        name: integration.name,
        space: integration.space_id,
        default: integration.is_default,
        api_host_url: integration.api_host_url,
        user_facing_host_url: integration.user_facing_host_url,
        labels: integration.labels,
        description: integration.description,
        webhook_endpoint,
        webhook_secret,
        previous_webhook_secret_valid_until: previous_valid_until,
        token: TokenView {
            scopes: integration.token.scopes,
            expires_at: integration.token.expires_at,
            user: TokenUserView {
                id: integration.token.user_id,
                username: integration.token.username,
            },
        },
        warnings: integration.warnings,
        health: health_view(health),
        created_at: timestamp(integration.created_at),
        updated_at: timestamp(integration.updated_at),
    }
}

pub fn webhook_endpoint(state: &AppState, id: &str) -> String {
    format!(
        "{}/webhooks/gitlab/{id}",
        state.config.public_url.trim_end_matches('/')
    )
}

pub fn token_context(id: &str) -> String {
    format!("integration:{id}:api_token")
}

pub fn webhook_secret_context(id: &str) -> String {
    format!("integration:{id}:webhook_secret")
}

/// A host URL as stored: trimmed, without a trailing slash, http(s) with a
/// host and nothing that would leak (credentials) or be dropped (query).
fn host_url(field: &str, raw: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim().trim_end_matches('/');
    // A URL with `user:password@` would put a secret into the error.
    let shown = if raw.contains('@') {
        "(not shown: it holds an @)".to_owned()
    } else {
        format!("{raw:?}")
    };
    let bad = |why: &str| ApiError::invalid(format!("`{field}` {shown} {why}"));
    let url = url::Url::parse(trimmed).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad(
            "must be an http:// or https:// URL with a host, such as https://gitlab.com",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not hold credentials; pass the token as `api_token`",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(trimmed.to_owned())
}

fn user_facing_url(raw: &str) -> Result<String, ApiError> {
    if let Some(pool) = raw.trim().strip_prefix("private://") {
        let pool = pool.trim_end_matches('/');
        if pool.is_empty()
            || !pool
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::invalid(format!(
                "`user_facing_host_url` {raw:?}: a private URL is private://<agent-pool>, the pool named by letters, digits, - and _"
            )));
        }
        return Ok(format!("private://{pool}"));
    }
    host_url("user_facing_host_url", raw)
}

/// Labels: trimmed, de-duplicated, at most 50 of 1 to 100 characters.
pub(crate) fn labels(raw: Vec<String>) -> Result<Vec<String>, ApiError> {
    if raw.len() > MAX_LABELS {
        return Err(ApiError::invalid(format!(
            "`labels` has {} labels; at most {MAX_LABELS} are allowed",
            raw.len()
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for label in raw {
        let label = label.trim().to_owned();
        if label.is_empty() || label.chars().count() > MAX_LABEL_CHARS {
            return Err(ApiError::invalid(format!(
                "`labels`: {label:?} must be 1 to {MAX_LABEL_CHARS} characters"
            )));
        }
        if !out.contains(&label) {
            out.push(label);
        }
    }
    Ok(out)
}

fn description(raw: String) -> Result<String, ApiError> {
    if raw.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::invalid(format!(
            "`description` is longer than {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(raw)
}

fn api_token(raw: &SecretString) -> Result<SecretString, ApiError> {
    let token = raw.expose_secret().trim();
    if token.is_empty() {
        return Err(ApiError::invalid(
            "`api_token` is empty; pass a GitLab access token with the `api` scope",
        ));
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(ApiError::invalid(
            "`api_token` holds spaces or control characters; copy the token again",
        ));
    }
    Ok(SecretString::from(token.to_owned()))
}

/// Asks GitLab about the token. A bad token is 422 and says why; a GitLab
/// that cannot be asked is 502.
async fn check_token(
    state: &AppState,
    api_host_url: &str,
    token: SecretString,
) -> Result<gantry_gitlab::token::TokenFacts, ApiError> {
    let client = state
        .gitlab
        .client(api_host_url, token)
        .map_err(|e| ApiError::invalid(format!("`api_host_url`: {e}")))?;
    let today = time::OffsetDateTime::now_utc().date();
    token::check(&client, today)
        .await
        .map_err(|error| match error {
            TokenCheckError::Refused(refused) => {
                ApiError::invalid(format!("`api_token`: {refused}"))
            }
            TokenCheckError::GitLab(error @ GitLabError::NotFound { .. }) => ApiError::invalid(
                format!("`api_host_url`: {error}; is {api_host_url} a GitLab instance?"),
            ),
            TokenCheckError::GitLab(
                error @ (GitLabError::Forbidden { .. }
                | GitLabError::Invalid { .. }
                | GitLabError::Decode { .. }),
            ) => ApiError::invalid(format!("`api_token`: the token check failed: {error}")),
            TokenCheckError::GitLab(error) => {
                ApiError::bad_gateway(format!("{error}; check `api_host_url` and try again"))
            }
        })
}

fn facts(checked: gantry_gitlab::token::TokenFacts) -> (TokenFacts, Vec<String>) {
    (
        TokenFacts {
            scopes: checked.scopes,
            expires_at: checked.expires_at,
            user_id: i64::try_from(checked.user_id).unwrap_or(i64::MAX),
            username: checked.username,
        },
        checked.warnings,
    )
}

fn save_error(err: SaveIntegrationError) -> ApiError {
    match err {
        SaveIntegrationError::IdTaken(_) | SaveIntegrationError::DefaultTaken(_) => {
            ApiError::conflict(err.to_string())
        }
        SaveIntegrationError::Store(err) => err.into(),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no GitLab integration {id:?} that you can see"))
}

/// The space whose roles govern an integration: `root` for the default.
fn governing_space(integration: &Integration) -> &str {
    if integration.is_default {
        ROOT
    } else {
        &integration.space_id
    }
}

/// Loads an integration the caller can see, and whether the caller is an
/// admin of it (sees details, may change it).
async fn visible(
    conn: &mut Conn,
    principal: &Principal,
    id: &str,
) -> Result<(Integration, bool), ApiError> {
    let integration = integrations::get(conn, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let ancestry = spaces::ancestry(conn, governing_space(&integration)).await?;
    let admin = principal.allows(Role::Admin, &ancestry);
    let sees = integration.is_default || principal.allows(Role::Read, &ancestry);
    if !sees {
        return Err(not_found(id));
    }
    Ok((integration, admin))
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

async fn record(
    conn: &mut Conn,
    principal: &Principal,
    action: &str,
    integration: &Integration,
    detail: serde_json::Value,
    now: Millis,
) -> Result<(), ApiError> {
    audit::record(
        conn,
        &audit::NewAuditEntry {
            actor: &principal.actor(),
            action,
            target_kind: "integration",
            target_id: &integration.id,
            space_id: Some(&integration.space_id),
            detail,
        },
        now,
    )
    .await?;
    Ok(())
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
    let name = Name::parse(&body.name).map_err(|e| ApiError::invalid(e.to_string()))?;
    let id = name.slug().map_err(|e| ApiError::invalid(e.to_string()))?;
    let space = body
        .space
        .as_deref()
        .map(str::trim)
        .unwrap_or(ROOT)
        .to_owned();
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

    // Cheap refusals first, so a bad request never reaches GitLab.
    {
        let mut conn = state.store.conn().await?;
        let ancestry = spaces::ancestry(&mut conn, &space).await?;
        if ancestry.is_empty() {
            return Err(ApiError::invalid(format!(
                "`space` {space:?} does not exist"
            )));
        }
        if !principal.allows(Role::Admin, &ancestry) {
            return Err(forbidden(Role::Admin, &space));
        }
        if integrations::get(&mut conn, id.as_str()).await?.is_some() {
            return Err(save_error(SaveIntegrationError::IdTaken(
                id.as_str().to_owned(),
            )));
        }
        if body.default
            && let Some(existing) = integrations::default(&mut conn).await?
        {
            return Err(save_error(SaveIntegrationError::DefaultTaken(format!(
                "{:?}",
                existing.id
            ))));
        }
    }
    let (token_facts, warnings) = facts(check_token(&state, &api_host_url, token.clone()).await?);

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
        token_sealed: state.keyring.encrypt(&token_context(id.as_str()), &token),
        token: token_facts,
        warnings,
        webhook_secret_sealed: state
            .keyring
            .encrypt(&webhook_secret_context(id.as_str()), &secret),
        previous_secret_sealed: None,
        previous_secret_expires_at: None,
        created_at: now.0,
        updated_at: now.0,
    };
    let mut tx = state.store.begin().await?;
    integrations::insert(&mut tx, &integration)
        .await
        .map_err(save_error)?;
    let detail = json!({
        "name": integration.name,
        "default": integration.is_default,
        "api_host_url": integration.api_host_url,
        "token_user": integration.token.username,
    });
    record(
        &mut tx,
        &principal,
        "integration.create",
        &integration,
        detail,
        now,
    )
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
    let (integration, admin) = visible(&mut tx, &principal, &id).await?;
    if !admin {
        let health = health(&state, &integration.id).await?;
        return Ok(Json(view(&state, integration, Details::Hidden, &health)));
    }
    let secret = reveal(&state, &integration)?;
    record(
        &mut tx,
        &principal,
        "integration.view_details",
        &integration,
        json!({}),
        Millis::now(),
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
    let (current, admin) = visible(&mut conn, &principal, &id).await?;
    if !admin {
        return Err(forbidden(Role::Admin, governing_space(&current)));
    }
    if let Some(name) = &body.name
        && name.trim() != current.name
    {
        return Err(ApiError::invalid(format!(
            "`name` is immutable: the webhook endpoint is built from it; create a new integration to use the name {:?}",
            name.trim()
        )));
    }
    let mut next = current.clone();
    let mut changed: Vec<&str> = Vec::new();
    if let Some(space) = &body.space {
        let space = space.trim();
        if space != next.space_id {
            let ancestry = spaces::ancestry(&mut conn, space).await?;
            if ancestry.is_empty() {
                return Err(ApiError::invalid(format!(
                    "`space` {space:?} does not exist"
                )));
            }
            if !principal.allows(Role::Admin, &ancestry) {
                return Err(forbidden(Role::Admin, space));
            }
            next.space_id = space.to_owned();
            changed.push("space");
        }
    }
    if let Some(default) = body.default
        && default != next.is_default
    {
        let root = spaces::ancestry(&mut conn, ROOT).await?;
        if !principal.allows(Role::Admin, &root) {
            return Err(forbidden(Role::Admin, ROOT));
        }
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
    if let Some(raw) = body.labels {
        next.labels = labels(raw)?;
        changed.push("labels");
    }
    if let Some(raw) = body.description {
        next.description = description(raw)?;
        changed.push("description");
    }
    let new_token = body.api_token.as_ref().map(api_token).transpose()?;
    if let Some(existing) = integrations::default(&mut conn).await?
        && next.is_default
        && existing.id != next.id
    {
        return Err(save_error(SaveIntegrationError::DefaultTaken(format!(
            "{:?}",
            existing.id
        ))));
    }
    drop(conn);
    let mut token_checked = false;
    if new_token.is_some() || next.api_host_url != current.api_host_url {
        let token = match new_token {
            Some(token) => {
                next.token_sealed = state.keyring.encrypt(&token_context(&id), &token);
                changed.push("api_token");
                token
            }
            None => state.keyring.decrypt(&token_context(&id), &current.token_sealed).map_err(|error| {
                tracing::error!(integration.id = %id, %error, "cannot open the API token");
                ApiError::invalid("the stored API token cannot be decrypted with this server's master key; send a new `api_token`")
            })?,
        };
        let (token_facts, warnings) = facts(check_token(&state, &next.api_host_url, token).await?);
        next.token = token_facts;
        next.warnings = warnings;
        token_checked = true;
    }
    let now = Millis::now();
    next.updated_at = now.0;
    let mut tx = state.store.begin().await?;
    // The row may have changed while GitLab was asked; the last write wins,
    // as with any PATCH, but a vanished integration is not brought back.
    if integrations::get(&mut tx, &id).await?.is_none() {
        return Err(not_found(&id));
    }
    integrations::update(&mut tx, &next)
        .await
        .map_err(save_error)?;
    if token_checked {
        // GitLab accepts the token again: its paused writes resume.
        outbox::mark_healthy(&mut tx, &id).await?;
    }
    record(
        &mut tx,
        &principal,
        "integration.update",
        &next,
        json!({ "changed": changed }),
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(integration.id = %id, changed = ?changed, "GitLab integration updated");
    let secret = reveal(&state, &next)?;
    let health = health(&state, &next.id).await?;
    Ok(Json(view(&state, next, Details::Shown(secret), &health)))
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
    let (integration, admin) = visible(&mut tx, &principal, &id).await?;
    if !admin {
        return Err(forbidden(Role::Admin, governing_space(&integration)));
    }
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
    let now = Millis::now();
    record(
        &mut tx,
        &principal,
        "integration.delete",
        &integration,
        json!({ "force": params.force, "stacks_left_without_integration": users.len() }),
        now,
    )
    .await?;
    tx.commit().await?;
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
    let (mut integration, admin) = visible(&mut tx, &principal, &id).await?;
    if !admin {
        return Err(forbidden(Role::Admin, governing_space(&integration)));
    }
    let now = Millis::now();
    let secret = crypto::random_secret("");
    integration.previous_secret_sealed = Some(std::mem::replace(
        &mut integration.webhook_secret_sealed,
        state.keyring.encrypt(&webhook_secret_context(&id), &secret),
    ));
    integration.previous_secret_expires_at = Some(now.plus(grace).0);
    integration.updated_at = now.0;
    integrations::update(&mut tx, &integration)
        .await
        .map_err(save_error)?;
    let detail = json!({ "grace_seconds": grace.as_secs() });
    record(
        &mut tx,
        &principal,
        "integration.rotate_webhook_secret",
        &integration,
        detail,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(integration.id = %id, grace_seconds = grace.as_secs(), "webhook secret rotated");
    let health = health(&state, &integration.id).await?;
    Ok(Json(view(
        &state,
        integration,
        Details::Shown(secret),
        &health,
    )))
}
