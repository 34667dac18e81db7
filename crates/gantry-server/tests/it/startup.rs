use std::os::unix::fs::PermissionsExt;

use gantry_server::{INITIAL_ADMIN_TOKEN_FILE, MASTER_KEY_FILE};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Db, TestApp};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    first_start_writes_private_files_and_a_restart_keeps_everything,
    a_server_with_another_master_key_refuses_to_start,
);

async fn a_server_with_another_master_key_refuses_to_start(db: Db) {
    TestApp::start(&db).await.stop().await;
    let other = gantry_store::crypto::MasterKey::generate();
    let refused = gantry_server::start(db.config(), Some(other.to_base64()), async {})
        .await
        .err()
        .expect("refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("master key") && message.contains("same master key"),
        "{message}"
    );
    // The right key still starts.
    TestApp::start(&db).await.stop().await;
}

/// Three servers with the deployment's key start at once on an empty
/// PostgreSQL database: the migrations and the first start happen once,
/// and all three serve. (Several servers share a database only on
/// PostgreSQL; SQLite is one server's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_on_an_empty_postgres_all_start() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    let key = gantry_store::crypto::MasterKey::generate();
    let starts = (0..3).map(|_| {
        let config = db.config();
        let key = key.to_base64();
        async move { gantry_server::start(config, Some(key), async {}).await }
    });
    for started in futures_util::future::join_all(starts).await {
        let server = started.expect("every server starts");
        server.wait().await.expect("stops");
    }
    let store = gantry_store::Store::connect(&db.config().database_url())
        .await
        .expect("open");
    let (admins,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM api_keys")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(admins, 1, "one first start");
}

fn mode(path: std::path::PathBuf) -> u32 {
    std::fs::metadata(path).expect("file").permissions().mode() & 0o777
}

async fn first_start_writes_private_files_and_a_restart_keeps_everything(db: Db) {
    let app = TestApp::start(&db).await;
    assert_eq!(mode(db.data_dir().join(INITIAL_ADMIN_TOKEN_FILE)), 0o600);
    assert_eq!(mode(db.data_dir().join(MASTER_KEY_FILE)), 0o600);
    let (status, me) = app.get("/api/v1/me", &app.admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["roles"], json!([{ "space": "root", "role": "admin" }]));
    app.space("Team", "root").await;
    let reader = app
        .key("reader", json!([{ "space": "team", "role": "read" }]))
        .await;
    let master_key = std::fs::read(db.data_dir().join(MASTER_KEY_FILE)).expect("key");
    let admin = app.admin.clone();
    app.stop().await;

    let app = TestApp::start(&db).await;
    assert_eq!(app.admin, admin, "a restart does not make a new admin key");
    assert_eq!(
        std::fs::read(db.data_dir().join(MASTER_KEY_FILE)).expect("key"),
        master_key
    );
    let (status, spaces) = app.get("/api/v1/spaces", &reader).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spaces["items"][0]["id"], "team");
    let (_, audit) = app.get("/api/v1/audit", &app.admin).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["api_key.create", "space.create", "system.first_start"]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_master_key_readable_by_others_is_refused_with_the_fix() {
    let db = Db::sqlite();
    TestApp::start(&db).await.stop().await;
    let key = db.data_dir().join(MASTER_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = gantry_server::start(db.config(), None, async {})
        .await
        .err()
        .expect("refused");
    let message = format!("{err:#}");
    assert!(
        message.contains("readable by group or others") && message.contains("chmod 600"),
        "{message}"
    );
}

#[tokio::test]
async fn the_master_key_can_come_from_the_environment() {
    let db = Db::sqlite();
    let key = gantry_store::crypto::MasterKey::generate();
    let server = gantry_server::start(db.config(), Some(key.to_base64()), async {})
        .await
        .expect("starts");
    server.wait().await.expect("stops");
    assert!(
        !db.data_dir().join(MASTER_KEY_FILE).exists(),
        "no key file is written when the key is given"
    );
    let bad = gantry_server::start(db.config(), Some("too-short".to_owned().into()), async {})
        .await
        .err()
        .expect("refused");
    assert!(format!("{bad:#}").contains("GANTRY_MASTER_KEY"), "{bad:#}");
}

#[tokio::test]
async fn health_metrics_and_openapi_need_no_credentials() {
    let db = Db::sqlite();
    let app = TestApp::start(&db).await;
    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        let (status, _) = app.call(reqwest::Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (_, spec) = app
        .call(reqwest::Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    for path in [
        "/api/v1/me",
        "/api/v1/spaces",
        "/api/v1/api-keys",
        "/api/v1/api-keys/{id}",
        "/api/v1/audit",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} is in the OpenAPI document"
        );
    }
    app.get("/api/v1/me", &app.admin).await;
    let response = reqwest::get(format!("{}/healthz", app.base))
        .await
        .expect("healthz");
    assert!(
        response
            .headers()
            .get("x-request-id")
            .is_some_and(|id| !id.is_empty()),
        "every answer has a request id"
    );
    let (_, metrics) = app.call(reqwest::Method::GET, "/metrics", None, None).await;
    let metrics = metrics.as_str().expect("text").to_owned();
    assert!(
        metrics.contains(
            r#"gantry_http_requests_total{method="GET",route="/api/v1/me",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("gantry_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    app.stop().await;
}
