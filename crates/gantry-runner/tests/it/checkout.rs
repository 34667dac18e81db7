//! Checkout of a run's exact commit over git smart HTTP, with the token
//! kept out of arguments, URLs, the git config and error messages.

use gantry_gitlab_sim::{AccessLevel, Sim, TokenSpec};
use gantry_runner::checkout::{CheckoutError, Source, checkout};
use secrecy::SecretString;

async fn repository() -> (Sim, u64, String) {
    let sim = Sim::start().await.expect("sim");
    let user = sim.add_user("bot");
    let token = sim.add_token(TokenSpec::new(user, &["api"]));
    let project = sim.add_project("infra/network", "main").expect("project");
    sim.add_member(project, user, AccessLevel::Developer);
    (sim, project, token)
}

#[tokio::test]
async fn the_checkout_is_the_runs_exact_commit() {
    let (sim, project, token) = repository().await;
    let (_, first) = sim
        .commit(
            project,
            "main",
            &[("network/main.tf", Some("# one\n"))],
            "one",
        )
        .expect("c1");
    let (_, second) = sim
        .commit(
            project,
            "main",
            &[("network/main.tf", Some("# two\n"))],
            "two",
        )
        .expect("c2");
    let url = sim.clone_url(project).expect("url");
    let token = SecretString::from(token);
    let dir = tempfile::tempdir().expect("dir");

    // An older commit than the branch head: exactly that one.
    checkout(
        &Source {
            clone_url: &url,
            token: &token,
            commit: &first,
        },
        dir.path(),
    )
    .await
    .expect("checkout");
    let content = std::fs::read_to_string(dir.path().join("network/main.tf")).expect("file");
    assert_eq!(content, "# one\n");
    let config = std::fs::read_to_string(dir.path().join(".git/config")).expect("config");
    assert!(
        !config.contains(secrecy::ExposeSecret::expose_secret(&token)),
        "{config}"
    );
    assert!(
        !config.contains("extraHeader") && !config.contains("oauth2"),
        "{config}"
    );
    assert!(config.contains(&url), "{config}");

    let newer = tempfile::tempdir().expect("dir");
    checkout(
        &Source {
            clone_url: &url,
            token: &token,
            commit: &second,
        },
        newer.path(),
    )
    .await
    .expect("checkout");
    assert_eq!(
        std::fs::read_to_string(newer.path().join("network/main.tf")).expect("file"),
        "# two\n"
    );
}

#[tokio::test]
async fn a_refused_token_or_unknown_commit_fails_without_showing_the_token() {
    let (sim, project, token) = repository().await;
    let (_, commit) = sim
        .commit(project, "main", &[("a.tf", Some("a"))], "a")
        .expect("commit");
    let url = sim.clone_url(project).expect("url");
    let wrong = SecretString::from("glpat-WRONG-TOKEN-CANARY".to_owned());
    let dir = tempfile::tempdir().expect("dir");
    let error = checkout(
        &Source {
            clone_url: &url,
            token: &wrong,
            commit: &commit,
        },
        dir.path(),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(
            error,
            CheckoutError::Git {
                step: "git fetch",
                ..
            }
        ),
        "{error:?}"
    );
    let text = format!("{error} {error:?}");
    assert!(!text.contains("WRONG-TOKEN-CANARY"), "{text}");
    // An unknown commit is refused too, naming the step.
    let token = SecretString::from(token);
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let dir = tempfile::tempdir().expect("dir");
    let error = checkout(
        &Source {
            clone_url: &url,
            token: &token,
            commit: unknown,
        },
        dir.path(),
    )
    .await
    .expect_err("unknown commit");
    assert!(
        matches!(
            error,
            CheckoutError::Git {
                step: "git fetch",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        !error
            .to_string()
            .contains(secrecy::ExposeSecret::expose_secret(&token))
    );
}

/// While git fetches (slowed down by the simulator), no process on the
/// machine has the token in its command line (`/proc/<pid>/cmdline`).
#[tokio::test]
async fn the_token_is_in_no_process_arguments() {
    let (sim, project, token) = repository().await;
    let (_, commit) = sim
        .commit(project, "main", &[("a.tf", Some("a"))], "a")
        .expect("commit");
    for _ in 0..4 {
        sim.inject(gantry_gitlab_sim::Fault {
            path_contains: ".git/".to_owned(),
            kind: gantry_gitlab_sim::FaultKind::Delay(std::time::Duration::from_millis(400)),
        });
    }
    let url = sim.clone_url(project).expect("url");
    let secret = SecretString::from(token.clone());
    let dir = tempfile::tempdir().expect("dir");
    let fetch = {
        let (url, commit, path) = (url.clone(), commit.clone(), dir.path().to_owned());
        tokio::spawn(async move {
            checkout(
                &Source {
                    clone_url: &url,
                    token: &secret,
                    commit: &commit,
                },
                &path,
            )
            .await
        })
    };
    let mut saw_git = false;
    while !fetch.is_finished() {
        for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            saw_git |= cmdline.contains("fetch") && cmdline.starts_with("git");
            assert!(
                !cmdline.contains(&token),
                "a process has the token in its arguments: {cmdline}"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    fetch.await.expect("task").expect("checkout");
    assert!(saw_git, "the scan saw the git fetch running");
}
