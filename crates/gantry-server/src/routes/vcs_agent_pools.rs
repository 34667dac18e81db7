//! VCS agent pools: the agents that carry the GitLab traffic of
//! `private://<pool>` integrations. `read` on its space sees a pool and
//! its connected agents; `admin` creates and deletes it. The token is
//! shown once, at creation.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gantry_domain::Role;
use gantry_store::vcs_agent_pools::{self, Connection, Pool};
use gantry_store::{Conn, Millis};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Guard, Principal, Target};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::fields::{named, space_or_root};
use crate::state::AppState;
use crate::views::{List, ListParams, timestamp};

#[derive(Serialize, ToSchema)]
pub struct AgentView {
    pub name: String,
    pub version: String,
    pub connected_at: String,
    pub last_seen_at: String,
    /// Servers this agent holds a connection to.
    pub servers: usize,
}

#[derive(Serialize, ToSchema)]
pub struct PoolView {
    pub id: String,
    pub name: String,
    pub space: String,
    /// `private://<id>`: the `user_facing_host_url` of its integrations.
    pub user_facing_host_url: String,
    pub agents: Vec<AgentView>,
    /// Only in the answer to the creation; never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub created_at: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    pub name: String,
    pub space: Option<String>,
}

/// One entry per agent process: an agent connects to every server.
fn agents(connections: Vec<Connection>) -> Vec<AgentView> {
    let mut by_agent: BTreeMap<String, (Connection, usize)> = BTreeMap::new();
    for connection in connections {
        by_agent
            .entry(connection.agent_id.clone())
            .and_modify(|(first, servers)| {
                first.connected_at = first.connected_at.min(connection.connected_at);
                first.last_seen_at = first.last_seen_at.max(connection.last_seen_at);
                *servers += 1;
            })
            .or_insert((connection, 1));
    }
    let mut agents: Vec<(Connection, usize)> = by_agent.into_values().collect();
    agents.sort_by_key(|(c, _)| c.connected_at);
    agents
        .into_iter()
        .map(|(c, servers)| AgentView {
            name: c.name,
            version: c.version,
            connected_at: timestamp(c.connected_at),
            last_seen_at: timestamp(c.last_seen_at),
            servers,
        })
        .collect()
}

pub(crate) async fn view(conn: &mut Conn, pool: Pool) -> Result<PoolView, ApiError> {
    let connections = vcs_agent_pools::connections(conn, &pool.id, Millis::now()).await?;
    Ok(PoolView {
        user_facing_host_url: format!("private://{}", pool.id),
        agents: agents(connections),
        token: None,
        created_at: timestamp(pool.created_at),
        id: pool.id,
        name: pool.name,
        space: pool.space_id,
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no VCS agent pool {id:?} that you can see"))
}

async fn authorized(
    conn: &mut Conn,
    principal: &Principal,
    id: &str,
    needed: Role,
) -> Result<Pool, ApiError> {
    let pool = vcs_agent_pools::get(conn, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let guard = Guard {
        space: &pool.space_id,
        listed_to_all: false,
    };
    principal
        .authorize(conn, guard, Some(needed), || not_found(id))
        .await?;
    Ok(pool)
}

fn target(pool: &Pool) -> Target<'_> {
    Target {
        kind: "vcs_agent_pool",
        id: &pool.id,
        space: Some(&pool.space_id),
    }
}

/// Creates a pool and shows its token, once. Needs `admin` on its space.
#[utoipa::path(post, path = "/api/v1/vcs-agent-pools", tag = "vcs-agent-pools", security(("bearer" = [])), request_body = CreatePool,
    responses((status = 201, body = PoolView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreatePool>,
) -> Result<(StatusCode, Json<PoolView>), ApiError> {
    let (name, id) = named(&body.name)?;
    let space = space_or_root(body.space.as_deref());
    let mut tx = state.store.begin().await?;
    principal
        .may_create_in(&mut tx, &space, Role::Admin)
        .await?;
    let conflict = || {
        ApiError::conflict(format!(
            "a VCS agent pool with id {:?} already exists; choose another name",
            id.as_str()
        ))
    };
    if vcs_agent_pools::get(&mut tx, id.as_str()).await?.is_some() {
        return Err(conflict());
    }
    let pool = Pool {
        id: id.as_str().to_owned(),
        name: name.as_str().to_owned(),
        space_id: space,
        created_at: Millis::now().0,
    };
    let token = vcs_agent_pools::insert(&mut tx, &pool).await.map_err(|error| {
        if matches!(&error, gantry_store::StoreError::Database(e) if gantry_store::is_unique_violation(e)) {
            conflict()
        } else {
            error.into()
        }
    })?;
    principal
        .audit(&mut tx, "vcs_agent_pool.create", target(&pool), json!({}))
        .await?;
    let mut created = view(&mut tx, pool).await?;
    tx.commit().await?;
    created.token = Some(token.expose_secret().to_owned());
    Ok((StatusCode::CREATED, Json(created)))
}

/// The pools the caller can read, newest first, with their agents.
#[utoipa::path(get, path = "/api/v1/vcs-agent-pools", tag = "vcs-agent-pools", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = List<PoolView>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<List<PoolView>>, ApiError> {
    let page = params.page()?;
    let mut conn = state.store.conn().await?;
    let (rows, next) = vcs_agent_pools::list_readable(&mut conn, &principal.key_id, &page).await?;
    let mut items = Vec::with_capacity(rows.len());
    for pool in rows {
        items.push(view(&mut conn, pool).await?);
    }
    Ok(Json(List::new(items, next, |item| item)))
}

#[utoipa::path(get, path = "/api/v1/vcs-agent-pools/{id}", tag = "vcs-agent-pools", security(("bearer" = [])),
    responses((status = 200, body = PoolView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<PoolView>, ApiError> {
    let mut conn = state.store.conn().await?;
    let pool = authorized(&mut conn, &principal, &id, Role::Read).await?;
    Ok(Json(view(&mut conn, pool).await?))
}

/// Deletes a pool: its token stops working and its agents are
/// disconnected (by every server within a heartbeat). Needs `admin`.
#[utoipa::path(delete, path = "/api/v1/vcs-agent-pools/{id}", tag = "vcs-agent-pools", security(("bearer" = [])),
    responses((status = 200, body = PoolView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<PoolView>, ApiError> {
    let mut tx = state.store.begin().await?;
    let pool = authorized(&mut tx, &principal, &id, Role::Admin).await?;
    let shown = view(&mut tx, pool.clone()).await?;
    vcs_agent_pools::delete(&mut tx, &id).await?;
    principal
        .audit(&mut tx, "vcs_agent_pool.delete", target(&pool), json!({}))
        .await?;
    tx.commit().await?;
    state.vcs_agents.disconnect(&id);
    Ok(Json(shown))
}
