//! The simulated GitLab answers in the shapes of the real responses in the
//! corpus: every field the simulator sends that the corpus's response also
//! has carries the same kind of JSON value, and the fields Gantry reads are
//! there.

use std::collections::BTreeSet;

use gantry_gitlab_sim::{AccessLevel, Sim, TokenSpec};
use serde_json::Value;

use crate::corpus::{corpus, read};

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Fails when a field both have differs in kind (null matches anything)
/// or when one of `required` is missing from the simulator's answer.
fn assert_same_shape(name: &str, real: &Value, simulated: &Value, required: &[&str]) {
    let real = real
        .as_object()
        .unwrap_or_else(|| panic!("{name}: not an object"));
    let simulated = simulated
        .as_object()
        .unwrap_or_else(|| panic!("{name}: the simulator answered {simulated}"));
    for (field, value) in simulated {
        if let Some(expected) = real.get(field)
            && !value.is_null()
            && !expected.is_null()
        {
            assert_eq!(kind(value), kind(expected), "{name}: field {field}");
        }
    }
    let have: BTreeSet<&str> = simulated.keys().map(String::as_str).collect();
    for field in required {
        assert!(
            have.contains(field),
            "{name}: the simulator leaves out {field}"
        );
        assert!(
            real.contains_key(*field),
            "{name}: the corpus has no {field}"
        );
    }
}

async fn get(sim: &Sim, token: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/api/v4/{path}", sim.url()))
        .header("PRIVATE-TOKEN", token)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

async fn post(sim: &Sim, token: &str, path: &str, form: &[(&str, &str)]) -> Value {
    reqwest::Client::new()
        .post(format!("{}/api/v4/{path}", sim.url()))
        .header("PRIVATE-TOKEN", token)
        .form(form)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn the_simulator_answers_in_the_corpus_shapes() {
    let Some(dir) = corpus() else { return };
    let real = |name: &str| -> Value { serde_json::from_slice(&read(&dir, name)).expect(name) };
    let sim = Sim::start().await.expect("sim");
    let user = sim.add_user("deployer");
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    let project = sim.add_project("infra/network", "main").expect("project");
    sim.add_member(project, user, AccessLevel::Maintainer);
    let (_, sha) = sim
        .commit(
            project,
            "feature",
            &[("main.tf", Some("# v2\n"))],
            "Change the network",
        )
        .expect("commit");
    let iid = sim
        .open_merge_request(project, "feature", "main", "Network")
        .expect("mr");

    let token_self = get(&sim, &token, "personal_access_tokens/self").await;
    assert_same_shape(
        "token",
        &real("personal_access_tokens-self-gogitlab.json"),
        &token_self,
        &["id", "revoked", "active", "scopes", "expires_at", "user_id"],
    );
    let me = get(&sim, &token, "user").await;
    assert_same_shape(
        "user",
        &real("user-get-goscm.json"),
        &me,
        &["id", "username", "state"],
    );
    let found = get(&sim, &token, "projects/infra%2Fnetwork").await;
    assert_same_shape(
        "project",
        &real("projects-get-goscm.json"),
        &found,
        &[
            "id",
            "path_with_namespace",
            "default_branch",
            "http_url_to_repo",
            "web_url",
        ],
    );
    assert_eq!(found["id"], project);
    let member = get(
        &sim,
        &token,
        &format!("projects/{project}/members/all/{user}"),
    )
    .await;
    assert_same_shape(
        "member",
        &real("project_members_all-get-gogitlab.json"),
        &member,
        &["id", "username", "access_level"],
    );
    assert_eq!(member["access_level"], 40);
    let status = post(
        &sim,
        &token,
        &format!("projects/{project}/statuses/{sha}"),
        &[
            ("state", "pending"),
            ("name", "gantry/network"),
            ("ref", "feature"),
        ],
    )
    .await;
    assert_same_shape(
        "status",
        &real("commit_statuses-create-goscm.json"),
        &status,
        &[
            "id",
            "sha",
            "status",
            "name",
            "ref",
            "description",
            "target_url",
        ],
    );
    let note = post(
        &sim,
        &token,
        &format!("projects/{project}/merge_requests/{iid}/notes"),
        &[("body", "plan: 1 to add")],
    )
    .await;
    assert_same_shape(
        "note",
        &real("merge_request_notes-create-goscm.json"),
        &note,
        &["id", "body", "author", "noteable_iid", "system"],
    );
    let deployment = post(
        &sim,
        &token,
        &format!("projects/{project}/deployments"),
        &[
            ("environment", "gantry/network"),
            ("sha", &sha),
            ("ref", "main"),
            ("tag", "false"),
            ("status", "running"),
        ],
    )
    .await;
    assert_same_shape(
        "deployment",
        &real("deployments-create-gogitlab.json"),
        &deployment,
        &["id", "iid", "ref", "sha", "status", "environment"],
    );
    let hook = post(
        &sim,
        &token,
        &format!("projects/{project}/hooks"),
        &[
            ("url", "http://gantry.example/webhooks/gitlab/main"),
            ("merge_requests_events", "true"),
        ],
    )
    .await;
    assert_same_shape(
        "hook",
        &real("project_hooks-create-goscm.json"),
        &hook,
        &[
            "id",
            "url",
            "project_id",
            "push_events",
            "merge_requests_events",
            "tag_push_events",
        ],
    );
    let compare = get(
        &sim,
        &token,
        &format!("projects/{project}/repository/compare?from=main&to=feature"),
    )
    .await;
    assert_same_shape(
        "compare",
        &real("repository_compare-goscm.json"),
        &compare,
        &["commit", "commits", "diffs"],
    );
    assert_same_shape(
        "compare commit",
        &real("repository_compare-goscm.json")["commits"][0],
        &compare["commits"][0],
        &["id", "title", "parent_ids"],
    );
    assert_same_shape(
        "compare diff",
        &real("repository_compare-goscm.json")["diffs"][0],
        &compare["diffs"][0],
        &[
            "old_path",
            "new_path",
            "new_file",
            "deleted_file",
            "renamed_file",
            "diff",
        ],
    );
    assert_eq!(compare["diffs"][0]["new_path"], "main.tf");
    assert_eq!(compare["commits"][0]["id"], sha.as_str());
}

#[tokio::test]
async fn a_repeated_commit_status_is_refused_as_gitlab_does() {
    let sim = Sim::start().await.expect("sim");
    let user = sim.add_user("deployer");
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    let project = sim.add_project("infra/network", "main").expect("project");
    sim.add_member(project, user, AccessLevel::Developer);
    let (_, sha) = sim
        .commit(project, "main", &[("a.tf", Some("a"))], "a")
        .expect("commit");
    let path = format!("projects/{project}/statuses/{sha}");
    let send = |state: &'static str| {
        let (sim_url, token, path) = (sim.url().to_owned(), token.clone(), path.clone());
        async move {
            let response = reqwest::Client::new()
                .post(format!("{sim_url}/api/v4/{path}"))
                .header("PRIVATE-TOKEN", token)
                .form(&[("state", state), ("name", "gantry/net")])
                .send()
                .await
                .expect("request");
            (
                response.status().as_u16(),
                response.text().await.expect("body"),
            )
        }
    };
    assert_eq!(send("pending").await.0, 201);
    let (status, body) = send("pending").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("Cannot transition status via :enqueue from :pending"),
        "{body}"
    );
    assert_eq!(send("running").await.0, 201);
    let (status, body) = send("pending").await;
    assert_eq!(status, 400, "running → pending is refused: {body}");
    assert_eq!(send("success").await.0, 201);
    // A finished status starts afresh.
    assert_eq!(send("running").await.0, 201);
    assert_eq!(sim.statuses(project, &sha).len(), 2);
}

#[tokio::test]
async fn repositories_are_served_over_smart_http_with_token_auth() {
    let sim = Sim::start().await.expect("sim");
    let user = sim.add_user("deployer");
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    let project = sim.add_project("infra/network", "main").expect("project");
    sim.add_member(project, user, AccessLevel::Reporter);
    let (_, sha) = sim
        .commit(project, "main", &[("main.tf", Some("# net\n"))], "net")
        .expect("commit");
    let url = sim.clone_url(project).expect("url");
    let authed = url.replacen("http://", &format!("http://oauth2:{token}@"), 1);
    let dir = std::env::temp_dir().join(format!("sim-clone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let clone = tokio::process::Command::new("git")
        .args(["clone", "-q", &authed])
        .arg(&dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .expect("git");
    assert!(
        clone.status.success(),
        "{}",
        String::from_utf8_lossy(&clone.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("main.tf")).expect("file"),
        "# net\n"
    );
    let head = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .expect("git");
    assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), sha);
    let _ = std::fs::remove_dir_all(&dir);
    let wrong = url.replacen("http://", "http://oauth2:glpat-wrong@", 1);
    let refused = tokio::process::Command::new("git")
        .args(["ls-remote", &wrong])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .expect("git");
    assert!(!refused.status.success());
}
