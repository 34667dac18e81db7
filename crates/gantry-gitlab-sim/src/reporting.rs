//! What Gantry writes back to GitLab, and the merge requests it reads:
//! merge request notes (with GitLab's length limit and author rule) and
//! deployments.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;

use crate::api::{
    Call, SimState, bad_request, error, not_found, paginate, project_access, read, write,
};
use crate::state::AccessLevel::{Developer, Guest, Reporter};
use crate::state::{Note, now};

fn merge_request_json(project_id: u64, mr: &crate::state::MergeRequest) -> Value {
    json!({
        "id": mr.id,
        "iid": mr.iid,
        "project_id": project_id,
        "title": mr.title,
        "state": "opened",
        "source_branch": mr.source_branch,
        "target_branch": mr.target_branch,
        "source_project_id": project_id,
        "target_project_id": project_id,
        "sha": mr.sha,
        "draft": false,
    })
}

pub(crate) async fn merge_request(
    State(shared): SimState,
    Path((id, iid)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Response {
    let (_, project_id) = answer_on_err!(project_access(&shared, &headers, &id, read(Guest)));
    let state = shared.lock();
    state
        .project(project_id)
        .and_then(|project| project.merge_requests.iter().find(|mr| mr.iid == iid))
        .map_or_else(
            || not_found("Merge Request"),
            |mr| axum::Json(merge_request_json(project_id, mr)).into_response(),
        )
}

/// GitLab refuses notes longer than this.
const NOTE_LIMIT: usize = 1_000_000;

fn note_json(
    state: &crate::state::State,
    base_url: &str,
    mr: &crate::state::MergeRequest,
    note: &Note,
) -> Value {
    json!({
        "id": note.id,
        "type": null,
        "body": note.body,
        "attachment": null,
        "author": state.user_json(note.author_id, base_url),
        "created_at": note.created_at,
        "updated_at": note.updated_at,
        "system": false,
        "noteable_id": mr.id,
        "noteable_type": "MergeRequest",
        "noteable_iid": mr.iid,
        "resolvable": false,
    })
}

pub(crate) async fn list_notes(
    State(shared): SimState,
    Path((id, iid)): Path<(String, u64)>,
    call: Call,
) -> Response {
    let (_, project_id) = answer_on_err!(call.access(&shared, &id, read(Guest)));
    let state = shared.lock();
    let Some(mr) = state
        .project(project_id)
        .and_then(|project| project.merge_requests.iter().find(|mr| mr.iid == iid))
    else {
        return not_found("Merge Request");
    };
    // GitLab lists notes newest first by default.
    let notes: Vec<Value> = mr
        .notes
        .iter()
        .rev()
        .map(|note| note_json(&state, &shared.url, mr, note))
        .collect();
    paginate(notes, &call.params)
}

fn note_body(params: &HashMap<String, String>) -> Result<String, Response> {
    let Some(body) = params.get("body") else {
        return Err(bad_request("body is missing"));
    };
    if body.chars().count() > NOTE_LIMIT {
        return Err((
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"message": {"note": ["is too long (maximum is 1000000 characters)"]}}),
            ),
        )
            .into_response());
    }
    Ok(body.clone())
}

pub(crate) async fn create_note(
    State(shared): SimState,
    Path((id, iid)): Path<(String, u64)>,
    call: Call,
) -> Response {
    let (caller, project_id) = answer_on_err!(call.access(&shared, &id, write(Guest)));
    let text = answer_on_err!(note_body(&call.params));
    let mut state = shared.lock();
    let note_id = state.next_id();
    let timestamp = now();
    let note = Note {
        id: note_id,
        body: text,
        author_id: caller.user_id,
        created_at: timestamp.clone(),
        updated_at: timestamp,
    };
    let Some(mr) = state
        .project_mut(project_id)
        .and_then(|project| project.merge_requests.iter_mut().find(|mr| mr.iid == iid))
    else {
        return not_found("Merge Request");
    };
    mr.notes.push(note.clone());
    let state = &*state;
    let Some(mr) = state
        .project(project_id)
        .and_then(|project| project.merge_requests.iter().find(|mr| mr.iid == iid))
    else {
        return not_found("Merge Request");
    };
    (
        StatusCode::CREATED,
        axum::Json(note_json(state, &shared.url, mr, &note)),
    )
        .into_response()
}

pub(crate) async fn edit_note(
    State(shared): SimState,
    Path((id, iid, note_id)): Path<(String, u64, u64)>,
    call: Call,
) -> Response {
    let (caller, project_id) = answer_on_err!(call.access(&shared, &id, write(Guest)));
    let text = answer_on_err!(note_body(&call.params));
    let mut state = shared.lock();
    let Some(note) = state
        .project_mut(project_id)
        .and_then(|project| project.merge_requests.iter_mut().find(|mr| mr.iid == iid))
        .and_then(|mr| mr.notes.iter_mut().find(|note| note.id == note_id))
    else {
        return not_found("Note");
    };
    if note.author_id != caller.user_id {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    note.body = text;
    note.updated_at = now();
    let note = note.clone();
    let state = &*state;
    let Some(mr) = state
        .project(project_id)
        .and_then(|project| project.merge_requests.iter().find(|mr| mr.iid == iid))
    else {
        return not_found("Merge Request");
    };
    axum::Json(note_json(state, &shared.url, mr, &note)).into_response()
}

pub(crate) async fn list_deployments(
    State(shared): SimState,
    Path(id): Path<String>,
    call: Call,
) -> Response {
    let (_, project_id) = answer_on_err!(call.access(&shared, &id, read(Reporter)));
    let deployments = shared.lock().deployments_of(project_id);
    paginate(deployments, &call.params)
}

const DEPLOYMENT_STATES: [&str; 5] = ["running", "success", "failed", "canceled", "blocked"];

pub(crate) async fn create_deployment(
    State(shared): SimState,
    Path(id): Path<String>,
    call: Call,
) -> Response {
    let (caller, project_id) = answer_on_err!(call.access(&shared, &id, write(Developer)));
    let params = call.params;
    let mut missing = Vec::new();
    for field in ["environment", "sha", "ref", "tag", "status"] {
        if !params.contains_key(field) {
            missing.push(format!("{field} is missing"));
        }
    }
    if !missing.is_empty() {
        return bad_request(&missing.join(", "));
    }
    let status = params.get("status").cloned().unwrap_or_default();
    if !DEPLOYMENT_STATES.contains(&status.as_str()) {
        return bad_request("status does not have a valid value");
    }
    let mut state = shared.lock();
    let user = state.user_json(caller.user_id, &shared.url);
    let id = state.next_id();
    let environment_id = state.next_id();
    let Some(project) = state.project_mut(project_id) else {
        return not_found("Project");
    };
    let iid = project.deployments.len() + 1;
    let timestamp = now();
    let deployment = json!({
        "id": id,
        "iid": iid,
        "ref": params.get("ref"),
        "sha": params.get("sha"),
        "status": status,
        "created_at": timestamp,
        "updated_at": timestamp,
        "user": user,
        "deployable": null,
        "environment": {"id": environment_id, "name": params.get("environment"), "external_url": null},
    });
    project.deployments.push(deployment.clone());
    (StatusCode::CREATED, axum::Json(deployment)).into_response()
}

pub(crate) async fn edit_deployment(
    State(shared): SimState,
    Path((id, deployment_id)): Path<(String, u64)>,
    call: Call,
) -> Response {
    let (_, project_id) = answer_on_err!(call.access(&shared, &id, write(Developer)));
    let params = call.params;
    let Some(status) = params.get("status") else {
        return bad_request("status is missing");
    };
    if !DEPLOYMENT_STATES.contains(&status.as_str()) {
        return bad_request("status does not have a valid value");
    }
    let mut state = shared.lock();
    let Some(deployment) = state.project_mut(project_id).and_then(|project| {
        project
            .deployments
            .iter_mut()
            .find(|d| d["id"] == deployment_id)
    }) else {
        return not_found("Deployment");
    };
    deployment["status"] = json!(status);
    deployment["updated_at"] = json!(now());
    axum::Json(deployment.clone()).into_response()
}
