use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use gantry_domain::{Name, Role, Slug};
use gantry_store::Millis;
use gantry_store::spaces::{self, CreateSpaceError, ROOT};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Principal, Target};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::views::{List, ListParams, SpaceView};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSpace {
    /// Defaults to the slug of `name`.
    pub id: Option<String>,
    pub name: String,
    /// The parent space; defaults to `root`.
    pub parent: Option<String>,
}

/// Creates a space under `parent`. Needs `admin` on the parent.
#[utoipa::path(post, path = "/api/v1/spaces", tag = "spaces", security(("bearer" = [])), request_body = CreateSpace,
    responses((status = 201, body = SpaceView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateSpace>,
) -> Result<(StatusCode, Json<SpaceView>), ApiError> {
    let name = Name::parse(&body.name)?;
    let id = match &body.id {
        Some(id) => Slug::parse(id),
        None => name.slug(),
    }?;
    let parent = body.parent.as_deref().unwrap_or(ROOT);

    let mut tx = state.store.begin().await?;
    let ancestry = spaces::ancestry(&mut tx, parent).await?;
    if ancestry.is_empty() {
        return Err(ApiError::invalid(format!(
            "`parent` space {parent:?} does not exist"
        )));
    }
    if !principal.allows(Role::Admin, &ancestry) {
        return Err(crate::auth::forbidden(Role::Admin, parent));
    }
    let now = Millis::now();
    let space = spaces::insert(&mut tx, id.as_str(), name.as_str(), Some(parent), now)
        .await
        .map_err(|err| match err {
            CreateSpaceError::ParentNotFound(_) => ApiError::invalid(format!("`parent` {err}")),
            CreateSpaceError::IdTaken(_) | CreateSpaceError::NameTaken { .. } => {
                ApiError::conflict(err.to_string())
            }
            CreateSpaceError::Store(err) => err.into(),
        })?;
    principal
        .audit(
            &mut tx,
            "space.create",
            Target {
                kind: "space",
                id: &space.id,
                space: Some(&space.id),
            },
            json!({ "name": space.name, "parent": parent }),
        )
        .await?;
    tx.commit().await?;
    tracing::info!(space.id = %space.id, space.parent = parent, "space created");
    Ok((StatusCode::CREATED, Json(space.into())))
}

/// The spaces the caller can read, newest first.
#[utoipa::path(get, path = "/api/v1/spaces", tag = "spaces", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = List<SpaceView>), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<List<SpaceView>>, ApiError> {
    let page = params.page()?;
    let mut conn = state.store.conn().await?;
    let (rows, next) = spaces::list_readable(&mut conn, &principal.key_id, &page).await?;
    Ok(Json(List::new(rows, next, SpaceView::from)))
}
