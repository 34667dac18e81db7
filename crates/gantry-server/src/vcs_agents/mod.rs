//! VCS agents: processes inside a private network that dial out to the
//! server and carry the GitLab traffic of integrations whose
//! `user_facing_host_url` is `private://<pool>`.
//!
//! The agent opens `GET /api/v1/vcs-agents/connect` with its pool token and
//! `Upgrade: gantry-vcs-agent`; after the `101` the roles turn around: the
//! server is the HTTP/2 client and the agent the HTTP/2 server on that one
//! connection (hyper on both ends). Every GitLab request is one HTTP/2
//! stream, so requests multiplex, bodies stream both ways under HTTP/2's
//! flow control, and PING frames from both ends notice a dead connection
//! within seconds.
//!
//! - [`Hub`]: this server's live connections, by pool, and the [`Tunnel`]
//!   the GitLab client and source fetcher send through.
//! - `connect`: the upgrade endpoint and the life of one connection.
//! - `git_proxy`: a loopback endpoint that git fetches a source through.
//! - `agent`: the agent's side (`gantry vcs-agent`).
//!
//! With several servers each agent connects to every one of them (its
//! `--server` repeats), so any server can reach GitLab; docs/scale.md.

pub mod agent;
pub mod connect;
pub mod git_proxy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_gitlab::tunnel::{self, Tunnel, TunnelBody, TunnelError, TunnelFuture};
use hyper::client::conn::http2::SendRequest;

/// The `Upgrade` protocol an agent asks for.
pub const PROTOCOL: &str = "gantry-vcs-agent";
/// How often each end sends a PING, and how long it waits for the answer.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// The headers an agent introduces itself with.
pub const AGENT_ID: &str = "gantry-agent-id";
pub const AGENT_NAME: &str = "gantry-agent-name";
pub const AGENT_VERSION: &str = "gantry-agent-version";

/// The pool of a `user_facing_host_url`, when it is `private://<pool>`.
pub fn pool_of(user_facing_host_url: &str) -> Option<&str> {
    user_facing_host_url.strip_prefix("private://")
}

/// One agent connection this server holds.
struct Link {
    connection_id: String,
    sender: SendRequest<TunnelBody>,
    hang_up: Arc<tokio::sync::Notify>,
}

/// This server's live agent connections, by pool.
#[derive(Default)]
pub struct Hub {
    pools: Mutex<HashMap<String, Vec<Link>>>,
    next: AtomicUsize,
}

impl Hub {
    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Link>>> {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self, pool: &str, link: Link) {
        self.pools().entry(pool.to_owned()).or_default().push(link);
    }

    fn remove(&self, pool: &str, connection_id: &str) {
        let mut pools = self.pools();
        if let Some(links) = pools.get_mut(pool) {
            links.retain(|link| link.connection_id != connection_id);
            if links.is_empty() {
                pools.remove(pool);
            }
        }
    }

    /// Agents of `pool` connected to this server.
    pub fn connected(&self, pool: &str) -> usize {
        self.pools().get(pool).map_or(0, |links| {
            links.iter().filter(|l| !l.sender.is_closed()).count()
        })
    }

    /// Hangs up on every agent of `pool` (its token was revoked).
    pub fn disconnect(&self, pool: &str) {
        for link in self.pools().get(pool).into_iter().flatten() {
            link.hang_up.notify_one();
        }
    }

    /// The next live agent of `pool`, round robin.
    fn pick(&self, pool: &str) -> Option<SendRequest<TunnelBody>> {
        let pools = self.pools();
        let live: Vec<&Link> = pools
            .get(pool)?
            .iter()
            .filter(|link| !link.sender.is_closed())
            .collect();
        if live.is_empty() {
            return None;
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
        Some(live[at].sender.clone())
    }

    /// What the GitLab client of a `private://<pool>` integration sends
    /// through.
    pub fn tunnel(self: &Arc<Self>, pool: &str) -> Arc<dyn Tunnel> {
        Arc::new(PoolTunnel {
            hub: self.clone(),
            pool: pool.to_owned(),
        })
    }
}

struct PoolTunnel {
    hub: Arc<Hub>,
    pool: String,
}

impl Tunnel for PoolTunnel {
    fn pool(&self) -> &str {
        &self.pool
    }

    fn send(&self, request: axum::http::Request<TunnelBody>) -> TunnelFuture {
        let pool = self.pool.clone();
        let sender = self.hub.pick(&pool);
        Box::pin(async move {
            let mut sender = sender.ok_or_else(|| TunnelError::NoAgent(pool.clone()))?;
            let broken = |error: hyper::Error| TunnelError::Broken {
                pool: pool.clone(),
                message: error.to_string(),
            };
            sender.ready().await.map_err(broken)?;
            let response = sender.send_request(request).await.map_err(broken)?;
            Ok(response.map(tunnel::boxed))
        })
    }
}
