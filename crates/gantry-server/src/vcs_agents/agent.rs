//! The agent's side (`gantry vcs-agent`): one outbound connection to each
//! server, upgraded and then served as HTTP/2; every request the server
//! sends is checked against the allow-list and forwarded to the target,
//! bodies streamed both ways. Reconnects with jittered backoff; on
//! shutdown it stops taking requests (GOAWAY) and lets those under way
//! finish.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use gantry_gitlab::tunnel::{self, TunnelBody, forwardable};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{AGENT_ID, AGENT_NAME, AGENT_VERSION, HEARTBEAT, HEARTBEAT_TIMEOUT, PROTOCOL};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct AgentConfig {
    /// Every server of the deployment; the agent keeps a connection to each.
    pub servers: Vec<Url>,
    pub token: SecretString,
    /// GitLab as seen inside the network, such as `https://gitlab.internal`.
    pub target: Url,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server at {server} refused the pool token ({status}): {message}")]
    Refused {
        server: String,
        status: u16,
        message: String,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Why one connection attempt did not connect.
enum Dial {
    Refused(AgentError),
    Failed(String),
}

/// Keeps the agent connected until `stopping` turns true; an error only
/// when a server refuses the token, which no retry fixes.
pub async fn run(
    config: AgentConfig,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let agent_id = uuid::Uuid::new_v4().to_string();
    let dialer = reqwest::Client::builder()
        .user_agent(concat!("gantry-vcs-agent/", env!("CARGO_PKG_VERSION")))
        .http1_only()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| AgentError::Client(error.to_string()))?;
    // No timeout: a git fetch of a large repository takes what it takes,
    // and the server's own deadline ends the request.
    let forwarder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| AgentError::Client(error.to_string()))?;
    let mut links = tokio::task::JoinSet::new();
    for server in config.servers.clone() {
        let link = Connector {
            config: config.clone(),
            server,
            agent_id: agent_id.clone(),
            dialer: dialer.clone(),
            forwarder: forwarder.clone(),
        };
        links.spawn(link.keep_connected(stopping.clone()));
    }
    while let Some(ended) = links.join_next().await {
        if let Ok(Err(error)) = ended {
            return Err(error);
        }
    }
    Ok(())
}

struct Connector {
    config: AgentConfig,
    server: Url,
    agent_id: String,
    dialer: reqwest::Client,
    forwarder: reqwest::Client,
}

impl Connector {
    async fn keep_connected(
        self,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let mut backoff = FIRST_BACKOFF;
        while !*stopping.borrow() {
            match self.dial().await {
                Ok(upgraded) => {
                    tracing::info!(server = %self.server, "connected");
                    let started = Instant::now();
                    let why = self.serve(upgraded, stopping.clone()).await;
                    tracing::info!(server = %self.server, reason = %why, "disconnected");
                    // A connection that held a while starts the backoff over.
                    if started.elapsed() > MAX_BACKOFF {
                        backoff = FIRST_BACKOFF;
                    }
                }
                Err(Dial::Refused(error)) => return Err(error),
                Err(Dial::Failed(message)) => {
                    tracing::warn!(server = %self.server, error = %message, "cannot connect; trying again");
                }
            }
            let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stopping.changed() => {}
            }
        }
        Ok(())
    }

    async fn dial(&self) -> Result<reqwest::Upgraded, Dial> {
        let url = self
            .server
            .join("api/v1/vcs-agents/connect")
            .map_err(|error| Dial::Failed(error.to_string()))?;
        let response = self
            .dialer
            .get(url)
            .bearer_auth(self.config.token.expose_secret())
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, PROTOCOL)
            .header(AGENT_ID, &self.agent_id)
            .header(AGENT_NAME, &self.config.name)
            .header(AGENT_VERSION, env!("CARGO_PKG_VERSION"))
            .send()
            .await
            .map_err(|error| Dial::Failed(error.to_string()))?;
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return response
                .upgrade()
                .await
                .map_err(|error| Dial::Failed(format!("the upgrade failed: {error}")));
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(300).collect());
        if matches!(status.as_u16(), 401 | 403) {
            return Err(Dial::Refused(AgentError::Refused {
                server: self.server.to_string(),
                status: status.as_u16(),
                message,
            }));
        }
        Err(Dial::Failed(format!(
            "the server answered {status}: {message}"
        )))
    }

    /// Serves the server's requests until the connection ends or the agent
    /// stops; why it ended.
    async fn serve(
        &self,
        upgraded: reqwest::Upgraded,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) -> String {
        let target = self.config.target.clone();
        let forwarder = self.forwarder.clone();
        let service = hyper::service::service_fn(move |request| {
            forward(forwarder.clone(), target.clone(), request)
        });
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(HEARTBEAT)
            .keep_alive_timeout(HEARTBEAT_TIMEOUT)
            .serve_connection(TokioIo::new(upgraded), service);
        tokio::pin!(connection);
        tokio::select! {
            ended = &mut connection => return ended.map_or_else(|e| format!("the connection broke: {e}"), |()| "the server hung up".to_owned()),
            _ = stopping.changed() => {}
        }
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
        "the agent is stopping".to_owned()
    }
}

/// Headers that belong to one hop, never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::HOST,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    for name in &HOP_BY_HOP {
        kept.remove(name);
    }
    kept.remove("keep-alive");
    kept.remove("proxy-connection");
    kept
}

fn plain(status: StatusCode, message: String) -> Response<TunnelBody> {
    let mut response = Response::new(tunnel::full(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Forwards one request to the target, or refuses it. Logs the method,
/// the path's class and the answer's status; never a header or the path
/// itself (it can name private projects).
async fn forward(
    http: reqwest::Client,
    target: Url,
    request: Request<Incoming>,
) -> Result<Response<TunnelBody>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let Some(class) = forwardable(&method, &path, query.as_deref()) else {
        tracing::warn!(http.method = %method, class = "refused", "refused a request outside the allow-list");
        return Ok(plain(
            StatusCode::FORBIDDEN,
            "refused by the VCS agent: it forwards only GitLab API requests (/api/v4/…) and git fetches\n".to_owned(),
        ));
    };
    let mut url = format!("{}{path}", target.as_str().trim_end_matches('/'));
    if let Some(query) = &query {
        url.push('?');
        url.push_str(query);
    }
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let mut headers = end_to_end(&parts.headers);
    headers.append(
        header::VIA,
        HeaderValue::from_static("1.1 gantry-vcs-agent"),
    );
    let sent = http
        .request(method.clone(), url)
        .headers(headers)
        .body(reqwest::Body::wrap(body))
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(http.method = %method, class = class.as_str(), %error, "the target did not answer");
            return Ok(plain(
                StatusCode::BAD_GATEWAY,
                format!("the VCS agent could not reach GitLab at {target}: {error}\n"),
            ));
        }
    };
    let status = response.status();
    tracing::info!(
        http.method = %method,
        class = class.as_str(),
        http.status = status.as_u16(),
        took_ms = started.elapsed().as_millis() as u64,
        "forwarded"
    );
    let response: axum::http::Response<reqwest::Body> = response.into();
    let (parts, body) = response.into_parts();
    let mut answer = Response::new(tunnel::boxed(body));
    *answer.status_mut() = status;
    *answer.headers_mut() = end_to_end(&parts.headers);
    Ok(answer)
}
