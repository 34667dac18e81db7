//! `gantry demo`: an offline tour. A server on a temporary data directory
//! and the simulated GitLab with a sample repository (two shell stacks,
//! `network/` and `dns/`); the integration, the stacks and the project hook
//! are set up through the public API, then a push to `main` and a merge
//! request make the simulated GitLab send its webhooks. The timeline shows
//! the deliveries, the runs' transitions and the writes back to GitLab; it
//! ends when all of them are complete (exit 0), or says which step failed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gantry_gitlab_sim::Sim;
use serde_json::{Value, json};

use crate::client::{self, Client, Options};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Leave the server and the simulated GitLab running when the tour is
    /// over, and print their URLs and an API key (Ctrl-C stops them).
    #[arg(long)]
    keep: bool,
    /// Give up when the tour has not completed in this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_seconds: u64,
    #[command(flatten)]
    sandbox: crate::SandboxArgs,
}

const PROJECT: &str = "demo/infra";
const FEATURE: &str = "bigger-subnets";

/// Plans print one `+ resource` line per line of `resources.txt`.
const PLAN: &str = "echo \"Planning $(basename \"$PWD\") at $(git rev-parse --short HEAD)\"; \
    while read -r r; do echo \"  + $r\"; done < resources.txt; \
    echo \"Plan: $(wc -l < resources.txt | tr -d ' ') to add, 0 to change, 0 to destroy.\"; exit 2";
const APPLY: &str = "while read -r r; do echo \"created $r\"; done < resources.txt";

/// The stacks: id, project root, autodeploy.
const STACKS: [(&str, &str, bool); 2] = [("network", "network", false), ("dns", "dns", true)];

/// Prints the timeline, with the time since the start.
struct Timeline {
    started: Instant,
    /// What the tour is waiting for, for the message when it times out.
    waiting_for: Mutex<String>,
}

impl Timeline {
    fn say(&self, kind: &str, message: impl AsRef<str>) {
        println!(
            "{:>6.2}s  {kind:<8} {}",
            self.started.elapsed().as_secs_f64(),
            message.as_ref()
        );
    }

    fn wait_for(&self, what: impl Into<String>) {
        *self
            .waiting_for
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = what.into();
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let timeline = Timeline {
        started: Instant::now(),
        waiting_for: Mutex::new("the start".to_owned()),
    };
    let dir = tempfile::Builder::new()
        .prefix("gantry-demo-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    let sim = Sim::start()
        .await
        .context("cannot start the simulated GitLab")?;
    let bot = sim.add_bot("gantry-bot");
    let gitlab_token = bot.token.clone();
    let project = sim
        .add_maintained_project(&bot, PROJECT, "main")
        .context("cannot create the sample repository (the demo needs `git` on PATH)")?;
    sim.commit(
        project,
        "main",
        &[
            ("README.md", Some("# Demo infrastructure\n")),
            ("network/resources.txt", Some("vpc.main\nsubnet.a\n")),
            ("dns/resources.txt", Some("zone.example\n")),
        ],
        "Sample infrastructure: network and dns",
    )?;
    timeline.say(
        "gitlab",
        format!(
            "simulated GitLab at {}: project {PROJECT} with network/ and dns/",
            sim.url()
        ),
    );

    let listen = free_address()?;
    let base = format!("http://{listen}");
    let data_dir = dir.path().join("data");
    let config = gantry_server::ServerConfig {
        listen,
        data_dir: data_dir.clone(),
        database_url: None,
        public_url: base.clone(),
        embedded_workers: 2,
        lease: Duration::from_secs(30),
        webhook_secret_grace: gantry_server::DEFAULT_WEBHOOK_SECRET_GRACE,
        webhook_body_limit: gantry_server::DEFAULT_WEBHOOK_BODY_LIMIT,
        delivery_retention: gantry_server::DEFAULT_DELIVERY_RETENTION,
        gitlab: gantry_gitlab::ClientConfig::default(),
        worker_shutdown_grace: Duration::from_secs(5),
        sandbox: args.sandbox.mode(),
        prepare_patience: gantry_server::DEFAULT_PREPARE_PATIENCE,
        run_log_retention: gantry_server::DEFAULT_RUN_LOG_RETENTION,
        blob_store: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = gantry_server::start(config, None, async {
        let _ = stopped.await;
    })
    .await
    .context("cannot start the Gantry server")?;
    let admin = std::fs::read_to_string(data_dir.join("initial-admin-token"))
        .context("cannot read the server's first admin key")?
        .trim()
        .to_owned();
    timeline.say(
        "gantry",
        format!("server at {base}, SQLite in {}", data_dir.display()),
    );
    let client = Client::new(&Options {
        url: base.clone(),
        token: Some(admin.clone().into()),
        json: false,
    })?;

    let timeout = Duration::from_secs(args.timeout_seconds);
    let toured = tokio::select! {
        toured = tokio::time::timeout(timeout, tour(&timeline, &sim, project, &client, &gitlab_token)) => toured,
        // Ctrl-C stops the server cleanly, so the temporary files go too.
        () = crate::shutdown_signal() => Ok(Err(anyhow::anyhow!("interrupted"))),
    };
    let toured = match toured {
        Ok(toured) => toured,
        Err(_) => Err(anyhow::anyhow!(
            "the tour did not complete within {} s: still waiting for {}",
            args.timeout_seconds,
            timeline
                .waiting_for
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        )),
    };
    if toured.is_ok() && args.keep {
        println!();
        println!("The server and the simulated GitLab keep running; Ctrl-C stops them.");
        println!("  Gantry server:       {base}");
        println!("  simulated GitLab:    {}", sim.url());
        println!("  admin API key:       {admin}");
        println!("Try:");
        println!("  export GANTRY_URL={base} GANTRY_TOKEN={admin}");
        println!("  gantry stack list");
        println!("  gantry run list network");
        println!("  gantry integration deliveries demo-gitlab");
        crate::shutdown_signal().await;
    }
    let _ = stop.send(());
    server.wait().await?;
    drop(sim);
    toured
}

/// A local address that was free a moment ago (the server's public URL
/// must be known before it binds).
fn free_address() -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a local port")?;
    Ok(listener.local_addr()?)
}

async fn tour(
    timeline: &Timeline,
    sim: &Sim,
    project: u64,
    client: &Client,
    gitlab_token: &str,
) -> anyhow::Result<()> {
    timeline.wait_for("the integration to be created");
    let integration = client
        .post(
            "/api/v1/integrations/gitlab",
            json!({ "name": "Demo GitLab", "default": true, "api_host_url": sim.url(),
                    "api_token": gitlab_token,
                    "description": "The simulated GitLab of `gantry demo`." }),
        )
        .await
        .context("creating the integration")?;
    timeline.say(
        "gantry",
        format!(
            "integration {} created; GitLab accepted the token of @{} (scopes: {})",
            integration["id"].as_str().unwrap_or_default(),
            integration["token"]["user"]["username"]
                .as_str()
                .unwrap_or_default(),
            client::output::text(&integration["token"]["scopes"]),
        ),
    );
    for (id, root, autodeploy) in STACKS {
        client
            .post(
                "/api/v1/stacks",
                json!({ "name": id, "repository": PROJECT, "branch": "main", "project_root": root,
                        "autodeploy": autodeploy,
                        "vendor": { "kind": "shell", "plan": PLAN, "apply": APPLY } }),
            )
            .await
            .with_context(|| format!("creating the stack {id}"))?;
        let confirm = if autodeploy {
            "applies without confirmation"
        } else {
            "waits for confirmation"
        };
        timeline.say(
            "gantry",
            format!("stack {id} created: {PROJECT} main, {root}/, shell workflow, {confirm}"),
        );
    }
    let endpoint = integration["webhook_endpoint"]
        .as_str()
        .context("the integration has no webhook endpoint")?;
    let secret = integration["webhook_secret"]
        .as_str()
        .context("the integration has no webhook secret")?;
    sim.add_hook(project, endpoint, secret)
        .context("adding the project hook")?;
    timeline.say(
        "gitlab",
        format!("project hook added: {endpoint} (push, tag push and merge request events)"),
    );

    // A push to main touching both stacks.
    let files = [
        (
            "network/resources.txt",
            Some("vpc.main\nsubnet.a\nsubnet.b\n"),
        ),
        ("dns/resources.txt", Some("zone.example\nrecord.www\n")),
    ];
    let message = "Add subnet b and the www record";
    let pushed = push(timeline, sim, project, "main", &files, message).await?;

    // A merge request changing the network: GitLab sends the push of its
    // branch, then the merge request.
    let files = [(
        "network/resources.txt",
        Some("vpc.main\nsubnet.a\nsubnet.b\nsubnet.c\n"),
    )];
    let proposed = push(timeline, sim, project, FEATURE, &files, "Add subnet c").await?;
    let iid = sim.open_merge_request(project, FEATURE, "main", "Add subnet c")?;
    let payload = sim.merge_request_payload(project, iid, "open", None)?;
    deliver(
        timeline,
        sim,
        project,
        "Merge Request Hook",
        &payload,
        &format!("!{iid} opened"),
    )
    .await?;

    let mut watch = Watch {
        timeline,
        sim,
        project,
        client,
        iid,
        statuses: vec![
            (pushed.clone(), "network"),
            (pushed, "dns"),
            (proposed, "network"),
        ],
        seen_deliveries: HashSet::new(),
        seen_transitions: HashMap::new(),
        confirmed: Vec::new(),
        seen_statuses: HashMap::new(),
        seen_note: None,
        seen_deployments: HashMap::new(),
    };
    loop {
        let waiting = watch.look().await?;
        match waiting {
            None => break,
            Some(what) => timeline.wait_for(what),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timeline.say(
        "done",
        "3 runs finished; 3 commit statuses, 1 merge request comment and 2 deployments written to GitLab",
    );
    Ok(())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

/// Makes the simulated GitLab send a webhook; the hook must take it.
/// Commits `files` to `branch`, has GitLab deliver the push, and returns
/// the new commit.
async fn push(
    timeline: &Timeline,
    sim: &Sim,
    project: u64,
    branch: &str,
    files: &[(&str, Option<&str>)],
    message: &str,
) -> anyhow::Result<String> {
    let (before, pushed) = sim.commit(project, branch, files, message)?;
    let payload = sim.push_payload(project, branch, &before, &pushed)?;
    let what = format!("{branch} {}", short(&pushed));
    deliver(timeline, sim, project, "Push Hook", &payload, &what).await?;
    Ok(pushed)
}

async fn deliver(
    timeline: &Timeline,
    sim: &Sim,
    project: u64,
    event: &str,
    payload: &Value,
    what: &str,
) -> anyhow::Result<()> {
    timeline.wait_for(format!("the answer to the {event} ({what})"));
    let answers = sim.deliver(project, event, payload).await;
    let [answer] = answers.as_slice() else {
        bail!(
            "GitLab made {} deliveries of the {event}, not one",
            answers.len()
        );
    };
    let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    if answer.status != 200 {
        bail!(
            "the webhook answered the {event} with {}: {}",
            answer.status,
            answer.body
        );
    }
    timeline.say(
        "webhook",
        format!(
            "GitLab sent {event} ({what}): {} {}",
            answer.status,
            body["status"].as_str().unwrap_or("")
        ),
    );
    Ok(())
}

/// What the tour has shown so far.
struct Watch<'a> {
    timeline: &'a Timeline,
    sim: &'a Sim,
    project: u64,
    client: &'a Client,
    iid: u64,
    /// The commit statuses expected: commit and stack.
    statuses: Vec<(String, &'static str)>,
    seen_deliveries: HashSet<String>,
    seen_transitions: HashMap<String, usize>,
    confirmed: Vec<String>,
    seen_statuses: HashMap<(String, &'static str), usize>,
    seen_note: Option<String>,
    seen_deployments: HashMap<u64, String>,
}

impl Watch<'_> {
    /// Prints what is new; `None` once everything expected has happened,
    /// else what is still awaited.
    async fn look(&mut self) -> anyhow::Result<Option<String>> {
        let mut waiting = Vec::new();
        self.deliveries().await?;
        let mut finished = 0;
        for (stack, _, _) in STACKS {
            finished += self.runs(stack).await?;
        }
        if finished < 3 {
            waiting.push(format!("{} of 3 runs to finish", 3 - finished));
        }
        for (sha, stack) in self.statuses.clone() {
            let history = self
                .sim
                .status_history(self.project, &sha, &format!("gantry/{stack}"));
            let seen = self.seen_statuses.entry((sha.clone(), stack)).or_default();
            for state in &history[(*seen).min(history.len())..] {
                self.timeline.say(
                    "gitlab",
                    format!("commit status gantry/{stack} on {}: {state}", short(&sha)),
                );
            }
            *seen = history.len();
            if history.last().map(String::as_str) != Some("success") {
                waiting.push(format!("the success status of {stack} on {}", short(&sha)));
            }
        }
        let notes = self.sim.notes(self.project, self.iid);
        if let Some(note) = notes.first()
            && self.seen_note.as_deref() != Some(note.body.as_str())
        {
            let done = if self.seen_note.is_none() {
                "created"
            } else {
                "edited"
            };
            self.timeline.say(
                "gitlab",
                format!(
                    "comment on !{} {done}: the network proposed run is {}",
                    self.iid,
                    note.body.split("**").nth(1).unwrap_or("?")
                ),
            );
            self.seen_note = Some(note.body.clone());
        }
        if notes.len() != 1 || !notes[0].body.contains("**finished**") {
            waiting.push(format!("one comment on !{} saying finished", self.iid));
        }
        let deployments = self.sim.deployments(self.project);
        for deployment in &deployments {
            let id = deployment["id"].as_u64().unwrap_or_default();
            let status = deployment["status"].as_str().unwrap_or_default().to_owned();
            if self.seen_deployments.get(&id) != Some(&status) {
                self.timeline.say(
                    "gitlab",
                    format!(
                        "deployment to {} of {}: {status}",
                        deployment["environment"]["name"]
                            .as_str()
                            .unwrap_or_default(),
                        short(deployment["sha"].as_str().unwrap_or_default())
                    ),
                );
                self.seen_deployments.insert(id, status);
            }
        }
        let succeeded = deployments
            .iter()
            .filter(|d| d["status"] == "success")
            .count();
        if deployments.len() != 2 || succeeded != 2 {
            waiting.push("2 successful deployments".to_owned());
        }
        Ok((!waiting.is_empty()).then(|| waiting.join(", ")))
    }

    async fn deliveries(&mut self) -> anyhow::Result<()> {
        let list = self
            .client
            .get("/api/v1/integrations/gitlab/demo-gitlab/deliveries")
            .await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        for delivery in items.iter().rev() {
            let Some(outcome) = delivery["outcome"].as_str() else {
                continue;
            };
            let id = delivery["id"].as_str().unwrap_or_default().to_owned();
            if self.seen_deliveries.insert(id) {
                self.timeline.say(
                    "gantry",
                    format!(
                        "{} {}: {outcome}",
                        delivery["event"].as_str().unwrap_or_default(),
                        delivery["status"].as_str().unwrap_or_default()
                    ),
                );
            }
        }
        Ok(())
    }

    /// Prints the stack's new transitions, confirms a plan waiting for it,
    /// and returns how many of its runs finished. A run that ends otherwise
    /// ends the tour.
    async fn runs(&mut self, stack: &str) -> anyhow::Result<usize> {
        let list = self
            .client
            .get(&format!("/api/v1/stacks/{stack}/runs"))
            .await?;
        let runs = list["items"].as_array().cloned().unwrap_or_default();
        let mut finished = 0;
        for run in runs.iter().rev() {
            let id = run["id"].as_str().unwrap_or_default().to_owned();
            let label = format!("{stack} {} run", run["kind"].as_str().unwrap_or_default());
            let transitions = run["transitions"].as_array().cloned().unwrap_or_default();
            let seen = self.seen_transitions.entry(id.clone()).or_default();
            for transition in &transitions[(*seen).min(transitions.len())..] {
                let state = transition["state"].as_str().unwrap_or_default();
                let detail = match state {
                    "queued" => format!(
                        " ({id} at {})",
                        short(run["commit_sha"].as_str().unwrap_or_default())
                    ),
                    "unconfirmed" => format!(" ({})", client::changes(run)),
                    _ => String::new(),
                };
                self.timeline
                    .say("run", format!("{label}: {state}{detail}"));
            }
            *seen = transitions.len();
            match run["state"].as_str().unwrap_or_default() {
                "finished" => finished += 1,
                "unconfirmed" if !self.confirmed.contains(&id) => {
                    self.client
                        .post(&format!("/api/v1/runs/{id}/confirm"), json!({}))
                        .await
                        .context("confirming the plan")?;
                    self.timeline.say(
                        "you",
                        format!("confirmed the plan of the {label} (gantry run confirm {id})"),
                    );
                    self.confirmed.push(id);
                }
                state @ ("failed" | "canceled" | "discarded") => {
                    // The run's end is the error to report, log or not.
                    let log = self.client.log(&id).await.unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    bail!(
                        "the {label} {id} ended {state}: {}\nthe end of its log:\n{}",
                        run["reason"].as_str().unwrap_or("no reason given"),
                        tail.join("\n")
                    );
                }
                _ => {}
            }
        }
        Ok(finished)
    }
}
