//! The one way the server reaches GitLab for an integration: open the
//! integration's sealed API token with the keyring and build its client.
//! Handlers, delivery processing, the outbox and the workers' side all go
//! through [`GitLabAccess`], so the sealing context and the error a broken
//! token gives are written once.

use std::sync::Arc;

use gantry_gitlab::tunnel::Tunnel;
use gantry_gitlab::{GitLab, GitLabError, Http};
use gantry_store::crypto::Keyring;
use gantry_store::integrations::{Integration, api_token_context};
use secrecy::SecretString;

use crate::vcs_agents::{Hub, pool_of};

/// The keyring, the process's one GitLab HTTP client, and the VCS agents
/// that `private://<pool>` integrations go through.
#[derive(Clone)]
pub struct GitLabAccess {
    keyring: Arc<Keyring>,
    http: Http,
    agents: Arc<Hub>,
}

/// Why an integration's GitLab cannot be reached. Not a GitLab error:
/// GitLab was not asked.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "the API token of integration {0:?} cannot be decrypted with this server's master key; \
         set a new `api_token` on the integration"
    )]
    Sealed(String),
    #[error("integration {id:?}: {error}")]
    Client { id: String, error: GitLabError },
}

impl GitLabAccess {
    pub fn new(keyring: Arc<Keyring>, http: Http, agents: Arc<Hub>) -> Self {
        Self {
            keyring,
            http,
            agents,
        }
    }

    /// The pool an integration's GitLab is reached through, when it is
    /// behind a private network.
    pub fn tunnel(&self, user_facing_host_url: &str) -> Option<Arc<dyn Tunnel>> {
        pool_of(user_facing_host_url).map(|pool| self.agents.tunnel(pool))
    }

    /// The integration's API token, opened.
    pub fn token(&self, integration: &Integration) -> Result<SecretString, AccessError> {
        self.keyring
            .decrypt(&api_token_context(&integration.id), &integration.token_sealed)
            .map_err(|error| {
                tracing::error!(integration.id = %integration.id, %error, "cannot open the API token");
                AccessError::Sealed(integration.id.clone())
            })
    }

    /// A client for the integration's GitLab, with its token.
    pub fn client(&self, integration: &Integration) -> Result<GitLab, AccessError> {
        let token = self.token(integration)?;
        self.unsaved(
            &integration.api_host_url,
            &integration.user_facing_host_url,
            token,
        )
        .map_err(|error| AccessError::Client {
            id: integration.id.clone(),
            error,
        })
    }

    /// A client for a token that is not stored yet (the token check).
    pub fn unsaved(
        &self,
        api_host_url: &str,
        user_facing_host_url: &str,
        token: SecretString,
    ) -> Result<GitLab, GitLabError> {
        let client = self.http.client(api_host_url, token)?;
        Ok(match self.tunnel(user_facing_host_url) {
            Some(tunnel) => client.through(tunnel),
            None => client,
        })
    }
}
