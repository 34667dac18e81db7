//! Prometheus metrics: requests by route and status, and their latency.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IntegrationLabels {
    integration: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    healthy: Family<IntegrationLabels, Gauge>,
    pending: Family<IntegrationLabels, Gauge>,
    failed_deliveries: Gauge,
}

impl Metrics {
    pub fn new(gitlab: &gantry_gitlab::ClientMetrics) -> Self {
        let mut registry = Registry::with_prefix("gantry");
        gitlab.register(&mut registry);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests",
            latency.clone(),
        );
        let healthy = Family::<IntegrationLabels, Gauge>::default();
        registry.register(
            "integration_healthy",
            "1 while GitLab accepts the integration's token, 0 once it rejected it (its writes are paused)",
            healthy.clone(),
        );
        let pending = Family::<IntegrationLabels, Gauge>::default();
        registry.register(
            "outbox_pending",
            "Writes to GitLab waiting to be delivered, per integration",
            pending.clone(),
        );
        let failed_deliveries = Gauge::default();
        registry.register(
            "deliveries_failed",
            "Acknowledged deliveries whose processing used all its attempts; their outcome says why, and they can be replayed",
            failed_deliveries.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            healthy,
            pending,
            failed_deliveries,
        }
    }

    /// Sets an integration's health and outbox backlog.
    pub fn set_integration(&self, integration: &str, healthy: bool, pending: i64) {
        let labels = IntegrationLabels {
            integration: integration.to_owned(),
        };
        self.healthy.get_or_create(&labels).set(i64::from(healthy));
        self.pending.get_or_create(&labels).set(pending);
    }

    /// Deliveries whose processing used all its attempts.
    pub fn set_failed_deliveries(&self, count: i64) {
        self.failed_deliveries.set(count);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Records every request under its route pattern (`/api/v1/api-keys/{id}`),
/// never its concrete path, so label sets stay few.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .inc();
    response
}
