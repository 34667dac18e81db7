//! `gantry me`, `space`, `api-key`, `audit` and `integration`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::output::{CREATED, Column, ID, NAME, SPACE, pick, print_list, print_one};
use super::{Client, Failure, Outcome, Page, exit, insert_some, query, read_secret};

const SPACES: &str = "/api/v1/spaces";
const API_KEYS: &str = "/api/v1/api-keys";
const INTEGRATIONS: &str = "/api/v1/integrations/gitlab";

pub async fn me(client: &Client) -> Outcome {
    let answer = client.get("/api/v1/me").await?;
    print_one(
        client.json,
        &answer,
        &[ID, NAME, Column::Field("roles", "/roles")],
    );
    Ok(())
}

#[derive(Subcommand)]
pub enum SpaceCommand {
    /// Create a space (needs `admin` on its parent).
    Create {
        name: String,
        /// Default: the slug of the name.
        #[arg(long)]
        id: Option<String>,
        /// Default: root.
        #[arg(long)]
        parent: Option<String>,
    },
    /// List the spaces you can see.
    List {
        #[command(flatten)]
        page: Page,
    },
}

const SPACE_COLUMNS: [Column; 4] = [ID, NAME, Column::Field("parent", "/parent"), CREATED];

pub async fn space(client: &Client, command: SpaceCommand) -> Outcome {
    match command {
        SpaceCommand::Create { name, id, parent } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            insert_some(&mut body, "id", id);
            insert_some(&mut body, "parent", parent);
            let answer = client.post(SPACES, Value::Object(body)).await?;
            print_one(client.json, &answer, &SPACE_COLUMNS);
        }
        SpaceCommand::List { page } => {
            let answer = client.get(&query(SPACES, &page.pairs())).await?;
            print_list(client.json, &answer, &SPACE_COLUMNS);
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key; its secret is shown once.
    Create {
        name: String,
        /// SPACE:ROLE (read, write, admin, or worker on root); repeat for several.
        #[arg(long = "role", value_name = "SPACE:ROLE", required = true)]
        roles: Vec<String>,
    },
    /// List the API keys.
    List {
        #[command(flatten)]
        page: Page,
    },
    /// Revoke an API key; it stops working at once.
    Revoke { id: String },
}

const API_KEY_COLUMNS: [Column; 6] = [
    ID,
    NAME,
    Column::Field("roles", "/roles"),
    Column::Field("created by", "/created_by"),
    CREATED,
    Column::Field("revoked", "/revoked_at"),
];

pub async fn api_key(client: &Client, command: ApiKeyCommand) -> Outcome {
    match command {
        ApiKeyCommand::Create { name, roles } => {
            let mut grants = Vec::new();
            for role in &roles {
                let Some((space, role)) = role.split_once(':') else {
                    return Err(Failure::new(
                        exit::REFUSED,
                        format!("--role {role:?} is not SPACE:ROLE, such as root:read"),
                    ));
                };
                grants.push(json!({ "space": space, "role": role }));
            }
            let answer = client
                .post(API_KEYS, json!({ "name": name, "roles": grants }))
                .await?;
            print_one(
                client.json,
                &answer,
                &[
                    ID,
                    NAME,
                    Column::Field("roles", "/roles"),
                    Column::Field("secret", "/secret"),
                ],
            );
            if !client.json {
                eprintln!("The secret is shown only now: keep it somewhere safe.");
            }
        }
        ApiKeyCommand::List { page } => {
            let answer = client.get(&query(API_KEYS, &page.pairs())).await?;
            print_list(client.json, &answer, &API_KEY_COLUMNS);
        }
        ApiKeyCommand::Revoke { id } => {
            let answer = client
                .call(Method::DELETE, &format!("{API_KEYS}/{id}"), None)
                .await?;
            print_one(client.json, &answer, &API_KEY_COLUMNS);
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// List the audit log, newest first.
    List {
        #[command(flatten)]
        page: Page,
    },
}

pub async fn audit(client: &Client, command: AuditCommand) -> Outcome {
    let AuditCommand::List { page } = command;
    let answer = client.get(&query("/api/v1/audit", &page.pairs())).await?;
    print_list(
        client.json,
        &answer,
        &[
            Column::Field("at", "/at"),
            Column::Field("actor", "/actor"),
            Column::Field("action", "/action"),
            Column::With("target", |e| {
                format!(
                    "{} {}",
                    e["target_kind"].as_str().unwrap_or(""),
                    e["target_id"].as_str().unwrap_or("")
                )
            }),
            SPACE,
        ],
    );
    Ok(())
}

#[derive(Subcommand)]
pub enum IntegrationCommand {
    /// Create an integration; the GitLab token is read from a file or stdin.
    Create {
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
        /// A file holding the GitLab token (`api` scope), or `-` for stdin.
        #[arg(long, value_name = "PATH")]
        api_token_file: PathBuf,
        /// Repeat for several labels.
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// Leave the project hooks to people (Gantry keeps them by default).
        #[arg(long)]
        no_manage_hooks: bool,
        /// Rotate the token when it expires within this many days.
        #[arg(long, value_name = "DAYS")]
        rotate_token_days_before_expiry: Option<u32>,
    },
    /// List the integrations you can see.
    List {
        #[command(flatten)]
        page: Page,
    },
    /// Show one integration (admins also see its webhook endpoint and secret).
    Show { id: String },
    /// Change an integration; the name cannot change.
    Update {
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
        /// Whether Gantry keeps the project hooks.
        #[arg(long)]
        manage_hooks: Option<bool>,
        /// Rotate the token when it expires within this many days; 0: never.
        #[arg(long, value_name = "DAYS")]
        rotate_token_days_before_expiry: Option<u32>,
    },
    /// Delete an integration.
    Delete {
        id: String,
        /// Delete even while stacks use it.
        #[arg(long)]
        force: bool,
    },
    /// Make a new webhook secret; the old one works for the grace period.
    RotateSecret {
        id: String,
        /// Default: the server's (a day).
        #[arg(long)]
        grace_seconds: Option<u64>,
    },
    /// The webhook deliveries GitLab made to the integration, newest first.
    Deliveries {
        id: String,
        /// accepted, duplicate, ignored or rejected.
        #[arg(long)]
        status: Option<String>,
        /// Such as "Push Hook".
        #[arg(long)]
        event: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Process a stored delivery again.
    Replay { id: String, delivery: String },
    /// The project hooks Gantry keeps for the integration, per project.
    Hooks {
        id: String,
        /// Check and repair every hook now (admins).
        #[arg(long)]
        sync: bool,
    },
}

const HOOK_COLUMNS: [Column; 5] = [
    Column::Field("project", "/path"),
    Column::Field("state", "/state"),
    Column::Field("hook", "/hook_id"),
    Column::Field("checked", "/checked_at"),
    Column::Field("error", "/error"),
];

const INTEGRATION_COLUMNS: [&str; 6] = ["id", "name", "space", "default", "api host", "health"];

const INTEGRATION_FIELDS: [Column; 19] = [
    ID,
    NAME,
    SPACE,
    Column::Field("default", "/default"),
    Column::Field("api host", "/api_host_url"),
    Column::Field("user-facing host", "/user_facing_host_url"),
    Column::Field("labels", "/labels"),
    Column::Field("description", "/description"),
    Column::Field("token user", "/token/user/username"),
    Column::Field("token scopes", "/token/scopes"),
    Column::Field("token expires", "/token/expires_at"),
    Column::Field("warnings", "/warnings"),
    Column::Field("health", "/health/status"),
    Column::Field("pending writes", "/health/pending_writes"),
    Column::Field("webhook endpoint", "/webhook_endpoint"),
    Column::Field("webhook secret", "/webhook_secret"),
    Column::Field("manage hooks", "/manage_hooks"),
    Column::Field("rotate token", "/rotate_token_days_before_expiry"),
    Column::Field("token checked", "/token/checked_at"),
];

const DELIVERY_COLUMNS: [Column; 5] = [
    ID,
    Column::Field("event", "/event"),
    Column::Field("status", "/status"),
    Column::Field("received", "/received_at"),
    Column::With("outcome", |d| {
        super::output::text(if d["error"].is_string() {
            &d["error"]
        } else {
            &d["outcome"]
        })
    }),
];

fn token(path: &Path) -> Result<Value, Failure> {
    Ok(json!(read_secret(path, "GitLab token")?.trim()))
}

pub async fn integration(client: &Client, command: IntegrationCommand) -> Outcome {
    let answer = match command {
        IntegrationCommand::Create {
            name,
            space,
            default,
            api_host_url,
            user_facing_host_url,
            api_token_file,
            labels,
            description,
            no_manage_hooks,
            rotate_token_days_before_expiry,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("manage_hooks".into(), json!(!no_manage_hooks));
            insert_some(
                &mut body,
                "rotate_token_days_before_expiry",
                rotate_token_days_before_expiry,
            );
            body.insert("default".into(), json!(default));
            body.insert("api_host_url".into(), json!(api_host_url));
            body.insert("api_token".into(), token(&api_token_file)?);
            body.insert("labels".into(), json!(labels));
            insert_some(&mut body, "space", space);
            insert_some(&mut body, "user_facing_host_url", user_facing_host_url);
            insert_some(&mut body, "description", description);
            client.post(INTEGRATIONS, Value::Object(body)).await?
        }
        IntegrationCommand::List { page } => {
            let answer = client.get(&query(INTEGRATIONS, &page.pairs())).await?;
            print_list(
                client.json,
                &answer,
                &pick(&INTEGRATION_FIELDS, &INTEGRATION_COLUMNS),
            );
            return Ok(());
        }
        IntegrationCommand::Show { id } => client.get(&format!("{INTEGRATIONS}/{id}")).await?,
        IntegrationCommand::Update {
            id,
            space,
            default,
            api_host_url,
            user_facing_host_url,
            api_token_file,
            labels,
            clear_labels,
            description,
            manage_hooks,
            rotate_token_days_before_expiry,
        } => {
            let mut body = Map::new();
            insert_some(&mut body, "manage_hooks", manage_hooks);
            insert_some(
                &mut body,
                "rotate_token_days_before_expiry",
                rotate_token_days_before_expiry,
            );
            insert_some(&mut body, "space", space);
            insert_some(&mut body, "default", default);
            insert_some(&mut body, "api_host_url", api_host_url);
            insert_some(&mut body, "user_facing_host_url", user_facing_host_url);
            insert_some(&mut body, "description", description);
            if let Some(path) = api_token_file {
                body.insert("api_token".into(), token(&path)?);
            }
            if clear_labels || !labels.is_empty() {
                body.insert("labels".into(), json!(labels));
            }
            let path = format!("{INTEGRATIONS}/{id}");
            client
                .call(Method::PATCH, &path, Some(Value::Object(body)))
                .await?
        }
        IntegrationCommand::Delete { id, force } => {
            let path = format!("{INTEGRATIONS}/{id}?force={force}");
            client.call(Method::DELETE, &path, None).await?
        }
        IntegrationCommand::RotateSecret { id, grace_seconds } => {
            let path = query(
                &format!("{INTEGRATIONS}/{id}/webhook-secret/rotate"),
                &[("grace_seconds", grace_seconds.map(|s| s.to_string()))],
            );
            client.call(Method::POST, &path, None).await?
        }
        IntegrationCommand::Deliveries {
            id,
            status,
            event,
            page,
        } => {
            let mut pairs = page.pairs().to_vec();
            pairs.push(("status", status));
            pairs.push(("event", event));
            let path = query(&format!("{INTEGRATIONS}/{id}/deliveries"), &pairs);
            let answer = client.get(&path).await?;
            print_list(client.json, &answer, &DELIVERY_COLUMNS);
            return Ok(());
        }
        IntegrationCommand::Replay { id, delivery } => {
            let path = format!("{INTEGRATIONS}/{id}/deliveries/{delivery}/replay");
            let answer = client.call(Method::POST, &path, None).await?;
            let mut columns = DELIVERY_COLUMNS.to_vec();
            columns.push(Column::Field("runs", "/runs"));
            print_one(client.json, &answer, &columns);
            return Ok(());
        }
        IntegrationCommand::Hooks { id, sync } => {
            let path = format!("{INTEGRATIONS}/{id}/hooks");
            let answer = if sync {
                client
                    .call(Method::POST, &format!("{path}/sync"), None)
                    .await?
            } else {
                client.get(&path).await?
            };
            print_list(client.json, &answer, &HOOK_COLUMNS);
            if sync && !client.json {
                println!(
                    "a check and repair of every hook is queued; run without --sync to see its outcome"
                );
            }
            return Ok(());
        }
    };
    print_one(client.json, &answer, &INTEGRATION_FIELDS);
    Ok(())
}
