//! What a request to create or change a stack may hold, and the parsing
//! of its fields.

use std::collections::BTreeMap;

use gantry_domain::Workflow;
use gantry_domain::stack;
use gantry_store::stacks;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStack {
    pub name: String,
    /// Defaults to `root`.
    pub space: Option<String>,
    /// Defaults to the default integration.
    pub integration: Option<String>,
    /// The GitLab project path, such as `infra/network`.
    pub repository: String,
    /// The tracked branch.
    pub branch: String,
    /// A directory of the repository; empty for all of it.
    #[serde(default)]
    pub project_root: String,
    #[serde(default)]
    pub additional_project_globs: Vec<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub autodeploy: bool,
    #[serde(default)]
    pub allow_forks: bool,
    #[schema(value_type = Object)]
    pub vendor: Workflow,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Write-only: only the names come back.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub secret_environment: BTreeMap<String, SecretString>,
    /// Write-only: what proposed runs (previews of unreviewed code) get
    /// instead of `secret_environment`, such as read-only credentials.
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub proposed_secret_environment: Option<BTreeMap<String, SecretString>>,
    /// The longest a phase's execution may take (default 4200: 70 minutes).
    pub run_timeout_seconds: Option<u64>,
    /// The most of a run's log that is stored, in bytes: 65536 to
    /// 1073741824, default 52428800 (50 MiB).
    pub log_limit_bytes: Option<u64>,
    /// The longest a phase may print nothing (default 600: 10 minutes).
    pub no_output_timeout_seconds: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateStack {
    /// Immutable: only the current name is accepted.
    pub name: Option<String>,
    pub integration: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub project_root: Option<String>,
    pub additional_project_globs: Option<Vec<String>>,
    pub labels: Option<Vec<String>>,
    pub autodeploy: Option<bool>,
    pub allow_forks: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub vendor: Option<Workflow>,
    /// Replaces the environment.
    pub environment: Option<BTreeMap<String, String>>,
    /// Replaces the secret environment.
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub secret_environment: Option<BTreeMap<String, SecretString>>,
    /// Replaces the proposed runs' secret environment; `null` removes it,
    /// so proposed runs get `secret_environment` again.
    #[serde(default, deserialize_with = "set_or_null")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub proposed_secret_environment: Option<Option<BTreeMap<String, SecretString>>>,
    pub run_timeout_seconds: Option<u64>,
    pub no_output_timeout_seconds: Option<u64>,
    pub log_limit_bytes: Option<u64>,
}

/// The defaults of section "Execution" of the docs: 70 minutes, 10 minutes.
pub const DEFAULT_RUN_TIMEOUT: u64 = 70 * 60;
pub const DEFAULT_NO_OUTPUT_TIMEOUT: u64 = 10 * 60;

/// A limit in seconds: at least one, at most a day.
pub fn seconds(name: &str, value: u64) -> Result<i64, ApiError> {
    match i64::try_from(value) {
        Ok(seconds @ 1..=86_400) => Ok(seconds),
        _ => Err(ApiError::invalid(format!(
            "`{name}` is {value}; give between 1 and 86400 seconds"
        ))),
    }
}

/// A log limit: 64 KiB to 1 GiB.
pub fn log_limit(value: u64) -> Result<i64, ApiError> {
    match i64::try_from(value) {
        Ok(bytes @ 65_536..=1_073_741_824) => Ok(bytes),
        _ => Err(ApiError::invalid(format!(
            "`log_limit_bytes` is {value}; give between 65536 and 1073741824 bytes"
        ))),
    }
}

pub fn environment(raw: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    for name in raw.keys() {
        stack::env_name(name).map_err(|e| ApiError::invalid(format!("`environment`: {e}")))?;
    }
    Ok(raw.clone())
}

/// A field given as `null` is `Some(None)`; a missing one `None`.
fn set_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Which secret environment of a stack is sealed.
#[derive(Clone, Copy)]
pub enum Secrets {
    /// `secret_environment`, for every run unless proposed ones get their own.
    All,
    /// `proposed_secret_environment`.
    Proposed,
}

impl Secrets {
    fn field(self) -> &'static str {
        match self {
            Self::All => "secret_environment",
            Self::Proposed => "proposed_secret_environment",
        }
    }

    fn context(self, stack_id: &str) -> String {
        match self {
            Self::All => stacks::secret_environment_context(stack_id),
            Self::Proposed => stacks::proposed_secret_environment_context(stack_id),
        }
    }
}

/// Seals a secret environment as one JSON object; returns the names and
/// the sealed value (`None` when empty).
pub fn seal_secrets(
    state: &AppState,
    id: &str,
    which: Secrets,
    raw: &BTreeMap<String, SecretString>,
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let mut plain = serde_json::Map::new();
    for (name, value) in raw {
        stack::env_name(name)
            .map_err(|e| ApiError::invalid(format!("`{}`: {e}", which.field())))?;
        plain.insert(
            name.clone(),
            Value::String(value.expose_secret().to_owned()),
        );
    }
    let names: Vec<String> = raw.keys().cloned().collect();
    if plain.is_empty() {
        return Ok((names, None));
    }
    let secret = SecretString::from(Value::Object(plain).to_string());
    let context = which.context(id);
    Ok((names, Some(state.keyring.encrypt(&context, &secret))))
}

/// A repository path as stored: trimmed, without slashes at its ends.
pub fn repository(raw: &str) -> Result<String, ApiError> {
    let repository = raw.trim().trim_matches('/');
    if repository.is_empty() {
        return Err(ApiError::invalid(
            "`repository` is empty; give the GitLab project path, such as `infra/network`",
        ));
    }
    Ok(repository.to_owned())
}
