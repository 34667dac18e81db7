//! The JSON of an integration.

use gantry_store::Millis;
use gantry_store::integrations::Integration;
use gantry_store::outbox;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;
use crate::views::timestamp;

#[derive(Serialize, ToSchema)]
pub struct TokenUserView {
    pub id: i64,
    pub username: String,
}

/// Whether GitLab accepts the integration's token, and its writes waiting
/// to be delivered.
#[derive(Serialize, ToSchema)]
pub struct HealthView {
    /// `ok`; `token_rejected` once GitLab answered 401: the integration's
    /// writes to GitLab are paused until a new token is set; `no_agent`
    /// when its GitLab is behind a private network and no agent of its
    /// pool is connected: writes wait until one connects.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Writes to GitLab (statuses, comments, deployments) not yet delivered.
    pub pending_writes: i64,
}

fn health_view(state: &AppState, integration: &Integration, health: &outbox::Health) -> HealthView {
    let no_agent = crate::vcs_agents::pool_of(&integration.user_facing_host_url)
        .filter(|pool| state.vcs_agents.connected(pool) == 0);
    HealthView {
        status: match (no_agent, health.unhealthy_since) {
            (Some(_), _) => "no_agent",
            (None, Some(_)) => "token_rejected",
            (None, None) => "ok",
        },
        reason: match no_agent {
            Some(pool) => Some(format!(
                "no agent connected: no agent of VCS agent pool {pool:?} is connected; GitLab writes wait until one connects"
            )),
            None => health.reason.clone(),
        },
        since: health.unhealthy_since.map(timestamp),
        pending_writes: health.pending,
    }
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    /// Empty when GitLab was too old to tell.
    pub scopes: Vec<String>,
    /// A date as GitLab gives it, or `null` for none.
    pub expires_at: Option<String>,
    pub user: TokenUserView,
    /// When GitLab last answered a check of the token (daily, and at
    /// every start of a server).
    pub checked_at: Option<String>,
}

/// An integration. `webhook_endpoint` and `webhook_secret` are present only
/// for admins of its space (of `root` for the default integration), and
/// only on single-integration answers, never in lists.
#[derive(Serialize, ToSchema)]
pub struct IntegrationView {
    pub id: String,
    pub name: String,
    pub space: String,
    pub default: bool,
    pub api_host_url: String,
    pub user_facing_host_url: String,
    pub labels: Vec<String>,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Until when the secret before the last rotation is still accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_webhook_secret_valid_until: Option<String>,
    pub token: TokenView,
    /// Whether Gantry keeps the project hooks of the stacks.
    pub manage_hooks: bool,
    /// Gantry rotates the token when it expires within this many days.
    pub rotate_token_days_before_expiry: Option<i64>,
    pub warnings: Vec<String>,
    pub health: HealthView,
    pub created_at: String,
    pub updated_at: String,
}

/// What a view may show: everything, or everything but the webhook details.
pub enum Details {
    Shown(SecretString),
    Hidden,
}

pub fn view(
    state: &AppState,
    integration: Integration,
    details: Details,
    health: &outbox::Health,
) -> IntegrationView {
    let (webhook_endpoint, webhook_secret) = match details {
        Details::Shown(secret) => (
            Some(webhook_endpoint(state, &integration.id)),
            Some(secret.expose_secret().to_owned()),
        ),
        Details::Hidden => (None, None),
    };
    let health = health_view(state, &integration, health);
    let previous_valid_until = match (&webhook_secret, integration.previous_secret_expires_at) {
        (Some(_), Some(until)) if Millis::now().0 < until => Some(timestamp(until)),
        _ => None,
    };
    IntegrationView {
        id: integration.id,
        name: integration.name,
        space: integration.space_id,
        default: integration.is_default,
        api_host_url: integration.api_host_url,
        user_facing_host_url: integration.user_facing_host_url,
        labels: integration.labels,
        description: integration.description,
        webhook_endpoint,
        webhook_secret,
        previous_webhook_secret_valid_until: previous_valid_until,
        token: TokenView {
            scopes: integration.token.scopes,
            expires_at: integration.token.expires_at,
            user: TokenUserView {
                id: integration.token.user_id,
                username: integration.token.username,
            },
            checked_at: integration.token_checked_at.map(timestamp),
        },
        manage_hooks: integration.manage_hooks,
        rotate_token_days_before_expiry: integration.rotate_token_days_before_expiry,
        warnings: integration.warnings,
        health,
        created_at: timestamp(integration.created_at),
        updated_at: timestamp(integration.updated_at),
    }
}

pub fn webhook_endpoint(state: &AppState, id: &str) -> String {
    format!(
        "{}/webhooks/gitlab/{id}",
        state.config.public_url.trim_end_matches('/')
    )
}
