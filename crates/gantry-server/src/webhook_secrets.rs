//! The webhook secrets of every integration, opened once and kept in memory
//! as their SHA-256 digests, so that checking a delivery's `X-Gitlab-Token`
//! costs no database read and no decryption.
//!
//! Only acceptance is ever answered from memory: a token that the cached
//! secrets do not accept is checked again against the database before it
//! is refused, so a secret rotated on another server works at once. What a
//! stale entry can still do is bounded: it lives [`WebhookSecrets::TTL`] at
//! most, a previous secret's grace period is judged at each request from
//! its stored end, and a delivery for an integration deleted meanwhile is
//! refused by the inbox, which checks that the integration exists in the
//! transaction that stores the delivery. This server forgets an entry as
//! soon as it changes or deletes the integration.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use gantry_store::crypto::{CryptoError, Keyring};
use gantry_store::integrations::{self, Integration, webhook_secret_context};
use gantry_store::{Millis, Store, StoreError};
use secrecy::ExposeSecret as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How a delivery's token fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Authentic,
    Wrong,
    /// No such integration.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the webhook secret of integration {id:?}: {source}")]
    Open { id: String, source: CryptoError },
}

/// A secret the integration accepts: its digest, and until when for a
/// previous secret in its grace period.
struct Accepted {
    digest: [u8; 32],
    until: Option<i64>,
}

struct Entry {
    read_at: Instant,
    secrets: Arc<[Accepted]>,
}

#[derive(Default)]
pub struct WebhookSecrets {
    entries: RwLock<HashMap<String, Entry>>,
}

impl WebhookSecrets {
    /// The longest an entry answers without a read, which bounds how long
    /// another server's changes can go unseen here.
    pub const TTL: Duration = Duration::from_secs(5);

    /// Checks `token` against the webhook secrets of integration `id` at
    /// `now`.
    pub async fn check(
        &self,
        store: &Store,
        keyring: &Keyring,
        id: &str,
        token: &str,
        now: Millis,
    ) -> Result<Verdict, CheckError> {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(secrets) = self.fresh(id)
            && accepts(&secrets, &given, now)
        {
            return Ok(Verdict::Authentic);
        }
        let integration = {
            let mut conn = store.conn().await?;
            integrations::get(&mut conn, id).await?
        };
        let Some(integration) = integration else {
            self.forget(id);
            return Ok(Verdict::Unknown);
        };
        let secrets = open(keyring, &integration)?;
        let verdict = match accepts(&secrets, &given, now) {
            true => Verdict::Authentic,
            false => Verdict::Wrong,
        };
        self.write().insert(
            integration.id,
            Entry {
                read_at: Instant::now(),
                secrets,
            },
        );
        Ok(verdict)
    }

    /// Drops what is known of integration `id` (it changed or is gone).
    pub fn forget(&self, id: &str) {
        self.write().remove(id);
    }

    fn fresh(&self, id: &str) -> Option<Arc<[Accepted]>> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .get(id)
            .filter(|entry| entry.read_at.elapsed() < Self::TTL)
            .map(|entry| entry.secrets.clone())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn open(keyring: &Keyring, integration: &Integration) -> Result<Arc<[Accepted]>, CheckError> {
    let context = webhook_secret_context(&integration.id);
    let opened = |sealed: &str, until: Option<i64>| -> Result<Accepted, CheckError> {
        let secret = keyring
            .decrypt(&context, sealed)
            .map_err(|source| CheckError::Open {
                id: integration.id.clone(),
                source,
            })?;
        Ok(Accepted {
            digest: Sha256::digest(secret.expose_secret().as_bytes()).into(),
            until,
        })
    };
    integration
        .webhook_secrets()
        .map(|(sealed, until)| opened(sealed, until))
        .collect()
}

/// Whether a secret accepted at `now` has the digest `given`. Every secret
/// is compared in constant time, so timing tells nothing of which matched.
fn accepts(secrets: &[Accepted], given: &[u8; 32], now: Millis) -> bool {
    let mut authentic = false;
    for secret in secrets {
        let current = integrations::accepted_until(secret.until, now);
        authentic |= bool::from(secret.digest.ct_eq(given)) & current;
    }
    authentic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(secret: &str, until: Option<i64>) -> Accepted {
        Accepted {
            digest: Sha256::digest(secret.as_bytes()).into(),
            until,
        }
    }

    #[test]
    fn a_previous_secret_is_accepted_until_its_grace_ends() {
        let secrets = [accepted("new", None), accepted("old", Some(1_000))];
        let digest = |s: &str| -> [u8; 32] { Sha256::digest(s.as_bytes()).into() };
        assert!(accepts(&secrets, &digest("new"), Millis(5_000)));
        assert!(accepts(&secrets, &digest("old"), Millis(999)));
        assert!(!accepts(&secrets, &digest("old"), Millis(1_000)));
        assert!(!accepts(&secrets, &digest("other"), Millis(0)));
    }
}
