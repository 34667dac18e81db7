use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database and the blob store answer.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let unavailable = |what: &str| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} does not answer"),
        )
    };
    if let Err(err) = state.store.ping().await {
        tracing::warn!(error = %err, "readiness check failed: the database");
        return Err(unavailable("the database"));
    }
    let blobs = tokio::time::timeout(std::time::Duration::from_secs(5), state.blobs.ping()).await;
    if !matches!(blobs, Ok(Ok(()))) {
        tracing::warn!(error = ?blobs, "readiness check failed: the blob store");
        return Err(unavailable("the blob store"));
    }
    Ok(Json(json!({ "status": "ready" })))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // The database's gauges are read now; when it does not answer in time
    // the last values are shown (and `/readyz` says why).
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        state.metrics.refresh(&state.store),
    );
    match read.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot read the gauges of /metrics"),
        Err(_) => tracing::warn!("reading the gauges of /metrics took more than 5 s"),
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
