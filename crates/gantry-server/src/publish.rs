//! Module versions from tag pushes: a semantic-version tag publishes that
//! version of every module of the project whose directory exists at the
//! tag's commit; a deleted tag yanks it; a version is never moved to
//! another commit. Decided with GitLab's help outside the transaction,
//! enacted inside the delivery's, with a durable job for the commit status.

use gantry_domain::event::TagPush;
use gantry_domain::module::version_of_tag;
use gantry_gitlab::{GitLabError, projects};
use gantry_store::modules::{self, Published};
use gantry_store::{Conn, Millis, StoreError, Tx, integrations};
use serde_json::json;

use crate::gitlab::GitLabAccess;

/// What a tag push does to one module.
#[derive(Debug)]
pub enum ModuleDecision {
    Publish {
        module: String,
        version: String,
        commit: String,
        tag: String,
    },
    Yank {
        module: String,
        tag: String,
    },
    Skip {
        module: String,
        why: String,
    },
}

/// Decides for every module of the pushed project; a GitLab error that
/// may pass is returned, so the delivery is tried again.
pub async fn decide(
    gitlab: &GitLabAccess,
    conn: &mut Conn,
    integration_id: &str,
    tag: &TagPush,
) -> Result<Vec<ModuleDecision>, DecideError> {
    let Ok(project_id) = i64::try_from(tag.project.id) else {
        return Ok(Vec::new());
    };
    let found = modules::for_project(conn, integration_id, project_id).await?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    if tag.deletes_tag() {
        return Ok(found
            .into_iter()
            .map(|m| ModuleDecision::Yank {
                module: m.id,
                tag: tag.tag.clone(),
            })
            .collect());
    }
    let Some(version) = version_of_tag(&tag.tag) else {
        return Ok(found
            .into_iter()
            .map(|m| ModuleDecision::Skip {
                module: m.id,
                why: format!("tag {} is not a semantic version; ignored", tag.tag),
            })
            .collect());
    };
    let Some(integration) = integrations::get(conn, integration_id).await? else {
        return Ok(Vec::new());
    };
    let client = gitlab
        .client(&integration)
        .map_err(|e| DecideError::Other(e.to_string()))?;
    let commit = tag.commit().to_owned();
    let mut decisions = Vec::new();
    for module in found {
        let exists =
            projects::directory_exists(&client, tag.project.id, &module.project_root, &commit)
                .await;
        decisions.push(match exists {
            Ok(true) => ModuleDecision::Publish {
                module: module.id,
                version: version.clone(),
                commit: commit.clone(),
                tag: tag.tag.clone(),
            },
            Ok(false) => ModuleDecision::Skip {
                module: module.id,
                why: format!(
                    "its directory {:?} is not at {}",
                    module.project_root,
                    &commit[..commit.len().min(8)]
                ),
            },
            Err(error) if error.is_transient() => return Err(DecideError::GitLab(error)),
            Err(error) => ModuleDecision::Skip {
                module: module.id,
                why: format!("GitLab could not say whether its directory exists: {error}"),
            },
        });
    }
    Ok(decisions)
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("GitLab: {0}")]
    GitLab(GitLabError),
    #[error("{0}")]
    Other(String),
}

/// Enacts the decisions in the delivery's transaction; the outcome's parts.
pub async fn enact(
    tx: &mut Tx,
    integration_id: &str,
    project_id: i64,
    decisions: &[ModuleDecision],
    now: Millis,
) -> Result<Vec<String>, StoreError> {
    let mut parts = Vec::new();
    for decision in decisions {
        match decision {
            ModuleDecision::Publish { module, version, commit, tag } => {
                match modules::publish(tx, module, version, commit, tag, now).await? {
                    Published::New => {
                        parts.push(format!("published module {module} {version}"));
                        let payload = status_payload(integration_id, project_id, commit, tag, module, version);
                        crate::upkeep::queue_module_status(tx, payload).await?;
                    }
                    Published::Already => parts.push(format!("module {module} {version} was published already")),
                    Published::Refused { commit_sha } => parts.push(format!(
                        "module {module}: version {version} is published at {} and never moves: the tag moved, or was pushed again at another commit",
                        &commit_sha[..commit_sha.len().min(8)]
                    )),
                }
            }
            ModuleDecision::Yank { module, tag } => {
                let yanked = modules::yank(tx, module, tag).await?;
                parts.push(if yanked > 0 {
                    format!("module {module}: yanked the version of tag {tag}")
                } else {
                    format!("module {module}: tag {tag} published no version")
                });
            }
            ModuleDecision::Skip { module, why } => parts.push(format!("module {module}: {why}")),
        }
    }
    Ok(parts)
}

/// The payload of the job that writes a published version's status.
pub fn status_payload(
    integration: &str,
    project_id: i64,
    commit: &str,
    tag: &str,
    module: &str,
    version: &str,
) -> serde_json::Value {
    json!({ "integration": integration, "project_id": project_id, "commit": commit, "tag": tag,
            "module": module, "version": version })
}
