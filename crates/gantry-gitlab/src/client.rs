//! The GitLab API client: the `gitlab` crate's endpoint types sent over our
//! own async reqwest client, which adds what a long-running server needs —
//! timeouts, retries with backoff for 5xx answers and transport errors,
//! `429` handling that honours `Retry-After` and `RateLimit-Reset`, a limit
//! on concurrent requests per GitLab host, metrics, and an error type that
//! says what happened in terms a caller can act on.
//!
//! One [`Http`] is shared by the whole process (one connection pool, one
//! semaphore per host); [`Http::client`] makes the [`GitLab`] of one
//! integration, which holds its token and is cheap to clone.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gitlab::api::{Endpoint, UrlBase};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use url::Url;

use crate::body::{MAX_BODY, MAX_MESSAGE_CHARS, cut, read_capped};
use crate::error_body;
use crate::metrics::ClientMetrics;
use crate::tunnel::{self, Tunnel, TunnelError};

/// How the client waits, retries and shares hosts.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Time for one whole request, connection to last byte.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Tries per call, the first included, for 5xx, 429 and transport errors.
    pub max_attempts: u32,
    /// The first backoff; each retry doubles it, with jitter, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A `429` asking for a longer wait than this fails the call at once
    /// with [`GitLabError::RateLimited`] instead of holding it.
    pub max_rate_limit_wait: Duration,
    /// Requests in flight to one GitLab host at most, over all integrations.
    pub per_host_concurrency: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            max_rate_limit_wait: Duration::from_secs(60),
            per_host_concurrency: 8,
        }
    }
}

/// A failed call, in terms a caller can act on. Messages name the host and
/// the request and carry GitLab's own message; they never hold the token.
#[derive(Debug, thiserror::Error)]
pub enum GitLabError {
    #[error("GitLab at {host} rejected the API token (401) on {request}: {message}")]
    Unauthorized {
        host: String,
        request: String,
        message: String,
    },
    #[error("GitLab at {host} refused {request} (403): {message}")]
    Forbidden {
        host: String,
        request: String,
        message: String,
    },
    #[error("GitLab at {host} found nothing at {request} (404): {message}")]
    NotFound {
        host: String,
        request: String,
        message: String,
    },
    #[error("GitLab at {host} is rate limiting {request}{}", retry_hint(*.retry_after))]
    RateLimited {
        host: String,
        request: String,
        retry_after: Option<Duration>,
    },
    #[error("GitLab at {host} refused {request} ({status}): {message}")]
    Invalid {
        host: String,
        request: String,
        status: u16,
        message: String,
    },
    #[error("GitLab at {host} failed {request} with {status} after {attempts} attempts: {message}")]
    Server {
        host: String,
        request: String,
        status: u16,
        attempts: u32,
        message: String,
    },
    #[error("could not reach GitLab at {host} for {request} after {attempts} attempts: {message}")]
    Transport {
        host: String,
        request: String,
        attempts: u32,
        message: String,
    },
    #[error("GitLab at {host} answered {request} with a body Gantry cannot read: {message}")]
    Decode {
        host: String,
        request: String,
        message: String,
    },
    #[error("{message}, so GitLab at {host} cannot be asked {request}")]
    NoAgent {
        host: String,
        request: String,
        /// Names the pool: "no agent of VCS agent pool … is connected".
        message: String,
    },
    #[error("invalid GitLab request: {0}")]
    Request(String),
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!("; retry in {} s", wait.as_secs().max(1)),
        None => String::new(),
    }
}

impl GitLabError {
    /// Worth trying again later (rate limits, server and network trouble).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Transport { .. }
                | Self::NoAgent { .. }
        )
    }

    /// How long GitLab asked to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The process-wide half of the client: connection pool, host limits,
/// metrics and settings.
#[derive(Clone)]
pub struct Http {
    inner: Arc<HttpInner>,
}

struct HttpInner {
    http: reqwest::Client,
    config: ClientConfig,
    metrics: ClientMetrics,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Http {
    pub fn new(config: ClientConfig, metrics: ClientMetrics) -> Result<Self, GitLabError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            // A redirect would carry the token to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| {
                GitLabError::Request(format!("cannot build the HTTP client: {error}"))
            })?;
        Ok(Self {
            inner: Arc::new(HttpInner {
                http,
                config,
                metrics,
                hosts: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The client of one integration: `api_host_url` such as
    /// `https://gitlab.example.com` (no `/api/v4`), and its token.
    pub fn client(&self, api_host_url: &str, token: SecretString) -> Result<GitLab, GitLabError> {
        let root =
            Url::parse(&format!("{}/", api_host_url.trim_end_matches('/'))).map_err(|error| {
                GitLabError::Request(format!("API host URL {api_host_url:?}: {error}"))
            })?;
        if !matches!(root.scheme(), "http" | "https") || root.host_str().is_none() {
            return Err(GitLabError::Request(format!(
                "API host URL {api_host_url:?} must be an http:// or https:// URL with a host"
            )));
        }
        let api = root.join("api/v4/").map_err(|error| {
            GitLabError::Request(format!("API host URL {api_host_url:?}: {error}"))
        })?;
        let host = match root.port() {
            Some(port) => format!("{}:{port}", root.host_str().unwrap_or_default()),
            None => root.host_str().unwrap_or_default().to_owned(),
        };
        let limit = {
            let mut hosts = self
                .inner
                .hosts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            hosts
                .entry(host.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.inner.config.per_host_concurrency)))
                .clone()
        };
        let mut token_header = HeaderValue::from_str(token.expose_secret()).map_err(|_| {
            GitLabError::Request("the API token holds characters a header cannot carry".into())
        })?;
        token_header.set_sensitive(true);
        Ok(GitLab {
            http: self.clone(),
            root,
            api,
            host,
            limit,
            token_header,
            tunnel: None,
        })
    }
}

/// The client of one integration. Cheap to clone.
#[derive(Clone)]
pub struct GitLab {
    http: Http,
    root: Url,
    api: Url,
    host: String,
    limit: Arc<Semaphore>,
    /// Marked sensitive, so it never prints.
    token_header: HeaderValue,
    /// When set, requests go through it instead of to the host directly.
    tunnel: Option<Arc<dyn Tunnel>>,
}

impl std::fmt::Debug for GitLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitLab")
            .field("api", &self.api.as_str())
            .finish_non_exhaustive()
    }
}

/// GitLab's answer to a successful request.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why one exchange with GitLab got no answer.
enum NoAnswer {
    Transport(String),
    NoAgent(String),
}

enum Attempt {
    Done(Reply),
    Retry {
        wait: Duration,
        failure: GitLabError,
    },
    Fail(GitLabError),
}

impl GitLab {
    /// `host` or `host:port`, as metrics and messages name it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The same client, sending every request through `tunnel` (a VCS
    /// agent pool) instead of dialling the host.
    pub fn through(mut self, tunnel: Arc<dyn Tunnel>) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    /// Sends `endpoint` and parses a JSON answer into `T`.
    pub async fn query<T, E>(&self, endpoint: &E) -> Result<T, GitLabError>
    where
        T: DeserializeOwned,
        E: Endpoint + Sync,
    {
        let reply = self.send(endpoint).await?;
        serde_json::from_slice(&reply.body).map_err(|error| GitLabError::Decode {
            host: self.host.clone(),
            request: describe(endpoint),
            message: error.to_string(),
        })
    }

    /// Sends `endpoint`, retrying as [`ClientConfig`] says, and returns a
    /// 2xx answer or the error that ended the tries.
    pub async fn send<E>(&self, endpoint: &E) -> Result<Reply, GitLabError>
    where
        E: Endpoint + Sync,
    {
        let config = &self.http.inner.config;
        let request = describe(endpoint);
        let mut url = match endpoint.url_base() {
            UrlBase::Instance => self.root.join(&endpoint.endpoint()),
            _ => self.api.join(&endpoint.endpoint()),
        }
        .map_err(|error| GitLabError::Request(format!("{request}: {error}")))?;
        endpoint.parameters().add_to_url(&mut url);
        let body = endpoint
            .body()
            .map_err(|error| GitLabError::Request(format!("{request}: {error}")))?;
        let mut attempt = 1;
        loop {
            match self
                .attempt(endpoint, &url, body.as_ref(), &request, attempt)
                .await
            {
                Attempt::Done(reply) => return Ok(reply),
                Attempt::Fail(failure) => return Err(failure),
                Attempt::Retry { failure, .. } if attempt >= config.max_attempts => {
                    return Err(failure);
                }
                Attempt::Retry { wait, failure } => {
                    tracing::debug!(
                        gitlab.host = %self.host,
                        gitlab.request = %request,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        error = %failure,
                        "retrying GitLab request"
                    );
                    self.http.inner.metrics.retried(&self.host);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt<E: Endpoint>(
        &self,
        endpoint: &E,
        url: &Url,
        body: Option<&(&'static str, Vec<u8>)>,
        request: &str,
        attempt: u32,
    ) -> Attempt {
        let inner = &self.http.inner;
        let started = Instant::now();
        let outcome = {
            // Closed never: the semaphore lives as long as the client.
            let _permit = self.limit.acquire().await;
            self.exchange(endpoint.method(), url, body).await
        };
        inner.metrics.answered(
            &self.host,
            endpoint.method().as_str(),
            url.path(),
            outcome.as_ref().ok().map(|(status, ..)| *status),
            started.elapsed(),
        );
        let (status, headers, body) = match outcome {
            Ok((status, headers, Some(body))) => (status, headers, body),
            Ok((_, _, None)) => {
                return Attempt::Fail(GitLabError::Decode {
                    host: self.host.clone(),
                    request: request.to_owned(),
                    message: format!(
                        "the answer is larger than {MAX_BODY} bytes, more than GitLab sends"
                    ),
                });
            }
            Err(NoAnswer::Transport(message)) => {
                return Attempt::Retry {
                    wait: self.backoff(attempt),
                    failure: GitLabError::Transport {
                        host: self.host.clone(),
                        request: request.to_owned(),
                        attempts: attempt,
                        message,
                    },
                };
            }
            Err(NoAnswer::NoAgent(message)) => {
                return Attempt::Retry {
                    wait: self.backoff(attempt),
                    failure: GitLabError::NoAgent {
                        host: self.host.clone(),
                        request: request.to_owned(),
                        message,
                    },
                };
            }
        };
        if status.is_success() {
            return Attempt::Done(Reply {
                status,
                headers,
                body,
            });
        }
        // GitLab's own message, cut: an upstream body is never echoed whole.
        let message = error_body::message(&body)
            .map(|message| cut(&message, MAX_MESSAGE_CHARS))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("no message").to_owned());
        let (host, request) = (self.host.clone(), request.to_owned());
        match status.as_u16() {
            401 => Attempt::Fail(GitLabError::Unauthorized {
                host,
                request,
                message,
            }),
            403 => Attempt::Fail(GitLabError::Forbidden {
                host,
                request,
                message,
            }),
            404 => Attempt::Fail(GitLabError::NotFound {
                host,
                request,
                message,
            }),
            429 => {
                let asked = rate_limit_wait(&headers, time::OffsetDateTime::now_utc());
                let failure = GitLabError::RateLimited {
                    host,
                    request,
                    retry_after: asked,
                };
                match asked {
                    Some(wait) if wait > inner.config.max_rate_limit_wait => Attempt::Fail(failure),
                    Some(wait) => Attempt::Retry { wait, failure },
                    None => Attempt::Retry {
                        wait: self.backoff(attempt),
                        failure,
                    },
                }
            }
            code @ 500..=599 => Attempt::Retry {
                wait: self.backoff(attempt),
                failure: GitLabError::Server {
                    host,
                    request,
                    status: code,
                    attempts: attempt,
                    message,
                },
            },
            code => Attempt::Fail(GitLabError::Invalid {
                host,
                request,
                status: code,
                message,
            }),
        }
    }

    /// One request and its answer, read within [`MAX_BODY`] (`None` past
    /// it), directly or through the tunnel.
    async fn exchange(
        &self,
        method: reqwest::Method,
        url: &Url,
        body: Option<&(&'static str, Vec<u8>)>,
    ) -> Result<(StatusCode, HeaderMap, Option<Bytes>), NoAnswer> {
        let Some(tunnel) = &self.tunnel else {
            let mut builder = self
                .http
                .inner
                .http
                .request(method, url.clone())
                .header("PRIVATE-TOKEN", self.token_header.clone());
            if let Some((content_type, bytes)) = body {
                builder = builder
                    .header(CONTENT_TYPE, *content_type)
                    .body(bytes.clone());
            }
            let response = builder
                .send()
                .await
                .map_err(|error| NoAnswer::Transport(transport_message(&error)))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = read_capped(response)
                .await
                .map_err(|error| NoAnswer::Transport(transport_message(&error)))?;
            return Ok((status, headers, body));
        };
        // The path as the GitLab base URL sees it, under the host's own
        // name: the agent sends it on to its target.
        let relative = url
            .path()
            .strip_prefix(self.root.path().trim_end_matches('/'))
            .unwrap_or(url.path());
        let uri = match url.query() {
            Some(query) => format!("{}://{}{relative}?{query}", url.scheme(), self.host),
            None => format!("{}://{}{relative}", url.scheme(), self.host),
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("PRIVATE-TOKEN", self.token_header.clone())
            .header(
                reqwest::header::USER_AGENT,
                concat!("gantry/", env!("CARGO_PKG_VERSION")),
            );
        let payload = match body {
            Some((content_type, bytes)) => {
                request = request.header(CONTENT_TYPE, *content_type);
                tunnel::full(bytes.clone())
            }
            None => tunnel::full(Bytes::new()),
        };
        let request = request
            .body(payload)
            .map_err(|error| NoAnswer::Transport(format!("cannot build the request: {error}")))?;
        let timeout = self.http.inner.config.request_timeout;
        tokio::time::timeout(
            timeout,
            tunnel::exchange(tunnel.as_ref(), request, MAX_BODY),
        )
        .await
        .unwrap_or_else(|_| {
            Err(TunnelError::Broken {
                pool: tunnel.pool().to_owned(),
                message: "timed out".to_owned(),
            })
        })
        .map_err(|error| match error {
            TunnelError::NoAgent(_) => NoAnswer::NoAgent(error.to_string()),
            TunnelError::Broken { .. } => NoAnswer::Transport(error.to_string()),
        })
    }

    /// `initial_backoff · 2^(attempt-1)`, capped, with up to 25 % jitter so
    /// that many callers hit by one outage do not retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let config = &self.http.inner.config;
        let base = config
            .initial_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(config.max_backoff);
        let jitter = rand::thread_rng().gen_range(0.0..0.25);
        base.mul_f64(1.0 - jitter)
    }
}

/// How long a `429` asks to wait: `Retry-After` in seconds, else
/// `RateLimit-Reset` (a Unix time) less `now`.
pub fn rate_limit_wait(headers: &HeaderMap, now: time::OffsetDateTime) -> Option<Duration> {
    let number =
        |name: &str| -> Option<i64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    if let Some(seconds) = number("retry-after") {
        return Some(Duration::from_secs(seconds.max(0).unsigned_abs()));
    }
    let reset = number("ratelimit-reset")?;
    let wait = reset - now.unix_timestamp();
    Some(Duration::from_secs(wait.max(0).unsigned_abs()))
}

fn describe<E: Endpoint>(endpoint: &E) -> String {
    let path: Cow<'static, str> = endpoint.endpoint();
    format!("{} /api/v4/{path}", endpoint.method())
}

/// reqwest's message with its causes, but without the URL (already named).
fn transport_message(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_over_ratelimit_reset() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_000).expect("time");
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-reset", HeaderValue::from_static("1030"));
        assert_eq!(
            rate_limit_wait(&headers, now),
            Some(Duration::from_secs(30))
        );
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(rate_limit_wait(&headers, now), Some(Duration::from_secs(7)));
        assert_eq!(rate_limit_wait(&HeaderMap::new(), now), None);
    }
}
