//! `POST /webhooks/gitlab/{integration-id}`: check
//! the secret, read the body within the limit, store the delivery and its
//! job, answer. The handler never calls GitLab and never processes.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gantry_gitlab::webhook::{self, DeliveryHeaders};
use gantry_store::deliveries::{NewDelivery, Status, Verdict};
use gantry_store::{Millis, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::webhook_secrets::Verdict as Authenticity;

/// The answer GitLab gets.
#[derive(Serialize, ToSchema)]
pub struct Acknowledgement {
    /// The id of the stored delivery, as the delivery log lists it.
    pub delivery: String,
    /// `accepted`, `duplicate` or `ignored`.
    pub status: String,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// Receives a GitLab webhook delivery.
#[utoipa::path(post, path = "/webhooks/gitlab/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "the integration id"),
        ("X-Gitlab-Token" = String, Header, description = "the integration's webhook secret"),
        ("X-Gitlab-Event" = String, Header, description = "`Push Hook`, `Tag Push Hook`, `Merge Request Hook`, …")),
    responses((status = 200, body = Acknowledgement), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Json<Acknowledgement>, Response> {
    let received_at = Millis::now();
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let gitlab = DeliveryHeaders::read(headers);
    // Without a token the check still tells an unknown integration (404).
    let token = gitlab.token.unwrap_or_default();
    let verdict = state
        .webhook_secrets
        .check(&state.store, &state.keyring, &id, token, received_at)
        .await
        .map_err(|err| {
            tracing::error!(integration.id = %id, error = %err, "cannot check a webhook secret");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server cannot check the secret",
            )
            .into_response()
        })?;
    match verdict {
        Authenticity::Authentic => {}
        Authenticity::Unknown => return Err(unknown(&id)),
        Authenticity::Wrong if gitlab.token.is_none() => {
            return Err(ApiError::unauthorized(
                "no X-Gitlab-Token: set the hook's secret token to the integration's webhook secret",
            )
            .into_response());
        }
        Authenticity::Wrong => {
            tracing::warn!(integration.id = %id, "webhook refused: wrong X-Gitlab-Token");
            return Err(ApiError::unauthorized(
                "wrong X-Gitlab-Token: set the hook's secret token to the integration's current webhook secret",
            )
            .into_response());
        }
    }

    if let Some(content_type) = header(headers, header::CONTENT_TYPE.as_str())
        && !content_type.starts_with("application/json")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type is {content_type:?}; GitLab webhooks are application/json"),
        )
        .into_response());
    }
    let limit = state.config.webhook_body_limit;
    let declared =
        header(headers, header::CONTENT_LENGTH.as_str()).and_then(|len| len.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::too_large(limit).into_response());
    }
    let body = axum::body::to_bytes(Body::new(body), limit)
        .await
        .map_err(|_| ApiError::too_large(limit).into_response())?;

    let Some(event) = gitlab.event else {
        return Err(ApiError::bad_request(
            "no X-Gitlab-Event header: this is not a GitLab webhook delivery",
        )
        .into_response());
    };
    let verdict = match webhook::event_of(event, &body) {
        Ok(Some(_)) => Verdict::Supported,
        Ok(None) => Verdict::Ignored {
            outcome: format!("Gantry does not act on {event:?} events"),
        },
        Err(err) => Verdict::Rejected {
            error: err.to_string(),
        },
    };
    let rejected = match &verdict {
        Verdict::Rejected { error } => Some(error.clone()),
        _ => None,
    };
    let owned = |value: Option<&str>| value.map(str::to_owned);
    let new = NewDelivery {
        integration_id: id.clone(),
        event: event.to_owned(),
        verdict,
        body: body.into(),
        idempotency_key: owned(gitlab.idempotency_key),
        event_uuid: owned(gitlab.event_uuid),
        webhook_uuid: owned(gitlab.webhook_uuid),
        instance: owned(gitlab.instance),
        user_agent: owned(gitlab.user_agent),
        received_at,
    };
    let (delivery, status) = match state.inbox.receive(new).await {
        Ok(stored) => stored,
        // Deleted since its secrets were read.
        Err(StoreError::NotFound { .. }) => {
            state.webhook_secrets.forget(&id);
            return Err(unknown(&id));
        }
        Err(err) => return Err(error(err)),
    };
    tracing::info!(
        delivery.id = %delivery,
        integration.id = %id,
        gitlab.event = event,
        delivery.status = status.as_str(),
        "webhook delivery stored"
    );
    if let Some(message) = rejected {
        return Err(ApiError::bad_request(format!(
            "the {event} payload cannot be read: {message}; it is stored as delivery {delivery} and can be replayed"
        ))
        .into_response());
    }
    debug_assert!(status != Status::Rejected);
    Ok(Json(Acknowledgement {
        delivery,
        status: status.as_str().to_owned(),
    }))
}

fn unknown(id: &str) -> Response {
    ApiError::not_found(format!(
        "no GitLab integration {id:?}; check the hook's URL"
    ))
    .into_response()
}

fn error(err: StoreError) -> Response {
    ApiError::from(err).into_response()
}
