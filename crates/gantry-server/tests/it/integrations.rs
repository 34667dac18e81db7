//! GitLab integrations against the simulated GitLab: every rule of
//! `docs/concepts.md`, the token check, visibility by role, rotation,
//! audit, and that the token is never shown, logged or stored in plaintext.

use gantry_gitlab_sim::{Fault, FaultKind, Sim, TokenSpec};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Db, TestApp, assert_error, captured_logs, ids, stop_and_assert_not_stored};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    create_show_and_list,
    the_rules_of_names_defaults_and_urls,
    bad_tokens_are_refused_and_change_nothing,
    warnings_for_expiry_and_older_gitlab,
    visibility_follows_roles,
    updates_recheck_the_token,
    rotation_keeps_the_old_secret_for_the_grace_period,
    a_slow_token_check_does_not_undo_a_rotation,
    delete_removes_and_audits,
    the_token_never_leaks,
);

const BASE: &str = "/api/v1/integrations/gitlab";

/// A simulated GitLab with a user and a good `api` token.
struct GitLab {
    sim: Sim,
    token: String,
}

async fn gitlab() -> GitLab {
    let sim = Sim::start().await.expect("sim");
    let user = sim.add_user("gantry-bot");
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    GitLab { sim, token }
}

fn new_integration(name: &str, gitlab: &GitLab, token: &str) -> Value {
    json!({ "name": name, "api_host_url": gitlab.sim.url(), "api_token": token })
}

async fn create(app: &TestApp, body: Value) -> Value {
    let (status, answer) = app.post(BASE, &app.admin, body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer
}

async fn audit_actions(app: &TestApp) -> Vec<String> {
    let (_, log) = app.get("/api/v1/audit?limit=500", &app.admin).await;
    log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|entry| entry["target_kind"] == "integration")
        .map(|entry| {
            format!(
                "{} {}",
                entry["action"].as_str().unwrap_or(""),
                entry["target_id"].as_str().unwrap_or("")
            )
        })
        .collect()
}

async fn create_show_and_list(db: Db) {
    let app = TestApp::start(&db).await;
    let gitlab = gitlab().await;
    let mut body = new_integration("  Main GitLab  ", &gitlab, &gitlab.token);
    body["api_host_url"] = json!(format!("{}/", gitlab.sim.url()));
    body["default"] = json!(true);
    body["labels"] = json!(["prod", " eu ", "prod"]);
    body["description"] = json!("The **main** instance");
    let created = create(&app, body).await;
    assert_eq!(created["id"], "main-gitlab");
    assert_eq!(created["name"], "Main GitLab");
    assert_eq!(created["space"], "root");
    assert_eq!(created["default"], true);
    assert_eq!(
        created["api_host_url"],
        gitlab.sim.url(),
        "no trailing slash"
    );
    assert_eq!(created["user_facing_host_url"], gitlab.sim.url());
    assert_eq!(created["labels"], json!(["prod", "eu"]));
    assert_eq!(
        created["webhook_endpoint"],
        "http://gantry.test/webhooks/gitlab/main-gitlab"
    );
    let secret = created["webhook_secret"].as_str().expect("secret");
    assert!(secret.len() >= 43, "32 random bytes or more: {secret}");
    assert_eq!(created["token"]["scopes"], json!(["api"]));
    assert_eq!(created["token"]["expires_at"], Value::Null);
    assert_eq!(created["token"]["user"]["username"], "gantry-bot");
    assert_eq!(created["warnings"], json!([]));
    assert!(created.get("api_token").is_none());

    let (status, shown) = app.get(&format!("{BASE}/main-gitlab"), &app.admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["webhook_secret"], secret);
    assert_eq!(shown["description"], "The **main** instance");

    let (status, list) = app.get(BASE, &app.admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&list), ["main-gitlab"]);
    let listed = &list["items"][0];
    assert!(
        listed.get("webhook_secret").is_none() && listed.get("webhook_endpoint").is_none(),
        "{listed}"
    );
    assert_eq!(list["next_cursor"], Value::Null);

    // Creating asked GitLab about the token; showing and listing did not.
    let paths: Vec<String> = gitlab.sim.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/api/v4/personal_access_tokens/self", "/api/v4/user"]
    );
    assert_eq!(
        audit_actions(&app).await,
        [
            "integration.view_details main-gitlab",
            "integration.create main-gitlab"
        ]
    );
    app.stop().await;
}

async fn the_rules_of_names_defaults_and_urls(db: Db) {
    let app = TestApp::start(&db).await;
    let gitlab = gitlab().await;
    app.space("Team A", "root").await;
    let mut default = new_integration("Main", &gitlab, &gitlab.token);
    default["default"] = json!(true);
    create(&app, default.clone()).await;

    // One default only, and it lives in root.
    default["name"] = json!("Second");
    assert_error(
        &app.post(BASE, &app.admin, default.clone()).await,
        StatusCode::CONFLICT,
        "conflict",
        "\"main\"",
    );
    default["space"] = json!("team-a");
    assert_error(
        &app.post(BASE, &app.admin, default).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "root",
    );

    // A taken slug is 409, however the name is written.
    let taken = new_integration("MAIN!", &gitlab, &gitlab.token);
    assert_error(
        &app.post(BASE, &app.admin, taken).await,
        StatusCode::CONFLICT,
        "conflict",
        "\"main\"",
    );

    // Several space-level integrations for one host are fine.
    for name in ["Team A GitLab", "Team A GitLab (infra)"] {
        let mut body = new_integration(name, &gitlab, &gitlab.token);
        body["space"] = json!("team-a");
        create(&app, body).await;
    }

    // Renaming is refused; sending the current name is not a rename.
    let path = format!("{BASE}/main");
    assert_error(
        &app.patch(&path, &app.admin, json!({ "name": "Renamed" }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "immutable",
    );
    let (status, same) = app
        .patch(
            &path,
            &app.admin,
            json!({ "name": "Main", "labels": ["x"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same["labels"], json!(["x"]));
    // Making a second integration the default is 409 too.
    assert_error(
        &app.patch(
            &format!("{BASE}/team-a-gitlab"),
            &app.admin,
            json!({ "default": true, "space": "root" }),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "\"main\"",
    );

    let bad = [
        (
            json!({ "name": "x", "api_host_url": "gitlab.com", "api_token": "t" }),
            "`api_host_url`",
        ),
        (
            json!({ "name": "x", "api_host_url": "ftp://gitlab.com", "api_token": "t" }),
            "http://",
        ),
        (
            json!({ "name": "x", "api_host_url": "https://user:pw@gitlab.com", "api_token": "t" }),
            "credentials",
        ),
        (
            json!({ "name": "x", "api_host_url": "https://gitlab.com", "user_facing_host_url": "private://", "api_token": "t" }),
            "`user_facing_host_url`",
        ),
        (
            json!({ "name": "x", "api_host_url": "https://gitlab.com", "api_token": "  " }),
            "`api_token`",
        ),
        (
            json!({ "name": "  ", "api_host_url": "https://gitlab.com", "api_token": "t" }),
            "name",
        ),
        (
            json!({ "name": "x", "space": "nowhere", "api_host_url": "https://gitlab.com", "api_token": "t" }),
            "nowhere",
        ),
        (
            json!({ "name": "x", "api_host_url": "https://gitlab.com" }),
            "api_token",
        ),
        (
            json!({ "name": "x", "api_host_url": "http://169.254.169.254", "api_token": "t" }),
            "link-local",
        ),
        (
            json!({ "name": "x", "api_host_url": "http://[fe80::1]:8080", "api_token": "t" }),
            "link-local",
        ),
        (
            json!({ "name": "x", "api_host_url": "https://gitlab.com", "api_token": "t", "labels": [""] }),
            "`labels`",
        ),
        (
            json!({ "name": "x", "api_host_url": "https://gitlab.com", "api_token": "t", "colour": "red" }),
            "colour",
        ),
    ];
    let before = gitlab.sim.requests().len();
    for (body, mentions) in bad {
        assert_error(
            &app.post(BASE, &app.admin, body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            mentions,
        );
    }
    assert_eq!(
        gitlab.sim.requests().len(),
        before,
        "bad requests never reach GitLab"
    );

    // A private user-facing URL names a VCS agent pool, which must exist
    // (the whole story is in `vcs_agents.rs`).
    let mut private = new_integration("Behind the agent", &gitlab, &gitlab.token);
    private["user_facing_host_url"] = json!("private://pool-1");
    let (status, refused) = app.post(BASE, &app.admin, private).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused.to_string().contains("no VCS agent pool"),
        "{refused}"
    );
    let (_, list) = app.get(BASE, &app.admin).await;
    assert_eq!(ids(&list), ["team-a-gitlab-infra", "team-a-gitlab", "main"]);
    app.stop().await;
}

async fn bad_tokens_are_refused_and_change_nothing(db: Db) {
    let app = TestApp::start(&db).await;
    let gitlab = gitlab().await;
    let user = gitlab.sim.add_user("someone");
    let revoked = gitlab.sim.add_token(TokenSpec::new(user, &["api"]));
    gitlab.sim.revoke_token(&revoked);
    let read_only = gitlab.sim.add_token(TokenSpec::new(user, &["read_api"]));
    let blocked_user = gitlab.sim.add_user("blocked");
    let blocked = gitlab.sim.add_token(TokenSpec::new(blocked_user, &["api"]));
    gitlab.sim.set_user_state(blocked_user, "blocked");
    let cases = [
        ("glpat-wrong", "rejected the API token"),
        (revoked.as_str(), "rejected the API token"),
        (
            read_only.as_str(),
            "lacks the `api` scope (it has: read_api)",
        ),
        (blocked.as_str(), "rejected the API token"),
    ];
    for (token, mentions) in cases {
        let answer = app
            .post(BASE, &app.admin, new_integration("Main", &gitlab, token))
            .await;
        assert_error(
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            mentions,
        );
        assert!(
            answer.1.to_string().contains("create a"),
            "says what to do: {}",
            answer.1
        );
    }
    // Not GitLab at all: a clear 422 naming the URL.
    let mut not_gitlab = new_integration("Main", &gitlab, &gitlab.token);
    not_gitlab["api_host_url"] = json!(format!("{}/not-here", gitlab.sim.url()));
    assert_error(
        &app.post(BASE, &app.admin, not_gitlab).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "a GitLab instance?",
    );
    // GitLab failing after every retry is 502, not a verdict on the token.
    for _ in 0..3 {
        gitlab.sim.inject(Fault {
            path_contains: String::new(),
            kind: FaultKind::Status(503),
        });
    }
    assert_error(
        &app.post(
            BASE,
            &app.admin,
            new_integration("Main", &gitlab, &gitlab.token),
        )
        .await,
        StatusCode::BAD_GATEWAY,
        "gitlab_unavailable",
        "503",
    );
    let (_, list) = app.get(BASE, &app.admin).await;
    assert!(ids(&list).is_empty());
    assert!(audit_actions(&app).await.is_empty());
    // Once GitLab answers, the same request succeeds.
    create(&app, new_integration("Main", &gitlab, &gitlab.token)).await;
    app.stop().await;
}

async fn warnings_for_expiry_and_older_gitlab(db: Db) {
    let app = TestApp::start(&db).await;
    let gitlab = gitlab().await;
    let user = gitlab.sim.add_user("expiring");
    let soon = (time::OffsetDateTime::now_utc().date() + time::Duration::days(10)).to_string();
    let expiring = gitlab
        .sim
        .add_token(TokenSpec::new(user, &["api"]).expiring(&soon));
    let created = create(&app, new_integration("Soon", &gitlab, &expiring)).await;
    assert_eq!(created["token"]["expires_at"], soon.as_str());
    let warning = created["warnings"][0].as_str().expect("a warning");
    assert!(warning.contains(&soon), "{warning}");

    let old = self::gitlab().await;
    old.sim.without_token_self_endpoint();
    let created = create(&app, new_integration("Old", &old, &old.token)).await;
    assert_eq!(created["token"]["scopes"], json!([]));
    assert_eq!(created["token"]["user"]["username"], "gantry-bot");
    let warning = created["warnings"][0].as_str().expect("a warning");
    assert!(
        warning.contains("scopes and expiry could not be checked"),
        "{warning}"
    );
    // Warnings stay with the integration.
    let (_, shown) = app.get(&format!("{BASE}/old"), &app.admin).await;
    assert_eq!(shown["warnings"], created["warnings"]);
    app.stop().await;
}

async fn visibility_follows_roles(db: Db) {
    let app = TestApp::start(&db).await;
    let gitlab = gitlab().await;
    app.space("Team", "root").await;
    app.space("Sub", "team").await;
    app.space("Other", "root").await;
    let mut default = new_integration("Main", &gitlab, &gitlab.token);
    default["default"] = json!(true);
    create(&app, default).await;
    let mut team = new_integration("Team GitLab", &gitlab, &gitlab.token);
    team["space"] = json!("team");
    create(&app, team).await;

    let key = |name: &'static str, space: &'static str, role: &'static str| {
        let app = &app;
        async move {
            app.key(name, json!([{ "space": space, "role": role }]))
                .await
        }
    };
    let root_read = key("root-read", "root", "read").await;
    let team_admin = key("team-admin", "team", "admin").await;
    let team_read = key("team-read", "team", "read").await;
    let sub_admin = key("sub-admin", "sub", "admin").await;
    let other_admin = key("other-admin", "other", "admin").await;

    // Who lists what.
    for (secret, expected) in [
        (&app.admin, vec!["team-gitlab", "main"]),
        (&root_read, vec!["team-gitlab", "main"]),
        (&team_admin, vec!["team-gitlab", "main"]),
        (&team_read, vec!["team-gitlab", "main"]),
        (&sub_admin, vec!["main"]),
        (&other_admin, vec!["main"]),
    ] {
        let (_, list) = app.get(BASE, secret).await;
        assert_eq!(ids(&list), expected);
    }

    // Who sees details: admins of the space (root for the default one).
    let details = |answer: &(StatusCode, Value)| answer.1.get("webhook_secret").is_some();
    for (secret, main, team) in [
        (&app.admin, Some(true), Some(true)),
        (&root_read, Some(false), Some(false)),
        (&team_admin, Some(false), Some(true)),
        (&team_read, Some(false), Some(false)),
        (&sub_admin, Some(false), None),
        (&other_admin, Some(false), None),
    ] {
        for (id, expected) in [("main", main), ("team-gitlab", team)] {
            let answer = app.get(&format!("{BASE}/{id}"), secret).await;
            match expected {
                Some(shown) => {
                    assert_eq!(answer.0, StatusCode::OK, "{id}: {}", answer.1);
                    assert_eq!(details(&answer), shown, "{id}: {}", answer.1);
                    assert_eq!(answer.1.get("webhook_endpoint").is_some(), shown);
                }
                None => assert_error(&answer, StatusCode::NOT_FOUND, "not_found", id),
            }
        }
    }

    // Who may change: admins of the space; others are refused, and those
    // who cannot see it do not learn it exists.
    let change = json!({ "labels": ["changed"] });
    assert_eq!(
        app.patch(&format!("{BASE}/team-gitlab"), &team_admin, change.clone())
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &app.patch(&format!("{BASE}/main"), &team_admin, change.clone())
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "root",
    );
    assert_error(
        &app.patch(&format!("{BASE}/team-gitlab"), &team_read, change.clone())
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "team",
    );
    assert_error(
        &app.patch(&format!("{BASE}/team-gitlab"), &other_admin, change)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "team-gitlab",
    );
    let rotate = format!("{BASE}/team-gitlab/webhook-secret/rotate");
    assert_error(
        &app.call(Method::POST, &rotate, Some(&team_read), None)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "team",
    );
    assert_error(
        &app.delete(&format!("{BASE}/main"), &root_read).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "root",
    );
    // A team admin may not create in root, nor make a default.
    let mut in_root = new_integration("Mine", &gitlab, &gitlab.token);
    assert_error(
        &app.post(BASE, &team_admin, in_root.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "root",
    );
    in_root["space"] = json!("team");
    assert_eq!(
        app.post(BASE, &team_admin, in_root).await.0,
        StatusCode::CREATED
    );
    // Without a key, nothing.
    assert_eq!(
        app.call(Method::GET, BASE, None, None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Every view of details was audited, by whom it was.
    let (_, log) = app.get("/api/v1/audit?limit=500", &app.admin).await;
    let views: Vec<(String, String)> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|entry| entry["action"] == "integration.view_details")
        .map(|entry| {
            (
                entry["actor"].as_str().unwrap_or("").to_owned(),
                entry["target_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        views,
        [
            ("api-key:team-admin".to_owned(), "team-gitlab".to_owned()),
            ("api-key:initial-admin".to_owned(), "team-gitlab".to_owned()),
            ("api-key:initial-admin".to_owned(), "main".to_owned()),
        ]
    );
    app.stop().await;
}

async fn updates_recheck_the_token(db: Db) {
    let app = TestApp::start(&db).await;
    let gitlab = gitlab().await;
    create(&app, new_integration("Main", &gitlab, &gitlab.token)).await;
    let path = format!("{BASE}/main");
    let other = gitlab.sim.add_user("other-bot");
    let good = gitlab
        .sim
        .add_token(TokenSpec::new(other, &["api", "read_user"]));
    let weak = gitlab.sim.add_token(TokenSpec::new(other, &["read_api"]));

    let before = gitlab.sim.requests().len();
    let (status, changed) = app
        .patch(&path, &app.admin, json!({ "description": "new words" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        gitlab.sim.requests().len(),
        before,
        "no token change, no check"
    );

    assert_error(
        &app.patch(
            &path,
            &app.admin,
            json!({ "api_token": weak, "description": "lost" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "`api` scope",
    );
    let (_, shown) = app.get(&path, &app.admin).await;
    assert_eq!(
        shown["token"]["user"]["username"], "gantry-bot",
        "a refused change changes nothing"
    );
    assert_eq!(shown["description"], "new words");

    let (status, changed) = app
        .patch(&path, &app.admin, json!({ "api_token": good }))
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["token"]["user"]["username"], "other-bot");
    assert_eq!(changed["token"]["scopes"], json!(["api", "read_user"]));

    // A new API host needs a new token with it: the stored one is never
    // sent to a host it was not given for.
    let elsewhere = self::gitlab().await;
    let answer = app
        .patch(
            &path,
            &app.admin,
            json!({ "api_host_url": elsewhere.sim.url() }),
        )
        .await;
    assert_error(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "`api_host_url` changes only with a new `api_token`",
    );
    assert_eq!(
        elsewhere.sim.requests().len(),
        0,
        "the new host heard nothing"
    );
    let actions = audit_actions(&app).await;
    assert_eq!(
        actions,
        [
            "integration.update main",
            "integration.view_details main",
            "integration.update main",
            "integration.create main"
        ]
    );
    app.stop().await;
}

/// A PATCH whose token check takes seconds changes only what it asked
/// for: a webhook secret rotated meanwhile stays rotated.
async fn a_slow_token_check_does_not_undo_a_rotation(db: Db) {
    let app = TestApp::start(&db).await;
    let gitlab = gitlab().await;
    create(&app, new_integration("Main", &gitlab, &gitlab.token)).await;
    let user = gitlab.sim.add_user("second-bot");
    let fresh = gitlab.sim.add_token(TokenSpec::new(user, &["api"]));
    gitlab.sim.inject(Fault {
        path_contains: "/personal_access_tokens/self".into(),
        kind: FaultKind::Delay(std::time::Duration::from_millis(1500)),
    });
    let path = format!("{BASE}/main");
    let rotate = format!("{BASE}/main/webhook-secret/rotate");
    let slow_patch = app.patch(
        &path,
        &app.admin,
        json!({ "api_token": fresh, "labels": ["patched"] }),
    );
    let rotation = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        app.call(Method::POST, &rotate, Some(&app.admin), None)
            .await
    };
    let ((patched, patch), (rotated, rotation)) = tokio::join!(slow_patch, rotation);
    assert_eq!(patched, StatusCode::OK, "{patch}");
    assert_eq!(rotated, StatusCode::OK, "{rotation}");
    let (_, shown) = app.get(&path, &app.admin).await;
    assert_eq!(
        shown["webhook_secret"], rotation["webhook_secret"],
        "the rotation made during the token check stays"
    );
    assert_eq!(shown["labels"], json!(["patched"]));
    assert_eq!(shown["token"]["user"]["username"], "second-bot");
    app.stop().await;
}

async fn rotation_keeps_the_old_secret_for_the_grace_period(db: Db) {
    let app = TestApp::start(&db).await;
    let gitlab = gitlab().await;
    let created = create(&app, new_integration("Main", &gitlab, &gitlab.token)).await;
    let first = created["webhook_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let rotate = format!("{BASE}/main/webhook-secret/rotate");

    let (status, rotated) = app
        .call(Method::POST, &rotate, Some(&app.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = rotated["webhook_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert_ne!(first, second);
    let until = rotated["previous_webhook_secret_valid_until"]
        .as_str()
        .expect("grace");
    let until = time::OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339)
        .expect("time");
    let grace = until - time::OffsetDateTime::now_utc();
    assert!(
        grace > time::Duration::hours(23) && grace <= time::Duration::hours(24),
        "{grace}"
    );

    let store = app.store();
    let accepted = |integration: &gantry_store::integrations::Integration,
                    now: gantry_store::Millis| {
        integration.accepted_secrets(now).count()
    };
    let mut conn = store.conn().await.expect("conn");
    let stored = gantry_store::integrations::get(&mut conn, "main")
        .await
        .expect("get")
        .expect("there");
    drop(conn);
    let now = gantry_store::Millis::now();
    assert_eq!(
        accepted(&stored, now),
        2,
        "the old secret works during the grace period"
    );
    assert_eq!(
        accepted(&stored, now.plus(std::time::Duration::from_secs(25 * 3600))),
        1
    );

    // No grace: the previous secret stops at once.
    let (status, rotated) = app
        .call(
            Method::POST,
            &format!("{rotate}?grace_seconds=0"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        rotated.get("previous_webhook_secret_valid_until").is_none(),
        "{rotated}"
    );
    assert_ne!(rotated["webhook_secret"], second.as_str());
    assert_error(
        &app.call(
            Method::POST,
            &format!("{rotate}?grace_seconds=9999999"),
            Some(&app.admin),
            None,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "grace_seconds",
    );
    let (_, shown) = app.get(&format!("{BASE}/main"), &app.admin).await;
    assert_eq!(shown["webhook_secret"], rotated["webhook_secret"]);
    let actions = audit_actions(&app).await;
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.starts_with("integration.rotate_webhook_secret"))
            .count(),
        2
    );
    app.stop().await;
}

async fn delete_removes_and_audits(db: Db) {
    let app = TestApp::start(&db).await;
    let gitlab = gitlab().await;
    create(&app, new_integration("Main", &gitlab, &gitlab.token)).await;
    let (status, deleted) = app.delete(&format!("{BASE}/main"), &app.admin).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["id"], "main");
    assert!(deleted.get("webhook_secret").is_none());
    assert_error(
        &app.get(&format!("{BASE}/main"), &app.admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "main",
    );
    assert_error(
        &app.delete(&format!("{BASE}/main"), &app.admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "main",
    );
    assert_eq!(
        audit_actions(&app).await,
        ["integration.delete main", "integration.create main"]
    );
    // The name is free again.
    create(&app, new_integration("Main", &gitlab, &gitlab.token)).await;
    app.stop().await;
}

/// A token that shows up anywhere is a leak: responses, logs, the database.
async fn the_token_never_leaks(db: Db) {
    let app = TestApp::start(&db).await;
    let gitlab = gitlab().await;
    let user = gitlab.sim.add_user("leak-check");
    let recognisable = gitlab.sim.add_token(TokenSpec::new(user, &["api"]));
    let weak = gitlab.sim.add_token(TokenSpec::new(user, &["read_api"]));
    let rejected = "glpat-REJECTED-LEAK-CANARY-0123456789";
    let mut answers: Vec<(StatusCode, Value)> = Vec::new();

    answers.push(
        app.post(
            BASE,
            &app.admin,
            new_integration("Leak", &gitlab, &recognisable),
        )
        .await,
    );
    answers.push(
        app.post(
            BASE,
            &app.admin,
            new_integration("Leak 2", &gitlab, rejected),
        )
        .await,
    );
    answers.push(
        app.post(BASE, &app.admin, new_integration("Leak 3", &gitlab, &weak))
            .await,
    );
    let mut with_creds = new_integration("Leak 4", &gitlab, &recognisable);
    with_creds["api_host_url"] = json!(format!("http://x:{recognisable}@127.0.0.1:1"));
    answers.push(app.post(BASE, &app.admin, with_creds).await);
    answers.push(
        app.post(
            BASE,
            &app.admin,
            new_integration("Leak", &gitlab, &recognisable),
        )
        .await,
    );
    gitlab.sim.inject(Fault {
        path_contains: String::new(),
        kind: FaultKind::Status(500),
    });
    answers.push(app.get(BASE, &app.admin).await);
    answers.push(app.get(&format!("{BASE}/leak"), &app.admin).await);
    answers.push(
        app.patch(
            &format!("{BASE}/leak"),
            &app.admin,
            json!({ "api_token": rejected }),
        )
        .await,
    );
    answers.push(
        app.patch(
            &format!("{BASE}/leak"),
            &app.admin,
            json!({ "api_token": recognisable, "name": "x" }),
        )
        .await,
    );
    answers.push(
        app.patch(
            &format!("{BASE}/leak"),
            &app.admin,
            json!({ "api_token": recognisable }),
        )
        .await,
    );
    answers.push(
        app.call(
            Method::POST,
            &format!("{BASE}/leak/webhook-secret/rotate"),
            Some(&app.admin),
            None,
        )
        .await,
    );
    answers.push(app.get("/api/v1/audit?limit=500", &app.admin).await);
    answers.push(app.get("/metrics", &app.admin).await);
    answers.push(app.get("/api/v1/openapi.json", &app.admin).await);
    answers.push(app.delete(&format!("{BASE}/leak"), &app.admin).await);
    assert_eq!(answers[0].0, StatusCode::CREATED, "{}", answers[0].1);
    assert_eq!(answers[1].0, StatusCode::UNPROCESSABLE_ENTITY);

    for secret in [recognisable.as_str(), weak.as_str(), rejected] {
        for (status, body) in &answers {
            assert!(
                !body.to_string().contains(secret),
                "a {status} answer holds a token: {body}"
            );
        }
        let logs = captured_logs();
        assert!(!logs.is_empty(), "logs were captured");
        assert!(!logs.contains(secret), "the log holds a token");
    }
    stop_and_assert_not_stored(app, &db, &[&recognisable, &weak, rejected]).await;
}
