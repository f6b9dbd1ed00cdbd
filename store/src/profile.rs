//! Prefetch profiles stored beside manifests, and profile-guided layouts.
//!
//! A profile recorded by a worker (`lode mount --record-profile FILE`) holds
//! the chunks read in the first seconds (index and time) and the files they
//! belong to. [`save_profile`] stores only the chunk part under
//! `profiles/NAME` (no paths, nothing secret: chunk indexes of a manifest
//! anyone with read access can list), and only when the profile was
//! recorded on the manifest `NAME` has now. A `kernel_readahead_kb` hint in
//! the file is kept. A profile-guided push stores such a profile itself
//! ([`layout_prefetch_profile`]).

use std::path::Path;

use chunk_core::{ChunkRef, CryptoProvider};
use serde::Serialize;
use worker::profile::Profile;

use crate::error::{Error, Result};
use crate::layout::Store;

/// A stored profile compared with its image's current manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileSummary {
    /// Image name.
    pub image: String,
    /// Manifest public digest the profile was recorded on (hex).
    pub manifest_digest: String,
    /// Whether that is the image's current manifest (`None`: no manifest).
    pub matches_manifest: Option<bool>,
    /// Chunks in the profile.
    pub chunks: u64,
    /// Recording window in milliseconds.
    pub window_ms: u64,
    /// Time of the last first access, in milliseconds after opening.
    pub last_access_ms: u64,
    /// Chunk indexes in prefetch order.
    pub order: Vec<u64>,
    /// Kernel readahead (KiB) the profile asks mounts to use, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_readahead_kb: Option<u32>,
}

/// Summarizes `profile`, comparing it with the manifest of `name` in `store`.
///
/// `provider` computes the manifest's public digest.
pub async fn profile_summary(
    store: &Store,
    name: &str,
    profile: &Profile,
    provider: &dyn CryptoProvider,
) -> ProfileSummary {
    let matches_manifest = match store.get_manifest(name).await {
        Ok(sealed) => Some(
            profile
                .check_image(
                    &hex::encode(sealed.public_digest(provider)),
                    sealed.image_size(),
                    sealed.chunk_size(),
                )
                .is_ok(),
        ),
        Err(_) => None,
    };
    ProfileSummary {
        image: profile.image.clone(),
        manifest_digest: profile.manifest_digest.clone(),
        matches_manifest,
        chunks: profile.chunks.len() as u64,
        window_ms: profile.window_ms,
        last_access_ms: profile.chunks.last().map_or(0, |c| c.at_ms),
        order: profile.chunk_indexes(),
        kernel_readahead_kb: profile.kernel_readahead_kb,
    }
}

/// Stores the chunk part of the profile in `file` as `profiles/NAME`;
/// refused unless it was recorded on `name`'s current manifest.
///
/// `provider` computes the manifest's public digest.
pub async fn save_profile(
    store: &Store,
    name: &str,
    file: &Path,
    provider: &dyn CryptoProvider,
) -> Result<Profile> {
    let profile = Profile::load(file).map_err(|e| Error::ProfileRead {
        what: file.display().to_string(),
        source: e.into(),
    })?;
    let sealed = store.get_manifest(name).await?;
    let digest = hex::encode(sealed.public_digest(provider));
    if let Err(why) = profile.check_image(&digest, sealed.image_size(), sealed.chunk_size()) {
        return Err(Error::ProfileRefused {
            file: file.to_path_buf(),
            name: name.to_string(),
            why: why.to_string(),
        });
    }
    if profile.chunks.is_empty() {
        return Err(Error::ProfileRefused {
            file: file.to_path_buf(),
            name: name.to_string(),
            why: "it lists no chunks (was anything read during the window?)".into(),
        });
    }
    let stored = profile.chunks_only();
    store.put_profile(name, &stored).await?;
    Ok(stored)
}

/// Reads a profile written by `lode mount --record-profile` and turns its
/// file part (which blocks of which paths a start read, in order) into the
/// flattener's hot list. Paths, not offsets, so a profile recorded on one
/// version of an image applies to the next one too.
pub fn hot_list_from_profile(path: &Path) -> Result<flattener::HotList> {
    let profile = Profile::load(path).map_err(|e| Error::ProfileRead {
        what: path.display().to_string(),
        source: e.into(),
    })?;
    let entries: Vec<flattener::HotEntry> = profile
        .files_as_ranges()
        .into_iter()
        .map(|(path, blocks)| flattener::HotEntry { path, blocks })
        .collect();
    if entries.is_empty() {
        return Err(Error::Profile {
            what: path.display().to_string(),
            problem: "it names no files (was it recorded with --file-only, or did nothing read the mount?)".into(),
        });
    }
    Ok(flattener::HotList { entries })
}

/// The prefetch profile a profile-guided push stores for its image: the
/// chunks of the hot region in order, then the chunks after it up to the end
/// of the image (directories, extent trees, inode tables and other metadata
/// the flattener writes there), holes skipped, all at 0 ms, with the kernel
/// readahead hint 0. `None` when the layout placed nothing (the image is the
/// plain one and needs no profile).
pub fn layout_prefetch_profile(
    name: &str,
    manifest_digest: &str,
    hot: &flattener::HotRegion,
    image_size: u64,
    chunk_size: u32,
    chunks: &[Option<ChunkRef>],
) -> Option<Profile> {
    if hot.len == 0 || chunk_size == 0 {
        return None;
    }
    let cs = u64::from(chunk_size);
    let first = hot.start / cs;
    let listed: Vec<worker::ChunkAccess> = (first..image_size.div_ceil(cs))
        .filter(|&i| {
            usize::try_from(i)
                .ok()
                .and_then(|i| chunks.get(i))
                .is_some_and(Option::is_some)
        })
        .map(|index| worker::ChunkAccess { index, at_ms: 0 })
        .collect();
    Some(Profile {
        version: worker::profile::PROFILE_VERSION,
        image: name.to_owned(),
        manifest_digest: manifest_digest.to_owned(),
        chunk_size,
        image_size,
        window_ms: 0,
        chunks: listed,
        files: Vec::new(),
        unmapped_blocks: 0,
        kernel_readahead_kb: Some(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u8) -> Option<ChunkRef> {
        Some(ChunkRef {
            name: chunk_core::ChunkName::from_bytes([i; 32]),
            key: chunk_core::ChunkKey::from_bytes([i; 32]),
        })
    }

    #[test]
    fn layout_profile_lists_hot_then_metadata_chunks_without_holes() {
        let cs = 1024u32;
        // Chunks 0-1 layers, 2-4 hot (3 a hole), 5-6 metadata (6 a hole), 7 metadata.
        let chunks = vec![
            chunk(0),
            chunk(1),
            chunk(2),
            None,
            chunk(4),
            chunk(5),
            None,
            chunk(7),
        ];
        let mut hot = flattener::HotRegion::default();
        hot.start = 2 * 1024;
        hot.len = 2 * 1024 + 100;
        let p = layout_prefetch_profile("app", &"ab".repeat(32), &hot, 8 * 1024 - 10, cs, &chunks)
            .unwrap();
        assert_eq!(p.chunk_indexes(), vec![2, 4, 5, 7]);
        assert!(p.chunks.iter().all(|c| c.at_ms == 0));
        assert_eq!(p.kernel_readahead_kb, Some(0));
        assert_eq!(p.image, "app");
        p.validate().unwrap();
        assert!(p.check_image(&"ab".repeat(32), 8 * 1024 - 10, cs).is_ok());

        // Nothing placed: no profile.
        hot.len = 0;
        assert!(
            layout_prefetch_profile("app", &"ab".repeat(32), &hot, 8192, cs, &chunks).is_none()
        );
    }
}
