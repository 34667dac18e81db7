//! `/stacks` and `/stacks/{id}`: the stacks a caller can read, and one
//! stack's settings and runs, newest first, a page at a time.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gantry_store::integrations;
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::routes::runs::{self, RunListParams, RunView};
use crate::routes::stacks::{self, StackView};
use crate::state::AppState;
use crate::views::ListParams;
use crate::web::page::{Layout, OrPage, PageResult, render};
use crate::web::session::Viewer;

/// Runs shown on one page of a stack.
const RUNS_PER_PAGE: u32 = 25;

/// Links into GitLab at the integration's user-facing host; none when the
/// host is not reachable by users (`private://…`) or the stack has no
/// integration.
pub struct GitLabLinks {
    project: Option<String>,
}

impl GitLabLinks {
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    pub fn commit(&self, sha: &str) -> Option<String> {
        self.project.as_ref().map(|p| format!("{p}/-/commit/{sha}"))
    }

    pub fn merge_request(&self, iid: &i64) -> Option<String> {
        self.project
            .as_ref()
            .map(|p| format!("{p}/-/merge_requests/{iid}"))
    }

    pub fn branch(&self, branch: &str) -> Option<String> {
        self.project
            .as_ref()
            .map(|p| format!("{p}/-/tree/{branch}"))
    }
}

/// The GitLab links of a stack the caller may read.
pub async fn links_of(state: &AppState, stack: &StackView) -> Result<GitLabLinks, ApiError> {
    let Some(id) = &stack.integration else {
        return Ok(GitLabLinks { project: None });
    };
    let mut conn = state.store.conn().await?;
    let host = integrations::get(&mut conn, id)
        .await?
        .map(|integration| integration.user_facing_host_url)
        .filter(|host| host.starts_with("http://") || host.starts_with("https://"));
    Ok(GitLabLinks {
        project: host.map(|host| format!("{}/{}", host.trim_end_matches('/'), stack.repository)),
    })
}

#[derive(Deserialize)]
pub struct CursorParams {
    cursor: Option<String>,
}

#[derive(Template)]
#[template(path = "stacks.html")]
struct StacksPage {
    layout: Layout,
    stacks: Vec<StackView>,
    next: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(params): Query<CursorParams>,
) -> PageResult {
    let params = ListParams {
        cursor: params.cursor,
        limit: Some(50),
    };
    let list = stacks::list(State(state), viewer.principal.clone(), ApiQuery(params))
        .await
        .or_page(&viewer)?
        .0;
    let page = StacksPage {
        layout: Layout::new("Stacks", Some(&viewer)),
        stacks: list.items,
        next: list.next_cursor,
    };
    Ok(render(StatusCode::OK, &page))
}

#[derive(Template)]
#[template(path = "stack.html")]
struct StackPage {
    layout: Layout,
    stack: StackView,
    workflow: String,
    links: GitLabLinks,
    runs: Vec<RunView>,
    next: Option<String>,
    first_page: bool,
}

impl StackPage {
    fn short<'a>(&self, sha: &'a str) -> &'a str {
        sha.get(..8).unwrap_or(sha)
    }
}

pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(params): Query<CursorParams>,
) -> PageResult {
    let principal = &viewer.principal;
    let stack = stacks::show(State(state.clone()), principal.clone(), Path(id.clone()))
        .await
        .or_page(&viewer)?
        .0;
    let first_page = params.cursor.is_none();
    let query = RunListParams {
        cursor: params.cursor,
        limit: Some(RUNS_PER_PAGE),
        state: None,
        kind: None,
    };
    let list = runs::list(
        State(state.clone()),
        principal.clone(),
        Path(id),
        ApiQuery(query),
    )
    .await
    .or_page(&viewer)?
    .0;
    let links = links_of(&state, &stack).await.or_page(&viewer)?;
    let page = StackPage {
        layout: Layout::new(stack.name.clone(), Some(&viewer)),
        workflow: serde_json::to_string_pretty(&stack.vendor).unwrap_or_default(),
        stack,
        links,
        runs: list.items,
        next: list.next_cursor,
        first_page,
    };
    Ok(render(StatusCode::OK, &page))
}
