//! Modules of the registry: a directory of a GitLab project whose
//! semantic-version tags become versions. The roles are those of stacks:
//! `read` sees them, `admin` on their space changes them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_domain::{Role, stack};
use gantry_store::modules::{self, Module};
use gantry_store::{Conn, Millis};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Guard, Principal, Target};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::fields::{labels, named, space_or_root};
use crate::routes::stacks::{resolve, usable_integration};
use crate::state::AppState;
use crate::views::{List, ListParams, timestamp};

#[derive(Serialize, ToSchema)]
pub struct ModuleView {
    pub id: String,
    pub name: String,
    pub space: String,
    pub integration: Option<String>,
    pub project_id: i64,
    pub repository: String,
    pub project_root: String,
    pub provider: String,
    pub labels: Vec<String>,
    pub description: String,
    /// `<host>/<space>/<module>/<provider>`, as `source` in a stack.
    pub registry_address: String,
    pub created_at: String,
    pub updated_at: String,
}

fn view(state: &AppState, m: Module) -> ModuleView {
    let host = state
        .config
        .public_url
        .split_once("://")
        .map_or(state.config.public_url.as_str(), |(_, host)| host)
        .trim_end_matches('/')
        .to_owned();
    ModuleView {
        registry_address: format!("{host}/{}/{}/{}", m.space_id, m.id, m.provider),
        id: m.id,
        name: m.name,
        space: m.space_id,
        integration: m.integration_id,
        project_id: m.project_id,
        repository: m.repository,
        project_root: m.project_root,
        provider: m.provider,
        labels: m.labels,
        description: m.description,
        created_at: timestamp(m.created_at),
        updated_at: timestamp(m.updated_at),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModule {
    pub name: String,
    pub space: Option<String>,
    /// Default: the default integration.
    pub integration: Option<String>,
    /// The GitLab project path, such as `infra/modules`.
    pub repository: String,
    /// The module's directory in the repository; default the whole of it.
    #[serde(default)]
    pub project_root: String,
    /// The provider part of the registry address, such as `aws`.
    pub provider: String,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateModule {
    pub project_root: Option<String>,
    pub provider: Option<String>,
    pub labels: Option<Vec<String>>,
    pub description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionView {
    pub version: String,
    pub commit_sha: String,
    pub tag: String,
    /// `published` or `yanked` (its tag was deleted; hidden from the registry).
    pub state: String,
    pub published_at: String,
}

/// A provider name as registries take it: lowercase letters and digits.
fn provider(raw: &str) -> Result<String, ApiError> {
    let provider = raw.trim();
    if provider.is_empty()
        || !provider
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(ApiError::invalid(format!(
            "`provider` {raw:?} must be lowercase letters and digits, such as `aws`"
        )));
    }
    Ok(provider.to_owned())
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no module {id:?} that you can see"))
}

/// A module the caller holds `needed` on, by the one authorization rule.
pub(crate) async fn authorized(
    conn: &mut Conn,
    principal: &Principal,
    id: &str,
    needed: Role,
) -> Result<Module, ApiError> {
    let module = modules::get(conn, id).await?.ok_or_else(|| not_found(id))?;
    let guard = Guard {
        space: &module.space_id,
        listed_to_all: false,
    };
    principal
        .authorize(conn, guard, Some(needed), || not_found(id))
        .await?;
    Ok(module)
}

fn target(m: &Module) -> Target<'_> {
    Target {
        kind: "module",
        id: &m.id,
        space: Some(&m.space_id),
    }
}

/// Creates a module. Needs `admin` on its space.
#[utoipa::path(post, path = "/api/v1/modules", tag = "modules", security(("bearer" = [])), request_body = CreateModule,
    responses((status = 201, body = ModuleView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateModule>,
) -> Result<(StatusCode, Json<ModuleView>), ApiError> {
    let (name, id) = named(&body.name)?;
    let space = space_or_root(body.space.as_deref());
    let repository = crate::routes::stacks::repository(&body.repository)?;
    let project_root = stack::project_root(&body.project_root)?;
    let provider = provider(&body.provider)?;
    let labels = labels(body.labels)?;
    let integration = {
        let mut conn = state.store.conn().await?;
        principal
            .may_create_in(&mut conn, &space, Role::Admin)
            .await?;
        if modules::get(&mut conn, id.as_str()).await?.is_some() {
            return Err(ApiError::conflict(format!(
                "a module with id {:?} already exists; choose another name",
                id.as_str()
            )));
        }
        usable_integration(&mut conn, &space, body.integration.as_deref()).await?
    };
    let (project_id, _) = resolve(&state, &integration, &repository).await?;
    let now = Millis::now();
    let module = Module {
        id: id.as_str().to_owned(),
        name: name.as_str().to_owned(),
        space_id: space,
        integration_id: Some(integration.id.clone()),
        project_id,
        repository,
        project_root,
        provider,
        labels,
        description: body.description,
        created_at: now.0,
        updated_at: now.0,
    };
    let mut tx = state.store.begin().await?;
    modules::insert(&mut tx, &module).await.map_err(|error| {
        if matches!(&error, gantry_store::StoreError::Database(e) if gantry_store::is_unique_violation(e)) {
            ApiError::conflict(format!("a module with id {:?} already exists", module.id))
        } else {
            error.into()
        }
    })?;
    crate::upkeep::queue_sync(
        &mut tx,
        &integration.id,
        project_id,
        &module.repository,
        false,
        None,
    )
    .await?;
    principal
        .audit(
            &mut tx,
            "module.create",
            target(&module),
            json!({ "repository": module.repository }),
        )
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view(&state, module))))
}

/// The modules the caller can read, newest first.
#[utoipa::path(get, path = "/api/v1/modules", tag = "modules", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = List<ModuleView>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<List<ModuleView>>, ApiError> {
    let page = params.page()?;
    let mut conn = state.store.conn().await?;
    let (rows, next) = modules::list_readable(&mut conn, &principal.key_id, &page).await?;
    Ok(Json(List::new(rows, next, |m| view(&state, m))))
}

#[utoipa::path(get, path = "/api/v1/modules/{id}", tag = "modules", security(("bearer" = [])),
    responses((status = 200, body = ModuleView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    let mut conn = state.store.conn().await?;
    let module = authorized(&mut conn, &principal, &id, Role::Read).await?;
    Ok(Json(view(&state, module)))
}

/// Changes a module's directory, provider, labels or description; the
/// name and repository are fixed. Needs `admin`.
#[utoipa::path(patch, path = "/api/v1/modules/{id}", tag = "modules", security(("bearer" = [])), request_body = UpdateModule,
    responses((status = 200, body = ModuleView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateModule>,
) -> Result<Json<ModuleView>, ApiError> {
    let mut tx = state.store.begin().await?;
    let mut module = authorized(&mut tx, &principal, &id, Role::Admin).await?;
    if let Some(raw) = &body.project_root {
        module.project_root = stack::project_root(raw)?;
    }
    if let Some(raw) = &body.provider {
        module.provider = provider(raw)?;
    }
    if let Some(raw) = body.labels {
        module.labels = labels(raw)?;
    }
    if let Some(description) = body.description {
        module.description = description;
    }
    module.updated_at = Millis::now().0;
    modules::update(&mut tx, &module).await?;
    principal
        .audit(&mut tx, "module.update", target(&module), json!({}))
        .await?;
    tx.commit().await?;
    Ok(Json(view(&state, module)))
}

/// Deletes a module and its versions. Needs `admin`.
#[utoipa::path(delete, path = "/api/v1/modules/{id}", tag = "modules", security(("bearer" = [])),
    responses((status = 200, body = ModuleView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    let mut tx = state.store.begin().await?;
    let module = authorized(&mut tx, &principal, &id, Role::Admin).await?;
    modules::delete(&mut tx, &id).await?;
    if let Some(integration) = &module.integration_id {
        crate::upkeep::queue_sync(
            &mut tx,
            integration,
            module.project_id,
            &module.repository,
            false,
            None,
        )
        .await?;
    }
    principal
        .audit(&mut tx, "module.delete", target(&module), json!({}))
        .await?;
    tx.commit().await?;
    Ok(Json(view(&state, module)))
}

/// A module's versions, newest first, yanked ones included.
#[utoipa::path(get, path = "/api/v1/modules/{id}/versions", tag = "modules", security(("bearer" = [])),
    responses((status = 200, body = Vec<VersionView>), (status = 404, body = ErrorBody)))]
pub async fn versions(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut conn = state.store.conn().await?;
    authorized(&mut conn, &principal, &id, Role::Read).await?;
    let items: Vec<VersionView> = modules::versions(&mut conn, &id)
        .await?
        .into_iter()
        .map(|v| VersionView {
            version: v.version,
            commit_sha: v.commit_sha,
            tag: v.tag,
            state: v.state,
            published_at: timestamp(v.published_at),
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}
