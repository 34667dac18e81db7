use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Db, TestApp, assert_error, ids, stop_and_assert_not_stored};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    a_key_works_once_created_and_stops_when_revoked,
    the_database_holds_no_plaintext_key,
    key_rules,
);

async fn a_key_works_once_created_and_stops_when_revoked(db: Db) {
    let app = TestApp::start(&db).await;
    let (status, created) = app
        .post(
            "/api/v1/api-keys",
            &app.admin,
            json!({ "name": "CI deploy", "roles": [{ "space": "root", "role": "write" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], "ci-deploy");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("gantry_"));

    let (status, me) = app.get("/api/v1/me", &secret).await;
    assert_eq!(
        (status, me["id"].as_str()),
        (StatusCode::OK, Some("ci-deploy"))
    );
    // Listing never shows a secret.
    let (_, list) = app.get("/api/v1/api-keys", &app.admin).await;
    assert!(!list.to_string().contains(&secret));
    assert!(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|k| k.get("secret").is_none())
    );

    let (status, revoked) = app
        .call(
            Method::DELETE,
            "/api/v1/api-keys/ci-deploy",
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    assert_error(
        &app.get("/api/v1/me", &secret).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "revoked",
    );
    assert_error(
        &app.call(
            Method::DELETE,
            "/api/v1/api-keys/nope",
            Some(&app.admin),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "\"nope\"",
    );
    app.stop().await;
}

async fn the_database_holds_no_plaintext_key(db: Db) {
    let app = TestApp::start(&db).await;
    let secret = app
        .key("leaky", json!([{ "space": "root", "role": "read" }]))
        .await;
    let admin = app.admin.clone();
    stop_and_assert_not_stored(app, &db, &[&secret, &admin]).await;
}

async fn key_rules(db: Db) {
    let app = TestApp::start(&db).await;
    app.space("Team", "root").await;
    let team_admin = app
        .key("team-admin", json!([{ "space": "team", "role": "admin" }]))
        .await;

    // An admin of a space grants roles there, not above it.
    let (status, _) = app
        .post(
            "/api/v1/api-keys",
            &team_admin,
            json!({ "name": "team-ci", "roles": [{ "space": "team", "role": "write" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Refusals: (caller, body, status, code, what the message names).
    let admin = app.admin.as_str();
    let refusals = [
        (
            team_admin.as_str(),
            json!({ "name": "sneaky", "roles": [{ "space": "root", "role": "read" }] }),
            StatusCode::FORBIDDEN,
            "forbidden",
            "\"root\"",
        ),
        (
            team_admin.as_str(),
            json!({ "name": "w", "roles": [{ "space": "root", "role": "worker" }] }),
            StatusCode::FORBIDDEN,
            "forbidden",
            "\"root\"",
        ),
        (
            admin,
            json!({ "name": "w", "roles": [{ "space": "team", "role": "worker" }] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "worker role can only be granted on \"root\"",
        ),
        (
            admin,
            json!({ "name": "none", "roles": [] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "`roles`",
        ),
        (
            admin,
            json!({ "name": "x", "roles": [{ "space": "ghost", "role": "read" }] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "\"ghost\"",
        ),
        (
            admin,
            json!({ "name": "x", "roles": [{ "space": "root", "role": "owner" }] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "owner",
        ),
        (
            admin,
            json!({ "name": "Team CI", "roles": [{ "space": "root", "role": "read" }] }),
            StatusCode::CONFLICT,
            "conflict",
            "\"team-ci\"",
        ),
    ];
    for (caller, body, status, code, mentions) in refusals {
        assert_error(
            &app.post("/api/v1/api-keys", caller, body).await,
            status,
            code,
            mentions,
        );
    }

    // The team admin sees its own subtree's keys, and can revoke them but not the root admin.
    let (_, list) = app.get("/api/v1/api-keys", &team_admin).await;
    let mut ids = ids(&list);
    ids.sort_unstable();
    assert_eq!(ids, ["team-admin", "team-ci"]);
    assert_error(
        &app.call(
            Method::DELETE,
            "/api/v1/api-keys/initial-admin",
            Some(&team_admin),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin",
    );
    let (status, _) = app
        .call(
            Method::DELETE,
            "/api/v1/api-keys/team-ci",
            Some(&team_admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // The last root admin cannot lock everyone out.
    assert_error(
        &app.call(
            Method::DELETE,
            "/api/v1/api-keys/initial-admin",
            Some(&app.admin),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "last key with admin on root",
    );
    let second_admin = app
        .key(
            "second-admin",
            json!([{ "space": "root", "role": "admin" }]),
        )
        .await;
    let (status, _) = app
        .call(
            Method::DELETE,
            "/api/v1/api-keys/initial-admin",
            Some(&second_admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}
