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
    /// Whether the store answers (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, io::Result<()>>;
}

/// Refuses a key that is not a plain name (letters, digits, `-_.`, not
/// starting with a dot): every backend stores keys as they are.
pub fn check_key(key: &str) -> io::Result<()> {
    let plain = !key.is_empty()
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{key:?} is not a blob key"),
        ))
    }
}

/// Blobs as files in one directory (`--blob-store file://<dir>`, by
/// default `<data-dir>/blobs`).
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
        check_key(key)?;
        Ok(self.dir.join(key))
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

    fn ping(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move { tokio::fs::metadata(&self.dir).await.map(|_| ()) })
    }
}

/// The blob store `--blob-store` names: `file://<dir>` or
/// `s3://<bucket>/<prefix>`; `None` is `<data-dir>/blobs`.
pub fn open_store(
    url: Option<&str>,
    data_dir: &std::path::Path,
    max_bytes: u64,
) -> Result<Box<dyn Blobs>, String> {
    match url {
        None => DirBlobs::new(data_dir.join("blobs"), max_bytes)
            .map(|blobs| Box::new(blobs) as Box<dyn Blobs>)
            .map_err(|error| format!("cannot open the blob directory: {error}")),
        Some(url) if url.starts_with("file://") => {
            let dir = PathBuf::from(&url["file://".len()..]);
            DirBlobs::new(dir, max_bytes)
                .map(|blobs| Box::new(blobs) as Box<dyn Blobs>)
                .map_err(|error| format!("cannot open the blob directory of {url:?}: {error}"))
        }
        Some(url) if url.starts_with("s3://") => {
            crate::object_blobs::ObjectBlobs::s3(url, max_bytes)
                .map(|b| Box::new(b) as Box<dyn Blobs>)
        }
        Some(url) => Err(format!(
            "--blob-store {url:?} is neither file://<dir> nor s3://<bucket>/<prefix>"
        )),
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

/// Blobs sealed at rest with the keyring, the blob's key as associated
/// data: what a stolen blob directory (or bucket) holds is unreadable, and
/// a blob moved to another key, cut short or tampered with is an error,
/// never a silent empty workspace. Sealed and opened segment by segment as
/// they stream, so an archive is never held in memory whole.
pub struct SealedBlobs {
    inner: Box<dyn Blobs>,
    keyring: std::sync::Arc<gantry_store::crypto::Keyring>,
}

impl SealedBlobs {
    pub fn new(
        inner: Box<dyn Blobs>,
        keyring: std::sync::Arc<gantry_store::crypto::Keyring>,
    ) -> Self {
        Self { inner, keyring }
    }
}

fn context(key: &str) -> String {
    format!("blob:{key}")
}

fn broken(key: &str, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the stored blob {key:?} does not open with this server's master key: {why}"),
    )
}

impl Blobs for SealedBlobs {
    fn put<'a>(&'a self, key: &'a str, body: ByteStream) -> BoxFuture<'a, io::Result<u64>> {
        let (header, sealer) = self.keyring.seal_blob(&context(key));
        self.inner.put(key, seal(header, sealer, body))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<ByteStream>>> {
        Box::pin(async move {
            let Some(body) = self.inner.get(key).await? else {
                return Ok(None);
            };
            Ok(Some(open(self.keyring.clone(), key.to_owned(), body)))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        self.inner.delete(key)
    }

    fn keys(&self) -> BoxFuture<'_, io::Result<Vec<String>>> {
        self.inner.keys()
    }

    fn ping(&self) -> BoxFuture<'_, io::Result<()>> {
        self.inner.ping()
    }
}

use gantry_store::crypto::{BLOB_HEADER, BLOB_SEGMENT, BLOB_TAG, BlobOpener, BlobSealer};

struct Sealing {
    body: ByteStream,
    buffer: Vec<u8>,
    header: Option<Vec<u8>>,
    sealer: Option<BlobSealer>,
}

fn seal(header: Vec<u8>, sealer: BlobSealer, body: ByteStream) -> ByteStream {
    let start = Sealing {
        body,
        buffer: Vec::new(),
        header: Some(header),
        sealer: Some(sealer),
    };
    Box::pin(futures_util::stream::unfold(start, |mut s| async move {
        if let Some(header) = s.header.take() {
            return Some((Ok(Bytes::from(header)), s));
        }
        s.sealer.as_ref()?;
        loop {
            // More than a segment waiting: that segment is not the last.
            if s.buffer.len() > BLOB_SEGMENT {
                let rest = s.buffer.split_off(BLOB_SEGMENT);
                let segment = std::mem::replace(&mut s.buffer, rest);
                let sealed = s.sealer.as_mut()?.segment(&segment);
                return Some((Ok(Bytes::from(sealed)), s));
            }
            match s.body.next().await {
                Some(Ok(chunk)) => s.buffer.extend_from_slice(&chunk),
                Some(Err(error)) => {
                    s.sealer = None;
                    return Some((Err(error), s));
                }
                None => {
                    let sealed = s.sealer.take()?.last(&s.buffer);
                    s.buffer.clear();
                    return Some((Ok(Bytes::from(sealed)), s));
                }
            }
        }
    }))
}

struct Opening {
    body: ByteStream,
    buffer: Vec<u8>,
    keyring: std::sync::Arc<gantry_store::crypto::Keyring>,
    key: String,
    opener: Option<BlobOpener>,
    done: bool,
}

fn open(
    keyring: std::sync::Arc<gantry_store::crypto::Keyring>,
    key: String,
    body: ByteStream,
) -> ByteStream {
    let start = Opening {
        body,
        buffer: Vec::new(),
        keyring,
        key,
        opener: None,
        done: false,
    };
    const SEALED: usize = BLOB_SEGMENT + BLOB_TAG;
    Box::pin(futures_util::stream::unfold(start, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            if s.opener.is_none() && s.buffer.len() >= BLOB_HEADER {
                let rest = s.buffer.split_off(BLOB_HEADER);
                let header = std::mem::replace(&mut s.buffer, rest);
                match s.keyring.open_blob(&context(&s.key), &header) {
                    Ok(opener) => s.opener = Some(opener),
                    Err(error) => {
                        s.done = true;
                        return Some((Err(broken(&s.key, error)), s));
                    }
                }
            }
            if s.opener.is_some() && s.buffer.len() > SEALED {
                let rest = s.buffer.split_off(SEALED);
                let segment = std::mem::replace(&mut s.buffer, rest);
                let opened = s.opener.as_mut()?.segment(&segment);
                return Some(match opened {
                    Ok(plain) => (Ok(Bytes::from(plain)), s),
                    Err(error) => {
                        s.done = true;
                        (Err(broken(&s.key, error)), s)
                    }
                });
            }
            match s.body.next().await {
                Some(Ok(chunk)) => s.buffer.extend_from_slice(&chunk),
                Some(Err(error)) => {
                    s.done = true;
                    return Some((Err(error), s));
                }
                None => {
                    s.done = true;
                    let opened = match s.opener.take() {
                        Some(opener) => opener.last(&s.buffer).map_err(|e| broken(&s.key, e)),
                        None => Err(broken(&s.key, "it is shorter than its header")),
                    };
                    return Some((opened.map(Bytes::from), s));
                }
            }
        }
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use gantry_store::crypto::{BLOB_SEGMENT, Keyring, MasterKey};

    use super::*;

    fn stream_of(data: &[u8], piece: usize) -> ByteStream {
        let pieces: Vec<io::Result<Bytes>> = data
            .chunks(piece.max(1))
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        Box::pin(futures_util::stream::iter(pieces))
    }

    async fn read_all(mut body: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    async fn raw(blobs: &dyn Blobs, key: &str) -> Vec<u8> {
        read_all(blobs.get(key).await.expect("get").expect("there"))
            .await
            .expect("raw")
    }

    /// Round trips of every size through sealing; a tampered, truncated or
    /// moved object, or another master key, is an error. `open` gives a
    /// new handle on the same storage each time (the raw one tampers).
    pub(crate) async fn round_trips_and_refusals(open: impl Fn() -> Box<dyn Blobs>) {
        let keyring = Arc::new(Keyring::new(MasterKey::generate()));
        let blobs = SealedBlobs::new(open(), keyring);
        let raw_store = open();
        for size in [0, 1, BLOB_SEGMENT, BLOB_SEGMENT + 1, 3 * BLOB_SEGMENT + 5] {
            let data: Vec<u8> = (0..size).map(|n| (n % 251) as u8).collect();
            blobs
                .put("a.bin", stream_of(&data, 10_000))
                .await
                .expect("put");
            let stored = raw(raw_store.as_ref(), "a.bin").await;
            if size > 64 {
                assert!(
                    !stored
                        .windows(64)
                        .any(|w| data.windows(64).next() == Some(w)),
                    "stored in plaintext"
                );
            }
            let back = read_all(blobs.get("a.bin").await.expect("get").expect("there"))
                .await
                .expect("opens");
            assert_eq!(back, data, "size {size}");
        }
        // Tampered, cut short, or moved to another key: an error.
        let good = raw(raw_store.as_ref(), "a.bin").await;
        let mut tampered = good.clone();
        tampered[good.len() / 2] ^= 1;
        let put_raw = |key: &'static str, bytes: Vec<u8>| {
            let store = &raw_store;
            async move {
                store
                    .put(key, stream_of(&bytes, 4096))
                    .await
                    .expect("raw put");
            }
        };
        put_raw("b.bin", tampered).await;
        put_raw("c.bin", good[..good.len() - 20].to_vec()).await;
        put_raw("d.bin", good.clone()).await;
        for key in ["b.bin", "c.bin"] {
            assert!(
                read_all(blobs.get(key).await.expect("get").expect("there"))
                    .await
                    .is_err(),
                "{key}"
            );
        }
        let moved = read_all(blobs.get("d.bin").await.expect("get").expect("there")).await;
        assert!(moved.is_err(), "a blob only opens under its own key");
        // Another server's key: an error naming the master key.
        let other = SealedBlobs::new(open(), Arc::new(Keyring::new(MasterKey::generate())));
        let error = read_all(other.get("a.bin").await.expect("get").expect("there"))
            .await
            .expect_err("another key");
        assert!(error.to_string().contains("master key"), "{error}");
        // Listed, deleted, gone; the store answers.
        let mut keys = blobs.keys().await.expect("keys");
        keys.sort();
        assert_eq!(keys, ["a.bin", "b.bin", "c.bin", "d.bin"]);
        for key in &keys {
            blobs.delete(key).await.expect("delete");
        }
        assert!(blobs.get("a.bin").await.expect("get").is_none());
        assert!(blobs.keys().await.expect("keys").is_empty());
        blobs.ping().await.expect("ping");
    }

    #[tokio::test]
    async fn sealed_blobs_round_trip_and_refuse_what_was_changed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().to_owned();
        round_trips_and_refusals(|| {
            Box::new(DirBlobs::new(path.clone(), u64::MAX).expect("dir blobs"))
        })
        .await;
    }
}
