//! Run isolation, tried as an attacker would: a plan of a pushed branch
//! looks for Gantry's secrets, the data directory, other processes and
//! another run's secrets, and finds none of them, while it still has its
//! workspace, the repository and the run's commit. Proposed runs get the
//! stack's proposed secrets instead of the tracked ones.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::execution::wait_for;
use crate::harness::{Db, TestApp, repo};
use gantry_store::on_both_databases;

on_both_databases!(
    Db;
    a_plan_sees_its_workspace_and_nothing_of_gantry,
    proposed_runs_get_the_proposed_secrets_and_tracked_runs_the_others,
    a_push_to_many_stacks_fetches_its_commit_once,
    a_runs_log_is_cut_at_its_stacks_limit,
);

async fn stack(app: &TestApp, name: &str, plan: &str, extra: Value) -> String {
    let mut body = json!({
        "name": name, "repository": "infra/network", "branch": "main",
        "vendor": { "kind": "shell", "plan": plan, "apply": "true" }
    });
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    let (status, stack) = app.post("/api/v1/stacks", &app.admin, body).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    stack["id"].as_str().expect("id").to_owned()
}

async fn trigger(app: &TestApp, stack: &str, kind: &str, commit: &str) -> String {
    let (status, run) = app
        .post(
            &format!("/api/v1/stacks/{stack}/runs"),
            &app.admin,
            json!({ "kind": kind, "commit_sha": commit }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    run["id"].as_str().expect("id").to_owned()
}

async fn log(app: &TestApp, run: &str) -> String {
    let (_, log) = app
        .get(&format!("/api/v1/runs/{run}/logs"), &app.admin)
        .await;
    log.as_str().expect("text").to_owned()
}

async fn a_plan_sees_its_workspace_and_nothing_of_gantry(db: Db) {
    let app = TestApp::start_with_workers(&db, 2).await;
    let repo = repo(&app).await;
    let (_, commit) = repo
        .sim
        .commit(
            repo.project,
            "main",
            &[("main.tf", Some("the network"))],
            "one",
        )
        .expect("commit");
    let data = db.data_dir().canonicalize().expect("data dir");
    let data = data.display();

    // The victim: another tenant's run, holding its secret while it sleeps.
    let victim = stack(
        &app,
        "Victim",
        "sleep 4",
        json!({ "secret_environment": { "VICTIM_KEY": "victim-CANARY-77" } }),
    )
    .await;
    let victim_run = trigger(&app, &victim, "proposed", &commit).await;
    wait_for(&app, &victim_run, "planning").await;

    // The attacker: a branch's plan that goes looking.
    // The words looked for are put together at run time, so that the
    // script's own text (in its process's command line) does not match.
    let attack = format!(
        r#"set +e
canary="victim-$(echo CANARY)"
cargo="CARGO_$(echo PKG_NAME)"
flag="--data-$(echo dir)"
echo "head=$(git rev-parse HEAD)"
echo "file=$(cat main.tf)"
echo mine > mine.txt && echo "wrote=$(cat mine.txt)"
for f in "{data}/master.key" "{data}/initial-admin-token" "{data}/gantry.db" "{data}/workspaces"; do
  [ -e "$f" ] && echo "SEEN $f"
done
ls "{data}" >/dev/null 2>&1 && echo "SEEN the data directory"
touch "{data}/pwned" 2>/dev/null && echo "WROTE into the data directory"
for p in /proc/[0-9]*; do
  cat "$p/environ" 2>/dev/null | tr '\0' '\n'
  cat "$p/cmdline" 2>/dev/null | tr '\0' ' '
  echo
done > procs.txt
echo "processes=$(ls -d /proc/[0-9]* | wc -l)"
grep -q -- "$canary" procs.txt && echo "SEEN the victim's secret"
grep -q -- "$cargo" procs.txt && echo "SEEN the server's environment"
grep -q -- "$flag" procs.txt && echo "SEEN the server's command line"
rm procs.txt
grep -rqs -- "$canary" /tmp /dev/shm "$PWD" 2>/dev/null && echo "SEEN the victim's secret on disk"
echo "uid=$(id -u)"
echo attack-over
exit 0"#
    );
    let attacker = stack(&app, "Attacker", &attack, json!({})).await;
    let attacker_run = trigger(&app, &attacker, "proposed", &commit).await;
    wait_for(&app, &attacker_run, "finished").await;
    let found = log(&app, &attacker_run).await;
    assert!(found.contains("attack-over"), "{found}");
    assert!(!found.contains("SEEN"), "{found}");
    assert!(!found.contains("WROTE"), "{found}");
    assert!(!db.data_dir().join("pwned").exists());
    // Still a working checkout of exactly the run's commit.
    assert!(found.contains(&format!("head={commit}")), "{found}");
    assert!(found.contains("file=the network"), "{found}");
    assert!(found.contains("wrote=mine"), "{found}");
    // Its own processes only: the sandbox's init, the shell, a few tools.
    let processes: usize = found
        .lines()
        .find_map(|line| line.strip_prefix("processes="))
        .and_then(|n| n.trim().parse().ok())
        .expect("processes line");
    assert!(processes < 10, "{found}");
    if nix_is_root() {
        assert!(found.contains("uid=65534"), "{found}");
    }
    wait_for(&app, &victim_run, "finished").await;
    app.stop().await;
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(2) == Some("0"))
    })
}

async fn proposed_runs_get_the_proposed_secrets_and_tracked_runs_the_others(db: Db) {
    let app = TestApp::start_with_workers(&db, 1).await;
    let repo = repo(&app).await;
    let (_, commit) = repo
        .sim
        .commit(repo.project, "main", &[("main.tf", Some("x"))], "one")
        .expect("commit");
    let plan = r#"echo "tracked=${TRACKED_KEY:+set} preview=${PREVIEW_KEY:+set}"
[ "$TRACKED_KEY" = tracked-CANARY-1 ] && echo tracked-matches
[ "$PREVIEW_KEY" = preview-CANARY-2 ] && echo preview-matches
exit 0"#;
    let id = stack(
        &app,
        "Both",
        plan,
        json!({
            "secret_environment": { "TRACKED_KEY": "tracked-CANARY-1" },
            "proposed_secret_environment": { "PREVIEW_KEY": "preview-CANARY-2" },
        }),
    )
    .await;
    let (_, shown) = app.get(&format!("/api/v1/stacks/{id}"), &app.admin).await;
    assert_eq!(shown["secret_environment"], json!(["TRACKED_KEY"]));
    assert_eq!(shown["proposed_secret_environment"], json!(["PREVIEW_KEY"]));

    let tracked = trigger(&app, &id, "tracked", &commit).await;
    wait_for(&app, &tracked, "finished").await;
    let tracked_log = log(&app, &tracked).await;
    assert!(
        tracked_log.contains("tracked=set preview=\n") && tracked_log.contains("tracked-matches"),
        "{tracked_log}"
    );
    assert!(!tracked_log.contains("preview-matches"), "{tracked_log}");

    let proposed = trigger(&app, &id, "proposed", &commit).await;
    wait_for(&app, &proposed, "finished").await;
    let proposed_log = log(&app, &proposed).await;
    assert!(
        proposed_log.contains("tracked= preview=set") && proposed_log.contains("preview-matches"),
        "{proposed_log}"
    );
    assert!(!proposed_log.contains("tracked-matches"), "{proposed_log}");

    // Unset, proposed runs get the stack's secret environment again.
    let (status, changed) = app
        .patch(
            &format!("/api/v1/stacks/{id}"),
            &app.admin,
            json!({ "proposed_secret_environment": null }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["proposed_secret_environment"], Value::Null);
    let (_, second) = repo
        .sim
        .commit(repo.project, "main", &[("main.tf", Some("y"))], "two")
        .expect("commit");
    let again = trigger(&app, &id, "proposed", &second).await;
    wait_for(&app, &again, "finished").await;
    let again_log = log(&app, &again).await;
    assert!(again_log.contains("tracked=set preview="), "{again_log}");
    app.stop().await;
}

/// A push that fans out to many stacks fetches the commit from GitLab
/// once; every run plans from the server's copy.
async fn a_push_to_many_stacks_fetches_its_commit_once(db: Db) {
    let app = TestApp::start_with_workers(&db, 2).await;
    let repo = repo(&app).await;
    repo.hook(&app).await;
    const STACKS: usize = 50;
    for n in 0..STACKS {
        stack(
            &app,
            &format!("Part {n}"),
            "test -f main.tf && exit 0",
            json!({ "project_root": "" }),
        )
        .await;
    }
    let (before, after) = repo
        .sim
        .commit(repo.project, "main", &[("main.tf", Some("many"))], "many")
        .expect("commit");
    let payload = repo
        .sim
        .push_payload(repo.project, "main", &before, &after)
        .expect("payload");
    let answers = repo.sim.deliver(repo.project, "Push Hook", &payload).await;
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    app.settle().await;
    for n in 0..STACKS {
        let (_, runs) = app
            .get(&format!("/api/v1/stacks/part-{n}/runs"), &app.admin)
            .await;
        let run = runs["items"][0]["id"].as_str().expect("a run").to_owned();
        wait_for(&app, &run, "finished").await;
    }
    let fetches = repo
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/git-upload-pack"))
        .count();
    assert_eq!(fetches, 1, "one fetch for {STACKS} runs at one commit");
    app.stop().await;
}

/// A run cannot fill the server's disk: its stored log stops at the
/// stack's limit, with a note saying how much more there was.
async fn a_runs_log_is_cut_at_its_stacks_limit(db: Db) {
    let app = TestApp::start_with_workers(&db, 1).await;
    let repo = repo(&app).await;
    let (_, commit) = repo
        .sim
        .commit(repo.project, "main", &[("main.tf", Some("x"))], "one")
        .expect("commit");
    let (status, refused) = app
        .post(
            "/api/v1/stacks",
            &app.admin,
            json!({ "name": "Tiny", "repository": "infra/network", "branch": "main",
                    "log_limit_bytes": 10,
                    "vendor": { "kind": "shell", "plan": "true", "apply": "true" } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused.to_string().contains("log_limit_bytes"), "{refused}");

    let id = stack(
        &app,
        "Chatty",
        "head -c 400000 /dev/zero | tr '\\0' 'x'; echo; exit 0",
        json!({ "log_limit_bytes": 65536 }),
    )
    .await;
    let (_, shown) = app.get(&format!("/api/v1/stacks/{id}"), &app.admin).await;
    assert_eq!(shown["log_limit_bytes"], 65536);
    let run = trigger(&app, &id, "proposed", &commit).await;
    wait_for(&app, &run, "finished").await;
    let text = log(&app, &run).await;
    assert!(text.len() < 65536 + 400, "{} bytes kept", text.len());
    assert!(
        text.contains("the log reached this stack's limit of 65536 bytes"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    let dropped: u64 = text
        .rsplit("[Gantry: ")
        .next()
        .and_then(|note| note.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a note with the bytes not kept");
    assert!(dropped > 300_000, "{dropped}");
    app.stop().await;
}
