//! `/modules` and `/modules/{id}`: the registry's modules a caller can
//! read, and one module's versions.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::extract::ApiQuery;
use crate::routes::modules::{self, ModuleView};
use crate::state::AppState;
use crate::views::ListParams;
use crate::web::page::{Layout, OrPage, PageResult, render};
use crate::web::session::Viewer;

#[derive(Template)]
#[template(path = "modules.html")]
struct ModulesPage {
    layout: Layout,
    modules: Vec<ModuleView>,
}

pub async fn list(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let params = ListParams {
        cursor: None,
        limit: Some(500),
    };
    let list = modules::list(State(state), viewer.principal.clone(), ApiQuery(params))
        .await
        .or_page(&viewer)?
        .0;
    let page = ModulesPage {
        layout: Layout::new("Modules", Some(&viewer)),
        modules: list.items,
    };
    Ok(render(StatusCode::OK, &page))
}

struct VersionRow {
    version: String,
    state: String,
    commit: String,
    tag: String,
    published_at: String,
}

#[derive(Template)]
#[template(path = "module.html")]
struct ModulePage {
    layout: Layout,
    module: ModuleView,
    versions: Vec<VersionRow>,
}

pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let principal = &viewer.principal;
    let module = modules::show(State(state.clone()), principal.clone(), Path(id.clone()))
        .await
        .or_page(&viewer)?
        .0;
    let versions = modules::versions(State(state), principal.clone(), Path(id))
        .await
        .or_page(&viewer)?
        .0;
    let versions = versions["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| {
                    let text = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
                    VersionRow {
                        version: text("version"),
                        state: text("state"),
                        commit: text("commit_sha").chars().take(8).collect(),
                        tag: text("tag"),
                        published_at: text("published_at"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let page = ModulePage {
        layout: Layout::new(module.name.clone(), Some(&viewer)),
        module,
        versions,
    };
    Ok(render(StatusCode::OK, &page))
}
