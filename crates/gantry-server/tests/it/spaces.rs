use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Db, TestApp, assert_error, ids};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    spaces_form_a_tree_with_clear_conflicts,
    space_lists_show_what_a_key_can_read,
);

async fn spaces_form_a_tree_with_clear_conflicts(db: Db) {
    let app = TestApp::start(&db).await;
    let (status, team) = app
        .post(
            "/api/v1/spaces",
            &app.admin,
            json!({ "name": "  Team Network  " }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    assert_eq!(
        (
            team["id"].as_str(),
            team["name"].as_str(),
            team["parent"].as_str()
        ),
        (Some("team-network"), Some("Team Network"), Some("root"))
    );
    let (status, dev) = app
        .post(
            "/api/v1/spaces",
            &app.admin,
            json!({ "name": "Dev", "id": "net-dev", "parent": "team-network" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{dev}");
    assert_eq!(dev["parent"], "team-network");

    // Refusals: (body, status, code, what the message names).
    let refusals = [
        (
            json!({ "name": "X", "parent": "nowhere" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "\"nowhere\"",
        ),
        (
            json!({ "name": "Dev", "id": "dev-2", "parent": "team-network" }),
            StatusCode::CONFLICT,
            "conflict",
            "already has a child named \"Dev\"",
        ),
        (
            json!({ "name": "team network!", "parent": "net-dev" }),
            StatusCode::CONFLICT,
            "conflict",
            "\"team-network\"",
        ),
        (
            json!({ "name": "   " }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "`name`",
        ),
        (
            json!({ "name": "ok", "id": "Not A Slug" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "\"Not A Slug\"",
        ),
    ];
    for (body, status, code, mentions) in refusals {
        assert_error(
            &app.post("/api/v1/spaces", &app.admin, body).await,
            status,
            code,
            mentions,
        );
    }

    // Nothing was created by the refused requests.
    let (_, list) = app.get("/api/v1/spaces", &app.admin).await;
    let ids = ids(&list);
    assert_eq!(ids.len(), 3, "{list}");
    app.stop().await;
}

async fn space_lists_show_what_a_key_can_read(db: Db) {
    let app = TestApp::start(&db).await;
    app.space("A", "root").await;
    app.space("A1", "a").await;
    app.space("B", "root").await;
    let a_reader = app
        .key("a-reader", json!([{ "space": "a", "role": "read" }]))
        .await;
    let (_, list) = app.get("/api/v1/spaces", &a_reader).await;
    let ids = ids(&list);
    assert_eq!(ids, ["a1", "a"]);

    // Paging walks the whole list once, newest first.
    let mut seen = Vec::new();
    let mut path = "/api/v1/spaces?limit=2".to_owned();
    loop {
        let (status, page) = app.get(&path, &app.admin).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|s| s["id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/spaces?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.last().map(String::as_str), Some("root"));
    assert_error(
        &app.get("/api/v1/spaces?limit=501", &app.admin).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "`limit`",
    );
    assert_error(
        &app.get("/api/v1/spaces?cursor=bogus", &app.admin).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "`cursor`",
    );
    assert_error(
        &app.get("/api/v1/spaces?limit=many", &app.admin).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "limit",
    );
    app.stop().await;
}
