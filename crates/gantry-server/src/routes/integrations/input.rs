//! What a request to create or change an integration may hold, and the
//! parsing of its fields: host URLs, the token, the description; and the
//! token check with GitLab.

use std::time::Duration;

use gantry_gitlab::GitLabError;
use gantry_gitlab::token::{self, TokenCheckError};
use gantry_store::integrations::TokenFacts;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Guard, Principal};
use crate::error::ApiError;
use crate::state::AppState;

const MAX_DESCRIPTION_CHARS: usize = 20_000;
/// The longest grace period a rotation may ask for: a week.
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegration {
    /// Free text, unique and immutable; the id is its slug.
    pub name: String,
    /// Defaults to `root`.
    pub space: Option<String>,
    /// The default integration, available to every space; only in `root`.
    #[serde(default)]
    pub default: bool,
    /// Where Gantry calls the GitLab API, such as `https://gitlab.com`.
    pub api_host_url: String,
    /// Shown to users and used in links; defaults to `api_host_url`. May be
    /// `private://<agent-pool>`.
    pub user_facing_host_url: Option<String>,
    /// A GitLab access token with the `api` scope. Write-only.
    #[schema(value_type = String, format = Password)]
    pub api_token: SecretString,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Markdown.
    #[serde(default)]
    pub description: String,
    /// Whether Gantry keeps each stack's project hook (default `true`).
    pub manage_hooks: Option<bool>,
    /// Rotate the token when it expires within this many days (1 to 365);
    /// absent or 0: never.
    pub rotate_token_days_before_expiry: Option<u32>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIntegration {
    /// Immutable: only the current name is accepted.
    pub name: Option<String>,
    pub space: Option<String>,
    pub default: Option<bool>,
    pub api_host_url: Option<String>,
    pub user_facing_host_url: Option<String>,
    /// A new token; checked with GitLab like on create. Write-only.
    #[schema(value_type = Option<String>, format = Password)]
    pub api_token: Option<SecretString>,
    pub labels: Option<Vec<String>>,
    pub description: Option<String>,
    pub manage_hooks: Option<bool>,
    /// 1 to 365; 0 turns rotation off.
    pub rotate_token_days_before_expiry: Option<u32>,
}

/// `rotate_token_days_before_expiry` as stored: `None` for never.
pub fn rotation_days(days: u32) -> Result<Option<i64>, ApiError> {
    match days {
        0 => Ok(None),
        1..=365 => Ok(Some(i64::from(days))),
        _ => Err(ApiError::invalid(format!(
            "`rotate_token_days_before_expiry` is {days}; it must be between 1 and 365, or 0 for never"
        ))),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Delete even while stacks use the integration.
    #[serde(default)]
    pub force: bool,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RotateParams {
    /// How long the previous secret keeps working: 0 to 604800 seconds,
    /// default 86400 (a day).
    pub grace_seconds: Option<u64>,
}

/// A host URL as stored: trimmed, without a trailing slash, http(s) with a
/// host and nothing that would leak (credentials) or be dropped (query).
pub fn host_url(field: &str, raw: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim().trim_end_matches('/');
    // A URL with `user:password@` would put a secret into the error.
    let shown = if raw.contains('@') {
        "(not shown: it holds an @)".to_owned()
    } else {
        format!("{raw:?}")
    };
    let bad = |why: &str| ApiError::invalid(format!("`{field}` {shown} {why}"));
    let url = url::Url::parse(trimmed).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad(
            "must be an http:// or https:// URL with a host, such as https://gitlab.com",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not hold credentials; pass the token as `api_token`",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    if field == "api_host_url" && is_link_local(&url) {
        return Err(bad(
            "is a link-local address (such as a cloud metadata service); give the GitLab instance's address",
        ));
    }
    Ok(trimmed.to_owned())
}

/// `169.254.0.0/16` and `fe80::/10`: where cloud metadata services answer,
/// never a GitLab instance.
fn is_link_local(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_link_local(),
        Some(url::Host::Ipv6(ip)) => {
            (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
        _ => false,
    }
}

pub fn user_facing_url(raw: &str) -> Result<String, ApiError> {
    if let Some(pool) = raw.trim().strip_prefix("private://") {
        let pool = pool.trim_end_matches('/');
        if pool.is_empty()
            || !pool
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::invalid(format!(
                "`user_facing_host_url` {raw:?}: a private URL is private://<agent-pool>, the pool named by letters, digits, - and _"
            )));
        }
        return Ok(format!("private://{pool}"));
    }
    host_url("user_facing_host_url", raw)
}

pub fn description(raw: String) -> Result<String, ApiError> {
    if raw.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::invalid(format!(
            "`description` is longer than {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(raw)
}

pub fn api_token(raw: &SecretString) -> Result<SecretString, ApiError> {
    let token = raw.expose_secret().trim();
    if token.is_empty() {
        return Err(ApiError::invalid(
            "`api_token` is empty; pass a GitLab access token with the `api` scope",
        ));
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(ApiError::invalid(
            "`api_token` holds spaces or control characters; copy the token again",
        ));
    }
    Ok(SecretString::from(token.to_owned()))
}

/// Asks GitLab about the token. A bad token is 422 and says why; a GitLab
/// that cannot be asked is 502.
pub async fn check_token(
    state: &AppState,
    api_host_url: &str,
    user_facing_host_url: &str,
    token: SecretString,
) -> Result<gantry_gitlab::token::TokenFacts, ApiError> {
    let client = state
        .gitlab
        .unsaved(api_host_url, user_facing_host_url, token)
        .map_err(|e| ApiError::invalid(format!("`api_host_url`: {e}")))?;
    let today = time::OffsetDateTime::now_utc().date();
    token::check(&client, today)
        .await
        .map_err(|error| match error {
            TokenCheckError::Refused(refused) => {
                ApiError::invalid(format!("`api_token`: {refused}"))
            }
            TokenCheckError::GitLab(error @ GitLabError::NotFound { .. }) => ApiError::invalid(
                format!("`api_host_url`: {error}; is {api_host_url} a GitLab instance?"),
            ),
            TokenCheckError::GitLab(
                error @ (GitLabError::Forbidden { .. }
                | GitLabError::Invalid { .. }
                | GitLabError::Decode { .. }),
            ) => ApiError::invalid(format!("`api_token`: the token check failed: {error}")),
            TokenCheckError::GitLab(error) => {
                ApiError::bad_gateway(format!("{error}; check `api_host_url` and try again"))
            }
        })
}

/// A `private://<pool>` URL must name a VCS agent pool the caller can
/// see: its agents will carry the integration's token.
pub async fn known_pool(
    state: &AppState,
    principal: &Principal,
    user_facing_host_url: &str,
) -> Result<(), ApiError> {
    let Some(pool) = crate::vcs_agents::pool_of(user_facing_host_url) else {
        return Ok(());
    };
    let missing = || {
        ApiError::invalid(format!(
            "`user_facing_host_url` {user_facing_host_url:?}: there is no VCS agent pool {pool:?} \
             that you can see; create it first (POST /api/v1/vcs-agent-pools)"
        ))
    };
    let mut conn = state.store.conn().await?;
    let found = gantry_store::vcs_agent_pools::get(&mut conn, pool)
        .await?
        .ok_or_else(missing)?;
    let guard = Guard {
        space: &found.space_id,
        listed_to_all: false,
    };
    principal.authorize(&mut conn, guard, None, missing).await?;
    Ok(())
}

pub fn facts(
    checked: gantry_gitlab::token::TokenFacts,
) -> Result<(TokenFacts, Vec<String>), ApiError> {
    let user_id = i64::try_from(checked.user_id).map_err(|_| {
        ApiError::bad_gateway(format!(
            "GitLab gave user id {}, too large to store",
            checked.user_id
        ))
    })?;
    Ok((
        TokenFacts {
            scopes: checked.scopes,
            expires_at: checked.expires_at,
            user_id,
            username: checked.username,
        },
        checked.warnings,
    ))
}
