//! Commit statuses, with GitLab's state machine: a repeated or backward
//! transition is refused with "Cannot transition status".

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::{Call, SimState, bad_request, not_found, paginate, read, write};
use crate::git;
use crate::state::AccessLevel::{Developer, Reporter};
use crate::state::StatusEntry;
use crate::state::now;

/// GitLab's commit status state machine, as `POST …/statuses/:sha` applies
/// it: the latest pending or running status with the same name and ref
/// moves on; a finished one starts afresh; an event that does not apply to
/// the current state is refused with 400 "Cannot transition status …".
pub(crate) async fn create_status(
    State(shared): SimState,
    Path((id, sha)): Path<(String, String)>,
    call: Call,
) -> Response {
    let (caller, project_id) = answer_on_err!(call.access(&shared, &id, write(Developer)));
    let params = call.params;
    let Some(new_state) = params.get("state").cloned() else {
        return bad_request("state is missing");
    };
    let event = match new_state.as_str() {
        "pending" => "enqueue",
        "running" => "run",
        "success" => "success",
        "failed" => "drop",
        "canceled" => "cancel",
        "skipped" => "skip",
        _ => return bad_request("state does not have a valid value"),
    };
    let name = params
        .get("name")
        .or(params.get("context"))
        .cloned()
        .unwrap_or_else(|| "default".to_owned());
    let reference = params.get("ref").cloned();
    let known = match git::rev_parse_in(&shared, project_id, &sha) {
        Ok(known) => known,
        Err(response) => return response,
    };
    if !known {
        return not_found("Commit");
    }
    if let Some(description) = params.get("description")
        && description.chars().count() > 255
    {
        return bad_request("description is too long (maximum is 255 characters)");
    }
    let mut state = shared.lock();
    let author = state.user_json(caller.user_id, &shared.url);
    let id = state.next_id();
    let Some(project) = state.project_mut(project_id) else {
        return not_found("Project");
    };
    let current = project.statuses.iter_mut().rev().find(|status| {
        status["sha"] == sha.as_str()
            && status["name"] == name.as_str()
            && reference
                .as_deref()
                .is_none_or(|reference| status["ref"] == reference)
            && matches!(status["status"].as_str(), Some("pending" | "running"))
    });
    let from = current
        .as_ref()
        .and_then(|status| status["status"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "created".to_owned());
    let allowed = match event {
        "enqueue" => from == "created",
        "run" => from == "created" || from == "pending",
        _ => true,
    };
    if !allowed {
        return bad_request(&format!(
            "Cannot transition status via :{event} from :{from} (Reason(s): Status cannot transition via \"{event}\")"
        ));
    }
    project.status_history.push(StatusEntry {
        sha: sha.clone(),
        reference: reference.clone(),
        name: name.clone(),
        state: new_state.clone(),
    });
    let finished = matches!(
        new_state.as_str(),
        "success" | "failed" | "canceled" | "skipped"
    );
    let timestamp = now();
    let record = match current {
        Some(status) => {
            status["status"] = json!(new_state);
            status["description"] = json!(params.get("description"));
            status["target_url"] = json!(params.get("target_url"));
            if finished {
                status["finished_at"] = json!(timestamp);
            }
            status.clone()
        }
        None => {
            let status = json!({
                "id": id,
                "sha": sha,
                "ref": reference,
                "status": new_state,
                "name": name,
                "target_url": params.get("target_url"),
                "description": params.get("description"),
                "created_at": timestamp,
                "started_at": null,
                "finished_at": if finished { json!(timestamp) } else { Value::Null },
                "allow_failure": false,
                "coverage": null,
                "author": author,
            });
            project.statuses.push(status.clone());
            status
        }
    };
    (StatusCode::CREATED, axum::Json(record)).into_response()
}

pub(crate) async fn list_statuses(
    State(shared): SimState,
    Path((id, sha)): Path<(String, String)>,
    call: Call,
) -> Response {
    let (_, project_id) = answer_on_err!(call.access(&shared, &id, read(Reporter)));
    let mut statuses = shared.lock().statuses_of(project_id, &sha);
    statuses.reverse();
    paginate(statuses, &call.params)
}
