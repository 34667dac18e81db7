//! Client commands: `gantry integration …` and `gantry stack …` against a server's API, with
//! `GANTRY_URL` and `GANTRY_TOKEN`. Secrets are read from a file or stdin,
//! never from the command line, so they stay out of shell history.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

#[derive(Args)]
pub struct Connection {
    /// The server's URL.
    #[arg(
        long = "server",
        env = "GANTRY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// An API key.
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
pub enum IntegrationCommand {
    /// Create an integration; the GitLab token is read from a file or stdin.
    Create {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        name: String,
        /// Default: root.
        #[arg(long)]
        space: Option<String>,
        /// Make it the default integration (lives in root).
        #[arg(long)]
        default: bool,
        /// Such as https://gitlab.com.
        #[arg(long)]
        api_host_url: String,
        #[arg(long)]
        user_facing_host_url: Option<String>,
        /// A file holding the GitLab token, or `-` for stdin.
        #[arg(long, value_name = "PATH")]
        api_token_file: PathBuf,
        /// Repeat for several labels.
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List the integrations you can see.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one integration (admins also see its webhook endpoint and secret).
    Show {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    /// Change an integration; the name cannot change.
    Update {
        #[command(flatten)]
        connection: Connection,
        id: String,
        #[arg(long)]
        space: Option<String>,
        #[arg(long)]
        default: Option<bool>,
        #[arg(long)]
        api_host_url: Option<String>,
        #[arg(long)]
        user_facing_host_url: Option<String>,
        /// A file holding a new GitLab token, or `-` for stdin.
        #[arg(long, value_name = "PATH")]
        api_token_file: Option<PathBuf>,
        /// Replaces the labels; repeat for several.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Remove every label.
        #[arg(long, conflicts_with = "labels")]
        clear_labels: bool,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete an integration.
    Delete {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// Delete even while stacks use it.
        #[arg(long)]
        force: bool,
    },
    /// Make a new webhook secret; the old one works for the grace period.
    RotateSecret {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// Default: the server's (a day).
        #[arg(long)]
        grace_seconds: Option<u64>,
    },
}

fn read_secret(path: &PathBuf) -> anyhow::Result<String> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the token from stdin")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
    }
    let token = text.trim().to_owned();
    if token.is_empty() {
        bail!("the token in {} is empty", path.display());
    }
    Ok(token)
}

const BASE: &str = "/api/v1/integrations/gitlab";
const STACKS: &str = "/api/v1/stacks";

#[derive(Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum StackCommand {
    /// Create a stack; secret environment values are read from a file or stdin.
    Create {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
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
        #[arg(long, default_value = "")]
        project_root: String,
        /// Repeat for several `**` globs.
        #[arg(long = "glob")]
        globs: Vec<String>,
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        autodeploy: bool,
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
    },
    /// List the stacks you can see.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one stack.
    Show {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    /// Change a stack: the fields to change as JSON, such as '{"branch": "main"}'.
    Update {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// The fields to change, as a JSON object.
        json: String,
    },
    /// Delete a stack.
    Delete {
        #[command(flatten)]
        connection: Connection,
        id: String,
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
    /// Shell: the plan command.
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
            vendor.insert("init".into(), json!(self.init.clone().unwrap_or_default()));
            vendor.insert("plan".into(), json!(self.plan.clone().unwrap_or_default()));
            vendor.insert(
                "apply".into(),
                json!(self.apply.clone().unwrap_or_default()),
            );
        } else {
            insert_some(&mut vendor, "binary", self.binary.clone());
        }
        Value::Object(vendor)
    }
}

fn pairs(items: &[String], what: &str) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for item in items {
        let Some((name, value)) = item.split_once('=') else {
            bail!("{what} {item:?} is not NAME=VALUE");
        };
        out.insert(name.trim().to_owned(), json!(value));
    }
    Ok(out)
}

fn list_path(base: &str, limit: Option<u32>, cursor: Option<String>) -> String {
    let mut query = Vec::new();
    if let Some(limit) = limit {
        query.push(format!("limit={limit}"));
    }
    if let Some(cursor) = cursor {
        query.push(format!("cursor={cursor}"));
    }
    if query.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", query.join("&"))
    }
}

pub async fn stack(command: StackCommand) -> anyhow::Result<()> {
    let (connection, method, path, body) = match command {
        StackCommand::Create {
            connection,
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
        } => {
            let secrets = match secret_env_file {
                Some(path) => {
                    let text = read_secret(&path)?;
                    let lines: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|line| !line.is_empty() && !line.starts_with('#'))
                        .map(str::to_owned)
                        .collect();
                    pairs(&lines, "secret environment line")?
                }
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
            insert_some(&mut body, "space", space);
            insert_some(&mut body, "integration", integration);
            (
                connection,
                reqwest::Method::POST,
                STACKS.to_owned(),
                Some(Value::Object(body)),
            )
        }
        StackCommand::List {
            connection,
            limit,
            cursor,
        } => (
            connection,
            reqwest::Method::GET,
            list_path(STACKS, limit, cursor),
            None,
        ),
        StackCommand::Show { connection, id } => (
            connection,
            reqwest::Method::GET,
            format!("{STACKS}/{id}"),
            None,
        ),
        StackCommand::Update {
            connection,
            id,
            json,
        } => {
            let body: Value =
                serde_json::from_str(&json).context("the change is not a JSON object")?;
            (
                connection,
                reqwest::Method::PATCH,
                format!("{STACKS}/{id}"),
                Some(body),
            )
        }
        StackCommand::Delete { connection, id } => (
            connection,
            reqwest::Method::DELETE,
            format!("{STACKS}/{id}"),
            None,
        ),
    };
    let answer = call(&connection, method, &path, body).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

pub async fn integration(command: IntegrationCommand) -> anyhow::Result<()> {
    let (connection, method, path, body) = match command {
        IntegrationCommand::Create {
            connection,
            name,
            space,
            default,
            api_host_url,
            user_facing_host_url,
            api_token_file,
            labels,
            description,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("default".into(), json!(default));
            body.insert("api_host_url".into(), json!(api_host_url));
            body.insert("api_token".into(), json!(read_secret(&api_token_file)?));
            body.insert("labels".into(), json!(labels));
            insert_some(&mut body, "space", space);
            insert_some(&mut body, "user_facing_host_url", user_facing_host_url);
            insert_some(&mut body, "description", description);
            (
                connection,
                reqwest::Method::POST,
                BASE.to_owned(),
                Some(Value::Object(body)),
            )
        }
        IntegrationCommand::List {
            connection,
            limit,
            cursor,
        } => (
            connection,
            reqwest::Method::GET,
            list_path(BASE, limit, cursor),
            None,
        ),
        IntegrationCommand::Show { connection, id } => (
            connection,
            reqwest::Method::GET,
            format!("{BASE}/{id}"),
            None,
        ),
        IntegrationCommand::Update {
            connection,
            id,
            space,
            default,
            api_host_url,
            user_facing_host_url,
            api_token_file,
            labels,
            clear_labels,
            description,
        } => {
            let mut body = Map::new();
            insert_some(&mut body, "space", space);
            insert_some(&mut body, "default", default);
            insert_some(&mut body, "api_host_url", api_host_url);
            insert_some(&mut body, "user_facing_host_url", user_facing_host_url);
            insert_some(&mut body, "description", description);
            if let Some(path) = api_token_file {
                body.insert("api_token".into(), json!(read_secret(&path)?));
            }
            if clear_labels || !labels.is_empty() {
                body.insert("labels".into(), json!(labels));
            }
            let path = format!("{BASE}/{id}");
            (
                connection,
                reqwest::Method::PATCH,
                path,
                Some(Value::Object(body)),
            )
        }
        IntegrationCommand::Delete {
            connection,
            id,
            force,
        } => {
            let path = format!("{BASE}/{id}?force={force}");
            (connection, reqwest::Method::DELETE, path, None)
        }
        IntegrationCommand::RotateSecret {
            connection,
            id,
            grace_seconds,
        } => {
            let mut path = format!("{BASE}/{id}/webhook-secret/rotate");
            if let Some(seconds) = grace_seconds {
                path.push_str(&format!("?grace_seconds={seconds}"));
            }
            (connection, reqwest::Method::POST, path, None)
        }
    };
    let answer = call(&connection, method, &path, body).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

fn insert_some<T: Into<Value>>(body: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(value) = value {
        body.insert(key.to_owned(), value.into());
    }
}

/// Sends one request and returns the JSON answer, or an error carrying the
/// server's message.
async fn call(
    connection: &Connection,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let Some(token) = connection
        .token
        .as_deref()
        .filter(|token| !token.trim().is_empty())
    else {
        bail!("no API key: set GANTRY_TOKEN (or pass --token)");
    };
    let url = format!("{}{path}", connection.url.trim_end_matches('/'));
    let mut request = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the Gantry server at {}", connection.url))?;
    let status = response.status();
    let answer: Value = response
        .json()
        .await
        .with_context(|| format!("the server answered {status} with a body that is not JSON"))?;
    if !status.is_success() {
        let message = answer["error"]["message"].as_str().unwrap_or("no message");
        bail!("{status}: {message}");
    }
    Ok(answer)
}
