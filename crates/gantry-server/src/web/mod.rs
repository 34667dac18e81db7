//! The web UI: server-rendered pages (askama templates in `templates/`)
//! for people, beside the JSON API for programs.
//!
//! Pages act through the API's own handlers, called with the session's
//! [`Principal`](crate::auth::Principal): the same role checks, audit
//! entries and errors, one code path for both. Every form is a plain
//! `POST` carrying a CSRF token; reading and acting need no JavaScript
//! (the small script only follows live logs and copies secrets).

mod assets;
mod integrations;
mod markdown;
mod modules;
mod page;
mod runs;
mod session;
mod stacks;
mod vcs_agent_pools;

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use gantry_store::{api_keys, sessions};
use serde::Deserialize;

use crate::state::AppState;
use page::{Layout, render};
use session::{LOGIN_CSRF_COOKIE, SESSION_COOKIE, Viewer, cookie, safe_next, set_cookie};

pub use page::failure;

/// The routes of the web UI.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/{name}", get(assets::serve))
        .route("/integrations", get(integrations::list))
        .route(
            "/integrations/new",
            get(integrations::new_form).post(integrations::create),
        )
        .route("/integrations/{id}", get(integrations::show))
        .route("/integrations/{id}/rotate", post(integrations::rotate))
        .route(
            "/integrations/{id}/deliveries/{delivery}/replay",
            post(integrations::replay),
        )
        .route("/modules", get(modules::list))
        .route("/modules/{id}", get(modules::show))
        .route("/vcs-agent-pools", get(vcs_agent_pools::list))
        .route("/stacks", get(stacks::list))
        .route("/stacks/{id}", get(stacks::show))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/log", get(runs::log))
        .route("/runs/{id}/log/events", get(runs::events))
        .route("/runs/{id}/{action}", post(runs::act))
}

/// Whether a request is from a browser that wants a page, not JSON.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

async fn home(_viewer: Viewer) -> Redirect {
    Redirect::to("/stacks")
}

#[derive(Deserialize)]
struct NextParams {
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    next: String,
    login_csrf: String,
    error: Option<String>,
}

/// The sign-in form, with a fresh token bound to a cookie set with it.
fn login_page(
    state: &AppState,
    status: StatusCode,
    next: String,
    error: Option<String>,
) -> Response {
    let token = gantry_store::crypto::random_secret("");
    let token = secrecy::ExposeSecret::expose_secret(&token).to_owned();
    let page = LoginPage {
        layout: Layout::new("Sign in", None),
        next,
        login_csrf: token.clone(),
        error,
    };
    let mut response = render(status, &page);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_CSRF_COOKIE, &token, None),
    );
    response
}

async fn login_form(State(state): State<AppState>, Query(params): Query<NextParams>) -> Response {
    login_page(
        &state,
        StatusCode::OK,
        safe_next(params.next.as_deref()),
        None,
    )
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    api_key: String,
    next: Option<String>,
    #[serde(default)]
    login_csrf: String,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if !session::tokens_match(&expected, &form.login_csrf) {
        let message = "The sign-in form expired or came from another site: send it again.";
        return login_page(&state, StatusCode::FORBIDDEN, next, Some(message.into()));
    }
    let found = async {
        let mut conn = state.store.conn().await?;
        api_keys::authenticate(&mut conn, form.api_key.trim()).await
    };
    let key = match found.await {
        Ok(Some(key)) => key,
        Ok(None) => {
            let message = "That API key is unknown or revoked.";
            return login_page(&state, StatusCode::UNAUTHORIZED, next, Some(message.into()));
        }
        Err(error) => return failure(None, error),
    };
    let session = match session::start(&state, &key.id).await {
        Ok(cookie) => cookie,
        Err(error) => return error.into_response(),
    };
    tracing::info!(api_key.id = %key.id, "signed in to the web UI");
    let mut response = Redirect::to(&next).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, session);
    headers.append(
        header::SET_COOKIE,
        set_cookie(&state, LOGIN_CSRF_COOKIE, "", Some(time::Duration::ZERO)),
    );
    response
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    posted: session::Posted<serde::de::IgnoredAny>,
) -> Response {
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        let ended = async {
            let mut conn = state.store.conn().await?;
            sessions::end(&mut conn, &secret).await
        };
        if let Err(error) = ended.await {
            return failure(Some(&posted.viewer), error);
        }
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", Some(time::Duration::ZERO)),
    );
    response
}

/// The page of a route that does not exist.
pub fn not_found_page() -> Response {
    failure(
        None,
        page::Failure {
            status: StatusCode::NOT_FOUND,
            message: "There is no such page.".into(),
        },
    )
}
