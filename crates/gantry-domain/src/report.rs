//! What Gantry writes back to GitLab for a run (`docs/reporting.md`), as
//! pure code: which writes a transition causes, the commit status of a
//! state, the status description, the deployment status, and the merge
//! request comment.

use crate::Summary;
use crate::run::{Kind, State};

/// A kind of write to GitLab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// The commit status `gantry/<stack-id>`.
    Status,
    /// The merge request comment of a proposed run.
    Note,
    /// The environment deployment of a tracked run that applies.
    Deployment,
}

impl Write {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Note => "note",
            Self::Deployment => "deployment",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Status, Self::Note, Self::Deployment]
            .into_iter()
            .find(|write| write.as_str() == raw)
    }
}

/// The writes a run entering `to` (from `from`, `None` when it was just
/// created) causes. `on_merge_request`: the run is linked to an MR.
pub fn writes(kind: Kind, from: Option<State>, to: State, on_merge_request: bool) -> Vec<Write> {
    let mut writes = vec![Write::Status];
    if kind == Kind::Proposed && on_merge_request {
        writes.push(Write::Note);
    }
    if kind == Kind::Tracked && (to == State::Applying || from == Some(State::Applying)) {
        writes.push(Write::Deployment);
    }
    writes
}

/// A GitLab commit status state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStatus {
    Pending,
    Running,
    Success,
    Failed,
    Canceled,
}

impl CommitStatus {
    pub fn of(state: State) -> Self {
        match state {
            State::Queued => Self::Pending,
            // GitLab refuses running → pending, so every active state is
            // running, waiting for confirmation included.
            State::Preparing
            | State::Planning
            | State::Unconfirmed
            | State::Confirmed
            | State::Applying => Self::Running,
            State::Finished => Self::Success,
            State::Failed => Self::Failed,
            State::Canceled | State::Discarded => Self::Canceled,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Statuses only move forward: a lower rank never follows a higher one.
    pub fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Running => 1,
            Self::Success | Self::Failed | Self::Canceled => 2,
        }
    }
}

/// GitLab's limit on a commit status description.
pub const DESCRIPTION_LIMIT: usize = 255;

/// The commit status description: the phase until a plan exists, then the
/// change summary; at most 255 characters.
pub fn description(state: State, changes: Option<&Summary>, reason: Option<&str>) -> String {
    let text = match (state, changes) {
        (State::Failed, _) => format!("failed: {}", reason.unwrap_or("no reason given")),
        (State::Unconfirmed, Some(changes)) => {
            format!("{changes}, waiting for confirmation")
        }
        (_, Some(changes)) => changes.to_string(),
        (State::Canceled, None) => format!("canceled: {}", reason.unwrap_or("no reason given")),
        (state, None) => state.as_str().to_owned(),
    };
    cut(&text, DESCRIPTION_LIMIT)
}

/// The deployment status a tracked run's state gives, if any.
pub fn deployment_status(state: State) -> Option<&'static str> {
    match state {
        State::Applying => Some("running"),
        State::Finished => Some("success"),
        State::Failed => Some("failed"),
        State::Canceled | State::Discarded => Some("canceled"),
        _ => None,
    }
}

/// The commit status name and the deployment environment of a stack.
pub fn context_name(stack_id: &str) -> String {
    format!("gantry/{stack_id}")
}

/// The hidden marker that finds a stack's comment on an MR again.
pub fn note_marker(stack_id: &str) -> String {
    format!("<!-- gantry:stack={stack_id} -->")
}

/// GitLab's limit on a note body, in characters.
pub const NOTE_LIMIT: usize = 1_000_000;

/// What the merge request comment shows.
pub struct NoteView<'a> {
    pub stack_id: &'a str,
    pub run_id: &'a str,
    pub run_url: &'a str,
    pub log_url: &'a str,
    pub state: State,
    pub reason: Option<&'a str>,
    pub commit_sha: &'a str,
    pub changes: Option<&'a Summary>,
    /// The run's (redacted) log.
    pub log: &'a str,
}

/// The comment's markdown, under [`NOTE_LIMIT`]: a log too long for it is
/// cut, saying so, with a link to the full log.
pub fn note_body(view: &NoteView<'_>) -> String {
    let mut head = format!(
        "{marker}\n### Gantry · stack `{stack}`\n\n**{state}** · run [{run}]({url}) at `{sha}`\n",
        marker = note_marker(view.stack_id),
        stack = view.stack_id,
        state = view.state,
        run = view.run_id,
        url = view.run_url,
        sha = view.commit_sha.get(..12).unwrap_or(view.commit_sha),
    );
    if let Some(reason) = view.reason.filter(|_| view.state.is_terminal()) {
        let reason = cut(&reason.replace('\n', " "), REASON_LIMIT);
        head.push_str(&format!("\n> {reason}\n"));
    }
    if let Some(changes) = view.changes {
        head.push_str(&format!("\n**Plan:** {changes}\n"));
        if !changes.resources.is_empty() {
            head.push_str(&format!(
                "\n<details><summary>{} resources change</summary>\n\n",
                changes.resources.len()
            ));
            push_resources(&mut head, &changes.resources, view.run_url);
            head.push_str("\n</details>\n");
        }
    }
    let open = "\n<details><summary>Log</summary>\n\n```text\n";
    let close = "\n```\n</details>\n";
    let fence_safe = view.log.replace("```", "'''");
    let cut_note = format!(
        "\n… the log was cut to fit GitLab's comment limit; the full log: {}\n",
        view.log_url
    );
    // Characters, as GitLab counts them; a margin for the cut note.
    let fixed = head.chars().count() + open.len() + close.len() + cut_note.chars().count();
    let room = NOTE_LIMIT.saturating_sub(fixed + 1_000);
    let log_chars = fence_safe.chars().count();
    if log_chars <= room {
        format!("{head}{open}{fence_safe}{close}")
    } else {
        // The end of a log says most (the plan's summary, the error).
        let tail: String = fence_safe.chars().skip(log_chars - room).collect();
        format!("{head}{open}{tail}{close}{cut_note}")
    }
}

/// The longest failure reason a comment quotes.
const REASON_LIMIT: usize = 2_000;

/// The most a comment's resource list takes: half of GitLab's limit, so
/// the log always keeps room.
const RESOURCES_LIMIT: usize = NOTE_LIMIT / 2;

/// The resource list, one per line, as long as it fits in
/// [`RESOURCES_LIMIT`]; the rest are counted.
fn push_resources(out: &mut String, resources: &[String], run_url: &str) {
    let mut used = 0;
    for (shown, resource) in resources.iter().enumerate() {
        let line = format!("- `{}`\n", cut(&resource.replace('`', "'"), 1_000));
        used += line.chars().count();
        if used > RESOURCES_LIMIT {
            let more = resources.len() - shown;
            out.push_str(&format!("- … and {more} more ([the run]({run_url}))\n"));
            return;
        }
        out.push_str(&line);
    }
}

/// At most `limit` characters, ending with `…` when cut.
fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(limit - 1).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_never_go_back_to_pending() {
        assert_eq!(CommitStatus::of(State::Queued), CommitStatus::Pending);
        for state in [State::Preparing, State::Unconfirmed, State::Applying] {
            assert_eq!(CommitStatus::of(state), CommitStatus::Running);
        }
        assert_eq!(CommitStatus::of(State::Discarded), CommitStatus::Canceled);
        assert!(CommitStatus::Running.rank() > CommitStatus::Pending.rank());
    }

    #[test]
    fn which_writes_a_transition_causes() {
        use Write::*;
        assert_eq!(writes(Kind::Tracked, None, State::Queued, false), [Status]);
        assert_eq!(
            writes(Kind::Proposed, Some(State::Planning), State::Finished, true),
            [Status, Note]
        );
        assert_eq!(
            writes(
                Kind::Tracked,
                Some(State::Confirmed),
                State::Applying,
                false
            ),
            [Status, Deployment]
        );
        assert_eq!(
            writes(Kind::Tracked, Some(State::Applying), State::Failed, false),
            [Status, Deployment]
        );
        assert_eq!(
            writes(Kind::Tracked, Some(State::Planning), State::Finished, false),
            [Status],
            "no changes: no deployment"
        );
    }

    #[test]
    fn descriptions_stay_under_the_limit() {
        let changes = Summary {
            add: 1,
            change: 2,
            destroy: 0,
            resources: vec![],
        };
        assert_eq!(description(State::Planning, None, None), "planning");
        assert_eq!(
            description(State::Unconfirmed, Some(&changes), None),
            "1 to add, 2 to change, 0 to destroy, waiting for confirmation"
        );
        let long = "x".repeat(1_000);
        let failed = description(State::Failed, None, Some(&long));
        assert_eq!(failed.chars().count(), DESCRIPTION_LIMIT);
        assert!(failed.ends_with('…'));
    }

    #[test]
    fn a_huge_resource_list_and_log_stay_under_the_note_limit() {
        let changes = Summary {
            add: 200_000,
            resources: (0..200_000)
                .map(|n| format!("module.network.aws_subnet.private[\"zone-{n}\"]"))
                .collect(),
            ..Summary::default()
        };
        let reason = "r".repeat(50_000);
        let log = "l".repeat(2_000_000);
        let body = note_body(&NoteView {
            stack_id: "net",
            run_id: "r1",
            run_url: "https://gantry/runs/r1",
            log_url: "https://gantry/api/v1/runs/r1/logs",
            state: State::Failed,
            reason: Some(&reason),
            commit_sha: "0123456789abcdef",
            changes: Some(&changes),
            log: &log,
        });
        assert!(
            body.chars().count() < NOTE_LIMIT,
            "{}",
            body.chars().count()
        );
        assert!(body.contains("200000 resources change"));
        assert!(body.contains("more ([the run](https://gantry/runs/r1))"));
        assert!(body.contains("zone-0\"]`") && !body.contains("zone-199999"));
        assert!(body.contains("the log was cut"), "the log keeps room");
    }

    #[test]
    fn a_huge_log_is_cut_under_the_note_limit() {
        let log = "é".repeat(2_000_000);
        let changes = Summary {
            add: 3,
            ..Summary::default()
        };
        let body = note_body(&NoteView {
            stack_id: "net",
            run_id: "r1",
            run_url: "https://gantry/runs/r1",
            log_url: "https://gantry/api/v1/runs/r1/logs",
            state: State::Finished,
            reason: None,
            commit_sha: "0123456789abcdef",
            changes: Some(&changes),
            log: &log,
        });
        assert!(body.chars().count() < NOTE_LIMIT);
        assert!(body.starts_with("<!-- gantry:stack=net -->"));
        assert!(body.contains("the log was cut") && body.contains("/api/v1/runs/r1/logs"));
        assert!(body.contains("3 to add, 0 to change, 0 to destroy"));
        let small = note_body(&NoteView {
            log: "ok\n",
            ..NoteView {
                stack_id: "net",
                run_id: "r1",
                run_url: "u",
                log_url: "l",
                state: State::Planning,
                reason: None,
                commit_sha: "abc",
                changes: None,
                log: "",
            }
        });
        assert!(!small.contains("cut") && small.contains("ok\n"));
    }
}
