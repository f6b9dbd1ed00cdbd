//! `lode profile save|show|rm`: prefetch profiles stored beside manifests.
//!
//! A profile recorded by `lode mount --record-profile FILE` holds the chunks
//! read in the first seconds (index and time) and the files they belong to.
//! `save` stores only the chunk part under `profiles/NAME` (no paths, nothing
//! secret: chunk indexes of a manifest anyone with read access can list), and
//! only when the profile was recorded on the manifest `NAME` has now. A
//! `kernel_readahead_kb` hint in the file is kept, and `show` prints it.
//! `lode push --layout-profile` stores such a profile itself.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use worker::profile::Profile;

use crate::store::{PROFILES, Store};

/// What `lode profile show --json` prints, and `lode inspect` includes.
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
pub async fn summary(store: &Store, name: &str, profile: &Profile) -> ProfileSummary {
    let matches_manifest = match store.get_manifest(name).await {
        Ok(sealed) => Some(
            profile
                .check_image(
                    &hex::encode(sealed.public_digest()),
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

/// Stores the chunk part of the profile in `file` as `profiles/NAME`.
pub async fn save(store: &Store, name: &str, file: &std::path::Path) -> Result<Profile> {
    let profile = Profile::load(file)?;
    let sealed = store.get_manifest(name).await?;
    let digest = hex::encode(sealed.public_digest());
    if let Err(why) = profile.check_image(&digest, sealed.image_size(), sealed.chunk_size()) {
        bail!(
            "refusing profile {} for image {name}: {why}",
            file.display()
        );
    }
    if profile.chunks.is_empty() {
        bail!(
            "refusing profile {}: it lists no chunks (was anything read during the window?)",
            file.display()
        );
    }
    let stored = profile.chunks_only();
    store
        .put_profile(name, &stored)
        .await
        .with_context(|| format!("saving the profile of {name}"))?;
    Ok(stored)
}

/// Deletes `profiles/NAME`; fails when there is none.
pub async fn rm(store: &Store, name: &str) -> Result<()> {
    crate::store::check_image_name(name)?;
    if store.get_under(PROFILES, name).await?.is_none() {
        bail!("no profile for {name:?} in {}", store.url);
    }
    store.delete_under(PROFILES, name).await
}

/// Human-readable summary.
pub fn print_summary(name: &str, s: &ProfileSummary) {
    println!("profile of {name}");
    println!(
        "  manifest      {} ({})",
        s.manifest_digest,
        match s.matches_manifest {
            Some(true) => "the current manifest",
            Some(false) => "STALE: the image was pushed again; record a new profile",
            None => "no such manifest",
        }
    );
    println!(
        "  chunks        {} first read within {} ms (window {} ms)",
        s.chunks, s.last_access_ms, s.window_ms
    );
    match s.kernel_readahead_kb {
        Some(kb) => println!(
            "  readahead     {kb} KiB (lode mount uses it unless --kernel-readahead-kb is given)"
        ),
        None => println!(
            "  readahead     no hint (lode mount uses --kernel-readahead-kb, else 128 KiB)"
        ),
    }
    let head: Vec<String> = s.order.iter().take(32).map(u64::to_string).collect();
    let more = if s.order.len() > 32 { " ..." } else { "" };
    println!("  order         {}{more}", head.join(" "));
}
