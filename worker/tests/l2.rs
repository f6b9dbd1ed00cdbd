//! `LazyImage` over a real erasure-coded L2 (five `memcached` processes)
//! in front of a store: bad bytes from L2 heal in the same read, bad bytes
//! from the store are counted and fail the read.

use std::sync::Arc;

use bytes::Bytes;
use cache_tiers::testing::{FaultyTier, MemcachedServer};
use cache_tiers::{
    ErasureCodedTier, FillPolicy, MemcachedConfig, MemcachedNode, MemoryTier, Node, Tier, Tiered,
};
use chunk_core::Salt;
use worker::{LazyImage, LazyImageOptions, MemorySource, TierId, TieredSource};

const CHUNK: usize = 64 * 1024;

/// Five memcached servers, or `None` (skipped) when memcached is missing.
fn servers() -> Option<Vec<MemcachedServer>> {
    (0..5).map(|_| MemcachedServer::start(16)).collect()
}

fn l2_over(servers: &[MemcachedServer]) -> Arc<ErasureCodedTier> {
    let nodes: Vec<Node> = servers
        .iter()
        .map(|s| {
            Arc::new(MemcachedNode::new(
                s.addr().to_string(),
                MemcachedConfig::default(),
            )) as Node
        })
        .collect();
    Arc::new(ErasureCodedTier::builder(nodes).name("l2").build().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_from_l2_are_refetched_from_the_store_in_the_same_read() {
    let Some(servers) = servers() else { return };
    let l2 = l2_over(&servers);
    let mut rng = fastrand::Rng::with_seed(12);
    let data: Vec<u8> = (0..4 * CHUNK).map(|_| rng.u8(..)).collect();
    let sealed = MemorySource::new(TierId::untrusted("sealer"));
    let table = sealed
        .insert_image(&data, CHUNK as u32, &Salt::new(1, [4; 32]))
        .unwrap();
    let memory: Arc<dyn Tier<String, Bytes>> = Arc::new(MemoryTier::new(64 << 20));
    for r in table.chunks.iter().flatten() {
        memory
            .put(&r.name.to_hex(), sealed.get(&r.name).unwrap())
            .await
            .unwrap();
    }
    let store = Arc::new(FaultyTier::new(memory.clone(), "store"));
    let tiered = Tiered::builder()
        .tier_arc(l2.clone())
        .tier_arc(store.clone())
        .fill_policy(FillPolicy::None)
        .build()
        .unwrap();
    let source = Arc::new(TieredSource::new(tiered, 0));
    let opts = LazyImageOptions::default()
        .readahead_chunks(0)
        .plaintext_cache_bytes(0);
    let image = LazyImage::new(table.clone(), source, opts).unwrap();
    let name = |i: u64| image.chunk_name(i).unwrap();

    // L2 holds well-framed but wrong bytes under chunk 1's name (chunk 2's
    // ciphertext: what a buggy or poisoned cache would answer).
    let wrong = sealed.get(&name(2)).unwrap();
    Tier::put(&*l2, &name(1).to_hex(), wrong.clone())
        .await
        .unwrap();
    assert_eq!(
        Tier::get(&*l2, &name(1).to_hex()).await.unwrap(),
        Some(wrong)
    );

    let mut buf = vec![0u8; CHUNK];
    image.read_at(CHUNK as u64, &mut buf).await.unwrap();
    assert!(buf == data[CHUNK..2 * CHUNK], "chunk 1 read wrong bytes");
    assert_eq!(
        store.gets(),
        1,
        "the store was asked once, in the same read"
    );
    // The bad L2 entry is gone; the verified bytes replaced it.
    let right = sealed.get(&name(1)).unwrap();
    assert_eq!(
        Tier::get(&*l2, &name(1).to_hex()).await.unwrap(),
        Some(right)
    );
    let s = image.stats();
    assert_eq!(
        (
            s.l2_integrity_failures,
            s.store_integrity_failures,
            s.chunk_errors,
            s.read_errors
        ),
        (1, 0, 0, 0),
        "{s:?}"
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["l2_integrity_failures"], 1);

    // Bad bytes in the store itself (the authority): the read fails, the
    // store is asked once (no pointless refetch), the event is counted.
    memory
        .put(&name(3).to_hex(), sealed.get(&name(0)).unwrap())
        .await
        .unwrap();
    let before = store.gets();
    assert!(image.read_at(3 * CHUNK as u64, &mut buf).await.is_err());
    assert_eq!(store.gets() - before, 1);
    let s = image.stats();
    assert_eq!(
        (
            s.l2_integrity_failures,
            s.store_integrity_failures,
            s.chunk_errors
        ),
        (1, 1, 1),
        "{s:?}"
    );
    // Nothing bad was cached in L2.
    assert_eq!(Tier::get(&*l2, &name(3).to_hex()).await.unwrap(), None);
}
