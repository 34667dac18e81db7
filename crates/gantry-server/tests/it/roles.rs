//! Every route against every role: the roles of `docs/api.md`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Db, TestApp};
use gantry_store::on_both_databases;

on_both_databases!(Db; every_route_checks_the_callers_role);

/// Who calls: a role on `root`, or `admin` on the child space `team` only.
const CALLERS: [&str; 5] = ["read", "write", "admin", "worker", "team-admin"];

struct Case {
    method: Method,
    /// `{n}` is replaced by a counter, so each call creates something new.
    path: &'static str,
    body: Option<Value>,
    /// The expected status for each caller, in the order of `CALLERS`.
    expect: [u16; 5],
}

async fn every_route_checks_the_callers_role(db: Db) {
    let app = TestApp::start(&db).await;
    app.space("Team", "root").await;
    let mut secrets = Vec::new();
    for caller in CALLERS {
        let roles = match caller {
            "team-admin" => json!([{ "space": "team", "role": "admin" }]),
            role => json!([{ "space": "root", "role": role }]),
        };
        secrets.push(app.key(&format!("caller-{caller}"), roles).await);
    }

    let cases = [
        Case {
            method: Method::GET,
            path: "/api/v1/me",
            body: None,
            expect: [200, 200, 200, 200, 200],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/spaces",
            body: None,
            expect: [200, 200, 200, 200, 200],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/spaces",
            body: Some(json!({ "name": "s{n}", "parent": "root" })),
            expect: [403, 403, 201, 403, 403],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/spaces",
            body: Some(json!({ "name": "t{n}", "parent": "team" })),
            expect: [403, 403, 201, 403, 201],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/api-keys",
            body: None,
            expect: [200, 200, 200, 200, 200],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/api-keys",
            body: Some(json!({ "name": "k{n}", "roles": [{ "space": "root", "role": "read" }] })),
            expect: [403, 403, 201, 403, 403],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/api-keys",
            body: Some(json!({ "name": "k{n}", "roles": [{ "space": "team", "role": "write" }] })),
            expect: [403, 403, 201, 403, 201],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/api-keys",
            body: Some(json!({ "name": "k{n}", "roles": [{ "space": "root", "role": "worker" }] })),
            expect: [403, 403, 201, 403, 403],
        },
        Case {
            method: Method::DELETE,
            path: "/api/v1/api-keys/victim-{n}",
            body: None,
            expect: [403, 403, 200, 403, 403],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/audit",
            body: None,
            expect: [403, 403, 200, 403, 403],
        },
        // The worker API: only `worker` gets past the role check, to the
        // check of its `Gantry-Worker` header (absent here).
        Case {
            method: Method::POST,
            path: "/api/v1/worker/claim?wait_seconds=0",
            body: None,
            expect: [403, 403, 403, 400, 403],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/worker/runs/none/heartbeat",
            body: None,
            expect: [403, 403, 403, 400, 403],
        },
    ];

    let mut n = 0;
    for case in &cases {
        for (caller, (secret, expected)) in CALLERS.iter().zip(secrets.iter().zip(case.expect)) {
            n += 1;
            if case.path.starts_with("/api/v1/api-keys/victim") {
                app.key(
                    &format!("victim-{n}"),
                    json!([{ "space": "root", "role": "read" }]),
                )
                .await;
            }
            let path = case.path.replace("{n}", &n.to_string());
            let body = case.body.as_ref().map(|b| {
                serde_json::from_str(&b.to_string().replace("{n}", &n.to_string())).expect("json")
            });
            let (status, answer) = app
                .call(case.method.clone(), &path, Some(secret), body)
                .await;
            assert_eq!(
                status.as_u16(),
                expected,
                "{} {path} as {caller}: {answer}",
                case.method
            );
            if status == StatusCode::FORBIDDEN {
                assert_eq!(answer["error"]["code"], "forbidden");
            }
        }
    }

    // Without a key, every API route is 401.
    for case in &cases {
        let (status, _) = app
            .call(
                case.method.clone(),
                &case.path.replace("{n}", "0"),
                None,
                case.body.clone(),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{} {}",
            case.method,
            case.path
        );
    }
    app.stop().await;
}
