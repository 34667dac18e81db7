//! The JSON of a stack.

use std::collections::BTreeMap;

use gantry_domain::Workflow;
use gantry_store::stacks::Stack;
use serde::Serialize;
use utoipa::ToSchema;

use crate::views::timestamp;

#[derive(Serialize, ToSchema)]
pub struct StackView {
    pub id: String,
    pub name: String,
    pub space: String,
    /// `null` when its integration was deleted with `force`.
    pub integration: Option<String>,
    pub project_id: i64,
    pub repository: String,
    pub branch: String,
    pub project_root: String,
    pub additional_project_globs: Vec<String>,
    pub labels: Vec<String>,
    pub autodeploy: bool,
    pub allow_forks: bool,
    #[schema(value_type = Object)]
    pub vendor: Workflow,
    pub environment: BTreeMap<String, String>,
    /// The names only.
    pub secret_environment: Vec<String>,
    /// The names only; `null` when proposed runs get `secret_environment`.
    pub proposed_secret_environment: Option<Vec<String>>,
    pub run_timeout_seconds: i64,
    pub log_limit_bytes: i64,
    pub no_output_timeout_seconds: i64,
    /// From the checks with GitLab on create or change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

pub fn view(stack: Stack, warnings: Vec<String>) -> StackView {
    StackView {
        id: stack.id,
        name: stack.name,
        space: stack.space_id,
        integration: stack.integration_id,
        project_id: stack.project_id,
        repository: stack.repository,
        branch: stack.branch,
        project_root: stack.project_root,
        additional_project_globs: stack.additional_project_globs,
        labels: stack.labels,
        autodeploy: stack.autodeploy,
        allow_forks: stack.allow_forks,
        vendor: stack.vendor,
        environment: stack.environment,
        secret_environment: stack.secret_environment_names,
        proposed_secret_environment: stack.proposed_secret_environment_names,
        run_timeout_seconds: stack.run_timeout_seconds,
        log_limit_bytes: stack.log_limit_bytes,
        no_output_timeout_seconds: stack.no_output_timeout_seconds,
        warnings,
        created_at: timestamp(stack.created_at),
        updated_at: timestamp(stack.updated_at),
    }
}
