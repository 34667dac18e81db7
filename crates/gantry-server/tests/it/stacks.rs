//! Stacks against the simulated GitLab: the repository resolved to its
//! project, the checks of every field, roles, secrets, and the rule that
//! an integration in use is not deleted without `force`.

use gantry_gitlab_sim::{AccessLevel, Sim, TokenSpec};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Db, TestApp, assert_error, ids, stop_and_assert_not_stored};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    create_resolves_the_project_and_normalises_fields,
    bad_input_names_what_is_wrong,
    roles_and_visibility,
    an_integration_in_use_is_deleted_only_with_force,
    a_slow_repository_check_does_not_undo_a_secret_change,
);

const STACKS: &str = "/api/v1/stacks";

struct World {
    sim: Sim,
    project: u64,
    user: u64,
}

/// A default integration on a simulator with `infra/network`, whose
/// token user has `level` on it.
async fn world(app: &TestApp, level: AccessLevel) -> World {
    let sim = Sim::start().await.expect("sim");
    let user = sim.add_user("gantry-bot");
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    let project = sim.add_project("infra/network", "main").expect("project");
    sim.add_member(project, user, level);
    let (status, body) = app
        .post(
            "/api/v1/integrations/gitlab",
            &app.admin,
            json!({ "name": "Main", "default": true, "api_host_url": sim.url(), "api_token": token }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    World { sim, project, user }
}

fn stack(name: &str) -> Value {
    json!({
        "name": name,
        "repository": "infra/network",
        "branch": "main",
        "project_root": "./network",
        "vendor": { "kind": "opentofu" },
    })
}

async fn create_resolves_the_project_and_normalises_fields(db: Db) {
    let app = TestApp::start(&db).await;
    let world = world(&app, AccessLevel::Maintainer).await;
    let mut body = stack("Network Prod");
    body["additional_project_globs"] = json!(["modules/**/*.tf"]);
    body["labels"] = json!(["prod"]);
    body["autodeploy"] = json!(true);
    body["environment"] = json!({ "TF_VAR_region": "eu-west-1" });
    body["secret_environment"] = json!({ "AWS_SECRET_ACCESS_KEY": "sekrit-STACK-CANARY-42" });
    let (status, created) = app.post(STACKS, &app.admin, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], "network-prod");
    assert_eq!(created["integration"], "main", "the default integration");
    assert_eq!(created["project_id"], world.project);
    assert_eq!(created["project_root"], "network/");
    assert_eq!(created["branch"], "main");
    assert_eq!(created["vendor"], json!({ "kind": "opentofu" }));
    assert_eq!(
        created["environment"],
        json!({ "TF_VAR_region": "eu-west-1" })
    );
    assert_eq!(
        created["secret_environment"],
        json!(["AWS_SECRET_ACCESS_KEY"])
    );
    assert_eq!(created["autodeploy"], true);
    assert_eq!(created["allow_forks"], false);
    assert!(
        created.get("warnings").is_none(),
        "a Maintainer token: {created}"
    );
    assert!(!created.to_string().contains("sekrit"));

    let (_, shown) = app.get(&format!("{STACKS}/network-prod"), &app.admin).await;
    assert_eq!(
        shown["secret_environment"],
        json!(["AWS_SECRET_ACCESS_KEY"])
    );
    assert!(!shown.to_string().contains("sekrit"));
    let (_, list) = app.get(STACKS, &app.admin).await;
    assert_eq!(ids(&list), ["network-prod"]);

    // A shell workflow, and a token user below Maintainer: created, with a warning.
    world
        .sim
        .add_member(world.project, world.user, AccessLevel::Developer);
    let mut shell = stack("Shell");
    shell["vendor"] = json!({ "kind": "shell", "plan": "make plan", "apply": "make apply" });
    let (status, created) = app.post(STACKS, &app.admin, shell).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["vendor"]["init"], "");
    assert!(
        created["warnings"][0]
            .as_str()
            .unwrap_or("")
            .contains("access level 30"),
        "{created}"
    );

    // Renaming is refused; other changes are kept.
    let path = format!("{STACKS}/network-prod");
    assert_error(
        &app.patch(&path, &app.admin, json!({ "name": "Other" }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "immutable",
    );
    let (status, changed) = app
        .patch(
            &path,
            &app.admin,
            json!({ "branch": "release/1", "project_root": "", "secret_environment": {} }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        (changed["branch"].as_str(), changed["project_root"].as_str()),
        (Some("release/1"), Some(""))
    );
    assert_eq!(changed["secret_environment"], json!([]));
    stop_and_assert_not_stored(app, &db, &["sekrit-STACK-CANARY-42"]).await;
}

async fn bad_input_names_what_is_wrong(db: Db) {
    let app = TestApp::start(&db).await;
    // No default integration yet.
    assert_error(
        &app.post(STACKS, &app.admin, stack("x")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "default GitLab integration",
    );
    let world = world(&app, AccessLevel::Maintainer).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "integration": "nope" }), "`integration` \"nope\""),
        (json!({ "repository": "infra/missing" }), "infra/missing"),
        (json!({ "repository": "" }), "`repository`"),
        (json!({ "branch": "bad..branch" }), "`branch`"),
        (json!({ "branch": "" }), "`branch`"),
        (json!({ "project_root": "../outside" }), "`project_root`"),
        (json!({ "project_root": "/etc" }), "`project_root`"),
        (
            json!({ "additional_project_globs": ["a[b"] }),
            "`additional_project_globs`",
        ),
        (json!({ "environment": { "1BAD": "x" } }), "1BAD"),
        (
            json!({ "secret_environment": { "BAD-NAME": "x" } }),
            "BAD-NAME",
        ),
        (
            json!({ "vendor": { "kind": "shell", "plan": "", "apply": "x" } }),
            "`plan`",
        ),
        (json!({ "vendor": { "kind": "ansible" } }), "vendor"),
        (json!({ "space": "nowhere" }), "nowhere"),
        (json!({ "colour": "red" }), "colour"),
    ];
    let before = world.sim.requests().len();
    for (change, mentions) in cases {
        let mut body = stack("Bad");
        for (key, value) in change.as_object().expect("object") {
            body[key] = value.clone();
        }
        assert_error(
            &app.post(STACKS, &app.admin, body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            mentions,
        );
    }
    // Only the unknown repository reached GitLab.
    assert_eq!(world.sim.requests().len(), before + 1);
    // A space-level integration serves its space and below, not others.
    app.space("Team", "root").await;
    app.space("Other", "root").await;
    let user = world.sim.add_user("team-bot");
    let token = world.sim.add_token(TokenSpec::new(user, &["api"]));
    world
        .sim
        .add_member(world.project, user, AccessLevel::Maintainer);
    let (status, _) = app
        .post(
            "/api/v1/integrations/gitlab",
            &app.admin,
            json!({ "name": "Team GitLab", "space": "team", "api_host_url": world.sim.url(), "api_token": token }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut elsewhere = stack("Elsewhere");
    elsewhere["space"] = json!("other");
    elsewhere["integration"] = json!("team-gitlab");
    assert_error(
        &app.post(STACKS, &app.admin, elsewhere).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "cannot serve stacks in \"other\"",
    );
    let mut in_team = stack("In team");
    in_team["space"] = json!("team");
    in_team["integration"] = json!("team-gitlab");
    assert_eq!(
        app.post(STACKS, &app.admin, in_team).await.0,
        StatusCode::CREATED
    );
    let (_, list) = app.get(STACKS, &app.admin).await;
    assert_eq!(ids(&list), ["in-team"]);
    app.stop().await;
}

async fn roles_and_visibility(db: Db) {
    let app = TestApp::start(&db).await;
    let _world = world(&app, AccessLevel::Maintainer).await;
    app.space("Team", "root").await;
    app.space("Other", "root").await;
    let team_admin = app
        .key("team-admin", json!([{ "space": "team", "role": "admin" }]))
        .await;
    let team_write = app
        .key("team-write", json!([{ "space": "team", "role": "write" }]))
        .await;
    let other = app
        .key("other-read", json!([{ "space": "other", "role": "read" }]))
        .await;
    let mut body = stack("Team stack");
    body["space"] = json!("team");
    assert_error(
        &app.post(STACKS, &team_write, body.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin",
    );
    assert_eq!(
        app.post(STACKS, &team_admin, body).await.0,
        StatusCode::CREATED
    );
    assert_error(
        &app.post(STACKS, &team_admin, stack("Root stack")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "root",
    );
    let path = format!("{STACKS}/team-stack");
    assert_eq!(app.get(&path, &team_write).await.0, StatusCode::OK);
    assert_error(
        &app.get(&path, &other).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "team-stack",
    );
    assert_eq!(ids(&app.get(STACKS, &other).await.1), Vec::<&str>::new());
    assert_eq!(ids(&app.get(STACKS, &team_write).await.1), ["team-stack"]);
    assert_error(
        &app.patch(&path, &team_write, json!({ "labels": ["x"] }))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin",
    );
    assert_error(
        &app.delete(&path, &team_write).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin",
    );
    let (status, deleted) = app.delete(&path, &team_admin).await;
    assert_eq!(
        (status, deleted["id"].as_str()),
        (StatusCode::OK, Some("team-stack"))
    );
    assert_error(
        &app.get(&path, &team_admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "team-stack",
    );
    app.stop().await;
}

async fn an_integration_in_use_is_deleted_only_with_force(db: Db) {
    let app = TestApp::start(&db).await;
    let _world = world(&app, AccessLevel::Maintainer).await;
    for name in ["A", "B"] {
        assert_eq!(
            app.post(STACKS, &app.admin, stack(name)).await.0,
            StatusCode::CREATED
        );
    }
    let integration = "/api/v1/integrations/gitlab/main";
    assert_error(
        &app.delete(integration, &app.admin).await,
        StatusCode::CONFLICT,
        "conflict",
        "(a, b)",
    );
    assert_eq!(
        app.get(integration, &app.admin).await.0,
        StatusCode::OK,
        "still there"
    );
    let (status, _) = app
        .delete(&format!("{integration}?force=true"), &app.admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, stack_a) = app.get(&format!("{STACKS}/a"), &app.admin).await;
    assert_eq!(
        stack_a["integration"],
        Value::Null,
        "left without an integration"
    );
    app.stop().await;
}

/// A PATCH that moves the stack waits 1.5 s for GitLab's project lookup;
/// meanwhile another replaces the secret environment (say, a leaked
/// secret): the move does not bring the old secret back.
async fn a_slow_repository_check_does_not_undo_a_secret_change(db: Db) {
    let app = TestApp::start(&db).await;
    let world = world(&app, AccessLevel::Maintainer).await;
    let dns = world.sim.add_project("infra/dns", "main").expect("project");
    world
        .sim
        .add_member(dns, world.user, AccessLevel::Maintainer);
    let mut body = stack("Net");
    body["secret_environment"] = json!({ "LEAKED_TOKEN": "old" });
    let (status, created) = app.post(STACKS, &app.admin, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    world.sim.inject(gantry_gitlab_sim::Fault {
        path_contains: "infra%2Fdns".into(),
        kind: gantry_gitlab_sim::FaultKind::Delay(std::time::Duration::from_millis(1500)),
    });
    let path = format!("{STACKS}/net");
    let slow_move = async {
        let answer = app
            .patch(
                &path,
                &app.admin,
                json!({ "repository": "infra/dns", "labels": ["moved"] }),
            )
            .await;
        (answer, std::time::Instant::now())
    };
    let secret_change = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let answer = app
            .patch(
                &path,
                &app.admin,
                json!({ "secret_environment": { "FRESH_TOKEN": "new" } }),
            )
            .await;
        (answer, std::time::Instant::now())
    };
    let (((moved, move_body), move_done), ((changed, change_body), change_done)) =
        tokio::join!(slow_move, secret_change);
    assert!(
        change_done < move_done,
        "the change lands during the lookup"
    );
    assert_eq!(moved, StatusCode::OK, "{move_body}");
    assert_eq!(changed, StatusCode::OK, "{change_body}");
    let (_, shown) = app.get(&path, &app.admin).await;
    assert_eq!(shown["repository"], "infra/dns");
    assert_eq!(shown["project_id"], dns);
    assert_eq!(shown["labels"], json!(["moved"]));
    assert_eq!(
        shown["secret_environment"],
        json!(["FRESH_TOKEN"]),
        "the secret change made during the lookup stays"
    );
    app.stop().await;
}
