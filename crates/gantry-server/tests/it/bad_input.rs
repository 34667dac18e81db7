use reqwest::{Method, StatusCode};

use crate::harness::{Db, TestApp, assert_error};

#[tokio::test]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let db = Db::sqlite();
    let app = TestApp::start(&db).await;
    let admin = Some(app.admin.as_str());

    assert_error(
        &app.raw(
            Method::POST,
            "/api/v1/spaces",
            admin,
            b"{\"name\": \"x\"".to_vec(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "not valid JSON",
    );
    assert_error(
        &app.raw(
            Method::POST,
            "/api/v1/spaces",
            admin,
            b"{\"name\": 7}".to_vec(),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "expected a string",
    );
    assert_error(
        &app.raw(Method::POST, "/api/v1/spaces", admin, b"{}".to_vec())
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "missing field `name`",
    );
    let mut huge = b"{\"name\": \"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', gantry_server::API_BODY_LIMIT));
    huge.extend(b"\"}");
    assert_error(
        &app.raw(Method::POST, "/api/v1/spaces", admin, huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "limit",
    );

    assert_error(
        &app.call(Method::GET, "/api/v1/nothing-here", admin, None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "/api/v1/nothing-here",
    );
    assert_error(
        &app.call(Method::PUT, "/api/v1/spaces", admin, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "PUT",
    );
    assert_error(
        &app.call(Method::GET, "/api/v1/me", None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Bearer",
    );
    assert_error(
        &app.call(Method::GET, "/api/v1/me", Some("gantry_not-a-key"), None)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "unknown",
    );
    let (status, _) = app.raw(Method::GET, "/api/v1/me", None, Vec::new()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (_, spaces) = app.get("/api/v1/spaces", &app.admin).await;
    assert_eq!(
        spaces["items"].as_array().map(Vec::len),
        Some(1),
        "only root: {spaces}"
    );
    app.stop().await;
}
