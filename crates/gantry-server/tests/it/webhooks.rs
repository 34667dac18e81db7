//! The webhook endpoint and the delivery log (`docs/events-and-runs.md`): every
//! corpus delivery, bad input, deduplication, rotation, replay, retention.

use std::time::Duration;

use gantry_gitlab_sim::{corpus_delivery, corpus_dir};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Db, Hooked, TestApp, assert_error, ids};

use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    every_corpus_delivery_is_answered_as_the_contract_says,
    bad_input_gets_clear_answers_and_stores_nothing_it_should_not,
    duplicates_by_key_and_by_body,
    old_and_new_secrets_during_a_rotation,
    secrets_kept_in_memory_follow_changes_made_by_another_server,
    the_delivery_log_filters_pages_and_replays,
    retention_prunes_bodies_and_keeps_the_summary,
);

fn headers(event: &str, secret: &str) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-Gitlab-Event".into(), event.into()),
        ("X-Gitlab-Token".into(), secret.into()),
    ]
}

fn push(project_id: u64, after: &str) -> Vec<u8> {
    json!({
        "object_kind": "push", "project_id": project_id, "ref": "refs/heads/main",
        "before": "1111111111111111111111111111111111111111", "after": after,
        "project": {"id": project_id, "path_with_namespace": "infra/network"},
        "commits": [{"id": after, "added": ["main.tf"], "modified": [], "removed": []}],
        "total_commits_count": 1
    })
    .to_string()
    .into_bytes()
}

fn with_key(mut headers: Vec<(String, String)>, key: &str) -> Vec<(String, String)> {
    headers.push(("Idempotency-Key".into(), key.into()));
    headers
}

async fn deliveries(app: &TestApp, hooked: &Hooked, query: &str) -> Value {
    let (status, list) = app
        .get(
            &format!(
                "/api/v1/integrations/gitlab/{}/deliveries{query}",
                hooked.id
            ),
            &app.admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list
}

async fn processed(app: &TestApp, hooked: &Hooked, delivery: &str) -> Value {
    app.processed(&hooked.id, delivery).await
}

async fn every_corpus_delivery_is_answered_as_the_contract_says(db: Db) {
    let Some(dir) = corpus_dir() else { return };
    let app = TestApp::start(&db).await;
    let hooked = app.hooked("Main").await;
    let mut names: Vec<String> = std::fs::read_dir(dir.join("webhooks"))
        .expect("dir")
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".json")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    let mut accepted = Vec::new();
    for name in &names {
        let (headers, body) = corpus_delivery(&dir, name, &hooked.secret);
        let answer = app.webhook(&hooked.url, &headers, body).await;
        let supported = [
            "push-",
            "tag_push-",
            "merge_request-",
            "system_push",
            "system_tag_push",
            "system_merge_request",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix));
        if name == "merge_request-gogitlab-group-hook-merge" {
            // Its keys carry trailing spaces ("iid "): refused, but kept.
            assert_error(
                &answer,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "object_attributes",
            );
            continue;
        }
        assert_eq!(answer.0, StatusCode::OK, "{name}: {}", answer.1);
        let status = answer.1["status"].as_str().expect("status");
        let delivery = answer.1["delivery"].as_str().expect("delivery").to_owned();
        if supported {
            assert!(
                matches!(status, "accepted" | "duplicate"),
                "{name}: {status}"
            );
            if status == "accepted" {
                accepted.push((name.clone(), delivery));
            }
        } else {
            assert_eq!(status, "ignored", "{name}");
        }
    }
    assert!(accepted.len() >= 50, "{}", accepted.len());
    for (name, delivery) in &accepted {
        let done = processed(&app, &hooked, delivery).await;
        assert_eq!(done["status"], "accepted", "{name}: {done}");
        let outcome = done["outcome"].as_str().expect("outcome");
        assert!(
            outcome.contains("no stack uses project"),
            "{name}: {outcome}"
        );
    }
    let single = accepted
        .iter()
        .find(|(name, _)| name == "push-goscm-single-commit")
        .expect("single");
    let done = processed(&app, &hooked, &single.1).await;
    assert_eq!(
        done["outcome"],
        "push to master (1 commit): no stack uses project 4861503 (gitlab-org/hello-world)"
    );
    assert_eq!(
        done["idempotency_key"],
        "092959c6-17d9-42ed-a05e-f6fc27e6ddfd"
    );
    assert_eq!(done["event_uuid"], "ca5b4e3a-86d1-4fb2-9e81-7d47cf43e299");
    assert_eq!(done["event"], "Push Hook");

    // The same deliveries again (GitLab's retries): all duplicates.
    for name in names.iter().filter(|name| name.starts_with("push-")) {
        let (headers, body) = corpus_delivery(&dir, name, &hooked.secret);
        let answer = app.webhook(&hooked.url, &headers, body).await;
        assert_eq!(answer.1["status"], "duplicate", "{name}");
    }
    let rejected = deliveries(&app, &hooked, "?status=rejected").await;
    assert_eq!(ids(&rejected).len(), 1);
    assert!(
        rejected["items"][0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("iid")
    );
    app.stop().await;
}

async fn count(app: &TestApp, hooked: &Hooked) -> usize {
    ids(&deliveries(app, hooked, "?limit=500").await).len()
}

async fn bad_input_gets_clear_answers_and_stores_nothing_it_should_not(db: Db) {
    let app = TestApp::start(&db).await;
    let hooked = app.hooked("Main").await;
    let good = headers("Push Hook", &hooked.secret);

    let wrong = headers("Push Hook", "not-the-secret");
    assert_error(
        &app.webhook(&hooked.url, &wrong, push(1, "a")).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "wrong X-Gitlab-Token",
    );
    let missing = vec![("X-Gitlab-Event".to_owned(), "Push Hook".to_owned())];
    assert_error(
        &app.webhook(&hooked.url, &missing, push(1, "a")).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "no X-Gitlab-Token",
    );
    let unknown = hooked.url.replace("/main", "/nope");
    assert_error(
        &app.webhook(&unknown, &good, push(1, "a")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
    let mut form = good.clone();
    form[0].1 = "application/x-www-form-urlencoded".into();
    assert_error(
        &app.webhook(&hooked.url, &form, push(1, "a")).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "application/json",
    );
    let no_event = vec![("X-Gitlab-Token".to_owned(), hooked.secret.clone())];
    assert_error(
        &app.webhook(&hooked.url, &no_event, push(1, "a")).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "X-Gitlab-Event",
    );
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/webhooks/gitlab/{}", hooked.id),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // None of those stored anything, and no token reached the log.
    assert_eq!(count(&app, &hooked).await, 0);
    let logs = crate::harness::captured_logs();
    assert!(!logs.contains("not-the-secret") && !logs.contains(&hooked.secret));

    // Over the limit is 413; exactly the limit is accepted.
    let limit = gantry_server::DEFAULT_WEBHOOK_BODY_LIMIT;
    let mut exact = push(1, "2222222222222222222222222222222222222222");
    exact.pop(); // the closing brace
    let padding = limit - exact.len() - ",\"padding\":\"\"}".len();
    exact.extend_from_slice(format!(",\"padding\":\"{}\"}}", "x".repeat(padding)).as_bytes());
    assert_eq!(exact.len(), limit);
    let mut over = exact.clone();
    over.push(b' ');
    // The server answers 413 from Content-Length without reading the body
    // and closes the connection; the client may see that before the answer.
    let mut request = reqwest::Client::new().post(&hooked.url).body(over);
    for (name, value) in &good {
        request = request.header(name.as_str(), value.as_str());
    }
    match request.send().await {
        Ok(response) => assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE),
        Err(error) => assert!(error.is_request() || error.is_body(), "{error}"),
    }
    assert_eq!(count(&app, &hooked).await, 0);
    let (status, answer) = app.webhook(&hooked.url, &good, exact).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (StatusCode::OK, Some("accepted")),
        "{answer}"
    );

    // Unreadable payloads of supported events: 400 naming what was wrong,
    // and recorded as rejected.
    let truncated = push(1, "3333333333333333333333333333333333333333")[..60].to_vec();
    assert_error(
        &app.webhook(&hooked.url, &good, truncated).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "EOF",
    );
    let wrong_shape = br#"{"object_kind":"push","project_id":"one","ref":"refs/heads/main","before":"a","after":"b"}"#.to_vec();
    assert_error(
        &app.webhook(&hooked.url, &good, wrong_shape).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "`project_id`",
    );
    let rejected = deliveries(&app, &hooked, "?status=rejected").await;
    assert_eq!(ids(&rejected).len(), 2);
    assert_eq!(count(&app, &hooked).await, 3);
    app.stop().await;
}

async fn duplicates_by_key_and_by_body(db: Db) {
    let app = TestApp::start(&db).await;
    let hooked = app.hooked("Main").await;
    let good = headers("Push Hook", &hooked.secret);
    let first = app
        .webhook(
            &hooked.url,
            &with_key(good.clone(), "key-1"),
            push(1, "aaaa"),
        )
        .await;
    assert_eq!(first.1["status"], "accepted");
    // GitLab's retry: same key (even with another body, as a resend may be).
    let retry = app
        .webhook(
            &hooked.url,
            &with_key(good.clone(), "key-1"),
            push(1, "bbbb"),
        )
        .await;
    assert_eq!(retry.1["status"], "duplicate");
    // Two hooks of one project send one event: other keys, the same body.
    let twin = app
        .webhook(
            &hooked.url,
            &with_key(good.clone(), "key-2"),
            push(1, "aaaa"),
        )
        .await;
    assert_eq!(twin.1["status"], "duplicate");
    // An older GitLab: no key, no UUIDs; the same body is still caught.
    let old = app.webhook(&hooked.url, &good, push(1, "aaaa")).await;
    assert_eq!(old.1["status"], "duplicate");
    let fresh = app.webhook(&hooked.url, &good, push(1, "cccc")).await;
    assert_eq!(fresh.1["status"], "accepted");
    // Event UUIDs are no dedupe key.
    let mut uuid = good.clone();
    uuid.push(("X-Gitlab-Event-UUID".into(), "same-uuid".into()));
    assert_eq!(
        app.webhook(&hooked.url, &uuid, push(1, "dddd")).await.1["status"],
        "accepted"
    );
    assert_eq!(
        app.webhook(&hooked.url, &uuid, push(1, "eeee")).await.1["status"],
        "accepted"
    );

    let duplicate = processed(&app, &hooked, retry.1["delivery"].as_str().expect("id")).await;
    assert_eq!(duplicate["duplicate_of"], first.1["delivery"]);
    assert!(
        duplicate["outcome"]
            .as_str()
            .unwrap_or("")
            .contains("same Idempotency-Key")
    );
    let twin = processed(&app, &hooked, twin.1["delivery"].as_str().expect("id")).await;
    assert!(twin["outcome"].as_str().unwrap_or("").contains("same body"));
    // Another integration does not share the dedupe history.
    let other = app.hooked("Other").await;
    let elsewhere = app
        .webhook(
            &other.url,
            &with_key(headers("Push Hook", &other.secret), "key-1"),
            push(1, "aaaa"),
        )
        .await;
    assert_eq!(elsewhere.1["status"], "accepted");

    // Many concurrent copies of one event: exactly one is accepted.
    let copies = (0..16).map(|i| {
        let app_url = hooked.url.clone();
        let headers = with_key(good.clone(), &format!("burst-{i}"));
        let http = reqwest::Client::new();
        async move {
            let mut request = http.post(app_url).body(push(1, "ffff"));
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let answer: Value = request
                .send()
                .await
                .expect("send")
                .json()
                .await
                .expect("json");
            answer["status"].as_str().unwrap_or_default().to_owned()
        }
    });
    let handles: Vec<_> = copies.map(tokio::spawn).collect();
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.expect("task"));
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "accepted").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "duplicate").count(),
        15,
        "{statuses:?}"
    );
    app.stop().await;
}

async fn old_and_new_secrets_during_a_rotation(db: Db) {
    let app = TestApp::start(&db).await;
    let hooked = app.hooked("Main").await;
    let rotate = format!(
        "/api/v1/integrations/gitlab/{}/webhook-secret/rotate",
        hooked.id
    );
    let (_, rotated) = app
        .call(Method::POST, &rotate, Some(&app.admin), None)
        .await;
    let new = rotated["webhook_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let old = app
        .webhook(
            &hooked.url,
            &headers("Push Hook", &hooked.secret),
            push(1, "a1"),
        )
        .await;
    assert_eq!(
        old.0,
        StatusCode::OK,
        "the old secret works during the grace period"
    );
    let fresh = app
        .webhook(&hooked.url, &headers("Push Hook", &new), push(1, "a2"))
        .await;
    assert_eq!(fresh.0, StatusCode::OK);
    // Rotating without grace drops the secret before at once.
    let (_, again) = app
        .call(
            Method::POST,
            &format!("{rotate}?grace_seconds=0"),
            Some(&app.admin),
            None,
        )
        .await;
    let newest = again["webhook_secret"].as_str().expect("secret").to_owned();
    for stale in [&hooked.secret, &new] {
        let answer = app
            .webhook(&hooked.url, &headers("Push Hook", stale), push(1, "a3"))
            .await;
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.webhook(&hooked.url, &headers("Push Hook", &newest), push(1, "a4"))
            .await
            .0,
        StatusCode::OK
    );
    app.stop().await;
}

/// Server A checks deliveries against the secrets it keeps in memory;
/// server B, on the same database, rotates the secret and later deletes
/// the integration. A takes the new secret at once (a token its memory
/// refuses is checked again against the database), and a delivery for the
/// deleted integration is 404 and stored nowhere, though A still held its
/// secret.
async fn secrets_kept_in_memory_follow_changes_made_by_another_server(db: Db) {
    let a = TestApp::start(&db).await;
    let b = TestApp::start(&db).await;
    let hooked = a.hooked("Main").await;
    let send = async |secret: &str, after: &str| {
        a.webhook(&hooked.url, &headers("Push Hook", secret), push(1, after))
            .await
    };
    assert_eq!(send(&hooked.secret, "c1").await.0, StatusCode::OK);
    let (status, rotated) = b
        .call(
            Method::POST,
            &format!(
                "/api/v1/integrations/gitlab/{}/webhook-secret/rotate",
                hooked.id
            ),
            Some(&b.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["webhook_secret"].as_str().expect("secret");
    assert_eq!(
        send(new, "c2").await.0,
        StatusCode::OK,
        "the new secret works at once"
    );
    assert_eq!(
        send(&hooked.secret, "c3").await.0,
        StatusCode::OK,
        "the old one in its grace period"
    );
    assert_eq!(
        send("not-the-secret", "c4").await.0,
        StatusCode::UNAUTHORIZED
    );

    let (status, deleted) = b
        .delete(
            &format!("/api/v1/integrations/gitlab/{}", hooked.id),
            &b.admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    let answer = send(new, "c5").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found", &hooked.id);
    let (stored,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM deliveries WHERE integration_id = $1")
            .bind(&hooked.id)
            .fetch_one(a.store().pool())
            .await
            .expect("count");
    assert_eq!(stored, 0, "nothing stored for a deleted integration");
    // A's other integrations are not held up by it.
    let other = a.hooked("Other").await;
    let answer = a
        .webhook(
            &other.url,
            &headers("Push Hook", &other.secret),
            push(1, "c6"),
        )
        .await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    b.stop().await;
    a.stop().await;
}

async fn the_delivery_log_filters_pages_and_replays(db: Db) {
    let app = TestApp::start(&db).await;
    let hooked = app.hooked("Main").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let answer = app
            .webhook(
                &hooked.url,
                &headers("Push Hook", &hooked.secret),
                push(1, &format!("p{i}")),
            )
            .await;
        sent.push(answer.1["delivery"].as_str().expect("id").to_owned());
    }
    let note = app
        .webhook(
            &hooked.url,
            &headers("Note Hook", &hooked.secret),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(note.1["status"], "ignored");

    let page = deliveries(&app, &hooked, "?limit=2").await;
    assert_eq!(ids(&page).len(), 2);
    assert_eq!(
        ids(&page)[0],
        note.1["delivery"].as_str().expect("id"),
        "newest first"
    );
    let cursor = page["next_cursor"].as_str().expect("cursor");
    let rest = deliveries(&app, &hooked, &format!("?limit=500&cursor={cursor}")).await;
    assert_eq!(ids(&rest).len(), 4);
    assert_eq!(rest["next_cursor"], Value::Null);
    let pushes = deliveries(&app, &hooked, "?event=Push%20Hook").await;
    assert_eq!(ids(&pushes).len(), 5);
    let ignored = deliveries(&app, &hooked, "?status=ignored").await;
    assert_eq!(ids(&ignored), [note.1["delivery"].as_str().expect("id")]);
    assert_eq!(
        ignored["items"][0]["outcome"],
        "Gantry does not act on \"Note Hook\" events"
    );
    assert_error(
        &app.get(
            &format!(
                "/api/v1/integrations/gitlab/{}/deliveries?status=lost",
                hooked.id
            ),
            &app.admin,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "`status`",
    );

    let first = processed(&app, &hooked, &sent[0]).await;
    let replay = format!(
        "/api/v1/integrations/gitlab/{}/deliveries/{}/replay",
        hooked.id, sent[0]
    );
    let (status, replayed) = app
        .call(Method::POST, &replay, Some(&app.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["id"], sent[0].as_str());
    assert_eq!(replayed["outcome"], first["outcome"]);
    assert!(replayed["processed_at"].as_str() >= first["processed_at"].as_str());

    // Roles: read lists, write replays.
    let reader = app
        .key("reader", json!([{ "space": "root", "role": "read" }]))
        .await;
    let writer = app
        .key("writer", json!([{ "space": "root", "role": "write" }]))
        .await;
    assert_eq!(
        app.get(
            &format!("/api/v1/integrations/gitlab/{}/deliveries", hooked.id),
            &reader
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_error(
        &app.call(Method::POST, &replay, Some(&reader), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "write",
    );
    assert_eq!(
        app.call(Method::POST, &replay, Some(&writer), None).await.0,
        StatusCode::OK
    );
    let missing = format!(
        "/api/v1/integrations/gitlab/{}/deliveries/nope/replay",
        hooked.id
    );
    assert_error(
        &app.call(Method::POST, &missing, Some(&writer), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
    app.stop().await;
}

async fn retention_prunes_bodies_and_keeps_the_summary(db: Db) {
    let app = TestApp::start(&db).await;
    let hooked = app.hooked("Main").await;
    let answer = app
        .webhook(
            &hooked.url,
            &headers("Push Hook", &hooked.secret),
            push(1, "r1"),
        )
        .await;
    let delivery = answer.1["delivery"].as_str().expect("id").to_owned();
    let done = processed(&app, &hooked, &delivery).await;
    let later = gantry_store::Millis::now().plus(Duration::from_secs(8 * 24 * 3600));
    let pruned = gantry_store::deliveries::prune_bodies(app.store(), later)
        .await
        .expect("prune");
    assert_eq!(pruned, 1);
    let kept = processed(&app, &hooked, &delivery).await;
    assert_eq!(kept["outcome"], done["outcome"]);
    let replay = format!(
        "/api/v1/integrations/gitlab/{}/deliveries/{delivery}/replay",
        hooked.id
    );
    assert_error(
        &app.call(Method::POST, &replay, Some(&app.admin), None)
            .await,
        StatusCode::CONFLICT,
        "conflict",
        "pruned",
    );
    // The pruned body still dedupes within 24 hours.
    let again = app
        .webhook(
            &hooked.url,
            &headers("Push Hook", &hooked.secret),
            push(1, "r1"),
        )
        .await;
    assert_eq!(again.1["status"], "duplicate");
    app.stop().await;
}
