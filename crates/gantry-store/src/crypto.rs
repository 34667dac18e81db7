//! Secrets at rest: AES-256-GCM with a random 96-bit nonce per value, the
//! id of the key stored with each value (so keys can be rotated), and the
//! owning row bound as associated data (so a ciphertext copied into another
//! row does not decrypt). API key secrets are not encrypted but hashed.

use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;
const VERSION: &str = "v1";

/// The master key: 32 bytes, never printed.
pub struct MasterKey(SecretBox<[u8; 32]>);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the master key must be 32 bytes, base64-encoded (44 characters); got {0} bytes")]
    WrongLength(usize),
    #[error("the master key is not valid base64; generate one with `openssl rand -base64 32`")]
    NotBase64,
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// Parses the base64 form used in `GANTRY_MASTER_KEY` and `master.key`.
    pub fn from_base64(encoded: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(encoded.trim())
            .map_err(|_| KeyError::NotBase64)?;
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self(SecretBox::new(Box::new(array))))
    }

    pub fn to_base64(&self) -> SecretString {
        STANDARD.encode(self.0.expose_secret()).into()
    }

    /// A short public id of the key: the first 8 hex digits of the SHA-256
    /// of a domain-separated digest, enough to tell keys apart.
    pub fn id(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"gantry key id\0")
            .chain_update(self.0.expose_secret())
            .finalize();
        hex8(&digest)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encrypted value is malformed")]
    Malformed,
    #[error(
        "encrypted value was sealed with key {0}, which this server does not have; set GANTRY_MASTER_KEY to that key"
    )]
    UnknownKey(String),
    #[error("encrypted value does not decrypt: wrong key, or it was moved from another row")]
    Decrypt,
}

/// The keys a server can decrypt with; it encrypts with the first.
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl Keyring {
    pub fn new(current: MasterKey) -> Self {
        let cipher = Aes256Gcm::new(current.0.expose_secret().into());
        Self {
            keys: vec![(current.id(), cipher)],
        }
    }

    /// Adds an older key that values may still be sealed with.
    pub fn with_previous(mut self, previous: MasterKey) -> Self {
        let cipher = Aes256Gcm::new(previous.0.expose_secret().into());
        self.keys.push((previous.id(), cipher));
        self
    }

    pub fn current_key_id(&self) -> &str {
        &self.keys[0].0
    }

    /// Seals `plaintext` for the row named by `context` (for example
    /// `integration:prod:api_token`). The result is
    /// `v1:<key id>:<base64 of nonce ‖ ciphertext>`.
    pub fn encrypt(&self, context: &str, plaintext: &SecretString) -> String {
        let (key_id, cipher) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext.expose_secret().as_bytes(),
            aad: context.as_bytes(),
        };
        // AES-GCM only fails for inputs past 64 GiB.
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("{VERSION}:{key_id}:{}", URL_SAFE_NO_PAD.encode(blob))
    }

    pub fn decrypt(&self, context: &str, stored: &str) -> Result<SecretString, CryptoError> {
        let mut parts = stored.splitn(3, ':');
        let (Some(VERSION), Some(key_id), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Malformed);
        };
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let blob = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| CryptoError::Malformed)?;
        if blob.len() < NONCE_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// How much plaintext one sealed segment of a blob holds.
pub const BLOB_SEGMENT: usize = 64 * 1024;
/// What sealing adds to a segment: the GCM tag.
pub const BLOB_TAG: usize = 16;
const BLOB_MAGIC: &[u8; 8] = b"GANTRYB1";
const BLOB_NONCE_PREFIX: usize = 7;
/// The header of a sealed blob: magic, key id (8 hex digits), nonce prefix.
pub const BLOB_HEADER: usize = BLOB_MAGIC.len() + 8 + BLOB_NONCE_PREFIX;

/// Seals a blob segment by segment (the STREAM construction over
/// AES-256-GCM: a counter and a last-segment flag in each nonce), so a
/// large archive is never held whole, and a truncated or reordered one
/// does not open.
pub struct BlobSealer {
    stream: EncryptorBE32<Aes256Gcm>,
    context: String,
}

/// Opens what a [`BlobSealer`] sealed.
pub struct BlobOpener {
    stream: DecryptorBE32<Aes256Gcm>,
    context: String,
}

impl Keyring {
    /// Starts sealing a blob stored under `context`; the header to write
    /// first, and the sealer for its segments.
    pub fn seal_blob(&self, context: &str) -> (Vec<u8>, BlobSealer) {
        let (key_id, cipher) = &self.keys[0];
        let mut prefix = [0u8; BLOB_NONCE_PREFIX];
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        let mut header = BLOB_MAGIC.to_vec();
        header.extend_from_slice(key_id.as_bytes());
        header.extend_from_slice(&prefix);
        let stream = EncryptorBE32::from_aead(cipher.clone(), prefix.as_slice().into());
        (
            header,
            BlobSealer {
                stream,
                context: context.to_owned(),
            },
        )
    }

    /// Starts opening a blob stored under `context` from its header.
    pub fn open_blob(&self, context: &str, header: &[u8]) -> Result<BlobOpener, CryptoError> {
        if header.len() != BLOB_HEADER || &header[..BLOB_MAGIC.len()] != BLOB_MAGIC {
            return Err(CryptoError::Malformed);
        }
        let key_id = std::str::from_utf8(&header[BLOB_MAGIC.len()..BLOB_MAGIC.len() + 8])
            .map_err(|_| CryptoError::Malformed)?;
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let prefix = &header[BLOB_MAGIC.len() + 8..];
        Ok(BlobOpener {
            stream: DecryptorBE32::from_aead(cipher.clone(), prefix.into()),
            context: context.to_owned(),
        })
    }
}

impl BlobSealer {
    /// A full segment that is not the last.
    pub fn segment(&mut self, plain: &[u8]) -> Vec<u8> {
        let payload = Payload {
            msg: plain,
            aad: self.context.as_bytes(),
        };
        // Fails only past 2^32 segments (256 TiB).
        self.stream.encrypt_next(payload).unwrap_or_default()
    }

    /// The last segment (possibly empty).
    pub fn last(self, plain: &[u8]) -> Vec<u8> {
        let payload = Payload {
            msg: plain,
            aad: self.context.as_bytes(),
        };
        self.stream.encrypt_last(payload).unwrap_or_default()
    }
}

impl BlobOpener {
    pub fn segment(&mut self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let payload = Payload {
            msg: sealed,
            aad: self.context.as_bytes(),
        };
        self.stream
            .decrypt_next(payload)
            .map_err(|_| CryptoError::Decrypt)
    }

    pub fn last(self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let payload = Payload {
            msg: sealed,
            aad: self.context.as_bytes(),
        };
        self.stream
            .decrypt_last(payload)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// A new random bearer secret with a recognisable prefix, such as
/// `gantry_…`: 32 random bytes, base64url.
pub fn random_secret(prefix: &str) -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)).into()
}

/// The stored form of a high-entropy bearer secret: its SHA-256, hex.
/// A plain hash suffices because the secret is 256 random bits, not a
/// password; it also lets a lookup go straight to the row.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_only_in_their_own_row() {
        let keyring = Keyring::new(MasterKey::generate());
        let secret = SecretString::from("glpat-recognisable-token");
        let sealed = keyring.encrypt("integration:a:api_token", &secret);
        assert!(!sealed.contains("recognisable"));
        assert!(sealed.starts_with(&format!("v1:{}:", keyring.current_key_id())));
        let opened = keyring
            .decrypt("integration:a:api_token", &sealed)
            .map(|s| s.expose_secret().to_owned());
        assert_eq!(opened.ok().as_deref(), Some("glpat-recognisable-token"));
        assert!(matches!(
            keyring.decrypt("integration:b:api_token", &sealed),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn the_same_value_seals_differently_each_time() {
        let keyring = Keyring::new(MasterKey::generate());
        let secret = SecretString::from("same");
        assert_ne!(
            keyring.encrypt("row", &secret),
            keyring.encrypt("row", &secret)
        );
    }

    #[test]
    fn old_keys_still_decrypt_after_rotation() {
        let old = MasterKey::generate();
        let old_copy = MasterKey::from_base64(old.to_base64().expose_secret()).ok();
        let sealed = Keyring::new(old).encrypt("row", &SecretString::from("v"));
        let rotated = Keyring::new(MasterKey::generate());
        assert!(matches!(
            rotated.decrypt("row", &sealed),
            Err(CryptoError::UnknownKey(_))
        ));
        let rotated = rotated.with_previous(old_copy.expect("key parses"));
        assert!(rotated.decrypt("row", &sealed).is_ok());
    }

    #[test]
    fn master_keys_must_be_32_bytes_of_base64() {
        assert!(matches!(
            MasterKey::from_base64("c2hvcnQ="),
            Err(KeyError::WrongLength(5))
        ));
        assert!(matches!(
            MasterKey::from_base64("%%%"),
            Err(KeyError::NotBase64)
        ));
        assert!(format!("{:?}", MasterKey::generate()).starts_with("MasterKey("));
    }

    #[test]
    fn secrets_hash_to_hex() {
        assert_eq!(hash_secret("abc").len(), 64);
        assert!(
            random_secret("gantry_")
                .expose_secret()
                .starts_with("gantry_")
        );
    }
}
