//! The client against the simulated GitLab: the token check's verdicts,
//! retries, rate limits and the per-host limit.

use std::time::{Duration, Instant};

use gantry_gitlab::token::{TokenCheckError, TokenRefused, check};
use gantry_gitlab::{ClientConfig, ClientMetrics, GitLab, GitLabError, Http};
use gantry_gitlab_sim::{Fault, FaultKind, Sim, TokenSpec};
use secrecy::SecretString;
use time::macros::date;

const TODAY: time::Date = date!(2026 - 11 - 22);

fn fast_config() -> ClientConfig {
    ClientConfig {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_attempts: 3,
        ..ClientConfig::default()
    }
}

fn client(sim: &Sim, token: &str, config: ClientConfig) -> GitLab {
    Http::new(config, ClientMetrics::default())
        .expect("http")
        .client(sim.url(), SecretString::from(token.to_owned()))
        .expect("client")
}

async fn sim_with_user() -> (Sim, u64) {
    let sim = Sim::start().await.expect("sim");
    let user = sim.add_user("deployer");
    (sim, user)
}

#[tokio::test]
async fn a_good_token_is_accepted_with_its_user_and_scopes() {
    let (sim, user) = sim_with_user().await;
    let token = sim.add_token(TokenSpec::new(user, &["api", "read_user"]).expiring("2027-06-30"));
    let facts = check(&client(&sim, &token, fast_config()), TODAY)
        .await
        .expect("accepted");
    assert_eq!(facts.username, "deployer");
    assert_eq!(facts.user_id, user);
    assert_eq!(facts.scopes, ["api", "read_user"]);
    assert_eq!(facts.expires_at.as_deref(), Some("2027-06-30"));
    assert!(facts.warnings.is_empty(), "{:?}", facts.warnings);
    let requests = sim.requests();
    assert!(
        requests
            .iter()
            .all(|request| request.auth == "private-token")
    );
    let paths: Vec<&str> = requests
        .iter()
        .map(|request| request.path.as_str())
        .collect();
    assert_eq!(
        paths,
        ["/api/v4/personal_access_tokens/self", "/api/v4/user"]
    );
}

#[tokio::test]
async fn a_token_expiring_within_30_days_is_accepted_with_a_warning() {
    let (sim, user) = sim_with_user().await;
    let token = sim.add_token(TokenSpec::new(user, &["api"]).expiring("2026-12-10"));
    let facts = check(&client(&sim, &token, fast_config()), TODAY)
        .await
        .expect("accepted");
    assert_eq!(facts.warnings.len(), 1);
    assert!(
        facts.warnings[0].contains("2026-12-10"),
        "{}",
        facts.warnings[0]
    );
}

#[tokio::test]
async fn refusals_say_which() {
    let (sim, user) = sim_with_user().await;
    let revoked = sim.add_token(TokenSpec::new(user, &["api"]));
    sim.revoke_token(&revoked);
    let read_only = sim.add_token(TokenSpec::new(user, &["read_api", "read_user"]));
    let cases = [
        ("glpat-not-a-token", TokenRefused::Rejected),
        (revoked.as_str(), TokenRefused::Rejected),
        (
            read_only.as_str(),
            TokenRefused::MissingApiScope("read_api, read_user".to_owned()),
        ),
    ];
    for (token, expected) in cases {
        match check(&client(&sim, token, fast_config()), TODAY).await {
            Err(TokenCheckError::Refused(refused)) => assert_eq!(refused, expected),
            other => panic!("{expected:?}: {other:?}"),
        }
    }
    let blocked = sim.add_user("gone");
    let token = sim.add_token(TokenSpec::new(blocked, &["api"]));
    sim.set_user_state(blocked, "deactivated");
    match check(&client(&sim, &token, fast_config()), TODAY).await {
        Err(TokenCheckError::Refused(TokenRefused::UserNotActive(name, state))) => {
            assert_eq!((name.as_str(), state.as_str()), ("gone", "deactivated"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_older_gitlab_without_the_token_endpoint_falls_back_to_the_user() {
    let (sim, user) = sim_with_user().await;
    sim.without_token_self_endpoint();
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    let facts = check(&client(&sim, &token, fast_config()), TODAY)
        .await
        .expect("accepted");
    assert_eq!(facts.username, "deployer");
    assert!(facts.scopes.is_empty());
    assert!(
        facts.warnings[0].contains("scopes and expiry could not be checked"),
        "{:?}",
        facts.warnings
    );
}

fn current_user() -> gitlab::api::users::CurrentUser {
    gitlab::api::users::CurrentUser::builder()
        .build()
        .expect("endpoint")
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (sim, user) = sim_with_user().await;
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    sim.inject(Fault {
        path_contains: "/user".to_owned(),
        kind: FaultKind::RateLimited {
            retry_after: Some(1),
            ratelimit_reset: None,
        },
    });
    let gitlab = client(&sim, &token, fast_config());
    let started = Instant::now();
    let user: serde_json::Value = gitlab
        .query(&current_user())
        .await
        .expect("answered after the wait");
    assert_eq!(user["username"], "deployer");
    // The backoff alone would have retried after ~10 ms: the wait is GitLab's.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let statuses: Vec<u16> = sim
        .requests()
        .iter()
        .map(|request| request.status)
        .collect();
    assert_eq!(statuses, [429, 200]);
}

#[tokio::test]
async fn a_rate_limit_longer_than_the_budget_fails_at_once_and_says_when_to_retry() {
    let (sim, user) = sim_with_user().await;
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
    sim.inject(Fault {
        path_contains: String::new(),
        kind: FaultKind::RateLimited {
            retry_after: None,
            ratelimit_reset: Some(reset),
        },
    });
    let error = client(&sim, &token, fast_config())
        .query::<serde_json::Value, _>(&current_user())
        .await
        .expect_err("rate limited");
    let wait = error.retry_after().expect("a wait");
    assert!(
        wait > Duration::from_secs(590) && wait <= Duration::from_secs(600),
        "{wait:?}"
    );
    assert!(error.is_transient());
    assert!(
        error
            .to_string()
            .contains("rate limiting GET /api/v4/user; retry in"),
        "{error}"
    );
    assert_eq!(sim.requests().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_after_the_budget() {
    let (sim, user) = sim_with_user().await;
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    // Two failures, then the real answer: the third try succeeds.
    for code in [502, 503] {
        sim.inject(Fault {
            path_contains: String::new(),
            kind: FaultKind::Status(code),
        });
    }
    let gitlab = client(&sim, &token, fast_config());
    gitlab
        .query::<serde_json::Value, _>(&current_user())
        .await
        .expect("third try");
    // Three failures exhaust the three tries.
    for _ in 0..3 {
        sim.inject(Fault {
            path_contains: String::new(),
            kind: FaultKind::Status(500),
        });
    }
    match gitlab.query::<serde_json::Value, _>(&current_user()).await {
        Err(GitLabError::Server {
            status: 500,
            attempts: 3,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.requests().len(), 6);
}

#[tokio::test]
async fn an_unreachable_gitlab_is_a_transport_error_after_retries() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let gitlab = Http::new(fast_config(), ClientMetrics::default())
        .expect("http")
        .client(&url, SecretString::from("glpat-x".to_owned()))
        .expect("client");
    match gitlab.query::<serde_json::Value, _>(&current_user()).await {
        Err(error @ GitLabError::Transport { attempts: 3, .. }) => {
            assert!(
                error.to_string().contains("could not reach GitLab"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn errors_carry_gitlabs_message_and_never_the_token() {
    let (sim, user) = sim_with_user().await;
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    let gitlab = client(&sim, &token, fast_config());
    let missing = gitlab::api::projects::Project::builder()
        .project("group/missing")
        .build()
        .expect("endpoint");
    let error = gitlab
        .query::<serde_json::Value, _>(&missing)
        .await
        .expect_err("404");
    assert!(matches!(error, GitLabError::NotFound { .. }), "{error:?}");
    let text = format!("{error} {error:?} {gitlab:?}");
    assert!(text.contains("404 Project Not Found"), "{text}");
    assert!(text.contains("group%2Fmissing"), "{text}");
    assert!(!text.contains(&token), "{text}");
}

#[tokio::test]
async fn requests_to_one_host_are_limited() {
    let (sim, user) = sim_with_user().await;
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    for _ in 0..6 {
        sim.inject(Fault {
            path_contains: String::new(),
            kind: FaultKind::Delay(Duration::from_millis(200)),
        });
    }
    let http = Http::new(
        ClientConfig {
            per_host_concurrency: 2,
            ..fast_config()
        },
        ClientMetrics::default(),
    )
    .expect("http");
    // Two integrations on one host share the limit.
    let first = http
        .client(sim.url(), SecretString::from(token.clone()))
        .expect("client");
    let second = http
        .client(sim.url(), SecretString::from(token.clone()))
        .expect("client");
    let tasks: Vec<_> = (0..6)
        .map(|index| {
            let gitlab = if index % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move { gitlab.query::<serde_json::Value, _>(&current_user()).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("answered");
    }
    assert_eq!(sim.max_concurrent_requests(), 2);
}

#[test]
fn metrics_name_endpoints_by_their_class_never_their_ids() {
    use gantry_gitlab::metrics::endpoint_class;
    let sha = "0b4bc9a49b562e85de7cc9e834518ea6828729b9";
    assert_eq!(
        endpoint_class(&format!("/api/v4/projects/42/statuses/{sha}")),
        "projects/:id/statuses/:id"
    );
    assert_eq!(
        endpoint_class("/gitlab/api/v4/projects/infra%2Fnetwork/repository/branches/main"),
        "projects/:id/repository/branches/:id"
    );
    assert_eq!(
        endpoint_class("/api/v4/projects/7/merge_requests/3/notes/99"),
        "projects/:id/merge_requests/:id/notes/:id"
    );
    assert_eq!(
        endpoint_class("/api/v4/personal_access_tokens/self"),
        "personal_access_tokens/self"
    );
}
