//! Runs: list and trigger per stack, show, confirm,
//! discard, cancel. `read` sees runs; `write` triggers and acts on them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_domain::run::{Command, Kind, State as RunState};
use gantry_domain::{Role, Summary};
use gantry_gitlab::{GitLabError, projects};
use gantry_store::runs::{self, Created, NewRun, Run};
use gantry_store::stacks::Stack;
use gantry_store::{Conn, Millis, integrations};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Principal, Target};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::stacks::{authorized, guarded};
use crate::state::AppState;
use crate::views::{List, ListParams, timestamp};

#[derive(Serialize, ToSchema)]
pub struct TransitionView {
    pub state: String,
    pub at: String,
    pub cause: String,
}

#[derive(Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub stack: String,
    /// `tracked` or `proposed`.
    pub kind: String,
    pub state: String,
    /// Why a run failed or was canceled.
    pub reason: Option<String>,
    pub commit_sha: String,
    pub branch: String,
    pub merge_request_iid: Option<i64>,
    /// `delivery:<id>` or `api-key:<id>`.
    pub trigger: String,
    /// `{add, change, destroy, resources}` once planned.
    #[schema(value_type = Option<Object>)]
    pub summary: Option<Summary>,
    pub created_at: String,
    pub updated_at: String,
    pub transitions: Vec<TransitionView>,
}

async fn view(conn: &mut Conn, run: Run) -> Result<RunView, ApiError> {
    let transitions = runs::transitions(conn, &run.id).await?;
    Ok(RunView {
        transitions: transitions
            .into_iter()
            .map(|t| TransitionView {
                state: t.state.as_str().to_owned(),
                at: timestamp(t.at),
                cause: t.cause,
            })
            .collect(),
        id: run.id,
        stack: run.stack_id,
        kind: run.kind.as_str().to_owned(),
        state: run.state.as_str().to_owned(),
        reason: run.reason,
        commit_sha: run.commit_sha,
        branch: run.branch,
        merge_request_iid: run.merge_request_iid,
        trigger: run.trigger,
        summary: run.summary,
        created_at: timestamp(run.created_at),
        updated_at: timestamp(run.updated_at),
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunListParams {
    pub cursor: Option<String>,
    pub limit: Option<u32>,
    /// Only runs in this state.
    pub state: Option<String>,
    /// `tracked` or `proposed`.
    pub kind: Option<String>,
}

/// A stack's runs, newest first.
#[utoipa::path(get, path = "/api/v1/stacks/{id}/runs", tag = "runs", security(("bearer" = [])), params(RunListParams),
    responses((status = 200, body = List<RunView>), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<RunListParams>,
) -> Result<Json<List<RunView>>, ApiError> {
    let page = ListParams {
        cursor: params.cursor,
        limit: params.limit,
    }
    .page()?;
    let run_state = params
        .state
        .as_deref()
        .map(|raw| {
            RunState::parse(raw)
                .ok_or_else(|| ApiError::invalid(format!("`state` {raw:?} is not a run state")))
        })
        .transpose()?;
    let kind = params
        .kind
        .as_deref()
        .map(|raw| {
            Kind::parse(raw).ok_or_else(|| {
                ApiError::invalid(format!("`kind` {raw:?} is not tracked or proposed"))
            })
        })
        .transpose()?;
    let mut conn = state.store.conn().await?;
    authorized(&mut conn, &principal, &id, Role::Read).await?;
    let (rows, next) = runs::list(&mut conn, &id, run_state, kind, &page).await?;
    let mut items = Vec::with_capacity(rows.len());
    for run in rows {
        items.push(view(&mut conn, run).await?);
    }
    Ok(Json(List {
        items,
        next_cursor: next.map(|c| c.encode()),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRun {
    /// `tracked` or `proposed`.
    pub kind: String,
    /// Default: the head of the stack's branch.
    pub commit_sha: Option<String>,
}

/// Triggers a run at a commit, or at the head of the stack's branch.
/// Needs `write` on the stack's space.
#[utoipa::path(post, path = "/api/v1/stacks/{id}/runs", tag = "runs", security(("bearer" = [])), request_body = TriggerRun,
    responses((status = 201, body = RunView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn trigger(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TriggerRun>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let kind = Kind::parse(&body.kind).ok_or_else(|| {
        ApiError::invalid(format!("`kind` {:?} is not tracked or proposed", body.kind))
    })?;
    let mut conn = state.store.conn().await?;
    let stack = authorized(&mut conn, &principal, &id, Role::Write).await?;
    let asked = match body.commit_sha.as_deref().map(str::trim) {
        Some(sha)
            if sha.len() >= 7 && sha.len() <= 64 && sha.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            Some(sha.to_lowercase())
        }
        Some(sha) => {
            return Err(ApiError::invalid(format!(
                "`commit_sha` {sha:?} is not a commit id"
            )));
        }
        None => None,
    };
    // A full id is the commit; a short one, or none, is resolved by GitLab.
    let commit = match asked {
        Some(sha) if sha.len() == 40 || sha.len() == 64 => {
            drop(conn);
            sha
        }
        asked => {
            let client = {
                let integration_id = stack.integration_id.clone().ok_or_else(|| {
                    ApiError::invalid(
                        "the stack has no integration; give it one, or pass the full `commit_sha`",
                    )
                })?;
                let integration = integrations::get(&mut conn, &integration_id)
                    .await?
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "integration {integration_id:?} no longer exists"
                        ))
                    })?;
                drop(conn);
                state.gitlab.client(&integration)?
            };
            resolve(&client, &stack, asked.as_deref()).await?
        }
    };
    let trigger = principal.actor();
    let new = NewRun {
        stack_id: &stack.id,
        kind,
        commit_sha: &commit,
        branch: &stack.branch,
        merge_request_iid: None,
        trigger: &trigger,
    };
    let mut tx = state.store.begin().await?;
    let (run, created, _) = runs::create(&mut tx, &new, Millis::now()).await?;
    if created == Created::Existing {
        return Err(ApiError::conflict(format!(
            "stack {:?} already has a {} run for commit {commit}: {}",
            stack.id,
            kind.as_str(),
            run.id
        )));
    }
    record(&mut tx, &principal, "run.trigger", &run, &stack).await?;
    let answer = view(&mut tx, run).await?;
    tx.commit().await?;
    state.runs_signal.notify_waiters();
    tracing::info!(run.id = %answer.id, stack.id = %stack.id, "run triggered");
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Run actions are changes like any other: audited in their transaction.
async fn record(
    conn: &mut Conn,
    principal: &Principal,
    action: &str,
    run: &Run,
    stack: &Stack,
) -> Result<(), ApiError> {
    let target = Target {
        kind: "run",
        id: &run.id,
        space: Some(&stack.space_id),
    };
    let detail =
        json!({ "stack": stack.id, "kind": run.kind.as_str(), "state": run.state.as_str() });
    principal.audit(conn, action, target, detail).await
}

/// The full id of `asked` (a short commit id), or of the head of the
/// stack's branch, from GitLab: runs always carry the full id, so the same
/// commit never gets two runs under two spellings.
async fn resolve(
    client: &gantry_gitlab::GitLab,
    stack: &Stack,
    asked: Option<&str>,
) -> Result<String, ApiError> {
    let project_id = u64::try_from(stack.project_id).map_err(|_| {
        ApiError::invalid(format!(
            "the stack's project id {} is not a GitLab id",
            stack.project_id
        ))
    })?;
    let found = match asked {
        Some(sha) => projects::commit_id(client, project_id, sha).await,
        None => projects::branch_head(client, project_id, &stack.branch).await,
    };
    found.map_err(|error| match (error, asked) {
        (GitLabError::NotFound { .. }, Some(sha)) => ApiError::invalid(format!(
            "`commit_sha` {sha:?} is not a commit of {}",
            stack.repository
        )),
        (GitLabError::NotFound { .. }, None) => ApiError::invalid(format!(
            "branch {:?} does not exist in {}; pass `commit_sha` or fix the stack's branch",
            stack.branch, stack.repository
        )),
        (error, _) if error.is_transient() => ApiError::bad_gateway(format!("{error}; try again")),
        (error, _) => ApiError::invalid(error.to_string()),
    })
}

async fn run_for(
    conn: &mut Conn,
    principal: &Principal,
    id: &str,
    needed: Role,
) -> Result<(Run, Stack), ApiError> {
    let not_found = || ApiError::not_found(format!("no run {id:?} that you can see"));
    let run = runs::get(conn, id).await?.ok_or_else(not_found)?;
    let stack = guarded(conn, principal, &run.stack_id, needed, not_found).await?;
    Ok((run, stack))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs", security(("bearer" = [])),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let mut conn = state.store.conn().await?;
    let (run, _) = run_for(&mut conn, &principal, &id, Role::Read).await?;
    Ok(Json(view(&mut conn, run).await?))
}

async fn act(
    state: &AppState,
    principal: &Principal,
    id: &str,
    command: Command,
) -> Result<Json<RunView>, ApiError> {
    let mut tx = state.store.begin().await?;
    let (_, stack) = run_for(&mut tx, principal, id, Role::Write).await?;
    let (verb, action) = match command {
        Command::Confirm => ("confirmed", "run.confirm"),
        Command::Discard => ("discarded", "run.discard"),
        _ => ("canceled", "run.cancel"),
    };
    let cause = format!("{verb} by {}", principal.actor());
    let run = runs::advance(
        &mut tx,
        id,
        command,
        &cause,
        stack.autodeploy,
        Millis::now(),
    )
    .await??;
    record(&mut tx, principal, action, &run, &stack).await?;
    let answer = view(&mut tx, run).await?;
    tx.commit().await?;
    state.runs_signal.notify_waiters();
    state.logs_signal.notify_waiters();
    tracing::info!(run.id = %id, run.state = %answer.state, "run {verb}");
    Ok(Json(answer))
}

#[derive(Deserialize, IntoParams)]
pub struct LogParams {
    /// Stream the log as server-sent events until the run ends.
    #[serde(default)]
    pub follow: bool,
}

/// The run's log so far, already redacted, as plain text; with
/// `?follow=true`, server-sent events: a `log` event per chunk (its `id`
/// is the chunk's number, so `Last-Event-ID` resumes after it) and one
/// `end` event with the run's final state when the run ends.
#[utoipa::path(get, path = "/api/v1/runs/{id}/logs", tag = "runs", security(("bearer" = [])), params(LogParams),
    responses((status = 200, body = String, content_type = "text/plain"),
        (status = 200, description = "with `follow=true`", content_type = "text/event-stream"),
        (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<LogParams>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let mut conn = state.store.conn().await?;
    run_for(&mut conn, &principal, &id, Role::Read).await?;
    if params.follow {
        let after = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(-1);
        return Ok(crate::follow::follow(state.clone(), id, after).into_response());
    }
    let text = runs::log(&mut conn, &id).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Confirms an unconfirmed tracked run, so it applies. Needs `write`.
#[utoipa::path(post, path = "/api/v1/runs/{id}/confirm", tag = "runs", security(("bearer" = [])),
    responses((status = 200, body = RunView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn confirm(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    act(&state, &principal, &id, Command::Confirm).await
}

/// Discards an unconfirmed tracked run. Needs `write`.
#[utoipa::path(post, path = "/api/v1/runs/{id}/discard", tag = "runs", security(("bearer" = [])),
    responses((status = 200, body = RunView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn discard(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    act(&state, &principal, &id, Command::Discard).await
}

/// Cancels a run that has not started applying. Needs `write`.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs", security(("bearer" = [])),
    responses((status = 200, body = RunView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    act(&state, &principal, &id, Command::Cancel).await
}
