//! Starting and stopping a server.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gantry_store::crypto::Keyring;
use gantry_store::{Millis, Store, jobs};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use gantry_runner::sandbox::Sandbox;

use crate::blobs::SealedBlobs;
use crate::bootstrap::{first_start, load_master_key};
use crate::config::{MAX_WORKSPACE_BYTES, ServerConfig};
use crate::gitlab::GitLabAccess;
use crate::metrics::Metrics;
use crate::router::router;
use crate::state::AppState;

/// A server answering on `addr` until its shutdown signal fires.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub store: Store,
    state: AppState,
    owner: String,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Waits for the server to finish its graceful shutdown.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    /// The VCS agents connected to this server.
    pub fn vcs_agents(&self) -> Arc<crate::vcs_agents::Hub> {
        self.state.vcs_agents.clone()
    }

    /// Processes, in this task, every delivery job and GitLab write that
    /// is due, and waits for those that another task or server holds,
    /// until none is left (a write waiting for its retry time is not due).
    /// What tests call instead of sleeping until the background loops got
    /// to the work; the loops keep running meanwhile, and leases keep the
    /// two from doing anything twice.
    pub async fn run_pending_jobs(&self) -> Result<(), gantry_store::StoreError> {
        let processor = self.state.processor();
        let lease = self.state.config.lease;
        loop {
            let taken = crate::process::run_due(&processor, &self.owner, lease).await?
                + crate::upkeep::run_due(&self.state, &self.owner).await?
                + crate::outbox::pass(&self.state, &self.owner).await?;
            if taken > 0 {
                continue;
            }
            let left = crate::process::outstanding(&processor).await?
                + crate::upkeep::outstanding(&self.state).await?
                + crate::outbox::outstanding(&self.state).await?;
            if left == 0 {
                return Ok(());
            }
            // Held by the background loops: they finish soon.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What the canary seals: every server of a deployment must open it.
const CANARY_TEXT: &str = "gantry master key canary";

/// Refuses to start with a master key other than the deployment's: the
/// first server seals a known value into the database, every later one
/// must open it (else it would write secrets the others cannot read).
async fn check_master_key(store: &gantry_store::Store, keyring: &Keyring) -> anyhow::Result<()> {
    let context = "cluster:master_key_canary";
    let sealed = keyring.encrypt(context, &CANARY_TEXT.to_owned().into());
    let mut conn = store.conn().await?;
    let stored =
        gantry_store::cluster::setting_or_insert(&mut conn, gantry_store::cluster::CANARY, &sealed)
            .await?;
    match keyring.decrypt(context, &stored) {
        Ok(opened) if secrecy::ExposeSecret::expose_secret(&opened) == CANARY_TEXT => Ok(()),
        _ => anyhow::bail!(
            "the master key (GANTRY_MASTER_KEY or <data-dir>/master.key) is not the one this database's \
             secrets were sealed with: every server of a deployment needs the same master key; start with \
             the key the other servers use"
        ),
    }
}

/// Opens the data directory and database, applies migrations, loads the
/// master key, runs the first start if the database is empty, binds
/// `config.listen`, and serves until `shutdown` completes.
pub async fn start(
    config: ServerConfig,
    master_key_env: Option<SecretString>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningServer> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
    let master_key = load_master_key(&config.data_dir, master_key_env)?;
    let store = open_database(&config).await?;
    if let Some(path) = first_start(&store, &config.data_dir).await? {
        tracing::info!(path = %path.display(), "first start: created space root and an admin API key; the key is in this file");
        println!(
            "First start: the admin API key is in {} (readable only by you).",
            path.display()
        );
    }
    // Only a server that runs phases needs the sandbox; a missing one stops
    // the start, before anything listens.
    let sandbox = if config.embedded_workers > 0 {
        Sandbox::open(config.sandbox).await?
    } else {
        Sandbox::None
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let gitlab_metrics = gantry_gitlab::ClientMetrics::default();
    let gitlab = gantry_gitlab::Http::new(config.gitlab.clone(), gitlab_metrics.clone())?;
    let config_data_dir = config.data_dir.clone();
    let keyring = Arc::new(Keyring::new(master_key));
    check_master_key(&store, &keyring).await?;
    let blobs = crate::blobs::open_store(
        config.blob_store.as_deref(),
        &config_data_dir,
        MAX_WORKSPACE_BYTES,
    )
    .map_err(anyhow::Error::msg)?;
    let (stopping, shutting_down) = tokio::sync::watch::channel(false);
    let vcs_agents = Arc::new(crate::vcs_agents::Hub::default());
    let state = AppState {
        shutting_down,
        store: store.clone(),
        config: Arc::new(config),
        metrics: Arc::new(Metrics::new(&gitlab_metrics)),
        keyring: keyring.clone(),
        inbox: gantry_store::deliveries::Inbox::spawn(store.clone()),
        webhook_secrets: Default::default(),
        runs_signal: Arc::new(tokio::sync::Notify::new()),
        logs_signal: Arc::new(tokio::sync::Notify::new()),
        blobs: Arc::new(SealedBlobs::new(blobs, keyring.clone())),
        gitlab: GitLabAccess::new(keyring, gitlab, vcs_agents.clone()),
        vcs_agents,
        note_throttle: Arc::new(crate::outbox::NoteThrottle::new(store.clone())),
        fetching: Arc::default(),
    };
    let reaper = tokio::spawn(reap_lapsed_leases(store.clone(), state.config.lease));
    let owner = format!("server-{}", uuid::Uuid::new_v4());
    let server_owner = format!("{owner}-jobs");
    let processor = state.processor();
    // The embedded workers stop claiming as soon as the shutdown begins.
    let workers = crate::worker::spawn_pool(
        &state,
        &owner,
        state.config.embedded_workers,
        sandbox,
        state.shutting_down.clone(),
    );
    let worker_grace = state.config.worker_shutdown_grace;
    let sweeper = tokio::spawn(sweep_workspaces(state.clone()));
    let reporter = tokio::spawn(crate::outbox::work(
        state.clone(),
        owner.clone(),
        state.shutting_down.clone(),
    ));
    let reporter_state = state.clone();
    let reporter_owner = owner.clone();
    let upkeep = tokio::spawn(crate::upkeep::work(state.clone(), owner.clone()));
    let scheduler = tokio::spawn(crate::upkeep::scheduler(state.clone()));
    let processing = tokio::spawn(crate::process::work(processor, owner, state.config.lease));
    let pruner = tokio::spawn(crate::process::prune(
        store.clone(),
        gantry_store::housekeeping::Retention {
            deliveries: state.config.delivery_retention,
            run_logs: state.config.run_log_retention,
        },
    ));
    let server_state = state.clone();
    let app = router(state);
    tracing::info!(listen = %addr, "serving");
    let mut workers = workers;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Long-lived answers (log streams, claims) end now, so the
                // graceful shutdown does not wait for them, and the
                // embedded workers stop claiming.
                let _ = stopping.send(true);
            })
            .await;
        // The workers' runs get the grace period to end or be handed
        // back, then whatever is left is stopped.
        let all = futures_util::future::join_all(workers.iter_mut());
        if tokio::time::timeout(worker_grace + Duration::from_secs(15), all)
            .await
            .is_err()
        {
            tracing::warn!("embedded workers did not stop in time");
        }
        for worker in &workers {
            worker.abort();
        }
        reaper.abort();
        processing.abort();
        upkeep.abort();
        scheduler.abort();
        pruner.abort();
        sweeper.abort();
        // The reporter finishes the writes it is sending (GitLab calls have
        // their own timeout); what it still holds after that is released.
        let mut reporter = reporter;
        if tokio::time::timeout(Duration::from_secs(10), &mut reporter)
            .await
            .is_err()
        {
            reporter.abort();
        }
        crate::outbox::release(&reporter_state, &reporter_owner).await;
        served.context("the HTTP server failed")
    });
    Ok(RunningServer {
        addr,
        store,
        state: server_state,
        owner: server_owner,
        task,
    })
}

/// Deletes the stored workspaces of ended runs, every minute.
async fn sweep_workspaces(state: AppState) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        match crate::worker::sweep_workspaces(&state).await {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "deleted the workspaces of ended runs"),
            Err(error) => tracing::warn!(%error, "sweeping workspaces failed; trying again"),
        }
    }
}

/// Connects to the configured database and applies missing migrations.
pub async fn open_database(config: &ServerConfig) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url())
        .await
        .context("cannot open the database")?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    Ok(store)
}

/// Puts jobs whose worker stopped heartbeating back in the queue, checking
/// a few times per lease.
async fn reap_lapsed_leases(store: Store, lease: Duration) {
    let mut every = tokio::time::interval((lease / 3).max(Duration::from_secs(1)));
    loop {
        every.tick().await;
        if let Err(err) = jobs::reap(&store, Millis::now()).await {
            tracing::warn!(error = %err, "reaping lapsed job leases failed; trying again");
        }
        match gantry_store::runs::reap_lost(&store, Millis::now()).await {
            Ok(lost) if !lost.is_empty() => {
                tracing::warn!(runs = ?lost, "failed runs whose worker was lost")
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "reaping runs of lost workers failed; trying again")
            }
        }
    }
}
