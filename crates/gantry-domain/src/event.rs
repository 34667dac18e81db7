//! What GitLab told Gantry, as the rules that turn events into runs need
//! it: pushes, tag pushes and merge request changes, with only the fields
//! those rules read. `gantry-gitlab` parses webhook payloads into these.

/// Git's id for "no commit": `before` of a new ref, `after` of a deleted one.
pub const NO_COMMIT: &str = "0000000000000000000000000000000000000000";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Push(Push),
    TagPush(TagPush),
    MergeRequest(MergeRequest),
}

impl Event {
    /// The GitLab project the event happened in.
    pub fn project(&self) -> &Project {
        match self {
            Self::Push(push) => &push.project,
            Self::TagPush(tag) => &tag.project,
            Self::MergeRequest(mr) => &mr.project,
        }
    }

    /// A short description for logs and delivery outcomes.
    pub fn describe(&self) -> String {
        match self {
            Self::Push(push) => format!(
                "push to {} ({} commit{})",
                push.branch,
                push.total_commits_count,
                if push.total_commits_count == 1 {
                    ""
                } else {
                    "s"
                }
            ),
            Self::TagPush(tag) => format!("tag push of {}", tag.tag),
            Self::MergeRequest(mr) => format!(
                "merge request !{} {}",
                mr.iid,
                mr.action.as_deref().unwrap_or("event")
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub id: u64,
    /// `group/subgroup/project`; empty when the payload does not say.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub id: String,
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub removed: Vec<String>,
}

/// A push to a branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    pub project: Project,
    /// `refs/heads/<branch>`.
    pub git_ref: String,
    pub branch: String,
    pub before: String,
    pub after: String,
    /// At most the 20 newest commits, as GitLab sends them.
    pub commits: Vec<Commit>,
    /// The real number of commits pushed.
    pub total_commits_count: u64,
}

impl Push {
    pub fn creates_branch(&self) -> bool {
        self.before == NO_COMMIT
    }

    pub fn deletes_branch(&self) -> bool {
        self.after == NO_COMMIT
    }

    /// Whether `commits` lists every commit of the push, so their files
    /// are all the files changed; otherwise ask GitLab's compare API.
    pub fn lists_every_commit(&self) -> bool {
        !self.creates_branch()
            && self.commits.len() as u64 >= self.total_commits_count
            && self.commits.len() < 20
    }
}

/// A tag pushed or deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagPush {
    pub project: Project,
    /// `refs/tags/<tag>`.
    pub git_ref: String,
    pub tag: String,
    pub before: String,
    /// The tag's new object: the commit of a lightweight tag, the tag
    /// object of an annotated one.
    pub after: String,
    /// The commit the tag points at (GitLab's `checkout_sha`), when it says.
    pub checkout_sha: Option<String>,
}

impl TagPush {
    pub fn deletes_tag(&self) -> bool {
        self.after == NO_COMMIT
    }

    /// The commit the tag points at.
    pub fn commit(&self) -> &str {
        self.checkout_sha.as_deref().unwrap_or(&self.after)
    }
}

/// A merge request opened, updated, closed, merged, approved, …
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeRequest {
    /// The target project, whose hook sent the event.
    pub project: Project,
    pub iid: u64,
    /// `open`, `reopen`, `update`, `close`, `merge`, `approved`, …; older
    /// GitLab versions may leave it out.
    pub action: Option<String>,
    /// Set on an `update` that pushed new commits: the previous head.
    pub oldrev: Option<String>,
    pub state: Option<String>,
    pub source_project_id: u64,
    pub source_branch: String,
    pub target_project_id: u64,
    pub target_branch: String,
    /// The head commit of the source branch.
    pub last_commit: Option<String>,
    pub draft: bool,
}

impl MergeRequest {
    /// The source branch lives in another project (a fork).
    pub fn from_fork(&self) -> bool {
        self.source_project_id != self.target_project_id
    }
}
