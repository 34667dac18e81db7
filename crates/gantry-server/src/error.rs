use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer: `{"error": {"code", "message"}}` with its status. The
/// message names what was wrong and, where it can, what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The JSON body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `forbidden`.
    code: &'static str,
    /// What went wrong, for people.
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// GitLab could not be asked (down, unreachable, rate limiting).
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "gitlab_unavailable", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }
}

/// Failures of our own (the database, a bug) are logged in full and
/// answered with a generic 500: their text may name internals.
impl From<gantry_store::StoreError> for ApiError {
    fn from(err: gantry_store::StoreError) -> Self {
        tracing::error!(error = %err, "request failed on the database");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to complete the request; its log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A name that is empty, too long or has no usable slug: 422.
impl From<gantry_domain::NameError> for ApiError {
    fn from(err: gantry_domain::NameError) -> Self {
        Self::invalid(err.to_string())
    }
}

/// A stack field that does not parse: 422 naming the field.
impl From<gantry_domain::stack::StackFieldError> for ApiError {
    fn from(err: gantry_domain::stack::StackFieldError) -> Self {
        Self::invalid(err.to_string())
    }
}

impl From<gantry_domain::MissingCommand> for ApiError {
    fn from(err: gantry_domain::MissingCommand) -> Self {
        Self::invalid(err.to_string())
    }
}

/// A run that cannot do what was asked in its state: 409.
impl From<gantry_domain::run::IllegalTransition> for ApiError {
    fn from(err: gantry_domain::run::IllegalTransition) -> Self {
        Self::conflict(err.to_string())
    }
}

impl From<gantry_store::integrations::SaveIntegrationError> for ApiError {
    fn from(err: gantry_store::integrations::SaveIntegrationError) -> Self {
        use gantry_store::integrations::SaveIntegrationError as E;
        match err {
            E::IdTaken(_) | E::DefaultTaken(_) => Self::conflict(err.to_string()),
            E::Store(err) => err.into(),
        }
    }
}

impl From<gantry_store::stacks::SaveStackError> for ApiError {
    fn from(err: gantry_store::stacks::SaveStackError) -> Self {
        use gantry_store::stacks::SaveStackError as E;
        match err {
            E::IdTaken(_) => Self::conflict(err.to_string()),
            E::Store(err) => err.into(),
        }
    }
}

/// An integration whose token cannot be opened, or whose host URL makes no
/// client: the integration must be fixed, so 422 with what to do.
impl From<crate::gitlab::AccessError> for ApiError {
    fn from(err: crate::gitlab::AccessError) -> Self {
        Self::invalid(err.to_string())
    }
}

/// A cursor this server did not give out: 422.
impl From<gantry_store::CursorError> for ApiError {
    fn from(err: gantry_store::CursorError) -> Self {
        Self::invalid(err.to_string())
    }
}
