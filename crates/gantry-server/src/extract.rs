//! Extractors that turn bad input into [`ApiError`]s in our format.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::API_BODY_LIMIT;
use crate::error::ApiError;

/// A JSON request body. Any content type is read as JSON. Unparseable
/// JSON is a 400; JSON of the wrong shape (a missing or unknown field, a
/// wrong type) is a 422 that names the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(API_BODY_LIMIT)
            } else {
                ApiError::bad_request(format!("cannot read the request body: {rejection}"))
            }
        })?;
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(deserializer)
            .map(ApiJson)
            .map_err(|err| {
                let path = err.path().to_string();
                let inner = err.into_inner();
                match inner.classify() {
                    serde_json::error::Category::Data if path.is_empty() || path == "." => {
                        ApiError::invalid(format!("invalid request body: {inner}"))
                    }
                    serde_json::error::Category::Data => {
                        ApiError::invalid(format!("invalid request body: `{path}`: {inner}"))
                    }
                    _ => ApiError::bad_request(format!(
                        "the request body is not valid JSON: {inner}"
                    )),
                }
            })
    }
}

/// Query parameters; a malformed one is a 400 that names it.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}
