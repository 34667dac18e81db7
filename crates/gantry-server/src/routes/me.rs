use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::error::ErrorBody;
use crate::views::RoleView;

#[derive(Serialize, ToSchema)]
pub struct MeView {
    /// The id of the API key making the request.
    pub id: String,
    pub name: String,
    pub roles: Vec<RoleView>,
}

/// The caller and its roles.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 401, body = ErrorBody)))]
pub async fn show(principal: Principal) -> Json<MeView> {
    Json(MeView {
        id: principal.key_id,
        name: principal.name,
        roles: principal.roles.into_iter().map(RoleView::from).collect(),
    })
}
