//! The GitLab client's Prometheus metrics: requests by host, method,
//! endpoint class and answer; retries; latency.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use reqwest::StatusCode;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    host: String,
    method: String,
    /// The API path with its ids as `:id` ([`endpoint_class`]).
    endpoint: String,
    /// The status code, or `error` when no answer came.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

/// The words of GitLab's API paths that Gantry calls; any other segment
/// is an id (a project id or path, a SHA, a branch, an iid).
const PATH_WORDS: [&str; 24] = [
    "all",
    "archive",
    "branches",
    "commits",
    "compare",
    "deployments",
    "environments",
    "files",
    "hooks",
    "members",
    "merge_requests",
    "notes",
    "personal_access_tokens",
    "projects",
    "raw",
    "repository",
    "self",
    "statuses",
    "tags",
    "tree",
    "user",
    "users",
    "version",
    "metadata",
];

/// The class of an API path for metrics: the path after `/api/v4/` with
/// every id replaced by `:id`, such as `projects/:id/statuses/:id`, so
/// that label sets stay few whatever the ids.
pub fn endpoint_class(path: &str) -> String {
    let api = path.split_once("/api/v4/").map_or(path, |(_, rest)| rest);
    api.split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            if PATH_WORDS.contains(&segment) {
                segment
            } else {
                ":id"
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The client's Prometheus metrics; register them once with [`ClientMetrics::register`].
#[derive(Clone)]
pub struct ClientMetrics {
    requests: Family<RequestLabels, Counter>,
    retries: Family<HostLabels, Counter>,
    latency: Family<HostLabels, Histogram>,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            retries: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
        }
    }
}

impl ClientMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gitlab_requests",
            "Requests sent to GitLab, by host, method, endpoint and answer",
            self.requests.clone(),
        );
        registry.register(
            "gitlab_retries",
            "Requests to GitLab sent again after a 5xx, 429 or transport error",
            self.retries.clone(),
        );
        registry.register(
            "gitlab_request_duration_seconds",
            "Time GitLab took to answer one request",
            self.latency.clone(),
        );
    }
}

impl ClientMetrics {
    /// Counts a request sent again.
    pub(crate) fn retried(&self, host: &str) {
        self.retries
            .get_or_create(&HostLabels {
                host: host.to_owned(),
            })
            .inc();
    }

    /// Records one answer (`None`: none came) to `method path`.
    pub(crate) fn answered(
        &self,
        host: &str,
        method: &str,
        path: &str,
        status: Option<StatusCode>,
        took: Duration,
    ) {
        let host = host.to_owned();
        self.latency
            .get_or_create(&HostLabels { host: host.clone() })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                host,
                method: method.to_owned(),
                endpoint: endpoint_class(path),
                status: status.map_or_else(|| "error".to_owned(), |s| s.as_str().to_owned()),
            })
            .inc();
    }
}
