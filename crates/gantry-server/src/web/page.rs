//! What every page shares: the layout's facts (who is signed in, the CSRF
//! token, the asset URLs), rendering a template into a response with the
//! security headers, and the error page.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::error::ApiError;
use crate::web::assets;
use crate::web::session::Viewer;

/// The facts of the layout around every page.
pub struct Layout {
    pub title: String,
    /// The signed-in key's name; `None` on the sign-in page.
    pub user: Option<String>,
    pub csrf: String,
    pub css: &'static str,
    pub js: &'static str,
}

impl Layout {
    pub fn new(title: impl Into<String>, viewer: Option<&Viewer>) -> Self {
        Self {
            title: title.into(),
            user: viewer.map(|v| v.principal.name.clone()),
            csrf: viewer.map(|v| v.csrf.clone()).unwrap_or_default(),
            css: assets::CSS.url(),
            js: assets::JS.url(),
        }
    }
}

/// Renders `template` as an HTML response with `status`.
pub fn render(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = (status, html).into_response();
            secure(response.headers_mut());
            response
        }
        Err(error) => {
            tracing::error!(%error, "a page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render; see the server log",
            )
                .into_response()
        }
    }
}

/// The headers of every page: HTML, never cached by shared caches, no
/// script or style but our own (an injected `<script>` does not run even
/// if it got through), not framed, no referrer to other sites.
fn secure(headers: &mut axum::http::HeaderMap) {
    let set = |headers: &mut axum::http::HeaderMap, name, value| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_TYPE, "text/html; charset=utf-8");
    set(headers, header::CACHE_CONTROL, "private, no-store");
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "same-origin");
}

/// Why a page cannot be shown.
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    pub fn csrf() -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: "The form's CSRF token is missing or does not match your session: \
                      reload the page and send the form again."
                .into(),
        }
    }

    pub fn too_large() -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: "The form is larger than the server accepts.".into(),
        }
    }

    pub fn bad_form(detail: &str) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("The form could not be read: {detail}"),
        }
    }
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Self {
            status: error.status(),
            message: error.message().to_owned(),
        }
    }
}

impl From<gantry_store::StoreError> for Failure {
    fn from(error: gantry_store::StoreError) -> Self {
        ApiError::from(error).into()
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    reason: &'static str,
    message: String,
}

/// The error page for `failure`; a session that ended goes to sign-in.
pub fn failure(viewer: Option<&Viewer>, failure: impl Into<Failure>) -> Response {
    let failure = failure.into();
    if failure.status == StatusCode::UNAUTHORIZED {
        return Redirect::to("/login").into_response();
    }
    let reason = failure.status.canonical_reason().unwrap_or("Error");
    let page = ErrorPage {
        layout: Layout::new(reason, viewer),
        status: failure.status.as_u16(),
        reason,
        message: failure.message,
    };
    render(failure.status, &page)
}

/// An error page on its way out of a handler.
pub struct PageError(Box<Response>);

impl From<Response> for PageError {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A page handler's result: a response, or the error page.
pub type PageResult = Result<Response, PageError>;

/// Turns an API error into the error page, for `?` in page handlers.
pub trait OrPage<T> {
    fn or_page(self, viewer: &Viewer) -> Result<T, PageError>;
}

impl<T, E: Into<Failure>> OrPage<T> for Result<T, E> {
    fn or_page(self, viewer: &Viewer) -> Result<T, PageError> {
        self.map_err(|error| failure(Some(viewer), error).into())
    }
}

/// After a form that changed something: back to a page with a GET.
pub fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}
