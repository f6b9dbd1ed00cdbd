//! Loading one chunk: fetch from the source (with a timeout), name check
//! for untrusted tiers, decryption, a refetch from the tiers below when a
//! cache tier's bytes are bad, and the log lines that name a bad or
//! unavailable chunk.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use chunk_core::ChunkRef;

use super::{Inner, Verify, set_bit};
use crate::crypto;
use crate::error::{Chain, ChunkError};

/// Fetches, verifies and decrypts one chunk; when bytes from a cache tier
/// (trusted L1 or untrusted L2) turn out bad, drops them and fetches again
/// from the tiers below, in the same load. Bad bytes from the authority
/// (the store) fail the load and are logged once per chunk.
pub(super) async fn load(inner: &Arc<Inner>, index: u64) -> Result<Bytes, ChunkError> {
    let Some(chunk) = inner.table.chunks[index as usize].clone() else {
        return Err(ChunkError::TaskFailed("hole fetched".into()));
    };
    let expected = inner.table.chunk_len(index);
    let c = &inner.counters;
    let t0 = Instant::now();
    // Tiers that answered bad bytes in this load (each is skipped once).
    let mut failed: Vec<String> = Vec::new();
    loop {
        let t_fetch = Instant::now();
        let timeout = inner.opts.fetch_timeout;
        let fetched = match tokio::time::timeout(timeout, inner.source.fetch(&chunk.name)).await {
            Ok(Ok(f)) => f,
            other => {
                c.chunk_errors.fetch_add(1, Relaxed);
                let err = match other {
                    Ok(Err(e)) => ChunkError::Fetch(e),
                    _ => ChunkError::Timeout { after: timeout },
                };
                log_chunk_error(inner, index, &chunk, &err);
                return Err(err);
            }
        };
        c.tier_fetched(
            &fetched.tier.label,
            fetched.bytes.len() as u64,
            t_fetch.elapsed(),
        );
        let check = !fetched.tier.trusted || inner.opts.verify == Verify::Always;
        let label = fetched.tier.label.clone();
        // The source may need the ciphertext after opening (to fill L1), so
        // decryption works on a copy when the bytes are shared.
        let ct = fetched.bytes.clone();
        let key_ref = chunk.clone();
        let provider = inner.opts.crypto;
        let opened = tokio::task::spawn_blocking(move || {
            crypto::open(provider, &key_ref, ct, check, &label)
        })
        .await
        .map_err(|e| ChunkError::TaskFailed(e.to_string()))
        .and_then(|r| r);
        let err = match opened {
            Ok(plain)
                if plain.len() == expected || plain.len() == inner.table.chunk_size as usize =>
            {
                let mut plain = plain;
                plain.truncate(expected);
                c.chunks_fetched.fetch_add(1, Relaxed);
                c.chunk_latency.record(t0.elapsed());
                if set_bit(&inner.seen, index) {
                    c.distinct_chunks_fetched.fetch_add(1, Relaxed);
                }
                inner.source.accepted(&chunk.name, &fetched).await;
                return Ok(Bytes::from(plain));
            }
            Ok(plain) => ChunkError::WrongLength {
                expected,
                actual: plain.len(),
            },
            Err(e) => e,
        };
        c.verify_failures.fetch_add(1, Relaxed);
        // Bad bytes must not stay in a cache tier.
        inner.source.invalidate(&chunk.name).await;
        let tier = &fetched.tier;
        if tier.trusted {
            log_chunk_error(inner, index, &chunk, &err);
        } else if !inner.source.is_authority(tier) {
            // An untrusted cache (L2) answered wrong bytes: its entry is
            // dropped above and the tiers below answer in this same read.
            c.l2_integrity_failures.fetch_add(1, Relaxed);
            if c.first_integrity_event(index, false) {
                tracing::warn!(
                    chunk = %chunk.name,
                    chunk_index = index,
                    offset = index * u64::from(inner.table.chunk_size),
                    tier = %tier.label,
                    error = %Chain(&err),
                    "L2 integrity event: cached chunk had bad bytes; dropped it and fetching from the store"
                );
            }
        } else {
            c.store_integrity_failures.fetch_add(1, Relaxed);
            if c.first_integrity_event(index, true) {
                tracing::error!(
                    chunk = %chunk.name,
                    chunk_index = index,
                    offset = index * u64::from(inner.table.chunk_size),
                    tier = %tier.label,
                    error = %Chain(&err),
                    "bad chunk in the store: reads of it fail; run `lode verify NAME` (or `lode verify --all`) to find the images that use it and `--delete-bad` so the next push uploads it again"
                );
            }
        }
        // Each tier below the authority gets one chance to be wrong per load.
        let retry = !inner.source.is_authority(tier) && !failed.contains(&tier.label);
        if retry {
            failed.push(tier.label.clone());
            continue;
        }
        c.chunk_errors.fetch_add(1, Relaxed);
        return Err(err);
    }
}

/// The one log line an operator needs to find a bad chunk: its name, index,
/// image offset, the tier that answered (or that none did) and the whole
/// error chain (the top-level message alone is often just "fetch failed").
fn log_chunk_error(inner: &Inner, index: u64, chunk: &ChunkRef, err: &ChunkError) {
    tracing::error!(
        chunk = %chunk.name,
        chunk_index = index,
        offset = index * u64::from(inner.table.chunk_size),
        tier = error_tier(err),
        error = %Chain(err),
        "chunk unavailable"
    );
}

/// Which tier a chunk error came from, as far as the error tells.
fn error_tier(err: &ChunkError) -> &str {
    use crate::error::SourceError;
    match err {
        ChunkError::Fetch(SourceError::Tier { tier, .. })
        | ChunkError::NameMismatch { tier, .. }
        | ChunkError::Decrypt { tier, .. } => tier,
        ChunkError::Fetch(SourceError::NotFound { .. }) => "none (in no tier)",
        ChunkError::Timeout { .. } => "none (no answer)",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use chunk_core::{ChunkKey, ChunkName};

    use super::*;
    use crate::LazyImage;
    use crate::error::{Error, SourceError};
    use crate::image::test_support::*;
    use crate::source::{ChunkSource, Fault, MemorySource, TierId, lock};

    #[test]
    fn chain_names_the_tier_and_the_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = ChunkError::Fetch(SourceError::Tier {
            tier: "store".into(),
            source: Box::new(io),
        });
        assert_eq!(error_tier(&err), "store");
        assert_eq!(
            Chain(&err).to_string(),
            "fetch failed: tier store failed: no such file"
        );
        // What a read returns: the chunk, then each cause once.
        let name = ChunkName::from_bytes([2; 32]);
        let read = Error::Chunk {
            index: 3,
            name,
            offset: 3 * u64::from(CS),
            source: Arc::new(err),
        };
        assert_eq!(
            Chain(&read).to_string(),
            format!(
                "chunk 3 ({name}) at image offset 12288: fetch failed: tier store failed: no such file"
            )
        );
        let missing = ChunkError::Fetch(SourceError::NotFound {
            name: ChunkName::from_bytes([1; 32]),
        });
        assert_eq!(error_tier(&missing), "none (in no tier)");
        let text = Chain(&missing).to_string();
        assert_eq!(text.matches(&"01".repeat(32)).count(), 1, "{text}");
    }

    #[tokio::test]
    async fn corrupted_remote_chunk_fails_naming_the_chunk() {
        let (_data, source, image) = setup(
            6 * CS as usize,
            &[],
            TierId::untrusted("store"),
            no_readahead(),
        );
        let bad = name_of(&image, 3);
        source.set_fault(bad, Some(Fault::Corrupt));
        let mut buf = vec![0u8; 10];
        let err = image
            .read_at(3 * u64::from(CS) + 5, &mut buf)
            .await
            .unwrap_err();
        match &err {
            Error::Chunk {
                index,
                name,
                offset,
                source,
            } => {
                assert_eq!((*index, *name, *offset), (3, bad, 3 * u64::from(CS)));
                assert!(
                    matches!(**source, ChunkError::NameMismatch { .. }),
                    "{source:?}"
                );
            }
            other => panic!("unexpected error {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("chunk 3") && text.contains(&bad.to_hex()),
            "{text}"
        );
        // Neighbours still read; the error is counted.
        assert_eq!(image.read_at(0, &mut buf).await.unwrap(), 10);
        let s = image.stats();
        assert_eq!(
            (s.read_errors, s.chunk_errors, s.verify_failures),
            (1, 1, 1)
        );
        // Once the store is repaired the chunk reads (errors are not cached).
        source.set_fault(bad, None);
        assert_eq!(
            image.read_at(3 * u64::from(CS), &mut buf).await.unwrap(),
            10
        );
    }

    #[tokio::test]
    async fn wrong_key_missing_chunk_and_unreachable_store_are_errors() {
        let (_data, source, image) = setup(
            4 * CS as usize,
            &[],
            TierId::untrusted("store"),
            no_readahead(),
        );
        // Wrong key: a table with the right names but other keys.
        let mut table = image.inner.table.clone();
        for c in table.chunks.iter_mut().flatten() {
            c.key = ChunkKey::from_bytes([9; 32]);
        }
        let wrong = LazyImage::new(table, source.clone(), no_readahead()).unwrap();
        let mut buf = vec![0u8; 10];
        let err = wrong.read_at(0, &mut buf).await.unwrap_err();
        assert!(
            matches!(&err, Error::Chunk { index: 0, source, .. } if matches!(**source, ChunkError::Decrypt { .. })),
            "{err:?}"
        );

        source.remove(&name_of(&image, 1));
        let err = image.read_at(u64::from(CS), &mut buf).await.unwrap_err();
        assert!(
            matches!(&err, Error::Chunk { index: 1, source, .. }
            if matches!(&**source, ChunkError::Fetch(SourceError::NotFound { .. }))),
            "{err:?}"
        );

        source.set_fault(name_of(&image, 2), Some(Fault::Unavailable));
        let err = image
            .read_at(2 * u64::from(CS), &mut buf)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Chunk { index: 2, source, .. }
            if matches!(&**source, ChunkError::Fetch(SourceError::Tier { .. }))),
            "{err:?}"
        );
    }

    /// A trusted tier (L1) that returns corrupted bytes until invalidated.
    struct FlakyL1 {
        inner: MemorySource,
        bad: Mutex<bool>,
    }

    #[async_trait::async_trait]
    impl ChunkSource for FlakyL1 {
        async fn fetch(&self, name: &ChunkName) -> Result<crate::Fetched, SourceError> {
            let mut f = self.inner.fetch(name).await?;
            if *lock(&self.bad) {
                let mut v = f.bytes.to_vec();
                v[0] ^= 1;
                f.bytes = Bytes::from(v);
                f.tier = TierId::trusted("disk");
            }
            Ok(f)
        }
        async fn invalidate(&self, _name: &ChunkName) {
            *lock(&self.bad) = false;
        }
    }

    #[tokio::test]
    async fn bad_bytes_from_trusted_tier_are_invalidated_and_refetched() {
        let data = image_bytes(2 * CS as usize, &[], 3);
        let mem = MemorySource::new(TierId::untrusted("store"));
        let table = seal_into(&data, &mem);
        let source = Arc::new(FlakyL1 {
            inner: mem,
            bad: Mutex::new(true),
        });
        let image = LazyImage::new(table, source.clone(), no_readahead()).unwrap();
        let mut buf = vec![0u8; CS as usize];
        assert_eq!(image.read_at(0, &mut buf).await.unwrap(), CS as usize);
        assert_eq!(&buf[..], &data[..CS as usize]);
        let s = image.stats();
        assert_eq!(
            (s.verify_failures, s.chunk_errors, s.chunks_fetched),
            (1, 0, 1)
        );
        assert_eq!(s.tiers["disk"].chunks, 1);
        assert_eq!(s.tiers["store"].chunks, 1);
    }

    #[tokio::test]
    async fn a_hanging_store_fails_the_read_after_the_timeout() {
        let data = image_bytes(2 * CS as usize, &[], 4);
        let source = Arc::new(
            MemorySource::new(TierId::untrusted("store")).with_latency(Duration::from_secs(30)),
        );
        let table = seal_into(&data, &source);
        let opts = no_readahead().fetch_timeout(Duration::from_millis(100));
        let image = LazyImage::new(table, source, opts).unwrap();
        let t0 = Instant::now();
        let mut buf = vec![0u8; 10];
        let err = image.read_at(0, &mut buf).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(&err, Error::Chunk { index: 0, source, .. } if matches!(**source, ChunkError::Timeout { .. })),
            "{err:?}"
        );
    }
}
