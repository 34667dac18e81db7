//! The worker API: what `gantry worker` on another machine calls to claim
//! runs and report on them. Every route needs the `worker` role on `root`.
//! A worker names itself in the `Gantry-Worker` header; its lease is held
//! as `<api key id>/<name>`, so one key's workers cannot report for
//! another's. The handlers are the same functions the embedded workers
//! call (`crate::worker`).

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use gantry_domain::Role;
use gantry_runner::agent::{Heartbeat, Step};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Principal, forbidden};
use crate::blobs::ByteStream;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::worker::{self, Refused, WorkspaceError};

/// The header a worker names itself with.
pub const WORKER_HEADER: &str = "gantry-worker";

/// The lease owner of the calling worker.
fn owner(principal: &Principal, headers: &HeaderMap) -> Result<String, ApiError> {
    if !principal.allows(Role::Worker, &[gantry_store::spaces::ROOT.to_owned()]) {
        return Err(forbidden(Role::Worker, gantry_store::spaces::ROOT));
    }
    let name = headers
        .get(WORKER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let plain = (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !plain {
        return Err(ApiError::bad_request(
            "the `Gantry-Worker` header must name the worker: 1 to 100 letters, digits, `-`, `_` or `.`",
        ));
    }
    Ok(format!("{}/{name}", principal.key_id))
}

fn refused(refused: Refused) -> ApiError {
    ApiError::conflict(refused.to_string())
}

#[derive(Deserialize, IntoParams)]
pub struct ClaimParams {
    /// How long to wait for a run when none is ready, in seconds (0 to 30,
    /// default 20).
    pub wait_seconds: Option<u64>,
}

/// Claims the next run: 200 with its assignment (secrets included), or
/// 204 when none came within `wait_seconds`.
#[utoipa::path(post, path = "/api/v1/worker/claim", tag = "worker", security(("bearer" = [])), params(ClaimParams),
    responses((status = 200, description = "an assignment: the run, its workflow, environment and source"),
        (status = 204, description = "no run is ready"), (status = 403, body = ErrorBody)))]
pub async fn claim(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ClaimParams>,
) -> Result<Response, ApiError> {
    let owner = owner(&principal, &headers)?;
    let wait = Duration::from_secs(params.wait_seconds.unwrap_or(20).min(30));
    match worker::claim_within(&state, &owner, wait).await? {
        Some(assignment) => {
            tracing::info!(run.id = %assignment.run_id, worker = %owner, "run claimed");
            Ok(Json(assignment).into_response())
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[utoipa::path(post, path = "/api/v1/worker/runs/{id}/heartbeat", tag = "worker", security(("bearer" = [])),
    responses((status = 200, description = "`{keep_going}`: false once the run was canceled or the lease lost"),
        (status = 403, body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Heartbeat>, ApiError> {
    let owner = owner(&principal, &headers)?;
    Ok(Json(worker::heartbeat(&state, &id, &owner).await?))
}

/// Appends already redacted output (the body, as text) to the run's log.
#[utoipa::path(post, path = "/api/v1/worker/runs/{id}/log", tag = "worker", security(("bearer" = [])),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn log(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    text: String,
) -> Result<StatusCode, ApiError> {
    let owner = owner(&principal, &headers)?;
    if worker::log(&state, &id, &owner, text).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(refused(Refused::NotLeased))
    }
}

#[derive(Serialize, ToSchema)]
pub struct StepAnswer {
    /// The run's state after the step.
    pub state: String,
}

/// Reports a step: `{"step": "plan"}`, `{"step": "planned", "changes",
/// "summary"}`, `{"step": "applied"}`, `{"step": "fail", "reason"}` or
/// `{"step": "hand_back", "reason"}`.
#[utoipa::path(post, path = "/api/v1/worker/runs/{id}/step", tag = "worker", security(("bearer" = [])),
    responses((status = 200, body = StepAnswer), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn step(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(step): ApiJson<Step>,
) -> Result<Json<StepAnswer>, ApiError> {
    let owner = owner(&principal, &headers)?;
    let run = worker::report(&state, &id, &owner, &step)
        .await?
        .map_err(refused)?;
    Ok(Json(StepAnswer {
        state: run.state.as_str().to_owned(),
    }))
}

fn workspace_error(error: WorkspaceError) -> ApiError {
    match error {
        WorkspaceError::Refused(refusal) => refused(refusal),
        WorkspaceError::Missing => ApiError::not_found(error.to_string()),
        WorkspaceError::Store(error) => error.into(),
        WorkspaceError::Io(error) if error.kind() == std::io::ErrorKind::FileTooLarge => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the workspace is too large: {error}"),
            )
        }
        WorkspaceError::Io(error) => {
            tracing::error!(%error, "the workspace store failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server could not store or read the workspace; its log has the details",
            )
        }
    }
}

/// Stores the planned workspace (tar + zstd) for the apply.
#[utoipa::path(put, path = "/api/v1/worker/runs/{id}/workspace", tag = "worker", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/zstd"),
    responses((status = 204), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put_workspace(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let owner = owner(&principal, &headers)?;
    let stream: ByteStream = Box::pin(body.into_data_stream().map_err(std::io::Error::other));
    worker::put_workspace(&state, &id, &owner, stream)
        .await
        .map_err(workspace_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The planned workspace of a run the worker is applying.
#[utoipa::path(get, path = "/api/v1/worker/runs/{id}/workspace", tag = "worker", security(("bearer" = [])),
    responses((status = 200, content_type = "application/zstd"), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn get_workspace(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = owner(&principal, &headers)?;
    archive(worker::get_workspace(&state, &id, &owner).await)
}

/// An archive the server keeps for a run, streamed.
fn archive(found: Result<ByteStream, WorkspaceError>) -> Result<Response, ApiError> {
    let stream = found.map_err(workspace_error)?;
    Ok((
        [(header::CONTENT_TYPE, "application/zstd")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The source of the run's commit (a checkout, tar + zstd), for the plan.
#[utoipa::path(get, path = "/api/v1/worker/runs/{id}/source", tag = "worker", security(("bearer" = [])),
    responses((status = 200, content_type = "application/zstd"), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn get_source(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = owner(&principal, &headers)?;
    archive(worker::get_source(&state, &id, &owner).await)
}

/// Ends the worker's lease on the run.
#[utoipa::path(post, path = "/api/v1/worker/runs/{id}/release", tag = "worker", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody)))]
pub async fn release(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let owner = owner(&principal, &headers)?;
    worker::release(&state, &id, &owner).await?;
    Ok(StatusCode::NO_CONTENT)
}
