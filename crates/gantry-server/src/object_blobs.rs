//! Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph, …), so
//! that every server and worker of a deployment sees the same planned
//! workspaces and sources. `--blob-store s3://<bucket>/<prefix>`; the
//! endpoint, region and credentials come from the usual `AWS_*`
//! variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true` for a local endpoint).
//! Uploads are multipart and downloads streamed: a large workspace never
//! sits in memory whole. What is stored is sealed by `SealedBlobs` above
//! this, as on every backend.

use std::io;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use crate::blobs::{Blobs, ByteStream};

pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    max_bytes: u64,
}

fn io_error(error: object_store::Error) -> io::Error {
    match error {
        object_store::Error::NotFound { .. } => {
            io::Error::new(io::ErrorKind::NotFound, error.to_string())
        }
        other => io::Error::other(other.to_string()),
    }
}

impl ObjectBlobs {
    /// The store an `s3://<bucket>/<prefix>` URL names.
    pub fn s3(url: &str, max_bytes: u64) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("--blob-store {url:?} is not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!(
                "--blob-store {url:?} names no bucket: use s3://<bucket>/<prefix>"
            ));
        }
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|error| format!("--blob-store {url:?}: {error}"))?;
        Ok(Self::new(Arc::new(store), prefix, max_bytes))
    }

    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, max_bytes: u64) -> Self {
        Self {
            store,
            prefix: Path::from(prefix.trim_matches('/')),
            max_bytes,
        }
    }

    fn path(&self, key: &str) -> io::Result<Path> {
        crate::blobs::check_key(key)?;
        Ok(self.prefix.clone().join(key))
    }
}

impl Blobs for ObjectBlobs {
    fn put<'a>(&'a self, key: &'a str, mut body: ByteStream) -> BoxFuture<'a, io::Result<u64>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let upload = self.store.put_multipart(&path).await.map_err(io_error)?;
            let mut writer = WriteMultipart::new(upload);
            let mut size = 0u64;
            let written: io::Result<()> = async {
                while let Some(chunk) = body.next().await {
                    let chunk = chunk?;
                    size += chunk.len() as u64;
                    if size > self.max_bytes {
                        return Err(io::Error::new(
                            io::ErrorKind::FileTooLarge,
                            format!("larger than the limit of {} bytes", self.max_bytes),
                        ));
                    }
                    // At most a few parts in flight: memory stays bounded.
                    writer.wait_for_capacity(4).await.map_err(io_error)?;
                    writer.put(chunk);
                }
                Ok(())
            }
            .await;
            match written {
                Ok(()) => {
                    // Visible only once every part arrived.
                    writer.finish().await.map_err(io_error)?;
                    Ok(size)
                }
                Err(error) => {
                    let _ = writer.abort().await;
                    Err(error)
                }
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<ByteStream>>> {
        Box::pin(async move {
            match self.store.get(&self.path(key)?).await {
                Ok(found) => Ok(Some(
                    Box::pin(found.into_stream().map_err(io_error)) as ByteStream
                )),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(io_error(error)),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            match self.store.delete(&self.path(key)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(error) => Err(io_error(error)),
            }
        })
    }

    fn keys(&self) -> BoxFuture<'_, io::Result<Vec<String>>> {
        Box::pin(async move {
            let listed: Vec<_> = self
                .store
                .list(Some(&self.prefix))
                .try_collect()
                .await
                .map_err(io_error)?;
            Ok(listed
                .into_iter()
                .filter_map(|meta| meta.location.filename().map(str::to_owned))
                .collect())
        })
    }

    fn ping(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            match self
                .store
                .head(&self.prefix.clone().join(".gantry-ping"))
                .await
            {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(error) => Err(io_error(error)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn s3_blobs_round_trip_and_refuse_what_was_changed() {
        let Some(s3) = gantry_store::testing::s3_server() else {
            return;
        };
        let endpoint = s3.endpoint.clone();
        crate::blobs::tests::round_trips_and_refusals(|| {
            let store = object_store::aws::AmazonS3Builder::new()
                .with_endpoint(&endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id("testing")
                .with_secret_access_key("testing")
                .with_bucket_name("gantry")
                .build()
                .expect("s3");
            Box::new(ObjectBlobs::new(Arc::new(store), "deploy/blobs", u64::MAX))
        })
        .await;
    }
}
