//! Webhook payloads: which deliveries Gantry acts on, and the push, tag
//! push and merge request payloads parsed into domain events. Only the
//! fields Gantry uses are read; unknown fields are ignored, optional ones
//! may be missing or `null`, so payloads of old and new GitLab versions
//! parse alike. Nothing here panics, whatever the bytes.

use gantry_domain::event::{Commit, Event, MergeRequest, Project, Push, TagPush};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The events Gantry acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Push,
    TagPush,
    MergeRequest,
}

/// Why a payload of a supported event cannot be read. The message names
/// the field, such as `object_attributes.iid: invalid type: string "x", expected u64`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(String);

/// Which supported event a delivery carries: by `X-Gitlab-Event`, and for
/// a `System Hook` by the payload's `object_kind` (or `event_name`, which
/// system push payloads use). `Ok(None)` for events Gantry ignores.
pub fn kind_of(event_header: &str, body: &[u8]) -> Result<Option<Kind>, PayloadError> {
    match event_header.trim() {
        "Push Hook" => Ok(Some(Kind::Push)),
        "Tag Push Hook" => Ok(Some(Kind::TagPush)),
        "Merge Request Hook" => Ok(Some(Kind::MergeRequest)),
        "System Hook" => {
            #[derive(Deserialize)]
            struct Envelope {
                object_kind: Option<String>,
                event_name: Option<String>,
            }
            let envelope: Envelope = read(body)?;
            let name = envelope
                .object_kind
                .or(envelope.event_name)
                .unwrap_or_default();
            Ok(match name.as_str() {
                "push" => Some(Kind::Push),
                "tag_push" => Some(Kind::TagPush),
                "merge_request" => Some(Kind::MergeRequest),
                _ => None,
            })
        }
        _ => Ok(None),
    }
}

/// The event a delivery carries: `Ok(None)` for an event Gantry ignores,
/// an error naming the field for a supported event that does not parse.
pub fn event_of(event_header: &str, body: &[u8]) -> Result<Option<Event>, PayloadError> {
    match kind_of(event_header, body)? {
        Some(kind) => parse(kind, body).map(Some),
        None => Ok(None),
    }
}

/// The headers of a delivery that Gantry reads, trimmed; absent when
/// missing or empty (older GitLab versions send fewer of them).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeliveryHeaders<'a> {
    /// `X-Gitlab-Event`, such as `Push Hook`.
    pub event: Option<&'a str>,
    /// `X-Gitlab-Token`: the webhook secret, plain. Never log it.
    pub token: Option<&'a str>,
    /// `Idempotency-Key`, stable across retries and resends (GitLab 17.4+).
    pub idempotency_key: Option<&'a str>,
    pub event_uuid: Option<&'a str>,
    pub webhook_uuid: Option<&'a str>,
    pub instance: Option<&'a str>,
    /// `User-Agent: GitLab/<version>`.
    pub user_agent: Option<&'a str>,
}

impl<'a> DeliveryHeaders<'a> {
    pub fn read(headers: &'a reqwest::header::HeaderMap) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|value| !value.is_empty())
        };
        Self {
            event: get("x-gitlab-event"),
            token: get("x-gitlab-token"),
            idempotency_key: get("idempotency-key"),
            event_uuid: get("x-gitlab-event-uuid"),
            webhook_uuid: get("x-gitlab-webhook-uuid"),
            instance: get("x-gitlab-instance"),
            user_agent: get("user-agent"),
        }
    }
}

/// Parses a payload of a supported event.
pub fn parse(kind: Kind, body: &[u8]) -> Result<Event, PayloadError> {
    match kind {
        Kind::Push => {
            let payload: RefPayload = read(body)?;
            let project = payload.project()?;
            let branch = payload
                .git_ref
                .strip_prefix("refs/heads/")
                .unwrap_or(&payload.git_ref)
                .to_owned();
            let commits: Vec<Commit> = payload
                .commits
                .unwrap_or_default()
                .into_iter()
                .map(|commit| Commit {
                    id: commit.id,
                    added: commit.added.unwrap_or_default(),
                    modified: commit.modified.unwrap_or_default(),
                    removed: commit.removed.unwrap_or_default(),
                })
                .collect();
            Ok(Event::Push(Push {
                project,
                branch,
                total_commits_count: payload.total_commits_count.unwrap_or(commits.len() as u64),
                commits,
                git_ref: payload.git_ref,
                before: payload.before,
                after: payload.after,
            }))
        }
        Kind::TagPush => {
            let payload: RefPayload = read(body)?;
            let project = payload.project()?;
            let tag = payload
                .git_ref
                .strip_prefix("refs/tags/")
                .unwrap_or(&payload.git_ref)
                .to_owned();
            Ok(Event::TagPush(TagPush {
                project,
                tag,
                git_ref: payload.git_ref,
                before: payload.before,
                after: payload.after,
                checkout_sha: payload.checkout_sha,
            }))
        }
        Kind::MergeRequest => {
            let payload: MergeRequestPayload = read(body)?;
            let attributes = payload.object_attributes;
            let project = match payload.project {
                Some(project) => Project {
                    id: project.id.unwrap_or(attributes.target_project_id),
                    path: project.path_with_namespace.unwrap_or_default(),
                },
                None => Project {
                    id: attributes.target_project_id,
                    path: String::new(),
                },
            };
            Ok(Event::MergeRequest(MergeRequest {
                project,
                iid: attributes.iid,
                action: attributes.action,
                oldrev: attributes.oldrev.filter(|rev| !rev.is_empty()),
                state: attributes.state,
                source_project_id: attributes.source_project_id,
                source_branch: attributes.source_branch,
                target_project_id: attributes.target_project_id,
                target_branch: attributes.target_branch,
                last_commit: attributes.last_commit.map(|commit| commit.id),
                draft: attributes
                    .draft
                    .or(attributes.work_in_progress)
                    .unwrap_or(false),
            }))
        }
    }
}

fn read<T: DeserializeOwned>(body: &[u8]) -> Result<T, PayloadError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path.is_empty() || path == "." {
            PayloadError(format!(
                "the payload is not valid JSON of this event: {inner}"
            ))
        } else {
            PayloadError(format!("`{path}`: {inner}"))
        }
    })
}

/// Push and tag push payloads share their shape.
#[derive(Deserialize)]
struct RefPayload {
    project_id: Option<u64>,
    project: Option<ProjectPayload>,
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
    commits: Option<Vec<CommitPayload>>,
    total_commits_count: Option<u64>,
}

impl RefPayload {
    fn project(&self) -> Result<Project, PayloadError> {
        let id = self
            .project_id
            .or_else(|| self.project.as_ref().and_then(|project| project.id))
            .ok_or_else(|| {
                PayloadError("`project_id`: missing, and `project.id` too".to_owned())
            })?;
        let path = self
            .project
            .as_ref()
            .and_then(|project| project.path_with_namespace.clone())
            .unwrap_or_default();
        Ok(Project { id, path })
    }
}

#[derive(Deserialize)]
struct ProjectPayload {
    id: Option<u64>,
    path_with_namespace: Option<String>,
}

#[derive(Deserialize)]
struct CommitPayload {
    id: String,
    added: Option<Vec<String>>,
    modified: Option<Vec<String>>,
    removed: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct MergeRequestPayload {
    project: Option<ProjectPayload>,
    object_attributes: MergeRequestAttributes,
}

#[derive(Deserialize)]
struct MergeRequestAttributes {
    iid: u64,
    action: Option<String>,
    oldrev: Option<String>,
    state: Option<String>,
    source_project_id: u64,
    source_branch: String,
    target_project_id: u64,
    target_branch: String,
    last_commit: Option<LastCommit>,
    draft: Option<bool>,
    work_in_progress: Option<bool>,
}

#[derive(Deserialize)]
struct LastCommit {
    id: String,
}
