use axum::Json;
use axum::extract::State;
use gantry_domain::Role;
use gantry_store::audit;
use gantry_store::spaces::ROOT;

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::state::AppState;
use crate::views::{AuditEntryView, List, ListParams};

/// The audit log, newest first. Needs `admin` on `root`.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = List<AuditEntryView>), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<List<AuditEntryView>>, ApiError> {
    let page = params.page()?;
    principal.require(&state, Role::Admin, ROOT).await?;
    let mut conn = state.store.conn().await?;
    let (rows, next) = audit::list(&mut conn, &page).await?;
    Ok(Json(List::new(rows, next, AuditEntryView::from)))
}
