//! `/runs/{id}`: a run's state, transitions, plan summary and live log,
//! with the Confirm / Discard / Cancel buttons that are legal now for a
//! caller who may write.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gantry_domain::Role;
use gantry_domain::run::{Command, Kind, State as RunState, transition};
use gantry_store::runs as stored_runs;
use serde::Deserialize;

use crate::extract::ApiQuery;
use crate::routes::runs::{self, LogParams, RunView};
use crate::routes::stacks;
use crate::state::AppState;
use crate::web::page::{Failure, Layout, OrPage, PageResult, render, see_other};
use crate::web::session::{Posted, Viewer};
use crate::web::stacks::{GitLabLinks, links_of};

/// How much of the end of a log the page shows; the rest is a link away,
/// and what comes next streams in.
const LOG_TAIL_BYTES: usize = 64 * 1024;

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    layout: Layout,
    run: RunView,
    stack_name: String,
    links: GitLabLinks,
    short_sha: String,
    ended: bool,
    log: String,
    log_cut: bool,
    log_after: i64,
    may_confirm: bool,
    may_discard: bool,
    may_cancel: bool,
}

pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let principal = &viewer.principal;
    let run = runs::show(State(state.clone()), principal.clone(), Path(id.clone()))
        .await
        .or_page(&viewer)?
        .0;
    let stack = stacks::show(
        State(state.clone()),
        principal.clone(),
        Path(run.stack.clone()),
    )
    .await
    .or_page(&viewer)?
    .0;
    let writer = principal
        .require(&state, Role::Write, &stack.space)
        .await
        .is_ok();
    let links = links_of(&state, &stack).await.or_page(&viewer)?;
    let (log, log_after, log_cut) = async {
        let mut conn = state.store.conn().await?;
        stored_runs::log_tail(&mut conn, &id, LOG_TAIL_BYTES).await
    }
    .await
    .or_page(&viewer)?;
    let (kind, now) = (
        Kind::parse(&run.kind).unwrap_or(Kind::Tracked),
        RunState::parse(&run.state).unwrap_or(RunState::Failed),
    );
    let legal = |command| writer && transition(kind, now, command, stack.autodeploy).is_ok();
    let page = RunPage {
        layout: Layout::new(format!("Run {}", &run.id), Some(&viewer)),
        stack_name: stack.name.clone(),
        short_sha: run.commit_sha.chars().take(8).collect(),
        ended: now.is_terminal(),
        log,
        log_cut,
        log_after,
        may_confirm: legal(Command::Confirm),
        may_discard: legal(Command::Discard),
        may_cancel: legal(Command::Cancel),
        links,
        run,
    };
    Ok(render(StatusCode::OK, &page))
}

/// The whole log as text, as the API gives it.
pub async fn log(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    runs::logs(
        State(state),
        viewer.principal.clone(),
        Path(id),
        ApiQuery(LogParams { follow: false }),
        HeaderMap::new(),
    )
    .await
    .or_page(&viewer)
}

#[derive(Deserialize)]
pub struct AfterParams {
    after: Option<i64>,
}

/// The live log as server-sent events, after chunk `?after=` (or the
/// `Last-Event-ID` of a reconnecting browser).
pub async fn events(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(params): Query<AfterParams>,
    headers: HeaderMap,
) -> PageResult {
    let mut headers = headers;
    if !headers.contains_key("last-event-id")
        && let Some(after) = params.after
        && let Ok(value) = after.to_string().parse()
    {
        headers.insert("last-event-id", value);
    }
    runs::logs(
        State(state),
        viewer.principal.clone(),
        Path(id),
        ApiQuery(LogParams { follow: true }),
        headers,
    )
    .await
    .or_page(&viewer)
}

/// `POST /runs/{id}/confirm|discard|cancel`, then back to the run.
pub async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    posted: Posted<serde::de::IgnoredAny>,
) -> Response {
    let viewer = &posted.viewer;
    let (state, principal, path) = (State(state), viewer.principal.clone(), Path(id.clone()));
    let done = match action.as_str() {
        "confirm" => runs::confirm(state, principal, path).await,
        "discard" => runs::discard(state, principal, path).await,
        "cancel" => runs::cancel(state, principal, path).await,
        _ => {
            let failure = Failure {
                status: StatusCode::NOT_FOUND,
                message: format!("A run has no action {action:?}."),
            };
            return crate::web::failure(Some(viewer), failure);
        }
    };
    match done {
        Ok(_) => see_other(&format!("/runs/{id}")),
        Err(error) => crate::web::failure(Some(viewer), error).into_response(),
    }
}
