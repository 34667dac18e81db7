//! The delivery log of an integration, and replay.

use axum::Json;
use axum::extract::{Path, State};
use gantry_domain::Role;
use gantry_store::deliveries::{self, Delivery, Filter, Status};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Principal, Target};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::process::ProcessError;
use crate::routes::integrations;
use crate::state::AppState;
use crate::views::{List, timestamp};

/// One stored delivery, as the delivery log lists it.
#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    /// The `X-Gitlab-Event` value as sent.
    pub event: String,
    /// `accepted`, `duplicate`, `ignored` or `rejected`.
    pub status: String,
    /// A sentence: the runs created, or why none; `null` until processed.
    pub outcome: Option<String>,
    pub runs: Vec<String>,
    pub error: Option<String>,
    pub idempotency_key: Option<String>,
    pub event_uuid: Option<String>,
    pub webhook_uuid: Option<String>,
    /// For a duplicate: the delivery it repeats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    pub received_at: String,
    pub processed_at: Option<String>,
}

impl From<Delivery> for DeliveryView {
    fn from(delivery: Delivery) -> Self {
        Self {
            id: delivery.id,
            event: delivery.event,
            status: delivery.status.as_str().to_owned(),
            outcome: delivery.outcome,
            runs: delivery.runs,
            error: delivery.error,
            idempotency_key: delivery.idempotency_key,
            event_uuid: delivery.event_uuid,
            webhook_uuid: delivery.webhook_uuid,
            duplicate_of: delivery.duplicate_of,
            received_at: timestamp(delivery.received_at),
            processed_at: delivery.processed_at.map(timestamp),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryListParams {
    pub cursor: Option<String>,
    /// 1 to 500, default 50.
    pub limit: Option<u32>,
    /// `accepted`, `duplicate`, `ignored` or `rejected`.
    pub status: Option<String>,
    /// An `X-Gitlab-Event` value, such as `Push Hook`.
    pub event: Option<String>,
}

/// Checks that the caller holds `needed` on the integration, by the one
/// authorization rule.
async fn authorize(
    state: &AppState,
    principal: &Principal,
    id: &str,
    needed: Role,
) -> Result<(), ApiError> {
    let mut conn = state.store.conn().await?;
    integrations::authorized(&mut conn, principal, id, Some(needed)).await?;
    Ok(())
}

/// The integration's deliveries, newest first. Needs `read` on its space
/// (`root` for the default integration).
#[utoipa::path(get, path = "/api/v1/integrations/gitlab/{id}/deliveries", tag = "integrations",
    security(("bearer" = [])), params(DeliveryListParams),
    responses((status = 200, body = List<DeliveryView>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<DeliveryListParams>,
) -> Result<Json<List<DeliveryView>>, ApiError> {
    authorize(&state, &principal, &id, Role::Read).await?;
    let page = crate::views::ListParams {
        cursor: params.cursor,
        limit: params.limit,
    }
    .page()?;
    let status = params
        .status
        .as_deref()
        .map(|raw| {
            Status::parse(raw).ok_or_else(|| {
                ApiError::invalid(format!(
                    "`status` {raw:?} is not one of accepted, duplicate, ignored, rejected"
                ))
            })
        })
        .transpose()?;
    let filter = Filter {
        status,
        event: params.event,
    };
    let mut conn = state.store.conn().await?;
    let (rows, next) = deliveries::list(&mut conn, &id, &filter, &page).await?;
    Ok(Json(List::new(rows, next, DeliveryView::from)))
}

/// Processes a stored delivery again and answers with it. Needs `write`
/// on the integration's space.
#[utoipa::path(post, path = "/api/v1/integrations/gitlab/{id}/deliveries/{delivery}/replay", tag = "integrations",
    security(("bearer" = [])),
    responses((status = 200, body = DeliveryView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Json<DeliveryView>, ApiError> {
    authorize(&state, &principal, &id, Role::Write).await?;
    {
        let mut conn = state.store.conn().await?;
        deliveries::get(&mut conn, &id, &delivery)
            .await?
            .ok_or_else(|| {
                ApiError::not_found(format!("integration {id:?} has no delivery {delivery:?}"))
            })?;
    }
    let replayed = state
        .processor()
        .process(&delivery)
        .await
        .map_err(|err| match err {
            ProcessError::Pruned(_) => ApiError::conflict(err.to_string()),
            ProcessError::Missing(_) => ApiError::not_found(err.to_string()),
            ProcessError::BadJob(_) => ApiError::conflict(err.to_string()),
            ProcessError::TooSlow(_) => {
                ApiError::bad_gateway(format!("{err}; try the replay again later"))
            }
            ProcessError::GitLab(err) => {
                ApiError::bad_gateway(format!("{err}; try the replay again later"))
            }
            ProcessError::Store(err) => err.into(),
            ProcessError::Lease(gantry_store::jobs::LeaseError::Store(err)) => err.into(),
            ProcessError::Lease(err) => {
                tracing::error!(error = %err, "replay without a lease lost one");
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "replay failed; see the server log",
                )
            }
        })?;
    let mut tx = state.store.begin().await?;
    principal
        .audit(
            &mut tx,
            "delivery.replay",
            Target {
                kind: "delivery",
                id: &delivery,
                space: None,
            },
            json!({ "integration": id, "status": replayed.status.as_str() }),
        )
        .await?;
    tx.commit().await?;
    Ok(Json(replayed.into()))
}
