//! `gantry stack …` and `gantry run …`, with `run logs --follow` reading
//! the server-sent events of a run's log until the run ends.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::output::{CREATED, Column, ID, NAME, SPACE, pick, print_list, print_one, text};
use super::{Client, Failure, Outcome, Page, exit, insert_some, pairs, query, read_secret};

const STACKS: &str = "/api/v1/stacks";
const RUNS: &str = "/api/v1/runs";

#[derive(Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum StackCommand {
    /// Create a stack; secret environment values are read from a file or stdin.
    Create {
        name: String,
        /// Default: root.
        #[arg(long)]
        space: Option<String>,
        /// Default: the default integration.
        #[arg(long)]
        integration: Option<String>,
        /// The GitLab project path, such as infra/network.
        #[arg(long)]
        repository: String,
        /// The tracked branch.
        #[arg(long)]
        branch: String,
        /// The directory of the stack in the repository.
        #[arg(long, default_value = "")]
        project_root: String,
        /// More paths that trigger the stack; `**` globs, repeat for several.
        #[arg(long = "glob")]
        globs: Vec<String>,
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Apply tracked plans without confirmation.
        #[arg(long)]
        autodeploy: bool,
        /// Run merge requests from forks too.
        #[arg(long)]
        allow_forks: bool,
        #[command(flatten)]
        workflow: Workflow,
        /// NAME=VALUE; repeat for several.
        #[arg(long = "env", value_name = "NAME=VALUE")]
        environment: Vec<String>,
        /// A file of NAME=VALUE lines, or `-` for stdin.
        #[arg(long, value_name = "PATH")]
        secret_env_file: Option<PathBuf>,
        /// The secret environment of proposed runs instead (such as
        /// read-only credentials): a file of NAME=VALUE lines, or `-`.
        #[arg(long, value_name = "PATH")]
        proposed_secret_env_file: Option<PathBuf>,
    },
    /// List the stacks you can see.
    List {
        #[command(flatten)]
        page: Page,
    },
    /// Show one stack.
    Show { id: String },
    /// Change a stack: the fields to change as JSON, such as '{"branch": "main"}'.
    Update {
        id: String,
        /// The fields to change, as a JSON object (the stack fields of `docs/api.md`).
        #[arg(value_name = "JSON")]
        change: String,
        /// Replaces the secret environment from a file of NAME=VALUE lines
        /// (or `-`), so that no secret is on the command line.
        #[arg(long, value_name = "PATH")]
        secret_env_file: Option<PathBuf>,
        /// Replaces the proposed runs' secret environment likewise.
        #[arg(long, value_name = "PATH")]
        proposed_secret_env_file: Option<PathBuf>,
    },
    /// Delete a stack.
    Delete { id: String },
    /// Start a run of the stack at a commit (default: its branch's head).
    Trigger {
        id: String,
        /// A proposed run (plan only) instead of a tracked one.
        #[arg(long)]
        proposed: bool,
        /// The commit to run.
        #[arg(long)]
        commit: Option<String>,
    },
}

#[derive(Args)]
pub struct Workflow {
    /// opentofu, terraform or shell.
    #[arg(long, default_value = "opentofu")]
    vendor: String,
    /// The opentofu or terraform binary; default: found on PATH.
    #[arg(long)]
    binary: Option<String>,
    /// Shell: the init command.
    #[arg(long)]
    init: Option<String>,
    /// Shell: the plan command (exit code 2 means changes).
    #[arg(long)]
    plan: Option<String>,
    /// Shell: the apply command.
    #[arg(long)]
    apply: Option<String>,
}

impl Workflow {
    fn to_json(&self) -> Value {
        let mut vendor = Map::new();
        vendor.insert("kind".into(), json!(self.vendor));
        if self.vendor == "shell" {
            for (key, command) in [
                ("init", &self.init),
                ("plan", &self.plan),
                ("apply", &self.apply),
            ] {
                vendor.insert(key.into(), json!(command.clone().unwrap_or_default()));
            }
        } else {
            insert_some(&mut vendor, "binary", self.binary.clone());
        }
        Value::Object(vendor)
    }
}

/// A file of `NAME=VALUE` lines (blank lines and `#` comments skipped).
fn secret_file(path: &std::path::Path) -> Result<Map<String, Value>, Failure> {
    let text = read_secret(path, "secret environment")?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    pairs(&lines, "secret environment line")
}

const STACK_COLUMNS: [&str; 7] = [
    "id",
    "name",
    "space",
    "repository",
    "branch",
    "project root",
    "autodeploy",
];

const STACK_FIELDS: [Column; 17] = [
    ID,
    NAME,
    SPACE,
    Column::Field("integration", "/integration"),
    Column::Field("repository", "/repository"),
    Column::Field("project id", "/project_id"),
    Column::Field("branch", "/branch"),
    Column::Field("project root", "/project_root"),
    Column::Field("globs", "/additional_project_globs"),
    Column::Field("labels", "/labels"),
    Column::Field("autodeploy", "/autodeploy"),
    Column::Field("allow forks", "/allow_forks"),
    Column::With("workflow", |s| {
        let vendor = &s["vendor"];
        match vendor["kind"].as_str() {
            Some("shell") => format!(
                "shell: plan `{}`, apply `{}`",
                vendor["plan"].as_str().unwrap_or(""),
                vendor["apply"].as_str().unwrap_or("")
            ),
            _ => text(&vendor["kind"]),
        }
    }),
    Column::With("environment", |s| {
        s["environment"].as_object().map_or_else(
            || "-".to_owned(),
            |env| {
                let names: Vec<String> = env.keys().cloned().collect();
                text(&json!(names))
            },
        )
    }),
    Column::Field("secret names", "/secret_environment"),
    Column::Field("preview env", "/proposed_secret_environment"),
    Column::Field("updated", "/updated_at"),
];

pub async fn stack(client: &Client, command: StackCommand) -> Outcome {
    let answer = match command {
        StackCommand::Create {
            name,
            space,
            integration,
            repository,
            branch,
            project_root,
            globs,
            labels,
            autodeploy,
            allow_forks,
            workflow,
            environment,
            secret_env_file,
            proposed_secret_env_file,
        } => {
            let secrets = match secret_env_file {
                Some(path) => secret_file(&path)?,
                None => Map::new(),
            };
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("repository".into(), json!(repository));
            body.insert("branch".into(), json!(branch));
            body.insert("project_root".into(), json!(project_root));
            body.insert("additional_project_globs".into(), json!(globs));
            body.insert("labels".into(), json!(labels));
            body.insert("autodeploy".into(), json!(autodeploy));
            body.insert("allow_forks".into(), json!(allow_forks));
            body.insert("vendor".into(), workflow.to_json());
            body.insert(
                "environment".into(),
                Value::Object(pairs(&environment, "--env")?),
            );
            body.insert("secret_environment".into(), Value::Object(secrets));
            if let Some(path) = proposed_secret_env_file {
                body.insert(
                    "proposed_secret_environment".into(),
                    Value::Object(secret_file(&path)?),
                );
            }
            insert_some(&mut body, "space", space);
            insert_some(&mut body, "integration", integration);
            client.post(STACKS, Value::Object(body)).await?
        }
        StackCommand::List { page } => {
            let answer = client.get(&query(STACKS, &page.pairs())).await?;
            print_list(client.json, &answer, &pick(&STACK_FIELDS, &STACK_COLUMNS));
            return Ok(());
        }
        StackCommand::Show { id } => client.get(&format!("{STACKS}/{id}")).await?,
        StackCommand::Update {
            id,
            change,
            secret_env_file,
            proposed_secret_env_file,
        } => {
            let mut body: Value = serde_json::from_str(&change)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    Failure::new(
                        exit::REFUSED,
                        format!("the change {change:?} is not a JSON object, such as '{{\"branch\": \"main\"}}'"),
                    )
                })?;
            for (field, path) in [
                ("secret_environment", secret_env_file),
                ("proposed_secret_environment", proposed_secret_env_file),
            ] {
                if let Some(path) = path {
                    body[field] = Value::Object(secret_file(&path)?);
                }
            }
            client
                .call(Method::PATCH, &format!("{STACKS}/{id}"), Some(body))
                .await?
        }
        StackCommand::Delete { id } => {
            client
                .call(Method::DELETE, &format!("{STACKS}/{id}"), None)
                .await?
        }
        StackCommand::Trigger {
            id,
            proposed,
            commit,
        } => {
            let mut body = Map::new();
            body.insert(
                "kind".into(),
                json!(if proposed { "proposed" } else { "tracked" }),
            );
            insert_some(&mut body, "commit_sha", commit);
            let answer = client
                .post(&format!("{STACKS}/{id}/runs"), Value::Object(body))
                .await?;
            print_run(client, &answer);
            return Ok(());
        }
    };
    print_one(client.json, &answer, &STACK_FIELDS);
    Ok(())
}

#[derive(Subcommand)]
pub enum RunCommand {
    /// List a stack's runs, newest first.
    List {
        /// The stack's id.
        stack: String,
        /// Only runs in this state, such as unconfirmed.
        #[arg(long)]
        state: Option<String>,
        /// tracked or proposed.
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Show a run and its transitions.
    Show { id: String },
    /// Apply an unconfirmed run's plan.
    Confirm { id: String },
    /// Drop an unconfirmed run's plan.
    Discard { id: String },
    /// Stop a queued or running run.
    Cancel { id: String },
    /// Print a run's log; with --follow, stream it until the run ends and
    /// exit 0 only if the run finished.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
}

const RUN_COLUMNS: [Column; 8] = [
    ID,
    Column::Field("stack", "/stack"),
    Column::Field("kind", "/kind"),
    Column::Field("state", "/state"),
    Column::With("commit", |r| short_sha(&r["commit_sha"])),
    Column::Field("branch", "/branch"),
    Column::Field("mr", "/merge_request_iid"),
    CREATED,
];

fn short_sha(sha: &Value) -> String {
    sha.as_str()
        .map_or_else(|| "-".to_owned(), |s| s.chars().take(8).collect())
}

/// `2 to add, 0 to change, 1 to destroy`, or `-` before a plan.
pub fn changes(run: &Value) -> String {
    let summary = &run["summary"];
    if summary.is_null() {
        return "-".to_owned();
    }
    format!(
        "{} to add, {} to change, {} to destroy",
        summary["add"], summary["change"], summary["destroy"]
    )
}

const RUN_FIELDS: [Column; 11] = [
    ID,
    Column::Field("stack", "/stack"),
    Column::Field("kind", "/kind"),
    Column::Field("state", "/state"),
    Column::Field("reason", "/reason"),
    Column::Field("commit", "/commit_sha"),
    Column::Field("branch", "/branch"),
    Column::Field("merge request", "/merge_request_iid"),
    Column::Field("trigger", "/trigger"),
    Column::With("changes", changes),
    Column::Field("updated", "/updated_at"),
];

fn print_run(client: &Client, run: &Value) {
    print_one(client.json, run, &RUN_FIELDS);
    if client.json {
        return;
    }
    let transitions = run["transitions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if !transitions.is_empty() {
        println!();
        print!(
            "{}",
            super::output::table(
                &[
                    Column::Field("at", "/at"),
                    Column::Field("state", "/state"),
                    Column::Field("cause", "/cause"),
                ],
                transitions,
            )
        );
    }
}

pub async fn run(client: &Client, command: RunCommand) -> Outcome {
    match command {
        RunCommand::List {
            stack,
            state,
            kind,
            page,
        } => {
            let mut pairs = page.pairs().to_vec();
            pairs.push(("state", state));
            pairs.push(("kind", kind));
            let answer = client
                .get(&query(&format!("{STACKS}/{stack}/runs"), &pairs))
                .await?;
            print_list(client.json, &answer, &RUN_COLUMNS);
        }
        RunCommand::Show { id } => {
            let answer = client.get(&format!("{RUNS}/{id}")).await?;
            print_run(client, &answer);
        }
        RunCommand::Confirm { id } => act(client, &id, "confirm").await?,
        RunCommand::Discard { id } => act(client, &id, "discard").await?,
        RunCommand::Cancel { id } => act(client, &id, "cancel").await?,
        RunCommand::Logs { id, follow: false } => {
            print!("{}", client.log(&id).await?);
        }
        RunCommand::Logs { id, follow: true } => follow(client, &id).await?,
    }
    Ok(())
}

async fn act(client: &Client, id: &str, action: &str) -> Outcome {
    let answer = client
        .call(Method::POST, &format!("{RUNS}/{id}/{action}"), None)
        .await?;
    print_run(client, &answer);
    Ok(())
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq, Eq)]
struct Event {
    name: String,
    id: Option<String>,
    data: String,
}

/// Takes the complete events off the front of `buffer` (events end with a
/// blank line; comments, such as keep-alives, are skipped).
fn take_events(buffer: &mut Vec<u8>) -> Vec<Event> {
    let mut events = Vec::new();
    // Whole events only, so that a character split across two reads is
    // decoded once both halves are in.
    while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
        let block: Vec<u8> = buffer.drain(..end + 2).collect();
        let block = String::from_utf8_lossy(&block);
        let mut event = Event::default();
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event.name = value.to_owned(),
                "id" => event.id = Some(value.to_owned()),
                "data" => data.push(value),
                _ => {}
            }
        }
        if data.is_empty() && event.name.is_empty() {
            continue;
        }
        event.data = data.join("\n");
        events.push(event);
    }
    events
}

/// Streams the log until the `end` event; reconnects after the last chunk
/// seen when the stream breaks (a server restarting), for up to a minute.
async fn follow(client: &Client, id: &str) -> Outcome {
    let path = format!("{RUNS}/{id}/logs?follow=true");
    let mut last_id: Option<String> = None;
    let mut failures = 0;
    loop {
        let mut request = client.request(Method::GET, &path);
        if let Some(last) = &last_id {
            request = request.header("Last-Event-ID", last);
        }
        let broken = match client.send(request).await {
            Ok(response) => {
                let mut stream = response.bytes_stream();
                let mut buffer = Vec::new();
                let mut broken = None;
                while let Some(bytes) = stream.next().await {
                    let bytes = match bytes {
                        Ok(bytes) => bytes,
                        Err(error) => {
                            broken = Some(client.unreachable(&error));
                            break;
                        }
                    };
                    failures = 0;
                    buffer.extend_from_slice(&bytes);
                    for event in take_events(&mut buffer) {
                        match event.name.as_str() {
                            "log" => {
                                print!("{}", event.data);
                                let _ = std::io::stdout().flush();
                                last_id = event.id.or(last_id);
                            }
                            "end" => return ended(id, &event.data),
                            "error" => return Err(Failure::new(exit::FAILED, event.data)),
                            _ => {}
                        }
                    }
                }
                broken.unwrap_or_else(|| {
                    Failure::new(exit::UNREACHABLE, "the log stream ended before the run did")
                })
            }
            // Only a server that cannot be reached is worth waiting for.
            Err(failure) if failure.code == exit::UNREACHABLE => failure,
            Err(failure) => return Err(failure),
        };
        failures += 1;
        if failures > 60 {
            return Err(broken);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn ended(id: &str, data: &str) -> Outcome {
    let end: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let state = end["state"].as_str().unwrap_or("unknown");
    let reason = end["reason"]
        .as_str()
        .map_or_else(String::new, |r| format!(": {r}"));
    if state == "finished" {
        eprintln!("run {id} finished");
        Ok(())
    } else {
        Err(Failure::new(
            exit::FAILED,
            format!("run {id} ended {state}{reason}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_taken_whole_and_keep_alives_skipped() {
        let mut buffer =
            b"event: log\nid: 3\ndata: a\ndata: b\ndata: \n\n:\n\nevent: end\ndata: {\"st".to_vec();
        assert_eq!(
            take_events(&mut buffer),
            [Event {
                name: "log".into(),
                id: Some("3".into()),
                data: "a\nb\n".into()
            }]
        );
        buffer.extend_from_slice(b"ate\":\"finished\"}\n\n");
        let events = take_events(&mut buffer);
        assert_eq!(events[0].name, "end");
        assert!(ended("r", &events[0].data).is_ok());
        assert!(buffer.is_empty());
        let failed = ended("r", r#"{"state":"failed","reason":"worker lost"}"#).expect_err("fails");
        assert_eq!(
            (failed.code, failed.message.as_str()),
            (exit::FAILED, "run r ended failed: worker lost")
        );
    }
}
