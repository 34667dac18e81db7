//! Writing back to GitLab: commit statuses, merge request notes and
//! deployments, with the `gitlab` crate's endpoints over our client.

use std::borrow::Cow;

use gitlab::api::endpoint_prelude::Method;
use gitlab::api::projects::deployments::{CreateDeployment, DeploymentStatus, EditDeployment};
use gitlab::api::projects::merge_requests::notes::{CreateMergeRequestNote, EditMergeRequestNote};
use gitlab::api::projects::repository::commits::{CommitStatusState, CreateCommitStatus};
use gitlab::api::{Endpoint, QueryParams};
use serde::Deserialize;

use crate::client::{GitLab, GitLabError};

fn request_error(error: impl std::fmt::Display) -> GitLabError {
    GitLabError::Request(error.to_string())
}

/// A commit status to set.
pub struct Status<'a> {
    pub project_id: u64,
    pub sha: &'a str,
    /// `pending`, `running`, `success`, `failed` or `canceled`.
    pub state: &'a str,
    pub name: &'a str,
    pub git_ref: &'a str,
    pub target_url: &'a str,
    pub description: &'a str,
}

/// Sets a commit status. GitLab's "Cannot transition status" answer (the
/// status is already in that state) counts as done.
pub async fn set_status(client: &GitLab, status: &Status<'_>) -> Result<(), GitLabError> {
    let state = match status.state {
        "pending" => CommitStatusState::Pending,
        "running" => CommitStatusState::Running,
        "success" => CommitStatusState::Success,
        "failed" => CommitStatusState::Failed,
        _ => CommitStatusState::Canceled,
    };
    let endpoint = CreateCommitStatus::builder()
        .project(status.project_id)
        .commit(status.sha)
        .state(state)
        .name(status.name)
        .ref_(status.git_ref)
        .target_url(status.target_url)
        .description(status.description)
        .build()
        .map_err(request_error)?;
    match client.send(&endpoint).await {
        Ok(_) => Ok(()),
        Err(GitLabError::Invalid {
            status: 400,
            message,
            ..
        }) if message.contains("Cannot transition status") => Ok(()),
        Err(error) => Err(error),
    }
}

#[derive(Deserialize)]
struct Created {
    id: u64,
}

#[derive(Deserialize)]
struct NoteItem {
    id: u64,
    #[serde(default)]
    body: String,
}

/// One page of a list (the `gitlab` crate's list endpoints have no page
/// parameters; its pager works only with its own client).
struct Page<'a> {
    path: String,
    page: u32,
    extra: &'a [(&'a str, &'a str)],
}

impl Endpoint for Page<'_> {
    fn method(&self) -> Method {
        Method::GET
    }

    fn endpoint(&self) -> Cow<'static, str> {
        self.path.clone().into()
    }

    fn parameters(&self) -> QueryParams<'_> {
        let mut params = QueryParams::default();
        params
            .push("per_page", 100u64)
            .push("page", u64::from(self.page));
        for (key, value) in self.extra {
            params.push(*key, *value);
        }
        params
    }
}

/// The first item of a paged list that `wanted` picks; at most 20 pages.
async fn find_in_pages<T: serde::de::DeserializeOwned>(
    client: &GitLab,
    path: String,
    extra: &[(&str, &str)],
    wanted: impl Fn(&T) -> bool,
) -> Result<Option<T>, GitLabError> {
    for page in 1..=20 {
        let endpoint = Page {
            path: path.clone(),
            page,
            extra,
        };
        let items: Vec<T> = client.query(&endpoint).await?;
        let full = items.len() == 100;
        if let Some(found) = items.into_iter().find(&wanted) {
            return Ok(Some(found));
        }
        if !full {
            break;
        }
    }
    Ok(None)
}

/// Every item of a paged list, at most 50 pages of 100.
pub(crate) async fn all_pages<T: serde::de::DeserializeOwned>(
    client: &GitLab,
    path: String,
) -> Result<Vec<T>, GitLabError> {
    let mut all = Vec::new();
    for page in 1..=50 {
        let endpoint = Page {
            path: path.clone(),
            page,
            extra: &[],
        };
        let items: Vec<T> = client.query(&endpoint).await?;
        let full = items.len() == 100;
        all.extend(items);
        if !full {
            break;
        }
    }
    Ok(all)
}

/// Looks through a merge request's notes for one whose body holds
/// `marker`; at most 20 pages of 100.
pub async fn find_note(
    client: &GitLab,
    project_id: u64,
    merge_request: u64,
    marker: &str,
) -> Result<Option<u64>, GitLabError> {
    let path = format!("projects/{project_id}/merge_requests/{merge_request}/notes");
    let found = find_in_pages(client, path, &[], |note: &NoteItem| {
        note.body.contains(marker)
    })
    .await?;
    Ok(found.map(|note| note.id))
}

pub async fn create_note(
    client: &GitLab,
    project_id: u64,
    merge_request: u64,
    body: &str,
) -> Result<u64, GitLabError> {
    let endpoint = CreateMergeRequestNote::builder()
        .project(project_id)
        .merge_request(merge_request)
        .body(body)
        .build()
        .map_err(request_error)?;
    Ok(client.query::<Created, _>(&endpoint).await?.id)
}

pub async fn edit_note(
    client: &GitLab,
    project_id: u64,
    merge_request: u64,
    note: u64,
    body: &str,
) -> Result<(), GitLabError> {
    let endpoint = EditMergeRequestNote::builder()
        .project(project_id)
        .merge_request(merge_request)
        .note(note)
        .body(body)
        .build()
        .map_err(request_error)?;
    client.send(&endpoint).await.map(drop)
}

fn deployment_status(status: &str) -> DeploymentStatus {
    match status {
        "running" => DeploymentStatus::Running,
        "success" => DeploymentStatus::Success,
        "failed" => DeploymentStatus::Failed,
        _ => DeploymentStatus::Canceled,
    }
}

/// A deployment to create.
pub struct Deployment<'a> {
    pub project_id: u64,
    pub environment: &'a str,
    pub sha: &'a str,
    pub git_ref: &'a str,
    pub status: &'a str,
}

#[derive(Deserialize)]
struct DeploymentItem {
    id: u64,
    sha: Option<String>,
    environment: Option<EnvironmentItem>,
}

#[derive(Deserialize)]
struct EnvironmentItem {
    name: Option<String>,
}

/// A deployment of `sha` to `environment` made before (by a delivery whose
/// answer was lost), so that it is not made twice.
pub async fn find_deployment(
    client: &GitLab,
    project_id: u64,
    environment: &str,
    sha: &str,
) -> Result<Option<u64>, GitLabError> {
    let path = format!("projects/{project_id}/deployments");
    let extra = [("environment", environment), ("sort", "desc")];
    let found = find_in_pages(client, path, &extra, |item: &DeploymentItem| {
        item.sha.as_deref() == Some(sha)
            && item.environment.as_ref().and_then(|e| e.name.as_deref()) == Some(environment)
    })
    .await?;
    Ok(found.map(|item| item.id))
}

pub async fn create_deployment(
    client: &GitLab,
    deployment: &Deployment<'_>,
) -> Result<u64, GitLabError> {
    let endpoint = CreateDeployment::builder()
        .project(deployment.project_id)
        .environment(deployment.environment)
        .sha(deployment.sha)
        .ref_(deployment.git_ref)
        .tag(false)
        .status(deployment_status(deployment.status))
        .build()
        .map_err(request_error)?;
    Ok(client.query::<Created, _>(&endpoint).await?.id)
}

pub async fn edit_deployment(
    client: &GitLab,
    project_id: u64,
    deployment_id: u64,
    status: &str,
) -> Result<(), GitLabError> {
    let endpoint = EditDeployment::builder()
        .project(project_id)
        .deployment_id(deployment_id)
        .status(deployment_status(status))
        .build()
        .map_err(request_error)?;
    client.send(&endpoint).await.map(drop)
}
