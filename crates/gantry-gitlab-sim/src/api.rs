//! The REST endpoints, with GitLab's shapes, status codes and error bodies.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use crate::state::AccessLevel::{Guest, Reporter};
use crate::state::{AccessLevel, LoggedRequest, now};
use crate::{FaultKind, Shared, git, project_hooks, reporting, statuses};

pub(crate) type SimState = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v4/personal_access_tokens/self", get(token_self))
        .route("/api/v4/user", get(current_user))
        .route("/api/v4/projects/{id}", get(project))
        .route("/api/v4/projects/{id}/members/all/{user_id}", get(member))
        .route(
            "/api/v4/projects/{id}/hooks",
            get(project_hooks::list).post(project_hooks::create),
        )
        .route(
            "/api/v4/projects/{id}/hooks/{hook_id}",
            get(project_hooks::show)
                .put(project_hooks::edit)
                .delete(project_hooks::delete),
        )
        .route(
            "/api/v4/personal_access_tokens/self/rotate",
            post(project_hooks::rotate_token),
        )
        .route(
            "/api/v4/projects/{id}/statuses/{sha}",
            post(statuses::create_status),
        )
        .route(
            "/api/v4/projects/{id}/repository/commits/{sha}/statuses",
            get(statuses::list_statuses),
        )
        .route("/api/v4/projects/{id}/repository/compare", get(compare))
        .route("/api/v4/projects/{id}/repository/tree", get(git::tree))
        .route(
            "/api/v4/projects/{id}/repository/commits/{sha}",
            get(commit),
        )
        .route(
            "/api/v4/projects/{id}/repository/branches/{branch}",
            get(branch),
        )
        .route(
            "/api/v4/projects/{id}/merge_requests/{iid}",
            get(reporting::merge_request),
        )
        .route(
            "/api/v4/projects/{id}/merge_requests/{iid}/notes",
            get(reporting::list_notes).post(reporting::create_note),
        )
        .route(
            "/api/v4/projects/{id}/merge_requests/{iid}/notes/{note_id}",
            put(reporting::edit_note),
        )
        .route(
            "/api/v4/projects/{id}/deployments",
            get(reporting::list_deployments).post(reporting::create_deployment),
        )
        .route(
            "/api/v4/projects/{id}/deployments/{deployment_id}",
            put(reporting::edit_deployment),
        )
        .fallback(git::serve)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            log_and_fault,
        ))
        .with_state(shared)
}

/// GitLab's error body: `{"message": "…"}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

pub(crate) fn not_found(what: &str) -> Response {
    error(StatusCode::NOT_FOUND, &format!("404 {what} Not Found"))
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "401 Unauthorized")
}

fn insufficient_scope() -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(json!({
            "error": "insufficient_scope",
            "error_description": "The request requires higher privileges than provided by the access token.",
            "scope": "api read_api"
        })),
    )
        .into_response()
}

pub(crate) fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

async fn log_and_fault(State(shared): SimState, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let auth = auth_kind(request.headers());
    let via = request
        .headers()
        .get("via")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    shared.enter();
    let fault = {
        let mut state = shared.lock();
        let now = std::time::Instant::now();
        let down = state
            .outages
            .iter()
            .any(|(part, until)| path.contains(part.as_str()) && now < *until);
        let position = state
            .faults
            .iter()
            .position(|fault| path.contains(&fault.path_contains));
        if down {
            Some(FaultKind::Status(503))
        } else {
            position
                .and_then(|index| state.faults.remove(index))
                .map(|fault| fault.kind)
        }
    };
    let response = match fault {
        Some(FaultKind::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(
                status,
                &format!("{} {}", code, status.canonical_reason().unwrap_or("Error")),
            )
        }
        Some(FaultKind::RateLimited {
            retry_after,
            ratelimit_reset,
        }) => {
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                "Retry later\n", // GitLab's Rack::Attack answers in plain text.
            )
                .into_response();
            let headers = response.headers_mut();
            if let Some(seconds) = retry_after {
                headers.insert("retry-after", seconds.into());
            }
            if let Some(reset) = ratelimit_reset {
                headers.insert("ratelimit-reset", reset.into());
            }
            response
        }
        Some(FaultKind::Delay(wait)) => {
            tokio::time::sleep(wait).await;
            next.run(request).await
        }
        Some(FaultKind::DelayAnswer(wait)) => {
            let response = next.run(request).await;
            tokio::time::sleep(wait).await;
            response
        }
        None => next.run(request).await,
    };
    shared.leave();
    shared.lock().log.push(LoggedRequest {
        method,
        path,
        query,
        auth,
        status: response.status().as_u16(),
        via,
    });
    response
}

fn auth_kind(headers: &HeaderMap) -> &'static str {
    if headers.contains_key("private-token") {
        "private-token"
    } else {
        match headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
        {
            Some(value) if value.starts_with("Bearer ") => "bearer",
            Some(value) if value.starts_with("Basic ") => "basic",
            _ => "none",
        }
    }
}

/// The token of a request: `PRIVATE-TOKEN` or `Authorization: Bearer`.
pub(crate) fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get("private-token") {
        return value.to_str().ok().map(str::to_owned);
    }
    let value = headers.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

/// Who a token acts for, if GitLab would accept it: known, not revoked,
/// active, and its user not blocked.
pub(crate) struct Caller {
    pub user_id: u64,
    pub scopes: Vec<String>,
}

impl Caller {
    fn may_write(&self) -> bool {
        self.scopes.iter().any(|scope| scope == "api")
    }

    fn may_read(&self) -> bool {
        self.scopes
            .iter()
            .any(|scope| scope == "api" || scope == "read_api")
    }
}

pub(crate) fn caller_for_token(shared: &Shared, secret: &str) -> Option<Caller> {
    let state = shared.lock();
    let token = state.tokens.get(secret)?;
    if token.revoked || !token.spec.active {
        return None;
    }
    let user = state.user(token.spec.user_id)?;
    if user.state == "blocked" {
        return None;
    }
    Some(Caller {
        user_id: user.id,
        scopes: token.spec.scopes.clone(),
    })
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Caller, Response> {
    let secret = token_of(headers).ok_or_else(unauthorized)?;
    caller_for_token(shared, &secret).ok_or_else(unauthorized)
}

/// The project named by `:id`, if the caller may see it (GitLab hides
/// projects from non-members behind a 404), with the caller's level.
fn visible_project(
    shared: &Shared,
    caller: &Caller,
    id: &str,
) -> Result<(u64, AccessLevel), Response> {
    let state = shared.lock();
    let project_id = state.find_project(id).ok_or_else(|| not_found("Project"))?;
    let project = state
        .project(project_id)
        .ok_or_else(|| not_found("Project"))?;
    let level = project
        .members
        .get(&caller.user_id)
        .copied()
        .ok_or_else(|| not_found("Project"))?;
    Ok((project_id, level))
}

/// Authenticates, checks the scope for the method and finds the project.
/// What a request needs: the token's read or write scope, and an access
/// level on the project.
#[derive(Clone, Copy)]
pub(crate) struct Need {
    write: bool,
    level: AccessLevel,
}

/// A read (GET) that needs `level` on the project.
pub(crate) const fn read(level: AccessLevel) -> Need {
    Need {
        write: false,
        level,
    }
}

/// A write (POST, PUT) that needs `level` on the project.
pub(crate) const fn write(level: AccessLevel) -> Need {
    Need { write: true, level }
}

pub(crate) fn project_access(
    shared: &Shared,
    headers: &HeaderMap,
    id: &str,
    need: Need,
) -> Result<(Caller, u64), Response> {
    let caller = authenticate(shared, headers)?;
    let scoped = if need.write {
        caller.may_write()
    } else {
        caller.may_read()
    };
    if !scoped {
        return Err(insufficient_scope());
    }
    let (project_id, level) = visible_project(shared, &caller, id)?;
    if level < need.level {
        return Err(error(StatusCode::FORBIDDEN, "403 Forbidden"));
    }
    Ok((caller, project_id))
}

/// A request as GitLab's REST handlers read it: its headers (for the
/// token) and its parameters, from the query string and a form or JSON
/// body.
pub(crate) struct Call {
    pub headers: HeaderMap,
    pub params: HashMap<String, String>,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Call {
    type Rejection = Response;

    async fn from_request(request: Request, _: &S) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 25 * 1024 * 1024)
            .await
            .map_err(|_| {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "413 Request Entity Too Large",
                )
            })?;
        let params = params(&parts.uri, &parts.headers, &body);
        Ok(Self {
            headers: parts.headers,
            params,
        })
    }
}

impl Call {
    /// [`project_access`] with this request's token.
    pub fn access(&self, shared: &Shared, id: &str, need: Need) -> Result<(Caller, u64), Response> {
        project_access(shared, &self.headers, id, need)
    }
}

/// Parameters as GitLab takes them: from the query string and from a form
/// or JSON body.
fn params(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = uri
        .query()
        .map(|query| url_pairs(query.as_bytes()))
        .unwrap_or_default();
    let is_json = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
            for (key, value) in map {
                let text = match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                out.insert(key, text);
            }
        }
    } else {
        out.extend(url_pairs(body));
    }
    out
}

fn url_pairs(bytes: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

fn yes(value: Option<&String>) -> bool {
    value.is_some_and(|value| value == "true" || value == "1")
}

async fn token_self(State(shared): SimState, headers: HeaderMap) -> Response {
    if !shared.lock().token_self_endpoint {
        return error(StatusCode::NOT_FOUND, "404 Not Found");
    }
    let Some(secret) = token_of(&headers) else {
        return unauthorized();
    };
    if caller_for_token(&shared, &secret).is_none() {
        return unauthorized();
    }
    let state = shared.lock();
    let Some(token) = state.tokens.get(&secret) else {
        return unauthorized();
    };
    axum::Json(json!({
        "id": token.id,
        "name": token.spec.name,
        "revoked": token.revoked,
        "created_at": "2026-01-01T00:00:00.000Z",
        "scopes": token.spec.scopes,
        "user_id": token.spec.user_id,
        "last_used_at": now(),
        "active": token.spec.active,
        "expires_at": token.spec.expires_at,
    }))
    .into_response()
}

async fn current_user(State(shared): SimState, headers: HeaderMap) -> Response {
    let caller = answer_on_err!(authenticate(&shared, &headers));
    let state = shared.lock();
    let mut user = state.user_json(caller.user_id, &shared.url);
    user["bot"] = json!(false);
    user["created_at"] = json!("2026-01-01T00:00:00.000Z");
    axum::Json(user).into_response()
}

async fn project(State(shared): SimState, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let (_, project_id) = answer_on_err!(project_access(&shared, &headers, &id, read(Guest)));
    let state = shared.lock();
    let Some(project) = state.project(project_id) else {
        return not_found("Project");
    };
    let (namespace, name) = project.path.rsplit_once('/').unwrap_or(("", &project.path));
    axum::Json(json!({
        "id": project.id,
        "description": "",
        "default_branch": project.default_branch,
        "visibility": "private",
        "ssh_url_to_repo": format!("git@sim:{}.git", project.path),
        "http_url_to_repo": format!("{}/{}.git", shared.url, project.path),
        "web_url": format!("{}/{}", shared.url, project.path),
        "name": name,
        "name_with_namespace": project.path.replace('/', " / "),
        "path": name,
        "path_with_namespace": project.path,
        "namespace": {"name": namespace, "path": namespace, "kind": "group", "full_path": namespace},
        "archived": false,
        "created_at": "2026-01-01T00:00:00.000Z",
        "last_activity_at": now(),
    }))
    .into_response()
}

async fn member(
    State(shared): SimState,
    Path((id, user_id)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Response {
    let (_, project_id) = answer_on_err!(project_access(&shared, &headers, &id, read(Guest)));
    let state = shared.lock();
    let level = state
        .project(project_id)
        .and_then(|project| project.members.get(&user_id).copied());
    let Some(level) = level else {
        return not_found("Member");
    };
    let mut user = state.user_json(user_id, &shared.url);
    user["access_level"] = json!(level as u8);
    user["expires_at"] = Value::Null;
    axum::Json(user).into_response()
}

/// GitLab's offset pagination: `page`, `per_page` (default 20, at most
/// 100) and the `X-Page`, `X-Next-Page`, `X-Total` headers.
pub(crate) fn paginate(items: Vec<Value>, params: &HashMap<String, String>) -> Response {
    let page: usize = params
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per_page: usize = params
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let total = items.len();
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let next = if page * per_page < total {
        (page + 1).to_string()
    } else {
        String::new()
    };
    let mut response = axum::Json(slice).into_response();
    let headers = response.headers_mut();
    headers.insert("x-page", page.into());
    headers.insert("x-per-page", per_page.into());
    headers.insert("x-total", total.into());
    if let Ok(value) = next.parse() {
        headers.insert("x-next-page", value);
    }
    response
}

async fn compare(State(shared): SimState, Path(id): Path<String>, call: Call) -> Response {
    let (_, project_id) = answer_on_err!(call.access(&shared, &id, read(Reporter)));
    let params = call.params;
    let (Some(from), Some(to)) = (params.get("from"), params.get("to")) else {
        return bad_request("from is missing, to is missing");
    };
    let straight = yes(params.get("straight"));
    match git::compare(&shared, project_id, from, to, straight) {
        Ok(Some(body)) => axum::Json(body).into_response(),
        Ok(None) => not_found("Ref"),
        Err(response) => response,
    }
}

async fn commit(
    State(shared): SimState,
    Path((id, sha)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (_, project_id) = answer_on_err!(project_access(&shared, &headers, &id, read(Reporter)));
    match git::find_commit(&shared, project_id, &sha) {
        Ok(Some(body)) => axum::Json(body).into_response(),
        Ok(None) => not_found("Commit"),
        Err(response) => response,
    }
}

async fn branch(
    State(shared): SimState,
    Path((id, branch)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (_, project_id) = answer_on_err!(project_access(&shared, &headers, &id, read(Reporter)));
    match git::branch(&shared, project_id, &branch) {
        Ok(Some(body)) => axum::Json(body).into_response(),
        Ok(None) => not_found("Branch"),
        Err(response) => response,
    }
}
