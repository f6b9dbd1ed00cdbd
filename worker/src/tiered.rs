//! [`ChunkSource`] over the real tiers of `cache-tiers`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cache_tiers::{Tier, Tiered};
use chunk_core::ChunkName;

use crate::error::{Chain, SourceError};
use crate::source::{ChunkSource, Fetched, TierId};

/// A [`ChunkSource`] over a [`Tiered`] cache keyed by the chunk name in hex
/// (the object key under the store's `chunks/` prefix).
///
/// Verified fill: build the `Tiered` with `FillPolicy::None`. This source
/// fills the tiers above the one that answered only in
/// [`accepted`](ChunkSource::accepted), i.e. after the worker checked the
/// name (for untrusted tiers) and AES-GCM authenticated the bytes. So the
/// top `trusted` tiers (the local L1: memory, disk) only ever hold verified
/// bytes and the worker may skip the name check for them. On bad bytes,
/// [`invalidate`](ChunkSource::invalidate) removes the chunk from every
/// tier except the last (the store is the authority and is never written).
pub struct TieredSource {
    tiered: Tiered<String, Bytes>,
    tiers: Vec<Arc<dyn Tier<String, Bytes>>>,
    labels: Vec<TierId>,
}

impl std::fmt::Debug for TieredSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredSource")
            .field("tiers", &self.labels)
            .finish_non_exhaustive()
    }
}

impl TieredSource {
    /// Wraps `tiered`; its top `trusted` tiers are local tiers filled only
    /// by this source (see the type docs). Labels are the tiers' names,
    /// made unique with `#index` when two tiers share a name.
    pub fn new(tiered: Tiered<String, Bytes>, trusted: usize) -> Self {
        let tiers = tiered.tiers();
        let names: Vec<String> = tiers.iter().map(|t| t.name().to_owned()).collect();
        let labels = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let label = if names.iter().filter(|m| *m == n).count() > 1 {
                    format!("{n}#{i}")
                } else {
                    n.clone()
                };
                TierId {
                    label,
                    trusted: i < trusted,
                }
            })
            .collect();
        Self {
            tiered,
            tiers,
            labels,
        }
    }

    /// The wrapped tiers (for their own statistics).
    pub fn tiered(&self) -> &Tiered<String, Bytes> {
        &self.tiered
    }

    /// The labels used in [`Stats::tiers`](crate::Stats::tiers), top first.
    pub fn labels(&self) -> &[TierId] {
        &self.labels
    }
}

#[async_trait]
impl ChunkSource for TieredSource {
    async fn fetch(&self, name: &ChunkName) -> Result<Fetched, SourceError> {
        match self.tiered.get(&name.to_hex()).await {
            Ok(Some((bytes, i))) => Ok(Fetched {
                bytes,
                tier: self
                    .labels
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| TierId::untrusted(format!("tier#{i}"))),
            }),
            Ok(None) => Err(SourceError::NotFound { name: *name }),
            Err(e) => Err(SourceError::Tier {
                tier: e.tier().unwrap_or("tiers").to_owned(),
                source: Box::new(e),
            }),
        }
    }

    async fn invalidate(&self, name: &ChunkName) {
        let key = name.to_hex();
        let caches = self.tiers.len().saturating_sub(1);
        for tier in &self.tiers[..caches] {
            if let Err(e) = tier.remove(&key).await {
                tracing::warn!(tier = tier.name(), chunk = %name, error = %Chain(&e), "could not drop a bad cached chunk");
            }
        }
    }

    fn is_authority(&self, tier: &TierId) -> bool {
        self.labels.last() == Some(tier)
    }

    async fn accepted(&self, name: &ChunkName, fetched: &Fetched) {
        let Some(answered) = self.labels.iter().position(|l| *l == fetched.tier) else {
            return;
        };
        let key = name.to_hex();
        for tier in &self.tiers[..answered] {
            if let Err(e) = tier.put(&key, fetched.bytes.clone()).await {
                tracing::warn!(tier = tier.name(), chunk = %name, error = %Chain(&e), "cache fill failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cache_tiers::{FillPolicy, MemoryTier};
    use chunk_core::Salt;

    use super::*;
    use crate::{LazyImage, LazyImageOptions, MemorySource, TierId};

    #[tokio::test]
    async fn fills_l1_only_with_verified_bytes() {
        let salt = Salt::new(1, [3; 32]);
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8 + 1).collect();
        // A second memory tier stands in for the store.
        let store = MemoryTier::new(1 << 20);
        let sealed = MemorySource::new(TierId::untrusted("sealer"));
        let table = sealed.insert_image(&data, 4096, &salt).unwrap();
        for r in table.chunks.iter().flatten() {
            let ct = sealed.get(&r.name).unwrap();
            Tier::put(&store, &r.name.to_hex(), ct).await.unwrap();
        }
        // Chunk 2 is corrupted in the store.
        let bad = table.chunks[2].as_ref().unwrap().name;
        Tier::put(&store, &bad.to_hex(), Bytes::from_static(b"garbage"))
            .await
            .unwrap();
        let l1 = Arc::new(MemoryTier::new(1 << 20));
        let tiered = Tiered::builder()
            .tier_arc(l1.clone())
            .tier(store)
            .fill_policy(FillPolicy::None)
            .build()
            .unwrap();
        let source = Arc::new(TieredSource::new(tiered, 1));
        assert!(source.labels()[0].trusted && !source.labels()[1].trusted);
        let opts = LazyImageOptions::default()
            .readahead_chunks(0)
            .plaintext_cache_bytes(0);
        let image = LazyImage::new(table, source.clone(), opts).unwrap();
        let mut buf = vec![0u8; 8192];
        assert_eq!(image.read_at(0, &mut buf).await.unwrap(), 8192);
        assert_eq!(&buf[..], &data[..8192]);
        // Verified chunks were filled into L1; the corrupt one was not.
        let l1_key = |i: usize| image_name(&image, i);
        assert!(Tier::get(&*l1, &l1_key(0)).await.unwrap().is_some());
        assert!(Tier::get(&*l1, &l1_key(1)).await.unwrap().is_some());
        assert!(image.read_at(8192, &mut buf).await.is_err());
        assert!(Tier::get(&*l1, &bad.to_hex()).await.unwrap().is_none());
        // Second read of chunk 0 comes from L1 (trusted).
        image.read_at(0, &mut buf[..10]).await.unwrap();
        let s = image.stats();
        assert_eq!(source.labels()[0].label, "memory#0");
        assert_eq!(s.tiers["memory#0"].chunks, 1, "{s:?}");
        assert_eq!(s.tiers[&source.labels()[1].label].chunks, 3, "{s:?}");
    }

    fn image_name(image: &LazyImage, i: usize) -> String {
        image.chunk_name(i as u64).unwrap().to_hex()
    }
}
