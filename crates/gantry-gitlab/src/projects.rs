//! Looking up projects and the token user's access to them.

use crate::client::{GitLab, GitLabError};
use crate::types::{Member, Project};

/// The project at `path` (`group/project`) or numeric id.
pub async fn find(client: &GitLab, path: &str) -> Result<Project, GitLabError> {
    let endpoint = gitlab::api::projects::Project::builder()
        .project(path)
        .build()
        .map_err(|e| GitLabError::Request(e.to_string()))?;
    client.query(&endpoint).await
}

/// The access level of `user_id` on the project, inherited ones included;
/// `None` when the user is no member.
pub async fn access_level(
    client: &GitLab,
    project_id: u64,
    user_id: u64,
) -> Result<Option<u8>, GitLabError> {
    let endpoint = gitlab::api::projects::members::AllProjectMember::builder()
        .project(project_id)
        .user(user_id)
        .build()
        .map_err(|e| GitLabError::Request(e.to_string()))?;
    match client.query::<Member, _>(&endpoint).await {
        Ok(member) => Ok(Some(member.access_level)),
        Err(GitLabError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The files changed between `from` and `to` (from their merge base, as
/// GitLab compares), old and new paths both, sorted and unique.
pub async fn changed_files(
    client: &GitLab,
    project_id: u64,
    from: &str,
    to: &str,
) -> Result<Vec<String>, GitLabError> {
    #[derive(serde::Deserialize)]
    struct Compare {
        #[serde(default)]
        diffs: Vec<Diff>,
    }
    #[derive(serde::Deserialize)]
    struct Diff {
        old_path: Option<String>,
        new_path: Option<String>,
    }
    let endpoint = gitlab::api::projects::repository::commits::CompareCommits::builder()
        .project(project_id)
        .from(from)
        .to(to)
        .build()
        .map_err(|e| GitLabError::Request(e.to_string()))?;
    let compare: Compare = client.query(&endpoint).await?;
    let mut files: Vec<String> = compare
        .diffs
        .into_iter()
        .flat_map(|diff| diff.old_path.into_iter().chain(diff.new_path))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// The commit a branch points at.
/// The full id of a commit given by its full or short id; GitLab's 404
/// when the project has no such commit.
pub async fn commit_id(client: &GitLab, project_id: u64, sha: &str) -> Result<String, GitLabError> {
    #[derive(serde::Deserialize)]
    struct Commit {
        id: String,
    }
    let endpoint = gitlab::api::projects::repository::commits::Commit::builder()
        .project(project_id)
        .commit(sha)
        .build()
        .map_err(|e| GitLabError::Request(e.to_string()))?;
    let found: Commit = client.query(&endpoint).await?;
    Ok(found.id)
}

pub async fn branch_head(
    client: &GitLab,
    project_id: u64,
    branch: &str,
) -> Result<String, GitLabError> {
    #[derive(serde::Deserialize)]
    struct Branch {
        commit: Commit,
    }
    #[derive(serde::Deserialize)]
    struct Commit {
        id: String,
    }
    let endpoint = gitlab::api::projects::repository::branches::Branch::builder()
        .project(project_id)
        .branch(branch)
        .build()
        .map_err(|e| GitLabError::Request(e.to_string()))?;
    let found: Branch = client.query(&endpoint).await?;
    Ok(found.commit.id)
}

/// Whether directory `path` (`network/`, or empty for the root) exists at
/// commit `sha` of the project.
pub async fn directory_exists(
    client: &GitLab,
    project_id: u64,
    path: &str,
    sha: &str,
) -> Result<bool, GitLabError> {
    let path = path.trim_end_matches('/');
    let mut builder = gitlab::api::projects::repository::Tree::builder();
    builder.project(project_id).ref_(sha);
    if !path.is_empty() {
        builder.path(path);
    }
    let endpoint = builder
        .build()
        .map_err(|e| GitLabError::Request(e.to_string()))?;
    match client.query::<Vec<serde_json::Value>, _>(&endpoint).await {
        Ok(entries) => Ok(!entries.is_empty()),
        Err(GitLabError::NotFound { .. }) => Ok(false),
        Err(error) => Err(error),
    }
}
