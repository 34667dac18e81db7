//! Signing in to the web UI: a session cookie for an API key, CSRF tokens
//! for every form, and the `?next=` a sign-in returns to.
//!
//! The session cookie holds a random secret whose SHA-256 is stored; the
//! session acts as its API key, with the key's roles, through the same
//! [`Principal`] and checks as the API. A form's CSRF token is derived from
//! the session secret (never stored): a page of another origin can neither
//! read it nor forge it. The sign-in form itself, which has no session
//! yet, carries a token that must match a cookie set with the form.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use gantry_store::{Millis, sessions};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::Principal;
use crate::state::AppState;
use crate::web::page::{Failure, PageError, failure};

pub const SESSION_COOKIE: &str = "gantry_session";
pub const LOGIN_CSRF_COOKIE: &str = "gantry_login_csrf";

/// The signed-in user of a page: the session's key as a [`Principal`], and
/// the CSRF token its forms carry.
#[derive(Clone)]
pub struct Viewer {
    pub principal: Principal,
    pub csrf: String,
}

/// The value of cookie `name` in a request's headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// The CSRF token of a session: derived from its secret, so that it needs
/// no storage and changes with every session.
pub fn csrf_of(session_secret: &str) -> String {
    let digest = Sha256::digest(format!("gantry-csrf:{session_secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a posted token matches the expected one, in constant time.
pub fn tokens_match(expected: &str, posted: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(posted.as_bytes()))
}

/// Where a sign-in may return to: a path of this server (`/runs/x?y`),
/// never another origin (`//evil`, `https://evil`, `/\evil`).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !path.chars().any(|c| c.is_control()) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Lax`, `Path=/`, `Secure`
/// when the server is reached over https; `max_age` `None` for a
/// browser-session cookie, zero to delete it.
pub fn set_cookie(
    state: &AppState,
    name: &str,
    value: &str,
    max_age: Option<time::Duration>,
) -> HeaderValue {
    let mut cookie = Cookie::build((name, value))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(state.config.public_url.starts_with("https://"));
    if let Some(age) = max_age {
        cookie = cookie.max_age(age);
    }
    // A cookie of ASCII names and base64url values is a valid header.
    HeaderValue::from_str(&cookie.build().to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// The sign-in page for a request without a session, returning to it.
fn to_login(parts: &Parts) -> Response {
    // A form posted without a session cannot be sent again after the
    // sign-in: back to the start instead.
    let wanted = if parts.method == axum::http::Method::GET {
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned()
    } else {
        "/".to_owned()
    };
    let next = url::form_urlencoded::byte_serialize(wanted.as_bytes()).collect::<String>();
    Redirect::to(&format!("/login?next={next}")).into_response()
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login(parts));
        };
        let found = async {
            let mut conn = state.store.conn().await?;
            sessions::authenticate(&mut conn, &secret, Millis::now()).await
        };
        match found.await {
            Ok(Some(key)) => Ok(Viewer {
                principal: Principal {
                    key_id: key.id,
                    name: key.name,
                    roles: key.roles,
                },
                csrf: csrf_of(&secret),
            }),
            Ok(None) => Err(to_login(parts)),
            Err(error) => Err(failure(None, error)),
        }
    }
}

/// A form posted by a signed-in user, its CSRF token checked: the
/// extractor every page that changes something takes, so none forgets.
pub struct Posted<T> {
    pub viewer: Viewer,
    pub form: T,
}

/// The CSRF token field of every form.
#[derive(serde::Deserialize)]
struct Token {
    #[serde(default)]
    csrf_token: String,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, crate::API_BODY_LIMIT)
            .await
            .map_err(|_| failure(Some(&viewer), Failure::too_large()))?;
        let token: Token = serde_urlencoded::from_bytes(&bytes).unwrap_or(Token {
            csrf_token: String::new(),
        });
        if !tokens_match(&viewer.csrf, &token.csrf_token) {
            return Err(failure(Some(&viewer), Failure::csrf()));
        }
        let form = serde_urlencoded::from_bytes(&bytes)
            .map_err(|error| failure(Some(&viewer), Failure::bad_form(&error.to_string())))?;
        Ok(Posted { viewer, form })
    }
}

/// A new session for `key_id`, with the cookie that carries it.
pub async fn start(state: &AppState, key_id: &str) -> Result<HeaderValue, PageError> {
    let created = async {
        let mut conn = state.store.conn().await?;
        sessions::create(&mut conn, key_id, Millis::now()).await
    };
    let secret: SecretString = created.await.map_err(|error| failure(None, error))?;
    Ok(set_cookie(
        state,
        SESSION_COOKIE,
        secret.expose_secret(),
        None,
    ))
}
