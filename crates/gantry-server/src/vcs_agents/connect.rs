//! The server's end of an agent connection: `GET /api/v1/vcs-agents/connect`
//! authenticates the pool token, answers `101 Switching Protocols`, and
//! then runs an HTTP/2 client over the upgraded connection for as long as
//! it lives: recorded in the database (refreshed every heartbeat, so every
//! server lists it), registered in the [`Hub`], and ended when the agent
//! goes, the pool is deleted or the server stops.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gantry_store::Millis;
use gantry_store::vcs_agent_pools::{self, Connection, Pool};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{
    AGENT_ID, AGENT_NAME, AGENT_VERSION, HEARTBEAT, HEARTBEAT_TIMEOUT, Hub, Link, PROTOCOL,
};
use crate::error::ApiError;
use crate::state::AppState;

/// A header an agent introduced itself with: short and printable.
fn introduced(headers: &HeaderMap, name: &str, default: &str) -> Result<String, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(default.to_owned());
    };
    match value.to_str() {
        Ok(text)
            if !text.is_empty() && text.len() <= 100 && !text.chars().any(char::is_control) =>
        {
            Ok(text.to_owned())
        }
        _ => Err(ApiError::bad_request(format!(
            "`{name}` must be 1 to 100 printable characters"
        ))),
    }
}

/// An agent of a pool connects. Authenticated by the pool's token as
/// bearer; `Upgrade: gantry-vcs-agent` required.
pub async fn connect(
    State(state): State<AppState>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized("connect with the pool token as `Authorization: Bearer <token>`")
        })?;
    let pool = {
        let mut conn = state.store.conn().await?;
        vcs_agent_pools::authenticate(&mut conn, token.trim())
            .await?
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "the pool token is not one of a VCS agent pool; it may have been revoked",
                )
            })?
    };
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok());
    if !upgrade.is_some_and(|value| value.eq_ignore_ascii_case(PROTOCOL)) {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            format!("connect with `Connection: upgrade` and `Upgrade: {PROTOCOL}`"),
        ));
    }
    let now = Millis::now();
    let connection = Connection {
        id: uuid::Uuid::new_v4().to_string(),
        pool_id: pool.id.clone(),
        agent_id: introduced(headers, AGENT_ID, "unknown")?,
        name: introduced(headers, AGENT_NAME, "agent")?,
        version: introduced(headers, AGENT_VERSION, "unknown")?,
        connected_at: now.0,
        last_seen_at: now.0,
    };
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let pool_id = pool.id.clone();
        let connection_id = connection.id.clone();
        let io = match upgraded.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::warn!(vcs_agent.pool = %pool_id, %error, "an agent's connection upgrade failed");
                return;
            }
        };
        if let Err(error) = hold(&state, &pool, connection, io).await {
            tracing::warn!(vcs_agent.pool = %pool_id, vcs_agent.connection = %connection_id, %error, "VCS agent connection failed");
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    Ok(response)
}

/// Runs one connection to its end.
async fn hold(
    state: &AppState,
    pool: &Pool,
    connection: Connection,
    io: hyper::upgrade::Upgraded,
) -> anyhow::Result<()> {
    let (sender, link) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(HEARTBEAT)
        .keep_alive_timeout(HEARTBEAT_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(io)
        .await?;
    {
        let mut conn = state.store.conn().await?;
        vcs_agent_pools::connected(&mut conn, &connection).await?;
        // Writes paused for want of an agent go out now.
        gantry_store::outbox::resume_private(&mut conn, &format!("private://{}", pool.id)).await?;
    }
    let hub: &Arc<Hub> = &state.vcs_agents;
    let hang_up = Arc::new(tokio::sync::Notify::new());
    hub.add(
        &pool.id,
        Link {
            connection_id: connection.id.clone(),
            sender,
            hang_up: hang_up.clone(),
        },
    );
    state.store.outbox_signal().notify_waiters();
    tracing::info!(
        vcs_agent.pool = %pool.id,
        vcs_agent.name = %connection.name,
        vcs_agent.version = %connection.version,
        "VCS agent connected"
    );
    let mut stopping = state.shutting_down.clone();
    let mut refresh = tokio::time::interval(HEARTBEAT);
    tokio::pin!(link);
    let why = loop {
        tokio::select! {
            ended = &mut link => break match ended {
                Ok(()) => "the agent hung up".to_owned(),
                Err(error) => format!("the connection broke: {error}"),
            },
            () = hang_up.notified() => break "its pool was deleted".to_owned(),
            _ = stopping.changed() => break "the server is stopping".to_owned(),
            _ = refresh.tick() => {
                let seen = async {
                    let mut conn = state.store.conn().await?;
                    vcs_agent_pools::seen(&mut conn, &connection.id, Millis::now()).await
                };
                match seen.await {
                    Ok(true) => {}
                    Ok(false) => break "its pool was deleted".to_owned(),
                    Err(error) => tracing::warn!(%error, "cannot refresh a VCS agent connection"),
                }
            }
        }
    };
    hub.remove(&pool.id, &connection.id);
    let mut conn = state.store.conn().await?;
    vcs_agent_pools::disconnected(&mut conn, &connection.id).await?;
    tracing::info!(vcs_agent.pool = %pool.id, vcs_agent.name = %connection.name, reason = %why, "VCS agent disconnected");
    Ok(())
}
