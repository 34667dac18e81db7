//! Stacks: create with the repository resolved to its GitLab project,
//! list, show, change, delete. `admin` of a stack's space manages it;
//! `read` sees it.

mod input;
mod view;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_domain::{Role, stack};
use gantry_gitlab::{GitLabError, projects, types::MAINTAINER};
use gantry_store::integrations::{self, Integration};
use gantry_store::spaces;
use gantry_store::stacks::{self, SaveStackError, Stack};
use gantry_store::{Conn, Millis};
use serde_json::json;

use crate::auth::{Guard, Principal, Target};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::fields::{labels, named, space_or_root};
use crate::state::AppState;
use crate::views::{List, ListParams};

pub use input::{CreateStack, UpdateStack, repository};
use input::{
    DEFAULT_NO_OUTPUT_TIMEOUT, DEFAULT_RUN_TIMEOUT, Secrets, environment, log_limit, seal_secrets,
    seconds,
};
pub use view::StackView;
use view::view;

/// The integration a stack in `space` may use: the one named, or the
/// default. A space-level integration serves its space and the spaces below.
pub(crate) async fn usable_integration(
    conn: &mut Conn,
    space: &str,
    named: Option<&str>,
) -> Result<Integration, ApiError> {
    let integration = match named {
        Some(id) => integrations::get(conn, id).await?,
        None => integrations::default(conn).await?,
    };
    let Some(integration) = integration else {
        return Err(ApiError::invalid(match named {
            Some(id) => format!("`integration` {id:?} does not exist"),
            None => "there is no default GitLab integration; name one in `integration`".to_owned(),
        }));
    };
    if !integration.is_default {
        let ancestry = spaces::ancestry(conn, space).await?;
        if !ancestry.contains(&integration.space_id) {
            return Err(ApiError::invalid(format!(
                "`integration` {:?} belongs to space {:?} and cannot serve stacks in {space:?}",
                integration.id, integration.space_id
            )));
        }
    }
    Ok(integration)
}

/// Resolves the repository to its GitLab project with the integration's
/// token, and warns when the token's user cannot manage the project.
pub(crate) async fn resolve(
    state: &AppState,
    integration: &Integration,
    repository: &str,
) -> Result<(i64, Vec<String>), ApiError> {
    let client = state.gitlab.client(integration)?;
    let unavailable = |error: GitLabError| ApiError::bad_gateway(format!("{error}; try again"));
    let project = match projects::find(&client, repository).await {
        Ok(project) => project,
        Err(GitLabError::NotFound { .. } | GitLabError::Forbidden { .. }) => {
            return Err(ApiError::invalid(format!(
                "`repository` {repository:?}: GitLab at {} has no such project, or the token of integration {:?} cannot see it",
                integration.api_host_url, integration.id
            )));
        }
        Err(GitLabError::Unauthorized { .. }) => {
            return Err(ApiError::invalid(format!(
                "GitLab rejected the token of integration {:?}; update it with a valid token",
                integration.id
            )));
        }
        Err(error) if error.is_transient() => return Err(unavailable(error)),
        Err(error) => {
            return Err(ApiError::invalid(format!(
                "`repository` {repository:?}: {error}"
            )));
        }
    };
    let project_id = i64::try_from(project.id).map_err(|_| {
        ApiError::bad_gateway(format!(
            "GitLab gave project id {}, too large to store",
            project.id
        ))
    })?;
    let mut warnings = Vec::new();
    let Ok(user_id) = u64::try_from(integration.token.user_id) else {
        warnings.push("the token's user is unknown; check the integration's token".to_owned());
        return Ok((project_id, warnings));
    };
    match projects::access_level(&client, project.id, user_id).await {
        Ok(Some(level)) if level >= MAINTAINER => {}
        Ok(Some(level)) => warnings.push(format!(
            "the token's user {:?} has access level {level} on {}; Gantry needs Maintainer (40) to manage its webhook",
            integration.token.username, project.path_with_namespace
        )),
        Ok(None) => warnings.push(format!(
            "the token's user {:?} is not a member of {}; Gantry needs Maintainer (40) to manage its webhook",
            integration.token.username, project.path_with_namespace
        )),
        Err(error) if error.is_transient() => return Err(unavailable(error)),
        Err(error) => warnings.push(format!("the token user's access could not be checked: {error}")),
    }
    Ok((project_id, warnings))
}

fn target(stack: &Stack) -> Target<'_> {
    Target {
        kind: "stack",
        id: &stack.id,
        space: Some(&stack.space_id),
    }
}

/// Creates a stack. Needs `admin` on its space.
#[utoipa::path(post, path = "/api/v1/stacks", tag = "stacks", security(("bearer" = [])), request_body = CreateStack,
    responses((status = 201, body = StackView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateStack>,
) -> Result<(StatusCode, Json<StackView>), ApiError> {
    let (name, id) = named(&body.name)?;
    let space = space_or_root(body.space.as_deref());
    let repository = repository(&body.repository)?;
    let branch = stack::branch(&body.branch)?;
    let project_root = stack::project_root(&body.project_root)?;
    let globs = stack::globs(&body.additional_project_globs)?;
    let labels = labels(body.labels)?;
    body.vendor.check()?;
    let environment = environment(&body.environment)?;
    let run_timeout = seconds(
        "run_timeout_seconds",
        body.run_timeout_seconds.unwrap_or(DEFAULT_RUN_TIMEOUT),
    )?;
    let no_output_timeout = seconds(
        "no_output_timeout_seconds",
        body.no_output_timeout_seconds
            .unwrap_or(DEFAULT_NO_OUTPUT_TIMEOUT),
    )?;
    let (secret_names, secret_sealed) =
        seal_secrets(&state, id.as_str(), Secrets::All, &body.secret_environment)?;
    let (proposed_names, proposed_sealed) = match &body.proposed_secret_environment {
        Some(raw) => {
            let (names, sealed) = seal_secrets(&state, id.as_str(), Secrets::Proposed, raw)?;
            (Some(names), sealed)
        }
        None => (None, None),
    };

    let integration = {
        let mut conn = state.store.conn().await?;
        principal
            .may_create_in(&mut conn, &space, Role::Admin)
            .await?;
        if stacks::get(&mut conn, id.as_str()).await?.is_some() {
            return Err(SaveStackError::IdTaken(id.as_str().to_owned()).into());
        }
        usable_integration(&mut conn, &space, body.integration.as_deref()).await?
    };
    let (project_id, warnings) = resolve(&state, &integration, &repository).await?;
    let now = Millis::now();
    let stack = Stack {
        id: id.as_str().to_owned(),
        name: name.as_str().to_owned(),
        space_id: space,
        integration_id: Some(integration.id.clone()),
        project_id,
        repository,
        branch,
        project_root,
        additional_project_globs: globs,
        labels,
        autodeploy: body.autodeploy,
        allow_forks: body.allow_forks,
        vendor: body.vendor,
        environment,
        secret_environment_names: secret_names,
        secret_environment_sealed: secret_sealed,
        log_limit_bytes: match body.log_limit_bytes {
            Some(value) => log_limit(value)?,
            None => stacks::DEFAULT_LOG_LIMIT_BYTES,
        },
        proposed_secret_environment_names: proposed_names,
        proposed_secret_environment_sealed: proposed_sealed,
        run_timeout_seconds: run_timeout,
        no_output_timeout_seconds: no_output_timeout,
        created_at: now.0,
        updated_at: now.0,
    };
    let mut tx = state.store.begin().await?;
    stacks::insert(&mut tx, &stack).await?;
    sync_hook(&mut tx, &stack).await?;
    let detail = json!({ "integration": integration.id, "repository": stack.repository, "project_id": project_id });
    principal
        .audit(&mut tx, "stack.create", target(&stack), detail)
        .await?;
    tx.commit().await?;
    tracing::info!(stack.id = %stack.id, gitlab.project_id = project_id, "stack created");
    Ok((StatusCode::CREATED, Json(view(stack, warnings))))
}

/// The stacks the caller can read, newest first.
#[utoipa::path(get, path = "/api/v1/stacks", tag = "stacks", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = List<StackView>), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<List<StackView>>, ApiError> {
    let page = params.page()?;
    let mut conn = state.store.conn().await?;
    let (rows, next) = stacks::list_readable(&mut conn, &principal.key_id, &page).await?;
    Ok(Json(List::new(rows, next, |row| view(row, Vec::new()))))
}

/// A stack the caller holds `needed` on, by the one authorization rule.
pub(crate) async fn authorized(
    conn: &mut Conn,
    principal: &Principal,
    id: &str,
    needed: Role,
) -> Result<Stack, ApiError> {
    let not_found = || ApiError::not_found(format!("no stack {id:?} that you can see"));
    guarded(conn, principal, id, needed, not_found).await
}

/// [`authorized`], answering `not_found` when the caller may not see the
/// stack (a run's routes name the run, not its stack).
pub(crate) async fn guarded(
    conn: &mut Conn,
    principal: &Principal,
    id: &str,
    needed: Role,
    not_found: impl Fn() -> ApiError,
) -> Result<Stack, ApiError> {
    let stack = stacks::get(conn, id).await?.ok_or_else(&not_found)?;
    let guard = Guard {
        space: &stack.space_id,
        listed_to_all: false,
    };
    principal
        .authorize(conn, guard, Some(needed), not_found)
        .await?;
    Ok(stack)
}

#[utoipa::path(get, path = "/api/v1/stacks/{id}", tag = "stacks", security(("bearer" = [])),
    responses((status = 200, body = StackView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<StackView>, ApiError> {
    let mut conn = state.store.conn().await?;
    let stack = authorized(&mut conn, &principal, &id, Role::Read).await?;
    let warnings = hook_warnings(&mut conn, &state, &stack).await?;
    Ok(Json(view(stack, warnings)))
}

/// What a user must do by hand about the stack's project hook: add it,
/// when the integration's token may not manage hooks on the project.
async fn hook_warnings(
    conn: &mut Conn,
    state: &AppState,
    stack: &Stack,
) -> Result<Vec<String>, ApiError> {
    let Some(integration) = &stack.integration_id else {
        return Ok(Vec::new());
    };
    let found = gantry_store::project_hooks::get(conn, integration, stack.project_id).await?;
    Ok(match found {
        Some(hook) if hook.state == "forbidden" => vec![format!(
            "Gantry cannot manage the webhook of {}: the integration's token is not a Maintainer of the project. \
             Add it by hand in GitLab (Settings → Webhooks): URL {}, the integration's webhook secret as Secret token, \
             and the triggers Push events, Tag push events and Merge request events",
            stack.repository,
            crate::routes::integrations::webhook_endpoint(state, integration)
        )],
        _ => Vec::new(),
    })
}

/// Changes a stack. A new repository or integration is resolved with
/// GitLab again. Needs `admin` on its space.
#[utoipa::path(patch, path = "/api/v1/stacks/{id}", tag = "stacks", security(("bearer" = [])), request_body = UpdateStack,
    responses((status = 200, body = StackView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateStack>,
) -> Result<Json<StackView>, ApiError> {
    let mut conn = state.store.conn().await?;
    let current = authorized(&mut conn, &principal, &id, Role::Admin).await?;
    if let Some(name) = &body.name
        && name.trim() != current.name
    {
        return Err(ApiError::invalid(
            "`name` is immutable: the stack id is made from it; create a new stack",
        ));
    }
    // Every refusal that needs no GitLab comes first.
    let mut next = current.clone();
    apply_fields(&state, &id, &mut next, &body)?;
    let repository = body.repository.as_deref().map(repository).transpose()?;
    let mut warnings = Vec::new();
    let integration_changed =
        body.integration.is_some() && body.integration != current.integration_id;
    if integration_changed
        || repository
            .as_ref()
            .is_some_and(|r| *r != current.repository)
        || current.integration_id.is_none()
    {
        let named = body
            .integration
            .as_deref()
            .or(current.integration_id.as_deref());
        let integration = usable_integration(&mut conn, &next.space_id, named).await?;
        drop(conn);
        let repository = repository.unwrap_or_else(|| current.repository.clone());
        let (project_id, found) = resolve(&state, &integration, &repository).await?;
        next.integration_id = Some(integration.id);
        next.repository = repository;
        next.project_id = project_id;
        warnings = found;
    } else {
        drop(conn);
    }
    let mut tx = state.store.begin().await?;
    // The row as it is now: what changed while GitLab was asked stays;
    // only the fields asked for are set.
    let mut fresh = authorized(&mut tx, &principal, &id, Role::Admin).await?;
    apply_fields(&state, &id, &mut fresh, &body)?;
    if (
        fresh.integration_id.as_deref(),
        fresh.repository.as_str(),
        fresh.project_id,
    ) != (
        current.integration_id.as_deref(),
        current.repository.as_str(),
        current.project_id,
    ) {
        return Err(ApiError::conflict(format!(
            "stack {id:?} moved to another repository or integration meanwhile; send the request again"
        )));
    }
    fresh.integration_id = next.integration_id;
    fresh.repository = next.repository;
    fresh.project_id = next.project_id;
    fresh.updated_at = Millis::now().0;
    let next = fresh;
    stacks::update(&mut tx, &next).await?;
    if (&next.integration_id, next.project_id) != (&current.integration_id, current.project_id) {
        // Moved: the new project gets its hook, the old one may lose it.
        sync_hook(&mut tx, &next).await?;
        sync_hook(&mut tx, &current).await?;
    }
    principal
        .audit(&mut tx, "stack.update", target(&next), json!({}))
        .await?;
    tx.commit().await?;
    Ok(Json(view(next, warnings)))
}

/// Sets the fields of `body` that need no GitLab on `next`.
fn apply_fields(
    state: &AppState,
    id: &str,
    next: &mut Stack,
    body: &UpdateStack,
) -> Result<(), ApiError> {
    if let Some(branch) = &body.branch {
        next.branch = stack::branch(branch)?;
    }
    if let Some(root) = &body.project_root {
        next.project_root = stack::project_root(root)?;
    }
    if let Some(globs) = &body.additional_project_globs {
        next.additional_project_globs = stack::globs(globs)?;
    }
    if let Some(raw) = &body.labels {
        next.labels = labels(raw.clone())?;
    }
    if let Some(autodeploy) = body.autodeploy {
        next.autodeploy = autodeploy;
    }
    if let Some(allow_forks) = body.allow_forks {
        next.allow_forks = allow_forks;
    }
    if let Some(vendor) = &body.vendor {
        vendor.check()?;
        next.vendor = vendor.clone();
    }
    if let Some(raw) = &body.environment {
        next.environment = environment(raw)?;
    }
    if let Some(value) = body.run_timeout_seconds {
        next.run_timeout_seconds = seconds("run_timeout_seconds", value)?;
    }
    if let Some(value) = body.log_limit_bytes {
        next.log_limit_bytes = log_limit(value)?;
    }
    if let Some(value) = body.no_output_timeout_seconds {
        next.no_output_timeout_seconds = seconds("no_output_timeout_seconds", value)?;
    }
    if let Some(raw) = &body.secret_environment {
        let (names, sealed) = seal_secrets(state, id, Secrets::All, raw)?;
        next.secret_environment_names = names;
        next.secret_environment_sealed = sealed;
    }
    match &body.proposed_secret_environment {
        Some(Some(raw)) => {
            let (names, sealed) = seal_secrets(state, id, Secrets::Proposed, raw)?;
            next.proposed_secret_environment_names = Some(names);
            next.proposed_secret_environment_sealed = sealed;
        }
        Some(None) => {
            next.proposed_secret_environment_names = None;
            next.proposed_secret_environment_sealed = None;
        }
        None => {}
    }
    Ok(())
}

/// Queues the check of the hook of the stack's project, in the stack's
/// transaction: the project gets its hook, or loses it with its last stack.
async fn sync_hook(tx: &mut gantry_store::Tx, stack: &Stack) -> Result<(), ApiError> {
    if let Some(integration) = &stack.integration_id {
        crate::upkeep::queue_sync(
            tx,
            integration,
            stack.project_id,
            &stack.repository,
            false,
            None,
        )
        .await?;
    }
    Ok(())
}

/// Deletes a stack. Needs `admin` on its space.
#[utoipa::path(delete, path = "/api/v1/stacks/{id}", tag = "stacks", security(("bearer" = [])),
    responses((status = 200, body = StackView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<StackView>, ApiError> {
    let mut tx = state.store.begin().await?;
    let stack = authorized(&mut tx, &principal, &id, Role::Admin).await?;
    stacks::delete(&mut tx, &id).await?;
    sync_hook(&mut tx, &stack).await?;
    principal
        .audit(&mut tx, "stack.delete", target(&stack), json!({}))
        .await?;
    tx.commit().await?;
    Ok(Json(view(stack, Vec::new())))
}
