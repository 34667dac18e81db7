//! From events to runs (`docs/events-and-runs.md`), as pure code: which files
//! an event changed (or where to ask GitLab for them), and what each stack
//! of the event's project should do about it.

use crate::event::{Event, MergeRequest, Push};
use crate::run::Kind;
use crate::stack::Affects;

/// What a stack needs for the rules.
#[derive(Clone, Debug)]
pub struct StackFacts<'a> {
    pub id: &'a str,
    pub branch: &'a str,
    pub affects: &'a Affects,
    pub allow_forks: bool,
}

/// Where an event's changed files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangedFiles {
    /// No files are needed (deletions, tags, MR events that never run).
    NotNeeded,
    /// The payload lists every commit: the union of their files.
    Listed(Vec<String>),
    /// Ask GitLab's compare API from `from` to `to` (`from` may be a branch).
    Compare { from: String, to: String },
}

/// What to do for one stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Run {
        stack: String,
        kind: Kind,
        commit: String,
        branch: String,
        merge_request_iid: Option<u64>,
    },
    /// Cancel the stack's queued proposed runs for a branch.
    CancelBranch {
        stack: String,
        branch: String,
    },
    /// Cancel the stack's queued proposed runs of a merge request.
    CancelMergeRequest {
        stack: String,
        iid: u64,
    },
    Nothing {
        stack: String,
        why: String,
    },
}

/// The files an event changed, or where to find them. `default_branch` is
/// the project's, compared from when a push creates a branch.
pub fn changed_files(event: &Event, default_branch: &str) -> ChangedFiles {
    match event {
        Event::Push(push) if push.deletes_branch() => ChangedFiles::NotNeeded,
        Event::Push(push) if push.lists_every_commit() => ChangedFiles::Listed(listed(push)),
        Event::Push(push) => ChangedFiles::Compare {
            from: if push.creates_branch() {
                default_branch.to_owned()
            } else {
                push.before.clone()
            },
            to: push.after.clone(),
        },
        Event::TagPush(_) => ChangedFiles::NotNeeded,
        Event::MergeRequest(mr) => match (runs_for(mr), &mr.last_commit) {
            (true, Some(commit)) => ChangedFiles::Compare {
                from: mr.target_branch.clone(),
                to: commit.clone(),
            },
            _ => ChangedFiles::NotNeeded,
        },
    }
}

fn listed(push: &Push) -> Vec<String> {
    let mut files: Vec<String> = push
        .commits
        .iter()
        .flat_map(|commit| {
            commit
                .added
                .iter()
                .chain(&commit.modified)
                .chain(&commit.removed)
        })
        .cloned()
        .collect();
    files.sort();
    files.dedup();
    files
}

/// MR actions that preview: open, reopen, and updates that pushed commits.
fn runs_for(mr: &MergeRequest) -> bool {
    match mr.action.as_deref() {
        Some("open" | "reopen") => true,
        Some("update") => mr.oldrev.is_some(),
        _ => false,
    }
}

/// What each stack does about `event`, given the files it changed.
pub fn decide(event: &Event, stacks: &[StackFacts<'_>], changed: &[String]) -> Vec<Decision> {
    stacks
        .iter()
        .map(|stack| decide_one(event, stack, changed))
        .collect()
}

fn decide_one(event: &Event, stack: &StackFacts<'_>, changed: &[String]) -> Decision {
    let id = stack.id.to_owned();
    let nothing = |why: String| Decision::Nothing {
        stack: stack.id.to_owned(),
        why,
    };
    let affected = stack.affects.any(changed.iter().map(String::as_str));
    match event {
        Event::Push(push) if push.deletes_branch() => Decision::CancelBranch {
            stack: id,
            branch: push.branch.clone(),
        },
        Event::Push(_) if !affected => {
            nothing("no changed file under its project root or globs".to_owned())
        }
        Event::Push(push) => Decision::Run {
            stack: id,
            kind: if push.branch == stack.branch {
                Kind::Tracked
            } else {
                Kind::Proposed
            },
            commit: push.after.clone(),
            branch: push.branch.clone(),
            merge_request_iid: None,
        },
        Event::TagPush(tag) => nothing(format!(
            "tag {} publishes module versions, not stack runs",
            tag.tag
        )),
        Event::MergeRequest(mr) if mr.from_fork() && !stack.allow_forks => nothing(format!(
            "merge request !{} comes from a fork, and the stack does not allow forks",
            mr.iid
        )),
        Event::MergeRequest(mr) if mr.action.as_deref() == Some("close") => {
            Decision::CancelMergeRequest {
                stack: id,
                iid: mr.iid,
            }
        }
        Event::MergeRequest(mr) if !runs_for(mr) => nothing(format!(
            "merge request !{} {} brings no new commits",
            mr.iid,
            mr.action.as_deref().unwrap_or("event")
        )),
        Event::MergeRequest(mr) if !affected => nothing(format!(
            "merge request !{} changes no file under its project root or globs",
            mr.iid
        )),
        Event::MergeRequest(mr) => match &mr.last_commit {
            Some(commit) => Decision::Run {
                stack: id,
                kind: Kind::Proposed,
                commit: commit.clone(),
                branch: mr.source_branch.clone(),
                merge_request_iid: Some(mr.iid),
            },
            None => nothing(format!("merge request !{} names no last commit", mr.iid)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Commit, NO_COMMIT, Project, TagPush};

    fn project() -> Project {
        Project {
            id: 42,
            path: "infra/network".to_owned(),
        }
    }

    fn push(branch: &str, before: &str, after: &str, files: &[&str]) -> Event {
        Event::Push(Push {
            project: project(),
            git_ref: format!("refs/heads/{branch}"),
            branch: branch.to_owned(),
            before: before.to_owned(),
            after: after.to_owned(),
            commits: vec![Commit {
                id: after.to_owned(),
                added: files.iter().map(|f| (*f).to_owned()).collect(),
                modified: Vec::new(),
                removed: Vec::new(),
            }],
            total_commits_count: 1,
        })
    }

    fn mr(action: &str, oldrev: Option<&str>, source_project_id: u64) -> Event {
        Event::MergeRequest(MergeRequest {
            project: project(),
            iid: 7,
            action: Some(action.to_owned()),
            oldrev: oldrev.map(str::to_owned),
            state: Some("opened".to_owned()),
            source_project_id,
            source_branch: "feature".to_owned(),
            target_project_id: 42,
            target_branch: "main".to_owned(),
            last_commit: Some("c0ffee".to_owned()),
            draft: false,
        })
    }

    fn one(event: &Event, files: &[&str], allow_forks: bool) -> Decision {
        let affects = Affects::new("network/", &[]).expect("affects");
        let stack = StackFacts {
            id: "net",
            branch: "main",
            affects: &affects,
            allow_forks,
        };
        let files: Vec<String> = files.iter().map(|f| (*f).to_owned()).collect();
        decide(event, &[stack], &files).remove(0)
    }

    fn run(kind: Kind, commit: &str, branch: &str, iid: Option<u64>) -> Decision {
        Decision::Run {
            stack: "net".to_owned(),
            kind,
            commit: commit.to_owned(),
            branch: branch.to_owned(),
            merge_request_iid: iid,
        }
    }

    #[test]
    fn every_row_of_the_rules_table() {
        let files = ["network/main.tf"];
        let tracked = push("main", "a", "b", &files);
        assert_eq!(
            one(&tracked, &files, false),
            run(Kind::Tracked, "b", "main", None)
        );
        let other = push("feature", "a", "c", &files);
        assert_eq!(
            one(&other, &files, false),
            run(Kind::Proposed, "c", "feature", None)
        );
        let unaffected = push("main", "a", "b", &["docs/readme.md"]);
        assert!(matches!(
            one(&unaffected, &["docs/readme.md"], false),
            Decision::Nothing { .. }
        ));
        let deleted = push("feature", "a", NO_COMMIT, &[]);
        assert_eq!(
            one(&deleted, &[], false),
            Decision::CancelBranch {
                stack: "net".to_owned(),
                branch: "feature".to_owned()
            }
        );
        let tag = Event::TagPush(TagPush {
            project: project(),
            git_ref: "refs/tags/v1".to_owned(),
            tag: "v1".to_owned(),
            before: NO_COMMIT.to_owned(),
            after: "b".to_owned(),
            checkout_sha: None,
        });
        assert!(matches!(one(&tag, &files, false), Decision::Nothing { .. }));
        for event in [
            mr("open", None, 42),
            mr("reopen", None, 42),
            mr("update", Some("old"), 42),
        ] {
            assert_eq!(
                one(&event, &files, false),
                run(Kind::Proposed, "c0ffee", "feature", Some(7))
            );
        }
        for action in ["update", "approved", "unapproved", "merge"] {
            assert!(
                matches!(
                    one(&mr(action, None, 42), &files, false),
                    Decision::Nothing { .. }
                ),
                "{action}"
            );
        }
        assert_eq!(
            one(&mr("close", None, 42), &[], false),
            Decision::CancelMergeRequest {
                stack: "net".to_owned(),
                iid: 7
            }
        );
        let fork = mr("open", None, 99);
        assert!(
            matches!(one(&fork, &files, false), Decision::Nothing { why, .. } if why.contains("fork"))
        );
        assert_eq!(
            one(&fork, &files, true),
            run(Kind::Proposed, "c0ffee", "feature", Some(7))
        );
        let unaffected_mr = mr("open", None, 42);
        assert!(matches!(
            one(&unaffected_mr, &["docs/x"], false),
            Decision::Nothing { .. }
        ));
    }

    #[test]
    fn where_changed_files_come_from() {
        let listed = push("main", "a", "b", &["network/main.tf"]);
        assert_eq!(
            changed_files(&listed, "main"),
            ChangedFiles::Listed(vec!["network/main.tf".to_owned()])
        );
        let created = push("feature", NO_COMMIT, "b", &["x"]);
        assert_eq!(
            changed_files(&created, "main"),
            ChangedFiles::Compare {
                from: "main".to_owned(),
                to: "b".to_owned()
            }
        );
        let Event::Push(mut incomplete) = push("main", "a", "b", &["x"]) else {
            unreachable!()
        };
        incomplete.total_commits_count = 25;
        assert_eq!(
            changed_files(&Event::Push(incomplete), "main"),
            ChangedFiles::Compare {
                from: "a".to_owned(),
                to: "b".to_owned()
            }
        );
        assert_eq!(
            changed_files(&mr("open", None, 42), "main"),
            ChangedFiles::Compare {
                from: "main".to_owned(),
                to: "c0ffee".to_owned()
            }
        );
        assert_eq!(
            changed_files(&mr("approved", None, 42), "main"),
            ChangedFiles::NotNeeded
        );
        assert_eq!(
            changed_files(&push("x", "a", NO_COMMIT, &[]), "main"),
            ChangedFiles::NotNeeded
        );
    }

    /// A property test: on random paths, `Affects` agrees with a plain
    /// reference (prefix of the root, or the glob's literal prefix and
    /// suffix for `dir/**/*.ext`).
    #[test]
    fn matching_agrees_with_a_reference_on_random_paths() {
        let parts = [
            "network", "modules", "vpc", "a", "docs", "main.tf", "x.md", "networks", "b.tf",
        ];
        let affects = Affects::new("network/", &["modules/**/*.tf".to_owned()]).expect("affects");
        let mut seed: u64 = 12345;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for _ in 0..20_000 {
            let depth = 1 + next() % 4;
            let path: Vec<&str> = (0..depth).map(|_| parts[next() % parts.len()]).collect();
            let path = path.join("/");
            let reference = path.starts_with("network/")
                || (path.starts_with("modules/")
                    && path.ends_with(".tf")
                    && path.matches('/').count() >= 1);
            assert_eq!(affects.file(&path), reference, "{path}");
        }
    }
}
