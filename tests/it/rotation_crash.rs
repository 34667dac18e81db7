//! `kill -9` of a server right after GitLab rotated the integration's token
//! but before the server heard back: after a restart the rotation is never
//! asked again (GitLab would revoke the whole token family), and the
//! integration says a new token is needed.

use std::time::Duration;

use gantry_gitlab_sim::{AccessLevel, Fault, FaultKind, Sim, TokenSpec};
use serde_json::json;

use crate::api::{Api, admin_token};
use crate::process::{free_port, serve, terminate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_short_by_kill_9_is_never_repeated() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let port = free_port();
    let flags = ["--embedded-workers", "0"];
    let sim = Sim::start().await.expect("sim");
    let user = sim.add_user("gantry-bot");
    let mut spec = TokenSpec::new(user, &["api"]);
    let soon = time::OffsetDateTime::now_utc().date() + time::Duration::days(3);
    spec.expires_at = Some(soon.to_string());
    let old = sim.add_token(spec);
    let project = sim.add_project("infra/network", "main").expect("project");
    sim.add_member(project, user, AccessLevel::Maintainer);

    let mut server = serve(&data, port, &flags).await;
    let api = Api::new(&server.base, &admin_token(&data));
    api.post(
        "/api/v1/integrations/gitlab",
        json!({ "name": "Main", "default": true, "api_host_url": sim.url(), "api_token": old,
                "rotate_token_days_before_expiry": 7 }),
    )
    .await;
    assert!(terminate(&mut server.child).await.success());

    // The next start checks the token and rotates it; GitLab rotates, and
    // its answer is held back until the server is dead.
    sim.inject(Fault {
        path_contains: "/personal_access_tokens/self/rotate".into(),
        kind: FaultKind::DelayAnswer(Duration::from_secs(60)),
    });
    let mut server = serve(&data, port, &flags).await;
    for _ in 0..1000 {
        if !sim.token_active(&old) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!sim.token_active(&old), "GitLab rotated the token");
    let rotated = sim.active_tokens(user);
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    server.child.start_kill().expect("kill -9");
    server.child.wait().await.expect("dead");

    // After the restart: no second rotation (which GitLab would answer by
    // revoking the family, the new token too), and a clear warning.
    let server = serve(&data, port, &flags).await;
    let mut shown = json!({});
    for _ in 0..500 {
        shown = api.get("/api/v1/integrations/gitlab/main").await;
        if shown["warnings"].to_string().contains("did not finish") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warnings = shown["warnings"].to_string();
    assert!(
        warnings.contains("did not finish") && warnings.contains("api_token"),
        "{shown}"
    );
    assert_eq!(
        sim.active_tokens(user),
        rotated,
        "the family was not revoked"
    );
    let rotations = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/rotate"))
        .count();
    assert!(rotations <= 1, "{rotations} rotations");
    drop(server);
}
