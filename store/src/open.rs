//! Opening an image for serving: manifest + key service + cache tiers →
//! [`worker::LazyImage`], and starting the prefetch of its stored profile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_tiers::{
    Delayed, DiskTier, ErasureCodedTier, FillPolicy, MemcachedConfig, MemcachedNode, Node,
    QueuedPuts, Tier, Tiered,
};
use chunk_core::CryptoProvider;
use kms_envelope::{Kms, LocalKms};
use worker::{LazyImage, LazyImageOptions, TieredSource};

use crate::error::{Error, Result};
use crate::layout::{PROFILES, Store};
use crate::url::KmsUrl;

/// Opens the key service named by `url` (the master key id is [`KmsUrl::key_id`]).
///
/// A local keyring runs its crypto on `provider` (the same backend as the
/// chunks); AWS KMS does its crypto server-side.
pub fn open_kms(url: &KmsUrl, provider: &'static dyn CryptoProvider) -> Result<Arc<dyn Kms>> {
    let err = |e: kms_envelope::Error| Error::Kms {
        spec: url.to_string(),
        source: e.into(),
    };
    match url {
        KmsUrl::Local { path, .. } => Ok(Arc::new(LocalKms::open(provider, path).map_err(err)?)),
        #[cfg(feature = "aws")]
        KmsUrl::Aws { .. } => Ok(Arc::new(kms_envelope::AwsKms::from_env().map_err(err)?)),
        #[cfg(not(feature = "aws"))]
        KmsUrl::Aws { .. } => Err(Error::InvalidKmsSpec {
            spec: url.to_string(),
            reason: "this build has no AWS support (feature `aws`)".into(),
        }),
    }
}

/// The shared L2 cache: erasure-coded over memcached nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct L2Config {
    /// `host:port` of each memcached node.
    pub nodes: Vec<String>,
    /// Data shards (k).
    pub data: usize,
    /// Parity shards (n - k).
    pub parity: usize,
}

impl L2Config {
    /// `data`+`parity` shards over `nodes` (at least `data + parity` of them).
    pub fn new(nodes: Vec<String>, data: usize, parity: usize) -> Self {
        Self {
            nodes,
            data,
            parity,
        }
    }
}

/// The cache tiers in front of the store.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TierConfig {
    /// L1 disk cache directory (none: no L1 on disk).
    pub cache_dir: Option<PathBuf>,
    /// L1 disk cache size in bytes.
    pub cache_size: u64,
    /// Optional L2.
    pub l2: Option<L2Config>,
    /// Added delay of every chunk GET from the store (benchmarks and fault tests).
    pub store_latency: Option<Duration>,
}

impl TierConfig {
    /// No L1 disk, no L2: reads go to the store (and the image's memory cache).
    pub fn store_only() -> Self {
        Self::default()
    }

    /// With an L1 disk cache in `dir` of `size` bytes.
    pub fn cache_dir(mut self, dir: Option<PathBuf>, size: u64) -> Self {
        self.cache_dir = dir;
        self.cache_size = size;
        self
    }

    /// With an L2.
    pub fn l2(mut self, l2: Option<L2Config>) -> Self {
        self.l2 = l2;
        self
    }

    /// With an added store latency.
    pub fn store_latency(mut self, delay: Option<Duration>) -> Self {
        self.store_latency = delay;
        self
    }
}

/// An image opened for serving, with what it was opened from.
#[derive(Debug)]
#[non_exhaustive]
pub struct Opened {
    /// The lazily served image.
    pub image: LazyImage,
    /// Its sealed manifest (public part readable).
    pub sealed: manifest::SealedManifest,
    /// The store it came from.
    pub store: Store,
    /// The crypto backend the image was opened with.
    crypto: &'static dyn CryptoProvider,
}

impl Opened {
    /// Hex public digest of the manifest (what profiles are bound to).
    pub fn digest(&self) -> String {
        hex::encode(self.sealed.public_digest(self.crypto))
    }
}

/// How long a worker that missed a chunk in L2 waits for another worker
/// already fetching it from the store (its "being fetched" marker) before
/// fetching it itself: several store round trips, well under a read's patience.
const L2_MARKER_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Opens the image `name` of `store` lazily over L1 disk (when configured),
/// the optional L2 and the store, its keys unwrapped by `kms`.
pub async fn open_image(
    store: &Store,
    name: &str,
    kms: &dyn Kms,
    tiers: &TierConfig,
    opts: LazyImageOptions,
) -> Result<Opened> {
    let sealed = store.get_manifest(name).await?;
    let tiers_err = |what: String| {
        move |e: cache_tiers::Error| Error::Tiers {
            what,
            source: e.into(),
        }
    };
    let mut builder = Tiered::<String, Bytes>::builder();
    // The worker fills upper tiers itself, only with verified chunks.
    builder = builder.fill_policy(FillPolicy::None);
    let mut trusted = 0;
    if let Some(dir) = &tiers.cache_dir {
        let disk = DiskTier::open(dir, tiers.cache_size)
            .await
            .map_err(tiers_err(format!(
                "opening the L1 cache in {}",
                dir.display()
            )))?;
        builder = builder.tier(disk);
        trusted = 1;
    }
    if let Some(l2) = &tiers.l2 {
        let nodes: Vec<Node> = l2
            .nodes
            .iter()
            .map(|addr| {
                Arc::new(MemcachedNode::new(addr.clone(), MemcachedConfig::default())) as Node
            })
            .collect();
        let tier = ErasureCodedTier::builder(nodes)
            .data_shards(l2.data)
            .parity_shards(l2.parity)
            .build()
            .map_err(tiers_err("configuring the L2 cache".into()))?;
        // Fills of L2 never delay a read: queued, dropped when the queue is full.
        builder = builder.tier(QueuedPuts::new(Arc::new(tier), 1024, 32));
        // Cold workers missing the same chunk at once make one store GET: the
        // others wait (up to L2_MARKER_WAIT) for its fill of L2.
        builder = builder.fetch_markers(Some(L2_MARKER_WAIT));
    }
    // A chunk GET reads at most one sealed chunk of this image.
    let l3: Arc<dyn Tier<String, Bytes>> = Arc::new(
        store
            .chunks()
            .as_ref()
            .clone()
            .with_max_object_size(u64::from(sealed.chunk_size()) + chunk_core::TAG_LEN as u64),
    );
    builder = match tiers.store_latency {
        Some(delay) if !delay.is_zero() => builder.tier(Delayed::new(l3, delay)),
        _ => builder.tier_arc(l3),
    };
    let tiered = builder
        .build()
        .map_err(tiers_err("building the cache tiers".into()))?;
    let source = Arc::new(TieredSource::new(tiered, trusted));
    let crypto = opts.crypto;
    let image = LazyImage::open(&sealed, name, kms, source, opts)
        .await
        .map_err(|e| Error::OpenImage {
            name: name.to_string(),
            source: e.into(),
        })?;
    Ok(Opened {
        image,
        sealed,
        store: store.clone(),
        crypto,
    })
}

/// The image config sealed in the manifest of `name` (entrypoint, cmd,
/// env, workdir, user, ...), opened with `kms`; empty for images pushed
/// before configs were kept.
pub async fn image_config(
    store: &Store,
    name: &str,
    kms: &dyn Kms,
    crypto: &dyn chunk_core::CryptoProvider,
) -> Result<manifest::ImageConfig> {
    let sealed = store.get_manifest(name).await?;
    let (_, config) = sealed
        .open_with_config(crypto, kms, &manifest::image_context(name))
        .await
        .map_err(|e| Error::OpenImage {
            name: name.to_string(),
            source: e.into(),
        })?;
    Ok(config.unwrap_or_default())
}

/// Whether and how to prefetch a stored profile at open.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Prefetch {
    /// Prefetch when `profiles/NAME` exists and fits the manifest.
    pub enabled: bool,
    /// Chunk fetches in flight at once.
    pub concurrency: usize,
}

impl Prefetch {
    /// Prefetch (or not) with this many fetches in flight (at least 1).
    pub fn new(enabled: bool, concurrency: usize) -> Self {
        Self {
            enabled,
            concurrency: concurrency.max(1),
        }
    }
}

/// What [`start_prefetch`] found and did. The caller decides how to tell
/// the user: the two refusals are warnings worth printing.
#[derive(Debug)]
#[non_exhaustive]
pub enum PrefetchStart {
    /// No `profiles/NAME` is stored.
    NoProfile,
    /// The stored profile could not be read or parsed.
    Unreadable(Error),
    /// The stored profile belongs to another manifest or image geometry.
    Unfit {
        /// Where it is stored (`profiles/NAME`).
        profile: String,
        /// Why it does not fit.
        why: worker::ProfileMismatch,
    },
    /// The profile fits; prefetch is off, only its hints apply.
    Disabled {
        /// The profile's kernel readahead hint (KiB).
        kernel_readahead_kb: Option<u32>,
    },
    /// Prefetching runs in the background.
    Started {
        /// Chunks being prefetched.
        chunks: usize,
        /// Fetches in flight at once.
        concurrency: usize,
        /// The profile's kernel readahead hint (KiB).
        kernel_readahead_kb: Option<u32>,
    },
}

impl PrefetchStart {
    /// The stored profile's kernel readahead hint (KiB), when it fits.
    pub fn kernel_readahead_kb(&self) -> Option<u32> {
        match self {
            Self::Disabled {
                kernel_readahead_kb,
            }
            | Self::Started {
                kernel_readahead_kb,
                ..
            } => *kernel_readahead_kb,
            _ => None,
        }
    }
}

/// Loads the stored profile of `name` when there is one that fits the
/// manifest, and starts prefetching its chunks in the background unless
/// prefetch is off. Nothing here fails the open: a missing, unreadable or
/// stale profile is reported in the returned [`PrefetchStart`].
pub async fn start_prefetch(opened: &Opened, name: &str, prefetch: Prefetch) -> PrefetchStart {
    let profile = match opened.store.get_profile(name).await {
        Ok(Some(p)) => p,
        Ok(None) => return PrefetchStart::NoProfile,
        Err(e) => return PrefetchStart::Unreadable(e),
    };
    if let Err(why) = profile.check_image(
        &opened.digest(),
        opened.sealed.image_size(),
        opened.sealed.chunk_size(),
    ) {
        return PrefetchStart::Unfit {
            profile: format!("{PROFILES}/{name}"),
            why,
        };
    }
    if !prefetch.enabled {
        return PrefetchStart::Disabled {
            kernel_readahead_kb: profile.kernel_readahead_kb,
        };
    }
    let chunks = profile.chunk_indexes();
    let n = chunks.len();
    // The report also lands in the stats; the task runs on by itself.
    drop(opened.image.prefetch(chunks, prefetch.concurrency));
    PrefetchStart::Started {
        chunks: n,
        concurrency: prefetch.concurrency,
        kernel_readahead_kb: profile.kernel_readahead_kb,
    }
}

/// Why a kernel readahead was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadaheadSource {
    /// `--kernel-readahead-kb` or `LODE_KERNEL_READAHEAD_KB`.
    Flag,
    /// The `kernel_readahead_kb` hint of the image's stored profile.
    Profile,
    /// Neither: [`worker::DEFAULT_KERNEL_READAHEAD_KB`].
    Default,
}

/// The kernel readahead to use: the flag (or its env variable) if given,
/// else the stored profile's hint, else [`worker::DEFAULT_KERNEL_READAHEAD_KB`].
pub fn kernel_readahead(flag: Option<u32>, profile_hint: Option<u32>) -> (u32, ReadaheadSource) {
    match (flag, profile_hint) {
        (Some(kb), _) => (kb, ReadaheadSource::Flag),
        (None, Some(kb)) => (kb, ReadaheadSource::Profile),
        (None, None) => (
            worker::DEFAULT_KERNEL_READAHEAD_KB,
            ReadaheadSource::Default,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_readahead_flag_then_profile_then_default() {
        assert_eq!(
            kernel_readahead(Some(64), Some(0)),
            (64, ReadaheadSource::Flag)
        );
        assert_eq!(kernel_readahead(Some(0), None), (0, ReadaheadSource::Flag));
        assert_eq!(
            kernel_readahead(None, Some(0)),
            (0, ReadaheadSource::Profile)
        );
        assert_eq!(
            kernel_readahead(None, None),
            (
                worker::DEFAULT_KERNEL_READAHEAD_KB,
                ReadaheadSource::Default
            )
        );
    }
}
