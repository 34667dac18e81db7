//! `gantry module …`: modules of the registry and their versions.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::output::{CREATED, Column, ID, NAME, SPACE, pick, print_list, print_one};
use super::{Client, Outcome, Page, insert_some, query};

const MODULES: &str = "/api/v1/modules";

#[derive(Subcommand)]
pub enum ModuleCommand {
    /// Create a module: a directory of a GitLab project whose semver tags
    /// become versions.
    Create {
        name: String,
        /// Default: root.
        #[arg(long)]
        space: Option<String>,
        /// Default: the default integration.
        #[arg(long)]
        integration: Option<String>,
        /// The GitLab project path, such as infra/modules.
        #[arg(long)]
        repository: String,
        /// The module's directory in the repository.
        #[arg(long, default_value = "")]
        project_root: String,
        /// The provider of the registry address, such as aws.
        #[arg(long)]
        provider: String,
        /// Repeat for several labels.
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List the modules you can read.
    List {
        #[command(flatten)]
        page: Page,
    },
    Show {
        id: String,
    },
    /// Change a module's directory, provider, labels or description.
    Update {
        id: String,
        #[arg(long)]
        project_root: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        /// Replaces the labels; repeat for several.
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    Delete {
        id: String,
    },
    /// The module's versions, newest first, yanked ones included.
    Versions {
        id: String,
    },
}

const MODULE_FIELDS: [Column; 9] = [
    ID,
    NAME,
    SPACE,
    Column::Field("repository", "/repository"),
    Column::Field("directory", "/project_root"),
    Column::Field("provider", "/provider"),
    Column::Field("registry address", "/registry_address"),
    Column::Field("labels", "/labels"),
    CREATED,
];

const VERSION_COLUMNS: [Column; 4] = [
    Column::Field("version", "/version"),
    Column::Field("state", "/state"),
    Column::Field("commit", "/commit_sha"),
    Column::Field("published", "/published_at"),
];

pub async fn module(client: &Client, command: ModuleCommand) -> Outcome {
    let answer = match command {
        ModuleCommand::Create {
            name,
            space,
            integration,
            repository,
            project_root,
            provider,
            labels,
            description,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("repository".into(), json!(repository));
            body.insert("project_root".into(), json!(project_root));
            body.insert("provider".into(), json!(provider));
            body.insert("labels".into(), json!(labels));
            insert_some(&mut body, "space", space);
            insert_some(&mut body, "integration", integration);
            insert_some(&mut body, "description", description);
            client.post(MODULES, Value::Object(body)).await?
        }
        ModuleCommand::List { page } => {
            let answer = client.get(&query(MODULES, &page.pairs())).await?;
            print_list(
                client.json,
                &answer,
                &pick(
                    &MODULE_FIELDS,
                    &["id", "name", "space", "repository", "provider"],
                ),
            );
            return Ok(());
        }
        ModuleCommand::Show { id } => client.get(&format!("{MODULES}/{id}")).await?,
        ModuleCommand::Update {
            id,
            project_root,
            provider,
            labels,
            description,
        } => {
            let mut body = Map::new();
            insert_some(&mut body, "project_root", project_root);
            insert_some(&mut body, "provider", provider);
            insert_some(&mut body, "description", description);
            if !labels.is_empty() {
                body.insert("labels".into(), json!(labels));
            }
            client
                .call(
                    Method::PATCH,
                    &format!("{MODULES}/{id}"),
                    Some(Value::Object(body)),
                )
                .await?
        }
        ModuleCommand::Delete { id } => {
            client
                .call(Method::DELETE, &format!("{MODULES}/{id}"), None)
                .await?
        }
        ModuleCommand::Versions { id } => {
            let answer = client.get(&format!("{MODULES}/{id}/versions")).await?;
            print_list(client.json, &answer, &VERSION_COLUMNS);
            return Ok(());
        }
    };
    print_one(client.json, &answer, &MODULE_FIELDS);
    Ok(())
}
