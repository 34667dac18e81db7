//! git fetches a source through a VCS agent pool: for the length of one
//! fetch the server listens on loopback, under a random path prefix, and
//! sends every request git makes there through the pool. git adds the
//! token itself (`http.extraHeader`), so the proxy holds no secret.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gantry_gitlab::tunnel::{self, Tunnel};
use rand::Rng;

/// A running proxy; it stops when dropped.
pub struct GitProxy {
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitProxy {
    /// Listens on a free loopback port.
    pub async fn start(tunnel: Arc<dyn Tunnel>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let prefix: String = (0..24)
            .map(|_| {
                char::from(
                    b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::thread_rng().gen_range(0..36)],
                )
            })
            .collect();
        let base = format!("http://{}/{prefix}", listener.local_addr()?);
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::new((tunnel, format!("/{prefix}"))));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { base, task })
    }

    /// Where git fetches `path` (relative to the GitLab base URL, such as
    /// `/group/project.git`) through the pool.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

async fn forward(
    State(proxy): State<Arc<(Arc<dyn Tunnel>, String)>>,
    request: Request,
) -> Response {
    let (tunnel, prefix) = &*proxy;
    let (mut parts, body) = request.into_parts();
    let Some(path) = parts.uri.path().strip_prefix(prefix.as_str()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let uri = match parts.uri.query() {
        Some(query) => format!("http://gitlab{path}?{query}"),
        None => format!("http://gitlab{path}"),
    };
    let Ok(uri) = uri.parse() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    parts.uri = uri;
    parts.headers.remove(header::HOST);
    let request = axum::http::Request::from_parts(parts, tunnel::boxed(body));
    match tunnel.send(request).await {
        Ok(response) => response.map(Body::new),
        Err(error) => (StatusCode::BAD_GATEWAY, format!("{error}\n")).into_response(),
    }
}
