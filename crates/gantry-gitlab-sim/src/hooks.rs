//! Webhook deliveries with the headers GitLab sends (see
//! `shared/gitlab-corpus/HEADERS.md`).

use serde_json::Value;

use crate::Shared;

/// The GitLab version the simulator claims in `User-Agent`.
pub const VERSION: &str = "17.5.0";

/// One webhook request, header by header. `None` leaves a header out, as
/// older GitLab versions do.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub url: String,
    /// `X-Gitlab-Event`: `Push Hook`, `Tag Push Hook`, `Merge Request Hook`, …
    pub event: String,
    pub body: Vec<u8>,
    pub token: Option<String>,
    pub idempotency_key: Option<String>,
    pub event_uuid: Option<String>,
    pub webhook_uuid: Option<String>,
    pub instance: Option<String>,
}

impl Delivery {
    /// A delivery as GitLab 17.4+ sends it, with fresh UUIDs.
    pub fn new(url: &str, event: &str, body: &Value, token: Option<&str>, instance: &str) -> Self {
        Self {
            url: url.to_owned(),
            event: event.to_owned(),
            body: serde_json::to_vec(body).unwrap_or_default(),
            token: token.map(str::to_owned),
            idempotency_key: Some(uuid::Uuid::new_v4().to_string()),
            event_uuid: Some(uuid::Uuid::new_v4().to_string()),
            webhook_uuid: Some(uuid::Uuid::new_v4().to_string()),
            instance: Some(instance.to_owned()),
        }
    }
}

/// What the receiver answered; `status` 0 when it could not be reached.
#[derive(Clone, Debug)]
pub struct DeliveryAnswer {
    pub delivery: Delivery,
    pub status: u16,
    pub body: String,
}

pub(crate) async fn send(shared: &Shared, delivery: &Delivery) -> DeliveryAnswer {
    let mut request = shared
        .http
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header("user-agent", format!("GitLab/{VERSION}"))
        .header("x-gitlab-event", &delivery.event)
        .body(delivery.body.clone());
    let optional = [
        ("x-gitlab-token", &delivery.token),
        ("idempotency-key", &delivery.idempotency_key),
        ("x-gitlab-event-uuid", &delivery.event_uuid),
        ("x-gitlab-webhook-uuid", &delivery.webhook_uuid),
        ("x-gitlab-instance", &delivery.instance),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(response) => DeliveryAnswer {
            delivery: delivery.clone(),
            status: response.status().as_u16(),
            body: response.text().await.unwrap_or_default(),
        },
        Err(error) => DeliveryAnswer {
            delivery: delivery.clone(),
            status: 0,
            body: error.to_string(),
        },
    }
}

pub(crate) async fn deliver_to_project(
    shared: &Shared,
    project_id: u64,
    event: &str,
    body: &Value,
) -> Vec<DeliveryAnswer> {
    let deliveries: Vec<Delivery> = {
        let state = shared.lock();
        let Some(project) = state.project(project_id) else {
            return Vec::new();
        };
        project
            .hooks
            .iter()
            .filter(|hook| match event {
                "Push Hook" => hook.wants("push_events"),
                "Tag Push Hook" => hook.wants("tag_push_events"),
                "Merge Request Hook" => hook.wants("merge_requests_events"),
                _ => false,
            })
            .map(|hook| Delivery::new(&hook.url, event, body, hook.token.as_deref(), &shared.url))
            .collect()
    };
    let mut answers = Vec::new();
    for delivery in &deliveries {
        answers.push(send(shared, delivery).await);
    }
    answers
}
