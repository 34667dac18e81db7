//! Prometheus metrics: requests by route and status, and their latency;
//! and, read from the database on every scrape, the state of deliveries,
//! jobs, runs and the outbox.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
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

use gantry_domain::run::STATES;
use gantry_store::{Millis, Store, StoreError, outbox};

/// The count of `key` in `counts`, 0 when absent.
fn found(counts: &[(String, i64)], key: &str) -> i64 {
    counts
        .iter()
        .find(|(k, _)| k == key)
        .map_or(0, |(_, count)| *count)
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

type Seconds = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    healthy: Family<IntegrationLabels, Gauge>,
    pending: Family<IntegrationLabels, Gauge>,
    token_healthy: Family<IntegrationLabels, Gauge>,
    token_expiry: Family<IntegrationLabels, Gauge>,
    failed_deliveries: Gauge,
    deliveries: Family<StatusLabels, Gauge>,
    jobs: Family<JobLabels, Gauge>,
    job_oldest_due: Family<KindLabels, Seconds>,
    runs: Family<StateLabels, Gauge>,
    outbox_oldest_pending: Seconds,
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
        let token_healthy = Family::<IntegrationLabels, Gauge>::default();
        registry.register(
            "integration_token_healthy",
            "1 while the integration's token works (its last check was accepted and GitLab has not rejected it since)",
            token_healthy.clone(),
        );
        let token_expiry = Family::<IntegrationLabels, Gauge>::default();
        registry.register(
            "integration_token_expiry_seconds",
            "Seconds until the integration's token expires (negative once expired); absent for a token without expiry",
            token_expiry.clone(),
        );
        let failed_deliveries = Gauge::default();
        registry.register(
            "deliveries_failed",
            "Acknowledged deliveries whose processing used all its attempts; their outcome says why, and a replay that succeeds clears them",
            failed_deliveries.clone(),
        );
        let deliveries = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "deliveries",
            "Deliveries in the log, by status",
            deliveries.clone(),
        );
        let jobs = Family::<JobLabels, Gauge>::default();
        registry.register("jobs", "Jobs by kind and state", jobs.clone());
        let job_oldest_due = Family::<KindLabels, Seconds>::default();
        registry.register(
            "job_oldest_queued_age_seconds",
            "How long the longest-waiting due job of each kind has been due",
            job_oldest_due.clone(),
        );
        let runs = Family::<StateLabels, Gauge>::default();
        registry.register("runs", "Runs by state", runs.clone());
        let outbox_oldest_pending = Seconds::default();
        registry.register(
            "outbox_oldest_pending_age_seconds",
            "How long the oldest write to GitLab not yet delivered has waited",
            outbox_oldest_pending.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            healthy,
            pending,
            token_healthy,
            token_expiry,
            failed_deliveries,
            deliveries,
            jobs,
            job_oldest_due,
            runs,
            outbox_oldest_pending,
        }
    }

    /// Reads the database's gauges into the metrics.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let gauges = gantry_store::gauges::read(store, Millis::now()).await?;
        let mut conn = store.conn().await?;
        let health = outbox::all_health(&mut conn).await?;
        let all = gantry_store::integrations::all(&mut conn).await?;
        drop(conn);
        for (integration, health) in &health {
            self.set_integration(
                integration,
                health.unhealthy_since.is_none(),
                health.pending,
            );
        }
        self.set_tokens(&all, &health);
        self.failed_deliveries.set(gauges.deliveries_failed);
        // Every status and state is shown, 0 when there is none.
        for status in ["accepted", "duplicate", "ignored", "rejected"] {
            let count = found(&gauges.deliveries, status);
            self.deliveries
                .get_or_create(&StatusLabels {
                    status: status.to_owned(),
                })
                .set(count);
        }
        for state in STATES {
            let count = found(&gauges.runs, state.as_str());
            self.runs
                .get_or_create(&StateLabels {
                    state: state.as_str().to_owned(),
                })
                .set(count);
        }
        self.jobs.clear();
        for (kind, state, count) in gauges.jobs {
            self.jobs
                .get_or_create(&JobLabels { kind, state })
                .set(count);
        }
        self.job_oldest_due.clear();
        for (kind, seconds) in gauges.jobs_oldest_due_seconds {
            self.job_oldest_due
                .get_or_create(&KindLabels { kind })
                .set(seconds);
        }
        self.outbox_oldest_pending
            .set(gauges.outbox_oldest_pending_seconds);
        Ok(())
    }

    /// The tokens' health and time to expiry.
    fn set_tokens(
        &self,
        all: &[gantry_store::integrations::Integration],
        health: &[(String, outbox::Health)],
    ) {
        self.token_expiry.clear();
        let now = time::OffsetDateTime::now_utc();
        for integration in all {
            let labels = IntegrationLabels {
                integration: integration.id.clone(),
            };
            let rejected = health
                .iter()
                .any(|(id, h)| *id == integration.id && h.unhealthy_since.is_some());
            self.token_healthy
                .get_or_create(&labels)
                .set(i64::from(!rejected));
            let expires = integration.token.expires_at.as_deref().and_then(|raw| {
                time::Date::parse(raw, &time::format_description::well_known::Iso8601::DATE).ok()
            });
            if let Some(date) = expires {
                let at = date.midnight().assume_utc();
                self.token_expiry
                    .get_or_create(&labels)
                    .set((at - now).whole_seconds());
            }
        }
    }

    /// Sets an integration's health and outbox backlog.
    fn set_integration(&self, integration: &str, healthy: bool, pending: i64) {
        let labels = IntegrationLabels {
            integration: integration.to_owned(),
        };
        self.healthy.get_or_create(&labels).set(i64::from(healthy));
        self.pending.get_or_create(&labels).set(pending);
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
