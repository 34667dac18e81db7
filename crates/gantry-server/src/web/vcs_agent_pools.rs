//! `/vcs-agent-pools`: the pools a caller can read and their connected
//! agents.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;

use crate::extract::ApiQuery;
use crate::routes::vcs_agent_pools::{self, PoolView};
use crate::state::AppState;
use crate::views::ListParams;
use crate::web::page::{Layout, OrPage, PageResult, render};
use crate::web::session::Viewer;

#[derive(Template)]
#[template(path = "vcs_agent_pools.html")]
struct PoolsPage {
    layout: Layout,
    pools: Vec<PoolView>,
}

pub async fn list(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let params = ListParams {
        cursor: None,
        limit: Some(500),
    };
    let list = vcs_agent_pools::list(State(state), viewer.principal.clone(), ApiQuery(params))
        .await
        .or_page(&viewer)?
        .0;
    let page = PoolsPage {
        layout: Layout::new("VCS agent pools", Some(&viewer)),
        pools: list.items,
    };
    Ok(render(StatusCode::OK, &page))
}
