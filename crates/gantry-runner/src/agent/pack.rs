//! The planned workspace as an archive (tar + zstd), so that the apply of
//! a confirmed run uses exactly the planned files, on any worker.

use std::path::Path;

/// Archives `dir` (tar + zstd) into the file `archive`.
pub async fn pack(dir: &Path, archive: &Path) -> std::io::Result<()> {
    let (dir, archive) = (dir.to_owned(), archive.to_owned());
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::create(&archive)?;
        let encoder = zstd::Encoder::new(file, 3)?;
        let mut tar = tar::Builder::new(encoder);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", &dir)?;
        tar.into_inner()?.finish()?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Unpacks an archive made by [`pack`] into `dir`.
pub async fn unpack(archive: &Path, dir: &Path) -> std::io::Result<()> {
    let (dir, archive) = (dir.to_owned(), archive.to_owned());
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let decoder = zstd::Decoder::new(std::fs::File::open(&archive)?)?;
        let mut tar = tar::Archive::new(decoder);
        tar.set_preserve_permissions(true);
        tar.set_preserve_mtime(true);
        tar.unpack(&dir)
    })
    .await
    .map_err(std::io::Error::other)?
}
