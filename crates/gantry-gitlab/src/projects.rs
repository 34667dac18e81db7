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
