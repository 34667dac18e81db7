//! Files the server keeps for runs: the archive of a planned workspace,
//! which the apply of a confirmed run restores on any worker. Behind a
//! small trait, so that an object store can stand in for the data
//! directory; `DirBlobs` is the data-directory one.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

pub trait Blobs: Send + Sync {
    /// Stores `body` under `key`, replacing what was there only once the
    /// whole body arrived. Fails past the store's size limit.
    fn put<'a>(&'a self, key: &'a str, body: ByteStream) -> BoxFuture<'a, io::Result<u64>>;
    /// The blob under `key`, or `None`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<ByteStream>>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>>;
    fn keys(&self) -> BoxFuture<'_, io::Result<Vec<String>>>;
}

/// Blobs as files in one directory.
pub struct DirBlobs {
    dir: PathBuf,
    max_bytes: u64,
}

impl DirBlobs {
    /// Opens (creating) the directory, removing what a crash left half
    /// written.
    pub fn new(dir: PathBuf, max_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "partial") {
                std::fs::remove_file(path)?;
            }
        }
        Ok(Self { dir, max_bytes })
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        let plain = !key.is_empty()
            && !key.starts_with('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if plain {
            Ok(self.dir.join(key))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{key:?} is not a blob key"),
            ))
        }
    }
}

impl Blobs for DirBlobs {
    fn put<'a>(&'a self, key: &'a str, mut body: ByteStream) -> BoxFuture<'a, io::Result<u64>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let partial = self
                .dir
                .join(format!(".{key}.{}.partial", uuid::Uuid::new_v4()));
            let written = async {
                let mut file = tokio::fs::File::create(&partial).await?;
                let mut size = 0u64;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk?;
                    size += chunk.len() as u64;
                    if size > self.max_bytes {
                        return Err(io::Error::new(
                            io::ErrorKind::FileTooLarge,
                            format!("larger than the limit of {} bytes", self.max_bytes),
                        ));
                    }
                    file.write_all(&chunk).await?;
                }
                file.sync_all().await?;
                tokio::fs::rename(&partial, &path).await?;
                Ok(size)
            };
            let result = written.await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&partial).await;
            }
            result
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<ByteStream>>> {
        Box::pin(async move {
            match tokio::fs::File::open(self.path(key)?).await {
                Ok(file) => Ok(Some(
                    Box::pin(tokio_util::io::ReaderStream::new(file)) as ByteStream
                )),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(error),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path(key)?).await {
                Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
                _ => Ok(()),
            }
        })
    }

    fn keys(&self) -> BoxFuture<'_, io::Result<Vec<String>>> {
        Box::pin(async move {
            let mut keys = Vec::new();
            let mut entries = tokio::fs::read_dir(&self.dir).await?;
            while let Some(entry) = entries.next_entry().await? {
                if let Some(name) = entry.file_name().to_str()
                    && !name.starts_with('.')
                {
                    keys.push(name.to_owned());
                }
            }
            Ok(keys)
        })
    }
}

/// The key of a run's planned workspace.
pub fn workspace_key(run_id: &str) -> String {
    format!("workspace-{run_id}.tar.zst")
}

/// The run a workspace key belongs to.
pub fn run_of_workspace_key(key: &str) -> Option<&str> {
    key.strip_prefix("workspace-")?.strip_suffix(".tar.zst")
}
