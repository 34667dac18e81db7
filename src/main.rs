//! `gantry`: the server and its command line in one binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod client;
mod demo;
mod vcs_agent;
mod worker;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use gantry_server::{MASTER_KEY_ENV, ServerConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "gantry",
    version,
    about = "Self-hosted orchestrator for infrastructure pipelines driven by GitLab"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "GANTRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, the GitLab webhooks and an embedded worker pool.
    Serve(ServeArgs),
    /// Execute runs for a server, on this machine (an API key with the
    /// `worker` role on `root`).
    Worker(worker::WorkerArgs),
    /// Forward GitLab traffic for a VCS agent pool: run inside the network
    /// where GitLab is; dials out to the servers.
    VcsAgent(vcs_agent::VcsAgentArgs),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Try Gantry offline: a server and a simulated GitLab with a sample
    /// repository, a push and a merge request, and what follows.
    Demo(demo::DemoArgs),
    /// Show the API key in use and its roles.
    Me {
        #[command(flatten)]
        options: client::Options,
    },
    /// Manage spaces.
    Space {
        #[command(flatten)]
        options: client::Options,
        #[command(subcommand)]
        command: client::SpaceCommand,
    },
    /// Manage API keys.
    ApiKey {
        #[command(flatten)]
        options: client::Options,
        #[command(subcommand)]
        command: client::ApiKeyCommand,
    },
    /// Read the audit log.
    Audit {
        #[command(flatten)]
        options: client::Options,
        #[command(subcommand)]
        command: client::AuditCommand,
    },
    /// Manage GitLab integrations and their webhook deliveries.
    Integration {
        #[command(flatten)]
        options: client::Options,
        #[command(subcommand)]
        command: client::IntegrationCommand,
    },
    /// Manage stacks and trigger their runs.
    Stack {
        #[command(flatten)]
        options: client::Options,
        #[command(subcommand)]
        command: Box<client::StackCommand>,
    },
    /// Manage modules of the registry and list their versions.
    Module {
        #[command(flatten)]
        options: client::Options,
        #[command(subcommand)]
        command: client::ModuleCommand,
    },
    /// Manage pools of VCS agents (GitLab in a private network).
    VcsAgentPool {
        #[command(flatten)]
        options: client::Options,
        #[command(subcommand)]
        command: client::PoolCommand,
    },
    /// Show, confirm, discard and cancel runs, and read their logs.
    Run {
        #[command(flatten)]
        options: client::Options,
        #[command(subcommand)]
        command: client::RunCommand,
    },
    /// Print a shell completion script, such as
    /// `gantry completions bash > /etc/bash_completion.d/gantry`.
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args)]
struct DatabaseArgs {
    /// Where Gantry keeps its SQLite database, master key and first admin key.
    #[arg(long, env = "GANTRY_DATA_DIR", default_value = "./gantry-data")]
    data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`; default: SQLite in the data directory.
    #[arg(long, env = "GANTRY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Address to listen on.
    #[arg(long, env = "GANTRY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The URL users and GitLab reach this server at; default: http://<listen>.
    #[arg(long, env = "GANTRY_PUBLIC_URL")]
    public_url: Option<String>,
    /// Size of the embedded worker pool; 0 leaves runs to external workers.
    #[arg(long, env = "GANTRY_EMBEDDED_WORKERS", default_value_t = 2)]
    embedded_workers: u32,
    /// Seconds a worker's lease on a job or run lasts without a heartbeat.
    #[arg(long, env = "GANTRY_LEASE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    lease_seconds: u64,
    /// Seconds a rotated webhook secret keeps working beside the new one.
    #[arg(
        long,
        env = "GANTRY_WEBHOOK_SECRET_GRACE_SECONDS",
        default_value_t = 86_400
    )]
    webhook_secret_grace_seconds: u64,
    /// The largest webhook body accepted, in bytes (GitLab sends up to 25 MiB).
    #[arg(long, env = "GANTRY_WEBHOOK_BODY_LIMIT", default_value_t = gantry_server::DEFAULT_WEBHOOK_BODY_LIMIT)]
    webhook_body_limit: usize,
    /// Days to keep the bodies of processed deliveries (their summary stays).
    #[arg(long, env = "GANTRY_DELIVERY_RETENTION_DAYS", default_value_t = 7)]
    delivery_retention_days: u64,
    /// On SIGTERM, seconds the embedded workers' runs may go on before they
    /// are stopped (a plan goes back to the queue, an apply fails).
    #[arg(
        long,
        env = "GANTRY_WORKER_SHUTDOWN_GRACE_SECONDS",
        default_value_t = 60
    )]
    worker_shutdown_grace_seconds: u64,
    /// Seconds a run whose preparation meets an unavailable GitLab (the
    /// project lookup, the source fetch) is tried again before it fails.
    #[arg(long, env = "GANTRY_PREPARE_RETRY_SECONDS", default_value_t = 600)]
    prepare_retry_seconds: u64,
    /// Days to keep the logs of ended runs (the runs themselves stay).
    #[arg(long, env = "GANTRY_RUN_LOG_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..))]
    run_log_retention_days: u64,
    /// Where planned workspaces and sources are kept: `file://<dir>` or
    /// `s3://<bucket>/<prefix>` (endpoint, region and credentials from the
    /// `AWS_*` variables); default: `<data-dir>/blobs`.
    #[arg(long, env = "GANTRY_BLOB_STORE")]
    blob_store: Option<String>,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// How phases are isolated.
#[derive(clap::Args)]
pub(crate) struct SandboxArgs {
    /// `bwrap` runs every phase in a bubblewrap sandbox that sees only its
    /// workspace and a read-only system; `none` runs repository code as
    /// this process's user, seeing everything it can (warned at start).
    #[arg(long = "sandbox", env = "GANTRY_SANDBOX", value_enum, default_value_t = SandboxChoice::Bwrap)]
    pub choice: SandboxChoice,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum SandboxChoice {
    Bwrap,
    None,
}

impl SandboxArgs {
    pub fn mode(&self) -> gantry_runner::sandbox::Mode {
        match self.choice {
            SandboxChoice::Bwrap => gantry_runner::sandbox::Mode::Bwrap,
            SandboxChoice::None => gantry_runner::sandbox::Mode::None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Client commands and the demo print for people; the server's own log
    // shows warnings only there, unless GANTRY_LOG says otherwise.
    let quiet = !matches!(
        cli.command,
        Command::Serve(_) | Command::Worker(_) | Command::VcsAgent(_) | Command::Migrate(_)
    );
    init_logging(
        cli.log_format,
        if quiet { "warn" } else { "info,sqlx=warn" },
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let code = err
                .downcast_ref::<client::Failure>()
                .map_or(client::exit::FAILED, |failure| failure.code);
            ExitCode::from(code)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::VcsAgent(args) => vcs_agent::run(args).await,
        Command::Migrate(args) => {
            gantry_server::open_database(&server_config_for(&args)).await?;
            println!("The database is up to date.");
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Me { options } => Ok(client::me(&client::Client::new(&options)?).await?),
        Command::Space { options, command } => {
            Ok(client::space(&client::Client::new(&options)?, command).await?)
        }
        Command::ApiKey { options, command } => {
            Ok(client::api_key(&client::Client::new(&options)?, command).await?)
        }
        Command::Audit { options, command } => {
            Ok(client::audit(&client::Client::new(&options)?, command).await?)
        }
        Command::Integration { options, command } => {
            Ok(client::integration(&client::Client::new(&options)?, command).await?)
        }
        Command::Stack { options, command } => {
            Ok(client::stack(&client::Client::new(&options)?, *command).await?)
        }
        Command::Module { options, command } => {
            Ok(client::module(&client::Client::new(&options)?, command).await?)
        }
        Command::VcsAgentPool { options, command } => {
            Ok(client::pool(&client::Client::new(&options)?, command).await?)
        }
        Command::Run { options, command } => {
            Ok(client::run(&client::Client::new(&options)?, command).await?)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "gantry", &mut std::io::stdout());
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig {
        listen: args.listen,
        public_url: args
            .public_url
            .unwrap_or_else(|| format!("http://{}", args.listen))
            .trim_end_matches('/')
            .to_owned(),
        embedded_workers: args.embedded_workers,
        lease: Duration::from_secs(args.lease_seconds),
        webhook_secret_grace: Duration::from_secs(args.webhook_secret_grace_seconds),
        webhook_body_limit: args.webhook_body_limit,
        delivery_retention: Duration::from_secs(args.delivery_retention_days * 24 * 3600),
        worker_shutdown_grace: Duration::from_secs(args.worker_shutdown_grace_seconds),
        sandbox: args.sandbox.mode(),
        prepare_patience: Duration::from_secs(args.prepare_retry_seconds),
        run_log_retention: Duration::from_secs(args.run_log_retention_days * 24 * 3600),
        blob_store: args.blob_store,
        ..server_config_for(&args.database)
    };
    let master_key = std::env::var(MASTER_KEY_ENV).ok().map(Into::into);
    let server = gantry_server::start(config, master_key, shutdown_signal()).await?;
    server.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

fn server_config_for(args: &DatabaseArgs) -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        public_url: "http://127.0.0.1:8080".to_owned(),
        embedded_workers: 0,
        lease: Duration::from_secs(30),
        webhook_secret_grace: gantry_server::DEFAULT_WEBHOOK_SECRET_GRACE,
        webhook_body_limit: gantry_server::DEFAULT_WEBHOOK_BODY_LIMIT,
        delivery_retention: gantry_server::DEFAULT_DELIVERY_RETENTION,
        gitlab: gantry_gitlab::ClientConfig::default(),
        worker_shutdown_grace: gantry_server::DEFAULT_WORKER_SHUTDOWN_GRACE,
        sandbox: gantry_runner::sandbox::Mode::Bwrap,
        prepare_patience: gantry_server::DEFAULT_PREPARE_PATIENCE,
        run_log_retention: gantry_server::DEFAULT_RUN_LOG_RETENTION,
        blob_store: None,
    }
}

/// Resolves on SIGTERM or SIGINT; the server then finishes the requests in
/// flight and stops.
pub(crate) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_env("GANTRY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}
