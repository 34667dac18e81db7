//! The real GitLab responses in `../shared/gitlab-corpus/api` parse with
//! Gantry's types. The corpus is found through `GANTRY_GITLAB_CORPUS` or
//! beside the checkout; without it these tests are skipped, except under
//! `CI=true`, where they fail.

use std::path::{Path, PathBuf};

use gantry_gitlab::error_body;
use gantry_gitlab::token::judge;
use gantry_gitlab::types::{AccessTokenSelf, CurrentUser};

pub fn corpus() -> Option<PathBuf> {
    gantry_gitlab_sim::corpus_dir()
}

pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join("api").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_user_response_parses() {
    let Some(dir) = corpus() else { return };
    let mut seen = 0;
    for entry in std::fs::read_dir(dir.join("api"))
        .expect("api dir")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("user-get") || name.starts_with("users-get-by-id") {
            let user: CurrentUser = serde_json::from_slice(&read(&dir, &name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(user.id > 0 && !user.username.is_empty(), "{name}");
            seen += 1;
        }
    }
    assert!(seen >= 3, "found {seen} user responses");
}

#[test]
fn the_token_self_response_parses_and_passes_the_check() {
    let Some(dir) = corpus() else { return };
    let token: AccessTokenSelf =
        serde_json::from_slice(&read(&dir, "personal_access_tokens-self-gogitlab.json"))
            .expect("parses");
    assert_eq!(
        (token.active, token.revoked, token.expires_at.as_deref()),
        (true, false, None)
    );
    let user: CurrentUser =
        serde_json::from_slice(&read(&dir, "user-get-goscm.json")).expect("parses");
    let facts = judge(Some(&token), &user, time::macros::date!(2026 - 11 - 22))
        .expect("an active api token");
    assert_eq!(
        (facts.scopes, facts.username.as_str()),
        (vec!["api".to_owned()], "john_smith")
    );
}

#[test]
fn gitlab_error_bodies_give_their_messages() {
    let Some(dir) = corpus() else { return };
    assert_eq!(
        error_body::message(&read(&dir, "error-401-unauthorized-goscm.json")).as_deref(),
        Some("401 Unauthorized")
    );
    assert_eq!(
        error_body::message(&read(&dir, "error-404-project-not-found-goscm.json")).as_deref(),
        Some("404 Project Not Found")
    );
    let nested = error_body::message(&read(&dir, "error-400-nested-message-gogitlab.json"))
        .expect("a message");
    assert!(
        nested.contains("prop1: message 1, message 2")
            && nested.contains("embed1.prop3: msg 1, msg2"),
        "{nested}"
    );
    assert!(
        error_body::message(&read(&dir, "error-405-method-not-allowed-atlantis.json")).is_some()
    );
}
