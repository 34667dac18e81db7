use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How a server runs; the `gantry serve` flags.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; `None` is SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// The URL users reach this server at, for links and webhook endpoints.
    pub public_url: String,
    /// The size of the embedded worker pool that executes runs; 0 for none.
    pub embedded_workers: u32,
    /// How long a claimed job or run stays leased without a heartbeat.
    pub lease: Duration,
    /// How long a rotated webhook secret stays valid beside the new one.
    pub webhook_secret_grace: Duration,
    /// The largest webhook body accepted; GitLab sends up to 25 MiB.
    pub webhook_body_limit: usize,
    /// Bodies of processed deliveries are dropped after this long; their
    /// summary stays in the delivery log.
    pub delivery_retention: Duration,
    /// Timeouts, retries and host limits of calls to GitLab.
    pub gitlab: gantry_gitlab::ClientConfig,
    /// On shutdown, how long the embedded workers' runs may go on before
    /// they are stopped (a plan is handed back to the queue).
    pub worker_shutdown_grace: Duration,
    /// How the embedded workers isolate the phases they run.
    pub sandbox: gantry_runner::sandbox::Mode,
    /// How long a run whose preparation meets an unavailable GitLab is
    /// tried again (with backoff) before it fails.
    pub prepare_patience: Duration,
    /// Logs of runs that ended longer ago than this are deleted.
    pub run_log_retention: Duration,
    /// `file://<dir>` or `s3://<bucket>/<prefix>`; `None` is
    /// `<data-dir>/blobs`.
    pub blob_store: Option<String>,
}

/// The default grace period of a rotated webhook secret: a day to update
/// the hooks in GitLab.
pub const DEFAULT_WEBHOOK_SECRET_GRACE: Duration = Duration::from_secs(24 * 3600);

impl ServerConfig {
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("gantry.db").display()
            )
        })
    }
}

/// GitLab's own limit on webhook payloads.
pub const DEFAULT_WEBHOOK_BODY_LIMIT: usize = 25 * 1024 * 1024;

/// How long a worker's run may go on after a shutdown signal.
pub const DEFAULT_WORKER_SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// The largest planned workspace (tar + zstd) the server stores.
pub const MAX_WORKSPACE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// How long delivery bodies are kept after processing.
pub const DEFAULT_DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long preparing a run is retried while GitLab is unavailable.
pub const DEFAULT_PREPARE_PATIENCE: Duration = Duration::from_secs(600);

/// How long the logs of ended runs are kept.
pub const DEFAULT_RUN_LOG_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
