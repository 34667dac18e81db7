//! Sources of runs: the server fetches a commit from GitLab once, with the
//! integration's token, checks it out (a shallow git working tree whose
//! `HEAD` is the commit; the token is in no file of it), archives it, and
//! keeps the archive in the blob store. Every stack and run at that commit
//! gets the same archive through the worker API, so workers never hold a
//! GitLab credential.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gantry_gitlab::{GitLabError, projects};
use gantry_runner::agent::pack;
use gantry_runner::checkout::{CheckoutError, Source, checkout};
use gantry_store::integrations::Integration;

use crate::blobs::ByteStream;
use crate::gitlab::AccessError;
use crate::state::AppState;
use crate::vcs_agents::git_proxy::GitProxy;

/// The blob key of a commit's source: one per integration, project and
/// commit.
pub fn key(integration_id: &str, project_id: i64, commit: &str) -> String {
    format!("source.{integration_id}.{project_id}.{commit}.tar.zst")
}

/// The commit a source key is for.
pub fn commit_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("source.")?
        .strip_suffix(".tar.zst")?
        .rsplit('.')
        .next()
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("GitLab: {0}")]
    GitLab(#[from] GitLabError),
    #[error("GitLab gave no HTTP clone URL for the project")]
    NoCloneUrl,
    #[error(
        "GitLab gave the clone URL {url}, which is not on the integration's host {host}; \
         the token is only sent to the host it was given for"
    )]
    OtherHost { url: String, host: String },
    #[error("fetching the commit failed: {0}")]
    Checkout(#[from] CheckoutError),
    #[error("storing the source failed: {0}")]
    Io(#[from] std::io::Error),
}

impl SourceError {
    /// Whether GitLab or the network failed and a later try may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Access(AccessError::Client { error, .. }) | Self::GitLab(error) => {
                error.is_transient()
            }
            Self::Checkout(error) => error.is_transient(),
            Self::Access(AccessError::Sealed(_))
            | Self::NoCloneUrl
            | Self::OtherHost { .. }
            | Self::Io(_) => false,
        }
    }
}

/// One fetch at a time per source in this process: the runs of a push
/// that fans out to many stacks wait for the first one's fetch.
#[derive(Default)]
pub struct Fetching {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fetching {
    fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    fn done(&self, key: &str) {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

/// Makes sure the source of `commit` is in the blob store, fetching it
/// from GitLab when it is not; its key.
pub async fn ensure(
    state: &AppState,
    integration: &Integration,
    project_id: i64,
    commit: &str,
) -> Result<String, SourceError> {
    let key = key(&integration.id, project_id, commit);
    let lock = state.fetching.lock(&key);
    let _held = lock.lock().await;
    if state.blobs.get(&key).await?.is_some() {
        return Ok(key);
    }
    let fetched = fetch(state, integration, project_id, commit, &key).await;
    state.fetching.done(&key);
    fetched.map(|()| key)
}

async fn fetch(
    state: &AppState,
    integration: &Integration,
    project_id: i64,
    commit: &str,
    key: &str,
) -> Result<(), SourceError> {
    let client = state.gitlab.client(integration)?;
    let project = projects::find(&client, &project_id.to_string()).await?;
    let clone_url = project.http_url_to_repo.ok_or(SourceError::NoCloneUrl)?;
    if !same_host(&clone_url, &integration.api_host_url) {
        return Err(SourceError::OtherHost {
            url: clone_url,
            host: integration.api_host_url.clone(),
        });
    }
    let token = state.gitlab.token(integration)?;
    let scratch = state.config.data_dir.join("tmp");
    std::fs::create_dir_all(&scratch)?;
    let dir = tempfile::Builder::new()
        .prefix("source-")
        .tempdir_in(&scratch)?;
    let tree = dir.path().join("tree");
    // Behind a private network git fetches through the pool, for as long
    // as this fetch takes.
    let proxy = match state.gitlab.tunnel(&integration.user_facing_host_url) {
        Some(tunnel) => Some(GitProxy::start(tunnel).await?),
        None => None,
    };
    let fetch_url = match &proxy {
        Some(proxy) => proxy.url(&relative_path(&clone_url, &integration.api_host_url)),
        None => clone_url.clone(),
    };
    let source = Source {
        clone_url: &fetch_url,
        token: &token,
        commit,
    };
    checkout(&source, &tree).await?;
    let archive = dir.path().join("source.tar.zst");
    pack(&tree, &archive).await?;
    let file = tokio::fs::File::open(&archive).await?;
    let body: ByteStream = Box::pin(tokio_util::io::ReaderStream::new(file));
    let size = state.blobs.put(key, body).await?;
    tracing::info!(
        integration.id = %integration.id,
        gitlab.project_id = project_id,
        commit,
        bytes = size,
        "fetched a commit's source from GitLab"
    );
    Ok(())
}

/// The path of `url` below `api_host_url` (GitLab may live under a path).
fn relative_path(url: &str, api_host_url: &str) -> String {
    let path = url::Url::parse(url)
        .map(|url| url.path().to_owned())
        .unwrap_or_default();
    let base = url::Url::parse(api_host_url)
        .map(|api| api.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    match path.strip_prefix(base.as_str()) {
        Some(rest) if rest.starts_with('/') => rest.to_owned(),
        _ => path,
    }
}

/// Whether `url` is on the host (scheme, host and port) of `api_host_url`.
fn same_host(url: &str, api_host_url: &str) -> bool {
    match (url::Url::parse(url), url::Url::parse(api_host_url)) {
        (Ok(url), Ok(api)) => {
            url.scheme() == api.scheme()
                && url.host_str() == api.host_str()
                && url.port_or_known_default() == api.port_or_known_default()
        }
        _ => false,
    }
}
