//! What a data directory needs before the server can answer: its master
//! key, and on an empty database the `root` space and a first admin key.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gantry_domain::{Grant, Role};
use gantry_store::crypto::MasterKey;
use gantry_store::spaces::{self, CreateSpaceError, ROOT};
use gantry_store::{Millis, Store, api_keys, audit};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

pub const MASTER_KEY_ENV: &str = "GANTRY_MASTER_KEY";
pub const MASTER_KEY_FILE: &str = "master.key";
pub const INITIAL_ADMIN_TOKEN_FILE: &str = "initial-admin-token";

/// The master key from `GANTRY_MASTER_KEY` (base64 of 32 bytes) if set,
/// else from `<data_dir>/master.key`, which is generated (mode 0600) on
/// first start. A key file that group or others can read is refused.
pub fn load_master_key(
    data_dir: &Path,
    from_env: Option<SecretString>,
) -> anyhow::Result<MasterKey> {
    if let Some(encoded) = from_env {
        return MasterKey::from_base64(encoded.expose_secret())
            .with_context(|| format!("{MASTER_KEY_ENV} is not usable"));
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    match fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "the master key file {} is readable by group or others (mode {mode:03o}); \
                     restrict it with `chmod 600 {}` and start again",
                    path.display(),
                    path.display()
                );
            }
            let encoded = SecretString::from(
                fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
            MasterKey::from_base64(encoded.expose_secret())
                .with_context(|| format!("{} is not usable", path.display()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate();
            write_private(&path, key.to_base64().expose_secret(), false)?;
            tracing::info!(path = %path.display(), key.id = %key.id(), "generated a new master key; back it up: without it, stored secrets cannot be read");
            Ok(key)
        }
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// On an empty database, creates `root` and an API key with `admin` on it,
/// and writes the key to `<data_dir>/initial-admin-token` (mode 0600).
/// Returns the file's path if it did. Safe when several servers start on
/// one new database at once: one of them creates `root`, the others see it.
pub async fn first_start(store: &Store, data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let mut tx = store.begin().await?;
    if spaces::count(&mut tx).await? > 0 {
        return Ok(None);
    }
    let now = Millis::now();
    match spaces::insert(&mut tx, ROOT, ROOT, None, now).await {
        Ok(_) => {}
        // Another server got there first.
        Err(CreateSpaceError::IdTaken(_)) => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let grants = [Grant {
        space: ROOT.to_owned(),
        role: Role::Admin,
    }];
    let (key, secret) = api_keys::insert(
        &mut tx,
        "initial-admin",
        "initial admin",
        &grants,
        None,
        now,
    )
    .await?;
    audit::record(
        &mut tx,
        &audit::NewAuditEntry {
            actor: "system",
            action: "system.first_start",
            target_kind: "api_key",
            target_id: &key.id,
            space_id: Some(ROOT),
            detail: json!({ "created": ["space:root", format!("api_key:{}", key.id)] }),
        },
        now,
    )
    .await?;
    // The file is written before the commit: if the commit fails, the file
    // goes; if writing fails, nothing is committed and no one is locked out.
    let path = data_dir.join(INITIAL_ADMIN_TOKEN_FILE);
    write_private(&path, secret.expose_secret(), true)?;
    if let Err(err) = tx.commit().await {
        let _ = fs::remove_file(&path);
        return Err(err.into());
    }
    Ok(Some(path))
}

/// Writes `contents` and a newline to a file only its owner can read.
fn write_private(path: &Path, contents: &str, replace: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).mode(0o600);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The mode above only applies to a new file.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(())
}
