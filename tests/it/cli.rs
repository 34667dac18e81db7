//! Every client subcommand against a running `gantry serve`: the table
//! output, `--json`, and the failures scripts rely on (exit code and
//! message): no key, a refused key, a missing role, an unknown id, bad
//! input, no server.

use std::process::Stdio;
use std::time::Duration;

use gantry_gitlab_sim::Sim;
use serde_json::Value;

use crate::api::admin_token;
use crate::process::{free_port, serve};

/// What a `gantry` command printed and how it exited.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `gantry` commands against one server with one key.
struct Gantry {
    base: String,
    token: Option<String>,
}

impl Gantry {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"));
        command
            .args(args)
            .env("GANTRY_URL", &self.base)
            .env_remove("GANTRY_TOKEN")
            .env_remove("GANTRY_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(token) = &self.token {
            command.env("GANTRY_TOKEN", token);
        }
        command
    }

    async fn run(&self, args: &[&str]) -> Out {
        let output = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("gantry {args:?} did not end"))
            .expect("gantry runs");
        Out {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The table output of a command that must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(out.code, 0, "gantry {args:?}: {}{}", out.stdout, out.stderr);
        out.stdout
    }

    /// The `--json` output of a command that must succeed.
    async fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        let stdout = self.ok(&args).await;
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("gantry {args:?}: {e}: {stdout}"))
    }

    /// A command that must fail with `code`, saying `says` on stderr and
    /// printing nothing.
    async fn fails(&self, args: &[&str], code: i32, says: &str) {
        let out = self.fails_allowing_stdout(args, code, says).await;
        assert!(out.stdout.is_empty(), "nothing on stdout: {}", out.stdout);
    }

    async fn fails_allowing_stdout(&self, args: &[&str], code: i32, says: &str) -> Out {
        let out = self.run(args).await;
        assert_eq!(
            out.code, code,
            "gantry {args:?}: {}{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stderr.contains(says),
            "gantry {args:?} should say {says:?}: {}",
            out.stderr
        );
        out
    }

    fn with_token(&self, token: Option<&str>) -> Self {
        Self {
            base: self.base.clone(),
            token: token.map(str::to_owned),
        }
    }

    /// Polls `run show --json` until the run is in `state`.
    async fn wait_for(&self, run: &str, state: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..600 {
            last = self.json(&["run", "show", run]).await;
            if last["state"] == state {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {run} never became {state}: {last}");
    }
}

/// One line of a table whose first cell is `first`.
fn row<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in:\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_command_against_a_running_server() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let server = serve(&data, free_port(), &["--embedded-workers", "1"]).await;
    let admin = admin_token(&data);
    let gantry = Gantry {
        base: server.base.clone(),
        token: Some(admin.clone()),
    };
    let sim = Sim::start().await.expect("sim");
    let bot = sim.add_bot("gantry-bot");
    let gitlab_token = bot.token.clone();
    let project = sim
        .add_maintained_project(&bot, "infra/network", "main")
        .expect("project");
    sim.commit(project, "main", &[("net/main.tf", Some("one"))], "one")
        .expect("commit");
    let token_file = dir.path().join("gitlab-token");
    std::fs::write(&token_file, format!("{gitlab_token}\n")).expect("token file");
    let token_file = token_file.to_str().expect("utf-8");

    // Who am I, and the failures of the connection itself.
    let me = gantry.ok(&["me"]).await;
    assert!(me.contains("roles: admin@root"), "{me}");
    assert_eq!(gantry.json(&["me"]).await["roles"][0]["role"], "admin");
    gantry
        .with_token(None)
        .fails(&["me"], 3, "no API key: set GANTRY_TOKEN")
        .await;
    gantry
        .with_token(Some("gantry_not-a-key"))
        .fails(&["stack", "list"], 3, "refused the API key (401)")
        .await;
    let nowhere = Gantry {
        base: format!("http://127.0.0.1:{}", free_port()),
        token: Some(admin.clone()),
    };
    nowhere
        .fails(&["stack", "list"], 6, "cannot reach the Gantry server")
        .await;
    gantry
        .fails(&["stack", "lisst"], 2, "unrecognized subcommand")
        .await;

    // Spaces.
    let created = gantry.ok(&["space", "create", "Team A"]).await;
    assert!(created.contains("id:      team-a"), "{created}");
    assert!(created.contains("parent:  root"), "{created}");
    let spaces = gantry.ok(&["space", "list"]).await;
    assert!(spaces.starts_with("ID "), "{spaces}");
    assert!(row(&spaces, "team-a").contains("Team A"), "{spaces}");
    let spaces = gantry.json(&["space", "list", "--limit", "1"]).await;
    assert_eq!(spaces["items"].as_array().map(Vec::len), Some(1));
    assert!(spaces["next_cursor"].is_string(), "{spaces}");
    gantry
        .fails(&["space", "create", "Team A"], 5, "refused (409)")
        .await;

    // API keys: a reader of team-a, used and revoked.
    let key = gantry
        .json(&["api-key", "create", "Reader", "--role", "team-a:read"])
        .await;
    let reader_secret = key["secret"].as_str().expect("secret").to_owned();
    let table = gantry
        .ok(&["api-key", "create", "Other", "--role", "root:read"])
        .await;
    assert!(table.contains("secret:"), "{table}");
    let reader = gantry.with_token(Some(&reader_secret));
    assert!(reader.ok(&["me"]).await.contains("read@team-a"));
    reader
        .fails(
            &["space", "create", "Mine", "--parent", "team-a"],
            3,
            "not allowed (403)",
        )
        .await;
    let keys = gantry.ok(&["api-key", "list"]).await;
    assert!(row(&keys, "reader").contains("read@team-a"), "{keys}");
    gantry
        .fails(
            &["api-key", "create", "Bad", "--role", "root"],
            5,
            "is not SPACE:ROLE",
        )
        .await;
    let revoked = gantry.json(&["api-key", "revoke", "reader"]).await;
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    reader.fails(&["me"], 3, "refused the API key").await;
    gantry
        .fails(&["api-key", "revoke", "nobody"], 4, "not found (404)")
        .await;

    // Integrations.
    let created = gantry
        .ok(&[
            "integration",
            "create",
            "Main",
            "--default",
            "--api-host-url",
            sim.url(),
            "--api-token-file",
            token_file,
            "--label",
            "prod",
        ])
        .await;
    assert!(
        created.contains("token user:       gantry-bot"),
        "{created}"
    );
    assert!(!created.contains(&gitlab_token), "the token is never shown");
    let list = gantry.ok(&["integration", "list"]).await;
    assert!(row(&list, "main").contains(" ok"), "{list}");
    let shown = gantry.json(&["integration", "show", "main"]).await;
    let endpoint = shown["webhook_endpoint"]
        .as_str()
        .expect("endpoint")
        .to_owned();
    let secret = shown["webhook_secret"].as_str().expect("secret").to_owned();
    let updated = gantry
        .json(&[
            "integration",
            "update",
            "main",
            "--description",
            "The main GitLab",
            "--clear-labels",
        ])
        .await;
    assert_eq!(
        (
            updated["description"].as_str(),
            updated["labels"].as_array().map(Vec::len)
        ),
        (Some("The main GitLab"), Some(0))
    );
    let rotated = gantry
        .json(&[
            "integration",
            "rotate-secret",
            "main",
            "--grace-seconds",
            "60",
        ])
        .await;
    assert_ne!(rotated["webhook_secret"].as_str(), Some(secret.as_str()));
    gantry
        .fails(&["integration", "show", "nope"], 4, "not found (404)")
        .await;
    gantry
        .fails(
            &[
                "integration",
                "create",
                "Empty",
                "--api-host-url",
                sim.url(),
                "--api-token-file",
                "/dev/null",
            ],
            5,
            "is empty",
        )
        .await;
    gantry
        .ok(&[
            "integration",
            "create",
            "Spare",
            "--api-host-url",
            sim.url(),
            "--api-token-file",
            token_file,
        ])
        .await;
    let deleted = gantry.json(&["integration", "delete", "spare"]).await;
    assert_eq!(deleted["id"], "spare");

    // Stacks.
    let secrets = dir.path().join("secrets.env");
    std::fs::write(&secrets, "# secrets\nDB_PASSWORD=cli-CANARY\n").expect("secrets");
    let plan =
        "echo \"plan with $GREETING\"; echo 'Plan: 1 to add, 0 to change, 0 to destroy.'; exit 2";
    let created = gantry
        .ok(&[
            "stack",
            "create",
            "Net",
            "--repository",
            "infra/network",
            "--branch",
            "main",
            "--project-root",
            "net",
            "--vendor",
            "shell",
            "--plan",
            plan,
            "--apply",
            "echo applied",
            "--env",
            "GREETING=hello",
            "--secret-env-file",
            secrets.to_str().expect("utf-8"),
        ])
        .await;
    assert!(created.contains("secret names: DB_PASSWORD"), "{created}");
    assert!(
        !created.contains("cli-CANARY"),
        "secret values are never shown"
    );
    let stacks = gantry.ok(&["stack", "list"]).await;
    assert!(row(&stacks, "net").contains("infra/network"), "{stacks}");
    let shown = gantry.json(&["stack", "show", "net"]).await;
    assert_eq!(
        (
            shown["project_root"].as_str(),
            shown["environment"]["GREETING"].as_str()
        ),
        (Some("net/"), Some("hello"))
    );
    let updated = gantry
        .json(&["stack", "update", "net", r#"{"labels": ["team-a"]}"#])
        .await;
    assert_eq!(updated["labels"][0], "team-a");
    gantry
        .fails(
            &["stack", "update", "net", "autodeploy"],
            5,
            "is not a JSON object",
        )
        .await;
    gantry
        .fails(
            &["stack", "update", "net", r#"{"branch": ""}"#],
            5,
            "refused (422)",
        )
        .await;
    gantry
        .fails(&["stack", "trigger", "nope"], 4, "not found (404)")
        .await;

    // A run, followed live while it waits, confirmed, and finished.
    let run = gantry.json(&["stack", "trigger", "net"]).await;
    let first = run["id"].as_str().expect("id").to_owned();
    let follower = gantry
        .command(&["run", "logs", &first, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("follow");
    let waiting = gantry.wait_for(&first, "unconfirmed").await;
    assert_eq!(waiting["summary"]["add"], 1);
    let confirmed = gantry.ok(&["run", "confirm", &first]).await;
    assert!(
        confirmed.contains("state:         confirmed"),
        "{confirmed}"
    );
    let followed = tokio::time::timeout(Duration::from_secs(60), follower.wait_with_output())
        .await
        .expect("the follower ends with the run")
        .expect("output");
    let log = String::from_utf8_lossy(&followed.stdout);
    assert_eq!(followed.status.code(), Some(0), "{log}");
    assert!(
        log.contains("plan with hello") && log.contains("applied"),
        "{log}"
    );
    let shown = gantry.ok(&["run", "show", &first]).await;
    assert!(
        shown.contains("changes:       1 to add, 0 to change, 0 to destroy"),
        "{shown}"
    );
    assert!(
        row(&shown, "AT").contains("CAUSE"),
        "the transitions: {shown}"
    );
    let plain = gantry.ok(&["run", "logs", &first]).await;
    assert_eq!(plain, log, "the stored log is what was followed");
    let runs = gantry.ok(&["run", "list", "net"]).await;
    assert!(row(&runs, &first).contains("finished"), "{runs}");
    let none = gantry
        .json(&["run", "list", "net", "--state", "failed"])
        .await;
    assert_eq!(none["items"].as_array().map(Vec::len), Some(0));

    // Discarded: following it exits 1 and says how it ended.
    gantry
        .fails(
            &["stack", "trigger", "net"],
            5,
            "already has a tracked run for commit",
        )
        .await;
    sim.commit(project, "main", &[("net/main.tf", Some("two"))], "two")
        .expect("commit");
    let second = gantry.json(&["stack", "trigger", "net"]).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    gantry.wait_for(&second, "unconfirmed").await;
    assert_eq!(
        gantry.json(&["run", "discard", &second]).await["state"],
        "discarded"
    );
    gantry
        .fails_allowing_stdout(&["run", "logs", &second, "--follow"], 1, "ended discarded")
        .await;

    // Canceled mid-plan.
    sim.commit(project, "main", &[("net/main.tf", Some("three"))], "three")
        .expect("commit");
    gantry
        .json(&[
            "stack",
            "update",
            "net",
            r#"{"vendor": {"kind": "shell", "plan": "echo sleeping; sleep 60", "apply": "true"}}"#,
        ])
        .await;
    let third = gantry
        .json(&["stack", "trigger", "net", "--proposed"])
        .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    gantry.wait_for(&third, "planning").await;
    gantry.ok(&["run", "cancel", &third]).await;
    let canceled = gantry.wait_for(&third, "canceled").await;
    assert_eq!(canceled["kind"], "proposed");
    gantry
        .fails(&["run", "confirm", &third], 5, "refused (409)")
        .await;
    gantry
        .fails(&["run", "show", "nope"], 4, "not found (404)")
        .await;

    // Webhook deliveries, listed and replayed.
    sim.add_hook(
        project,
        &endpoint,
        rotated["webhook_secret"].as_str().expect("secret"),
    );
    let (before, after) = sim
        .commit(project, "main", &[("docs/readme.md", Some("docs"))], "docs")
        .expect("commit");
    let payload = sim
        .push_payload(project, "main", &before, &after)
        .expect("payload");
    assert_eq!(
        sim.deliver(project, "Push Hook", &payload).await[0].status,
        200
    );
    let mut deliveries = Value::Null;
    for _ in 0..300 {
        deliveries = gantry
            .json(&["integration", "deliveries", "main", "--event", "Push Hook"])
            .await;
        if deliveries["items"][0]["outcome"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivery = deliveries["items"][0]["id"]
        .as_str()
        .expect("a delivery")
        .to_owned();
    let table = gantry.ok(&["integration", "deliveries", "main"]).await;
    assert!(row(&table, &delivery).contains("Push Hook"), "{table}");
    let replayed = gantry
        .ok(&["integration", "replay", "main", &delivery])
        .await;
    assert!(replayed.contains(&delivery), "{replayed}");
    gantry
        .fails(
            &["integration", "replay", "main", "nope"],
            4,
            "not found (404)",
        )
        .await;

    // The audit log saw it all.
    let audit = gantry.ok(&["audit", "list"]).await;
    assert!(audit.starts_with("AT "), "{audit}");
    assert!(audit.contains("stack net"), "{audit}");
    assert!(
        !gantry.json(&["audit", "list"]).await["items"]
            .as_array()
            .expect("items")
            .is_empty()
    );

    // Modules, their versions, and the hooks Gantry keeps.
    let created = gantry
        .ok(&[
            "module",
            "create",
            "VPC",
            "--repository",
            "infra/network",
            "--project-root",
            "vpc",
            "--provider",
            "aws",
        ])
        .await;
    assert!(
        created.contains("registry address") && created.contains("/root/vpc/aws"),
        "{created}"
    );
    let modules = gantry.ok(&["module", "list"]).await;
    assert!(row(&modules, "vpc").contains("aws"), "{modules}");
    let updated = gantry
        .json(&["module", "update", "vpc", "--label", "net"])
        .await;
    assert_eq!(updated["labels"], serde_json::json!(["net"]));
    let versions = gantry.json(&["module", "versions", "vpc"]).await;
    assert_eq!(versions["items"], serde_json::json!([]));
    gantry
        .fails(
            &[
                "module",
                "create",
                "Bad",
                "--repository",
                "infra/network",
                "--provider",
                "AWS",
            ],
            5,
            "provider",
        )
        .await;
    let hooks = gantry.json(&["integration", "hooks", "main"]).await;
    assert!(hooks["items"].is_array(), "{hooks}");
    assert_eq!(gantry.json(&["module", "delete", "vpc"]).await["id"], "vpc");

    // Deleting what is in use needs --force.
    gantry
        .fails(&["integration", "delete", "main"], 5, "refused (409)")
        .await;
    assert_eq!(gantry.json(&["stack", "delete", "net"]).await["id"], "net");
    gantry
        .json(&["integration", "delete", "main", "--force"])
        .await;

    // Completions.
    for shell in ["bash", "zsh", "fish"] {
        let script = gantry.with_token(None).ok(&["completions", shell]).await;
        assert!(
            script.contains("gantry") && script.contains("integration"),
            "{shell}"
        );
    }
    drop(server);
}
