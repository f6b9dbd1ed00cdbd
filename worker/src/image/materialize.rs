//! Materialize: the whole image written to a file (`lode pull`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use super::LazyImage;
use super::load::load;
use crate::error::{ChunkError, Error, Result};

/// Outcome of [`LazyImage::materialize`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterializeReport {
    /// Size of the written file.
    pub image_size: u64,
    /// Chunks fetched and written.
    pub chunks_written: u64,
    /// Chunks left as sparse holes.
    pub holes: u64,
    /// Sealed bytes fetched.
    pub bytes_fetched: u64,
    /// Wall time in milliseconds.
    pub elapsed_ms: u64,
}

impl LazyImage {
    /// Writes the whole image to `path` (created or truncated), fetching up to
    /// `parallelism` chunks at once. Holes stay sparse holes. The plaintext
    /// cache is bypassed so a pull does not evict what mounted readers use.
    /// The file holds the decrypted image: it is made mode 0600 (owner
    /// only), whatever the umask and whatever mode an existing file had, as
    /// `lode flatten` writes its output.
    pub async fn materialize(&self, path: &Path, parallelism: usize) -> Result<MaterializeReport> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let t0 = Instant::now();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("creating", path, e))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("making private", path, e))?;
        file.set_len(self.size())
            .map_err(|e| Error::io("sizing", path, e))?;
        let file = Arc::new(file);
        let before = self.inner.counters.bytes_fetched.load(Relaxed);
        let cs = u64::from(self.chunk_size());
        let indexes: Vec<u64> = (0..self.chunk_count())
            .filter(|&i| self.inner.table.chunks[i as usize].is_some())
            .collect();
        let holes = self.chunk_count() - indexes.len() as u64;
        let mut writes = stream::iter(indexes)
            .map(|index| {
                let inner = Arc::clone(&self.inner);
                let file = Arc::clone(&file);
                async move {
                    let data = load(&inner, index)
                        .await
                        .map_err(|e| (index, Arc::new(e)))?;
                    tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        file.write_all_at(&data, index * cs)
                    })
                    .await
                    .map_err(|e| (index, Arc::new(ChunkError::TaskFailed(e.to_string()))))?
                    .map_err(|e| {
                        (
                            index,
                            Arc::new(ChunkError::Fetch(crate::error::SourceError::Tier {
                                tier: "local file".into(),
                                source: Box::new(e),
                            })),
                        )
                    })
                }
            })
            .buffer_unordered(parallelism.max(1));
        let mut written = 0;
        while let Some(r) = writes.next().await {
            match r {
                Ok(()) => written += 1,
                Err((index, e)) => return Err(self.chunk_error(index, e)),
            }
        }
        file.sync_all().map_err(|e| Error::io("syncing", path, e))?;
        Ok(MaterializeReport {
            image_size: self.size(),
            chunks_written: written,
            holes,
            bytes_fetched: self.inner.counters.bytes_fetched.load(Relaxed) - before,
            elapsed_ms: t0.elapsed().as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use crate::image::test_support::*;
    use crate::source::{TierId, lock};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn materialize_writes_the_image_with_sparse_holes() {
        let size = 40 * CS as usize + 5;
        let holes: Vec<u64> = (10..30).collect();
        let (data, _source, image) =
            setup(size, &holes, TierId::untrusted("store"), no_readahead());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.ext4");
        std::fs::write(&path, vec![1u8; size * 2]).unwrap();
        let report = image.materialize(&path, 4).await.unwrap();
        assert_eq!(
            (report.chunks_written, report.holes, report.image_size),
            (21, 20, size as u64)
        );
        let back = std::fs::read(&path).unwrap();
        assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            allocated < size as u64 - 10 * u64::from(CS),
            "holes are sparse: {allocated} bytes allocated"
        );
        // The pull bypassed the plaintext cache.
        assert_eq!(image.stats().plaintext_hits, 0);
        assert!(lock(&image.inner.cache).is_empty());
    }
}
