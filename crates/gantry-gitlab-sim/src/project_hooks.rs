//! Project hooks (list with pagination, show, create, edit, delete; all
//! need Maintainer) and rotating a personal access token, as GitLab does
//! them. GitLab never shows a hook's `token`; a rotated token is revoked
//! at once, and rotating with one again revokes its whole family.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::{
    Call, SimState, bad_request, caller_for_token, error, not_found, paginate, read, token_of,
    write,
};
use crate::state::AccessLevel::Maintainer;
use crate::state::{HOOK_EVENTS, Hook, now};

fn hook_json(project_id: u64, hook: &Hook) -> Value {
    let mut value = json!({
        "id": hook.id,
        "url": hook.url,
        "project_id": project_id,
        "enable_ssl_verification": hook.enable_ssl_verification,
        "push_events_branch_filter": null,
        "created_at": hook.created_at,
    });
    for (event, on) in &hook.events {
        value[*event] = json!(on);
    }
    value
}

fn flag(raw: &str) -> Option<bool> {
    match raw {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Applies the request's hook parameters to `hook`; a bad one is 400.
fn apply(hook: &mut Hook, call: &Call) -> Result<(), Response> {
    for (name, value) in &call.params {
        let known = HOOK_EVENTS.iter().find(|(event, _)| event == name);
        match (name.as_str(), known) {
            ("url", _) => hook.url = value.clone(),
            ("token", _) => hook.token = Some(value.clone()),
            ("enable_ssl_verification", _) => {
                hook.enable_ssl_verification =
                    flag(value).ok_or_else(|| bad_request("enable_ssl_verification is invalid"))?;
            }
            (_, Some((event, _))) => {
                let on = flag(value).ok_or_else(|| bad_request(&format!("{event} is invalid")))?;
                hook.events.insert(event, on);
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) async fn list(State(shared): SimState, Path(id): Path<String>, call: Call) -> Response {
    let (_, project_id) = answer_on_err!(call.access(&shared, &id, read(Maintainer)));
    let state = shared.lock();
    let hooks: Vec<Value> = state
        .project(project_id)
        .map(|project| {
            project
                .hooks
                .iter()
                .map(|h| hook_json(project_id, h))
                .collect()
        })
        .unwrap_or_default();
    paginate(hooks, &call.params)
}

pub(crate) async fn show(
    State(shared): SimState,
    Path((id, hook_id)): Path<(String, u64)>,
    call: Call,
) -> Response {
    let (_, project_id) = answer_on_err!(call.access(&shared, &id, read(Maintainer)));
    let state = shared.lock();
    let hook = state
        .project(project_id)
        .and_then(|project| project.hooks.iter().find(|hook| hook.id == hook_id));
    match hook {
        Some(hook) => axum::Json(hook_json(project_id, hook)).into_response(),
        None => not_found("Hook"),
    }
}

pub(crate) async fn create(
    State(shared): SimState,
    Path(id): Path<String>,
    call: Call,
) -> Response {
    let (_, project_id) = answer_on_err!(call.access(&shared, &id, write(Maintainer)));
    if call.params.get("url").is_none_or(|url| url.is_empty()) {
        return bad_request("url is missing");
    }
    let mut state = shared.lock();
    let hook_id = state.next_id();
    let Some(project) = state.project_mut(project_id) else {
        return not_found("Project");
    };
    let mut hook = Hook {
        id: hook_id,
        url: String::new(),
        token: None,
        events: HOOK_EVENTS.into_iter().collect(),
        enable_ssl_verification: true,
        created_at: now(),
    };
    answer_on_err!(apply(&mut hook, &call));
    let answer = hook_json(project_id, &hook);
    project.hooks.push(hook);
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

pub(crate) async fn edit(
    State(shared): SimState,
    Path((id, hook_id)): Path<(String, u64)>,
    call: Call,
) -> Response {
    let (_, project_id) = answer_on_err!(call.access(&shared, &id, write(Maintainer)));
    if call.params.get("url").is_none_or(|url| url.is_empty()) {
        return bad_request("url is missing");
    }
    let mut state = shared.lock();
    let hook = state
        .project_mut(project_id)
        .and_then(|project| project.hooks.iter_mut().find(|hook| hook.id == hook_id));
    let Some(hook) = hook else {
        return not_found("Hook");
    };
    answer_on_err!(apply(hook, &call));
    axum::Json(hook_json(project_id, hook)).into_response()
}

pub(crate) async fn delete(
    State(shared): SimState,
    Path((id, hook_id)): Path<(String, u64)>,
    call: Call,
) -> Response {
    let (_, project_id) = answer_on_err!(call.access(&shared, &id, write(Maintainer)));
    let mut state = shared.lock();
    let Some(project) = state.project_mut(project_id) else {
        return not_found("Project");
    };
    let before = project.hooks.len();
    project.hooks.retain(|hook| hook.id != hook_id);
    if project.hooks.len() == before {
        return not_found("Hook");
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /personal_access_tokens/self/rotate`: a new token with
/// `expires_at` (default a week from today), the old one revoked at once.
/// Rotating with a token that was already rotated revokes every token of
/// its family, as GitLab does against a leaked token.
pub(crate) async fn rotate_token(State(shared): SimState, call: Call) -> Response {
    let Some(secret) = token_of(&call.headers) else {
        return error(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    };
    let mut state = shared.lock();
    let Some(token) = state.tokens.get(&secret) else {
        return error(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    };
    if token.rotated {
        let family = token.family;
        for token in state.tokens.values_mut().filter(|t| t.family == family) {
            token.revoked = true;
        }
        return error(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    }
    drop(state);
    if caller_for_token(&shared, &secret).is_none() {
        return error(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    }
    let expires_at = match call.params.get("expires_at") {
        Some(date)
            if time::Date::parse(date, &time::format_description::well_known::Iso8601::DATE)
                .is_ok() =>
        {
            date.clone()
        }
        Some(_) => return bad_request("expires_at is invalid"),
        None => (time::OffsetDateTime::now_utc().date() + time::Duration::days(7)).to_string(),
    };
    let mut state = shared.lock();
    let Some(old) = state.tokens.get_mut(&secret) else {
        return error(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    };
    old.revoked = true;
    old.rotated = true;
    let family = old.family;
    let mut spec = old.spec.clone();
    spec.expires_at = Some(expires_at.clone());
    let new_secret = state.add_token(spec.clone());
    let Some(new) = state.tokens.get_mut(&new_secret) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "500");
    };
    new.family = family;
    let id = new.id;
    axum::Json(json!({
        "id": id,
        "name": spec.name,
        "revoked": false,
        "created_at": now(),
        "scopes": spec.scopes,
        "user_id": spec.user_id,
        "active": true,
        "expires_at": expires_at,
        "token": new_secret,
    }))
    .into_response()
}
