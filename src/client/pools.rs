//! `gantry vcs-agent-pool …`: the pools of VCS agents that reach a GitLab
//! in a private network.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::output::{CREATED, Column, ID, NAME, SPACE, pick, print_list, print_one};
use super::{Client, Outcome, Page, insert_some, query};

const POOLS: &str = "/api/v1/vcs-agent-pools";

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Create a pool; its token is shown once.
    Create {
        name: String,
        /// Default: root.
        #[arg(long)]
        space: Option<String>,
    },
    /// List the pools you can read, with their connected agents.
    List {
        #[command(flatten)]
        page: Page,
    },
    Show {
        id: String,
    },
    /// Delete a pool: its token stops working and its agents are disconnected.
    Delete {
        id: String,
    },
}

fn agents(pool: &Value) -> String {
    let names: Vec<String> = pool["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|agent| {
            format!(
                "{} {} (since {})",
                agent["name"].as_str().unwrap_or("?"),
                agent["version"].as_str().unwrap_or("?"),
                agent["connected_at"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if names.is_empty() {
        "none connected".to_owned()
    } else {
        names.join(", ")
    }
}

const POOL_FIELDS: [Column; 7] = [
    ID,
    NAME,
    SPACE,
    Column::Field("user-facing host", "/user_facing_host_url"),
    Column::With("agents", agents),
    Column::Field("token", "/token"),
    CREATED,
];

pub async fn pool(client: &Client, command: PoolCommand) -> Outcome {
    let answer = match command {
        PoolCommand::Create { name, space } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            insert_some(&mut body, "space", space);
            client.post(POOLS, Value::Object(body)).await?
        }
        PoolCommand::List { page } => {
            let answer = client.get(&query(POOLS, &page.pairs())).await?;
            print_list(
                client.json,
                &answer,
                &pick(&POOL_FIELDS, &["id", "name", "space", "agents"]),
            );
            return Ok(());
        }
        PoolCommand::Show { id } => client.get(&format!("{POOLS}/{id}")).await?,
        PoolCommand::Delete { id } => {
            client
                .call(Method::DELETE, &format!("{POOLS}/{id}"), None)
                .await?
        }
    };
    print_one(client.json, &answer, &POOL_FIELDS);
    Ok(())
}
