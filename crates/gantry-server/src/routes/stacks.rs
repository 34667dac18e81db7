//! Stacks (DESIGN.md section 7): create with the repository resolved to
//! its GitLab project, list, show, change, delete. `admin` of a stack's
//! space manages it; `read` sees it.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_domain::stack::{self, StackFieldError};
use gantry_domain::{Name, Role};
use gantry_gitlab::{GitLabError, projects, types::MAINTAINER};
use gantry_store::integrations::{self, Integration};
use gantry_store::spaces::{self, ROOT};
use gantry_store::stacks::{self, SaveStackError, Stack};
use gantry_store::{Conn, Millis, audit};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::{Principal, forbidden};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::integrations::{self as integrations_routes, token_context};
use crate::state::AppState;
use crate::views::{List, ListParams, timestamp};

/// How a stack's runs are executed.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Vendor {
    /// Shell commands for each phase.
    Shell {
        #[serde(default)]
        init: String,
        plan: String,
        apply: String,
    },
    Opentofu {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
    Terraform {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStack {
    pub name: String,
    /// Defaults to `root`.
    pub space: Option<String>,
    /// Defaults to the default integration.
    pub integration: Option<String>,
    /// The GitLab project path, such as `infra/network`.
    pub repository: String,
    /// The tracked branch.
    pub branch: String,
    /// A directory of the repository; empty for all of it.
    #[serde(default)]
    pub project_root: String,
    #[serde(default)]
    pub additional_project_globs: Vec<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub autodeploy: bool,
    #[serde(default)]
    pub allow_forks: bool,
    pub vendor: Vendor,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Write-only: only the names come back.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub secret_environment: BTreeMap<String, SecretString>,
    /// The longest a phase's execution may take (default 4200: 70 minutes).
    pub run_timeout_seconds: Option<u64>,
    /// The longest a phase may print nothing (default 600: 10 minutes).
    pub no_output_timeout_seconds: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateStack {
    /// Immutable: only the current name is accepted.
    pub name: Option<String>,
    pub integration: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub project_root: Option<String>,
    pub additional_project_globs: Option<Vec<String>>,
    pub labels: Option<Vec<String>>,
    pub autodeploy: Option<bool>,
    pub allow_forks: Option<bool>,
    pub vendor: Option<Vendor>,
    /// Replaces the environment.
    pub environment: Option<BTreeMap<String, String>>,
    /// Replaces the secret environment.
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub secret_environment: Option<BTreeMap<String, SecretString>>,
    pub run_timeout_seconds: Option<u64>,
    pub no_output_timeout_seconds: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct StackView {
    pub id: String,
    pub name: String,
    pub space: String,
    /// `null` when its integration was deleted with `force`.
    pub integration: Option<String>,
    pub project_id: i64,
    pub repository: String,
    pub branch: String,
    pub project_root: String,
    pub additional_project_globs: Vec<String>,
    pub labels: Vec<String>,
    pub autodeploy: bool,
    pub allow_forks: bool,
    #[schema(value_type = Object)]
    pub vendor: Value,
    pub environment: BTreeMap<String, String>,
    /// The names only.
    pub secret_environment: Vec<String>,
    pub run_timeout_seconds: i64,
    pub no_output_timeout_seconds: i64,
    /// From the checks with GitLab on create or change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn view(stack: Stack, warnings: Vec<String>) -> StackView {
    StackView {
        id: stack.id,
        name: stack.name,
        space: stack.space_id,
        integration: stack.integration_id,
        project_id: stack.project_id,
        repository: stack.repository,
        branch: stack.branch,
        project_root: stack.project_root,
        additional_project_globs: serde_json::from_str(&stack.additional_project_globs)
            .unwrap_or_default(),
        labels: serde_json::from_str(&stack.labels).unwrap_or_default(),
        autodeploy: stack.autodeploy == 1,
        allow_forks: stack.allow_forks == 1,
        vendor: serde_json::from_str(&stack.vendor).unwrap_or(Value::Null),
        environment: serde_json::from_str(&stack.environment).unwrap_or_default(),
        secret_environment: serde_json::from_str(&stack.secret_environment_names)
            .unwrap_or_default(),
        run_timeout_seconds: stack.run_timeout_seconds,
        no_output_timeout_seconds: stack.no_output_timeout_seconds,
        warnings,
        created_at: timestamp(stack.created_at),
        updated_at: timestamp(stack.updated_at),
    }
}

/// The defaults of DESIGN.md section 5: 70 minutes, 10 minutes.
const DEFAULT_RUN_TIMEOUT: u64 = 70 * 60;
const DEFAULT_NO_OUTPUT_TIMEOUT: u64 = 10 * 60;

/// A limit in seconds: at least one, at most a day.
fn seconds(name: &str, value: u64) -> Result<i64, ApiError> {
    match i64::try_from(value) {
        Ok(seconds @ 1..=86_400) => Ok(seconds),
        _ => Err(ApiError::invalid(format!(
            "`{name}` is {value}; give between 1 and 86400 seconds"
        ))),
    }
}

fn field(err: StackFieldError) -> ApiError {
    ApiError::invalid(err.to_string())
}

fn secret_context(id: &str) -> String {
    format!("stack:{id}:secret_environment")
}

/// Labels as integrations take them (trimmed, unique, at most 50 of 100
/// characters), stored as JSON.
fn labels(raw: Vec<String>) -> Result<String, ApiError> {
    Ok(json!(integrations_routes::labels(raw)?).to_string())
}

fn environment(raw: &BTreeMap<String, String>) -> Result<String, ApiError> {
    for name in raw.keys() {
        stack::env_name(name).map_err(|e| ApiError::invalid(format!("`environment`: {e}")))?;
    }
    Ok(json!(raw).to_string())
}

/// Seals the secret environment as one JSON object; returns the names and
/// the sealed value (`None` when empty).
fn seal_secrets(
    state: &AppState,
    id: &str,
    raw: &BTreeMap<String, SecretString>,
) -> Result<(String, Option<String>), ApiError> {
    let mut plain = serde_json::Map::new();
    for (name, value) in raw {
        stack::env_name(name)
            .map_err(|e| ApiError::invalid(format!("`secret_environment`: {e}")))?;
        plain.insert(
            name.clone(),
            Value::String(value.expose_secret().to_owned()),
        );
    }
    let names: Vec<&String> = raw.keys().collect();
    if plain.is_empty() {
        return Ok((json!(names).to_string(), None));
    }
    let secret = SecretString::from(Value::Object(plain).to_string());
    Ok((
        json!(names).to_string(),
        Some(state.keyring.encrypt(&secret_context(id), &secret)),
    ))
}

fn vendor(vendor: &Vendor) -> Result<String, ApiError> {
    if let Vendor::Shell { plan, apply, .. } = vendor
        && (plan.trim().is_empty() || apply.trim().is_empty())
    {
        return Err(ApiError::invalid(
            "`vendor`: a shell workflow needs `plan` and `apply` commands",
        ));
    }
    serde_json::to_string(vendor).map_err(|e| ApiError::invalid(format!("`vendor`: {e}")))
}

/// The integration a stack in `space` may use: the one named, or the
/// default. A space-level integration serves its space and the spaces below.
async fn usable_integration(
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
async fn resolve(
    state: &AppState,
    integration: &Integration,
    repository: &str,
) -> Result<(i64, Vec<String>), ApiError> {
    let token = state
        .keyring
        .decrypt(&token_context(&integration.id), &integration.token_sealed)
        .map_err(|error| {
            tracing::error!(integration.id = %integration.id, %error, "cannot open the API token");
            ApiError::invalid(format!(
                "the API token of integration {:?} cannot be decrypted with this server's master key; update the integration's token",
                integration.id
            ))
        })?;
    let client = state
        .gitlab
        .client(&integration.api_host_url, token)
        .map_err(|e| ApiError::invalid(format!("integration {:?}: {e}", integration.id)))?;
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
    let user_id = u64::try_from(integration.token.user_id).unwrap_or_default();
    let mut warnings = Vec::new();
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
    Ok((i64::try_from(project.id).unwrap_or(i64::MAX), warnings))
}

async fn record(
    conn: &mut Conn,
    principal: &Principal,
    action: &str,
    stack: &Stack,
    detail: Value,
) -> Result<(), ApiError> {
    audit::record(
        conn,
        &audit::NewAuditEntry {
            actor: &principal.actor(),
            action,
            target_kind: "stack",
            target_id: &stack.id,
            space_id: Some(&stack.space_id),
            detail,
        },
        Millis::now(),
    )
    .await?;
    Ok(())
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
    let name = Name::parse(&body.name).map_err(|e| ApiError::invalid(e.to_string()))?;
    let id = name.slug().map_err(|e| ApiError::invalid(e.to_string()))?;
    let space = body
        .space
        .as_deref()
        .map(str::trim)
        .unwrap_or(ROOT)
        .to_owned();
    let repository = body.repository.trim().trim_matches('/').to_owned();
    if repository.is_empty() {
        return Err(ApiError::invalid(
            "`repository` is empty; give the GitLab project path, such as `infra/network`",
        ));
    }
    let branch = stack::branch(&body.branch).map_err(field)?;
    let project_root = stack::project_root(&body.project_root).map_err(field)?;
    let globs = stack::globs(&body.additional_project_globs).map_err(field)?;
    let labels = labels(body.labels)?;
    let vendor = vendor(&body.vendor)?;
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
        seal_secrets(&state, id.as_str(), &body.secret_environment)?;

    let integration = {
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
        if stacks::get(&mut conn, id.as_str()).await?.is_some() {
            return Err(ApiError::conflict(
                SaveStackError::IdTaken(id.as_str().to_owned()).to_string(),
            ));
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
        additional_project_globs: json!(globs).to_string(),
        labels,
        autodeploy: i64::from(body.autodeploy),
        allow_forks: i64::from(body.allow_forks),
        vendor,
        environment,
        secret_environment_names: secret_names,
        secret_environment_sealed: secret_sealed,
        run_timeout_seconds: run_timeout,
        no_output_timeout_seconds: no_output_timeout,
        created_at: now.0,
        updated_at: now.0,
    };
    let mut tx = state.store.begin().await?;
    stacks::insert(&mut tx, &stack)
        .await
        .map_err(|err| match err {
            SaveStackError::IdTaken(_) => ApiError::conflict(err.to_string()),
            SaveStackError::Store(err) => err.into(),
        })?;
    let detail = json!({ "integration": integration.id, "repository": stack.repository, "project_id": project_id });
    record(&mut tx, &principal, "stack.create", &stack, detail).await?;
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

/// A stack the caller holds `needed` on; 404 when it cannot even read it.
pub(crate) async fn authorized(
    conn: &mut Conn,
    principal: &Principal,
    id: &str,
    needed: Role,
) -> Result<Stack, ApiError> {
    let not_found = || ApiError::not_found(format!("no stack {id:?} that you can see"));
    let stack = stacks::get(conn, id).await?.ok_or_else(not_found)?;
    let ancestry = spaces::ancestry(conn, &stack.space_id).await?;
    if !principal.allows(Role::Read, &ancestry) {
        return Err(not_found());
    }
    if !principal.allows(needed, &ancestry) {
        return Err(forbidden(needed, &stack.space_id));
    }
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
    Ok(Json(view(stack, Vec::new())))
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
    let mut next = current.clone();
    if let Some(branch) = &body.branch {
        next.branch = stack::branch(branch).map_err(field)?;
    }
    if let Some(root) = &body.project_root {
        next.project_root = stack::project_root(root).map_err(field)?;
    }
    if let Some(globs) = &body.additional_project_globs {
        next.additional_project_globs = json!(stack::globs(globs).map_err(field)?).to_string();
    }
    if let Some(raw) = body.labels {
        next.labels = labels(raw)?;
    }
    if let Some(autodeploy) = body.autodeploy {
        next.autodeploy = i64::from(autodeploy);
    }
    if let Some(allow_forks) = body.allow_forks {
        next.allow_forks = i64::from(allow_forks);
    }
    if let Some(raw) = &body.vendor {
        next.vendor = vendor(raw)?;
    }
    if let Some(raw) = &body.environment {
        next.environment = environment(raw)?;
    }
    if let Some(value) = body.run_timeout_seconds {
        next.run_timeout_seconds = seconds("run_timeout_seconds", value)?;
    }
    if let Some(value) = body.no_output_timeout_seconds {
        next.no_output_timeout_seconds = seconds("no_output_timeout_seconds", value)?;
    }
    if let Some(raw) = &body.secret_environment {
        let (names, sealed) = seal_secrets(&state, &id, raw)?;
        next.secret_environment_names = names;
        next.secret_environment_sealed = sealed;
    }
    let repository = body
        .repository
        .as_deref()
        .map(|r| r.trim().trim_matches('/').to_owned());
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
        if repository.is_empty() {
            return Err(ApiError::invalid("`repository` is empty"));
        }
        let (project_id, found) = resolve(&state, &integration, &repository).await?;
        next.integration_id = Some(integration.id);
        next.repository = repository;
        next.project_id = project_id;
        warnings = found;
    } else {
        drop(conn);
    }
    next.updated_at = Millis::now().0;
    let mut tx = state.store.begin().await?;
    if stacks::get(&mut tx, &id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "no stack {id:?} that you can see"
        )));
    }
    stacks::update(&mut tx, &next).await?;
    record(&mut tx, &principal, "stack.update", &next, json!({})).await?;
    tx.commit().await?;
    Ok(Json(view(next, warnings)))
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
    record(&mut tx, &principal, "stack.delete", &stack, json!({})).await?;
    tx.commit().await?;
    Ok(Json(view(stack, Vec::new())))
}
