//! Project hooks as Gantry manages them (exactly one per project and
//! endpoint, with the push, tag push and merge request events and no
//! other), and the rotation of the integration's own token.

use serde::Deserialize;

use crate::client::{GitLab, GitLabError};

/// The hook Gantry wants on a project.
pub struct WantedHook<'a> {
    pub url: &'a str,
    /// The webhook secret, sent as `X-Gitlab-Token`.
    pub token: &'a str,
}

impl WantedHook<'_> {
    /// GitLab verifies the endpoint's certificate when it is https.
    fn verify_ssl(&self) -> bool {
        self.url.starts_with("https://")
    }
}

/// The events Gantry wants on (`true`) and off (`false`).
const EVENTS: [(&str, bool); 14] = [
    ("push_events", true),
    ("tag_push_events", true),
    ("merge_requests_events", true),
    ("issues_events", false),
    ("confidential_issues_events", false),
    ("note_events", false),
    ("confidential_note_events", false),
    ("job_events", false),
    ("pipeline_events", false),
    ("wiki_page_events", false),
    ("deployment_events", false),
    ("releases_events", false),
    ("feature_flag_events", false),
    ("resource_access_token_events", false),
];

/// A project hook as GitLab lists it (never with its token).
#[derive(Debug, Clone, Deserialize)]
pub struct ProjectHook {
    pub id: u64,
    pub url: String,
    #[serde(default)]
    pub enable_ssl_verification: Option<bool>,
    /// Every other field: the event flags among them.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl ProjectHook {
    /// Whether its settings differ from what Gantry wants. A flag GitLab
    /// does not show (an older GitLab) is not a difference.
    pub fn drifted(&self, wanted: &WantedHook<'_>) -> bool {
        let events = EVENTS.iter().any(|(event, on)| {
            self.rest
                .get(*event)
                .and_then(serde_json::Value::as_bool)
                .is_some_and(|shown| shown != *on)
        });
        let ssl = self
            .enable_ssl_verification
            .is_some_and(|shown| shown != wanted.verify_ssl());
        events || ssl
    }
}

fn built<E>(built: Result<E, impl std::fmt::Display>) -> Result<E, GitLabError> {
    built.map_err(|error| GitLabError::Request(error.to_string()))
}

/// Every hook of a project, all pages (GitLab lists at most 100 a page).
pub async fn list(client: &GitLab, project_id: u64) -> Result<Vec<ProjectHook>, GitLabError> {
    crate::reporting::all_pages(client, format!("projects/{project_id}/hooks")).await
}

macro_rules! with_events {
    ($builder:expr, $wanted:expr) => {{
        let mut builder = $builder;
        builder
            .url($wanted.url)
            .token($wanted.token)
            .enable_ssl_verification($wanted.verify_ssl())
            .push_events(true)
            .tag_push_events(true)
            .merge_requests_events(true)
            .issues_events(false)
            .confidential_issues_events(false)
            .note_events(false)
            .confidential_note_events(false)
            .job_events(false)
            .pipeline_events(false)
            .wiki_page_events(false)
            .deployment_events(false)
            .releases_events(false)
            .feature_flag_events(false)
            .resource_access_token_events(false);
        builder
    }};
}

/// Creates the wanted hook; its id.
pub async fn create(
    client: &GitLab,
    project_id: u64,
    wanted: &WantedHook<'_>,
) -> Result<u64, GitLabError> {
    let mut builder = gitlab::api::projects::hooks::CreateHook::builder();
    builder.project(project_id);
    let endpoint = built(with_events!(builder, wanted).build())?;
    let hook: ProjectHook = client.query(&endpoint).await?;
    Ok(hook.id)
}

/// Sets every setting of hook `hook_id`, its token included.
pub async fn repair(
    client: &GitLab,
    project_id: u64,
    hook_id: u64,
    wanted: &WantedHook<'_>,
) -> Result<(), GitLabError> {
    let mut builder = gitlab::api::projects::hooks::EditHook::builder();
    builder.project(project_id).hook_id(hook_id);
    let endpoint = built(with_events!(builder, wanted).build())?;
    client.send(&endpoint).await?;
    Ok(())
}

/// Deletes hook `hook_id`; one already gone is fine.
pub async fn delete(client: &GitLab, project_id: u64, hook_id: u64) -> Result<(), GitLabError> {
    let endpoint = built(
        gitlab::api::projects::hooks::DeleteHook::builder()
            .project(project_id)
            .hook_id(hook_id)
            .build(),
    )?;
    match client.send(&endpoint).await {
        Ok(_) | Err(GitLabError::NotFound { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// How many days the client's own token lives (from its creation to its
/// expiry), when GitLab says.
pub async fn own_token_lifetime_days(client: &GitLab) -> Result<Option<i64>, GitLabError> {
    let endpoint =
        built(gitlab::api::personal_access_tokens::PersonalAccessTokenSelf::builder().build())?;
    let token: crate::types::AccessTokenSelf = client.query(&endpoint).await?;
    let created = token.created_at.as_deref().and_then(|raw| {
        time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339).ok()
    });
    let expires = token.expires_at.as_deref().and_then(|raw| {
        time::Date::parse(raw, &time::format_description::well_known::Iso8601::DATE).ok()
    });
    Ok(match (created, expires) {
        (Some(created), Some(expires)) => Some((expires - created.date()).whole_days()),
        _ => None,
    })
}

/// What GitLab answers to a rotation: the new token, once.
#[derive(Deserialize)]
pub struct RotatedToken {
    pub token: secrecy::SecretString,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// Rotates the client's own personal access token to a new one expiring
/// on `expires_at`; GitLab revokes the old one at once. Call it at most
/// once per token: GitLab revokes the whole family when a rotated token
/// is used to rotate again.
pub async fn rotate_own_token(
    client: &GitLab,
    expires_at: time::Date,
) -> Result<RotatedToken, GitLabError> {
    let (year, month, day) = (
        expires_at.year(),
        u32::from(u8::from(expires_at.month())),
        u32::from(expires_at.day()),
    );
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| GitLabError::Request(format!("{expires_at} is not a date")))?;
    let endpoint = built(
        gitlab::api::personal_access_tokens::RotatePersonalAccessTokenSelf::builder()
            .expires_at(date)
            .build(),
    )?;
    client.query(&endpoint).await
}
