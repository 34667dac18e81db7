use std::sync::Arc;

use gantry_store::Store;
use gantry_store::crypto::Keyring;

use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<ServerConfig>,
    pub metrics: Arc<Metrics>,
    /// Seals and opens secrets at rest (integration tokens, webhook
    /// secrets, secret variables).
    pub keyring: Arc<Keyring>,
    /// Wakes the embedded workers when runs may have become runnable.
    pub runs_signal: Arc<tokio::sync::Notify>,
    /// Wakes log followers when a run's log grew or its state changed.
    pub logs_signal: Arc<tokio::sync::Notify>,
    /// Turns `true` when the server begins to shut down.
    pub shutting_down: tokio::sync::watch::Receiver<bool>,
    /// Planned workspaces, kept for the apply of confirmed runs.
    pub blobs: Arc<dyn crate::blobs::Blobs>,
    /// Group commit of webhook deliveries.
    pub inbox: gantry_store::deliveries::Inbox,
    /// The integrations' webhook secrets, opened, for checking deliveries.
    pub webhook_secrets: Arc<crate::webhook_secrets::WebhookSecrets>,
    /// Note creations per integration in the last minute.
    pub note_throttle: Arc<crate::outbox::NoteThrottle>,
    /// Sources being fetched from GitLab, one fetch per commit at a time.
    pub fetching: Arc<crate::source::Fetching>,
    /// How to reach an integration's GitLab.
    pub gitlab: crate::gitlab::GitLabAccess,
    /// The VCS agents connected to this server.
    pub vcs_agents: Arc<crate::vcs_agents::Hub>,
}

impl AppState {
    /// What delivery processing (the job and replays) works with.
    pub fn processor(&self) -> crate::process::Processor {
        crate::process::Processor {
            store: self.store.clone(),
            gitlab: self.gitlab.clone(),
            runs_signal: self.runs_signal.clone(),
        }
    }
}
