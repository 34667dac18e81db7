//! `gantry vcs-agent`: runs inside the network where GitLab is, dials out
//! to the servers and forwards their GitLab traffic to `--target`.

use clap::Args;
use secrecy::SecretString;

use gantry_server::vcs_agents::agent::{AgentConfig, run as run_agent};

#[derive(Args)]
pub struct VcsAgentArgs {
    /// A server's URL; repeat (or separate with commas) for every server of
    /// the deployment: the agent keeps a connection to each.
    #[arg(
        long = "server",
        env = "GANTRY_URL",
        value_delimiter = ',',
        required = true
    )]
    servers: Vec<url::Url>,
    /// The pool's token, shown once when the pool was created.
    #[arg(long, env = "GANTRY_VCS_AGENT_TOKEN", hide_env_values = true)]
    pool_token: SecretString,
    /// GitLab's URL as seen from here, such as https://gitlab.internal.
    #[arg(long)]
    target: url::Url,
    /// This agent's name in the pool's list; default: host name and process id.
    #[arg(long, env = "GANTRY_VCS_AGENT_NAME")]
    name: Option<String>,
}

pub async fn run(args: VcsAgentArgs) -> anyhow::Result<()> {
    for url in args.servers.iter().chain([&args.target]) {
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("{url} is not an http:// or https:// URL");
        }
    }
    let name = args.name.unwrap_or_else(crate::worker::default_name);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        let _ = stop.send(true);
    });
    tracing::info!(agent = %name, target = %args.target, "VCS agent starting");
    run_agent(
        AgentConfig {
            servers: args.servers,
            token: args.pool_token,
            target: args.target,
            name,
        },
        stopping,
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
