//! `LazyImage` over the real tiers: a disk L1 in front of a local-directory
//! object store (what `lode mount --cache-dir` uses).

use std::collections::BTreeSet;
use std::sync::Arc;

use cache_tiers::{DiskTier, FillPolicy, ObjectStoreTier, Tier, Tiered};
use chunk_core::Salt;
use worker::{LazyImage, LazyImageOptions, MemorySource, TierId, TieredSource};

const CHUNK: usize = 64 * 1024;

async fn source(
    store_dir: &std::path::Path,
    cache_dir: &std::path::Path,
) -> (Arc<TieredSource>, Arc<DiskTier>) {
    let l1 = Arc::new(DiskTier::open(cache_dir, 64 << 20).await.unwrap());
    let store = ObjectStoreTier::local(store_dir, "chunks/").unwrap();
    let tiered = Tiered::builder()
        .tier_arc(l1.clone())
        .tier(store)
        .fill_policy(FillPolicy::None)
        .build()
        .unwrap();
    (Arc::new(TieredSource::new(tiered, 1)), l1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_l1_holds_exactly_the_fetched_chunks_and_serves_a_remount() {
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, cache_dir) = (tmp.path().join("store"), tmp.path().join("cache"));
    let mut rng = fastrand::Rng::with_seed(5);
    let data: Vec<u8> = (0..40 * CHUNK).map(|_| rng.u8(..)).collect();
    let salt = Salt::new(1, [9; 32]);
    let store = ObjectStoreTier::local(&store_dir, "chunks/").unwrap();
    let sealed = MemorySource::new(TierId::untrusted("sealer"));
    let table = sealed.insert_image(&data, CHUNK as u32, &salt).unwrap();
    for r in table.chunks.iter().flatten() {
        let ct = sealed.get(&r.name).unwrap();
        Tier::put(&store, &r.name.to_hex(), ct).await.unwrap();
    }
    let opts = LazyImageOptions::default().readahead_chunks(0);
    let reads = [
        (3 * CHUNK + 100, 5000),
        (17 * CHUNK - 10, 20),
        (30 * CHUNK, CHUNK),
    ];

    let (src, _) = source(&store_dir, &cache_dir).await;
    let image = LazyImage::new(table.clone(), src.clone(), opts.clone()).unwrap();
    for (off, len) in reads {
        let mut buf = vec![0u8; len];
        image.read_at(off as u64, &mut buf).await.unwrap();
        assert!(buf == data[off..off + len]);
    }
    let want: BTreeSet<u64> = [3, 16, 17, 30].into();
    let names: BTreeSet<String> = want
        .iter()
        .map(|&i| image.chunk_name(i).unwrap().to_hex())
        .collect();
    let disk = src.tiered().tiers()[0].clone();
    for i in 0..40 {
        let name = image.chunk_name(i).unwrap().to_hex();
        let cached = disk.get(&name).await.unwrap().is_some();
        assert_eq!(cached, names.contains(&name), "chunk {i} in L1");
    }
    let s = image.stats();
    assert_eq!(s.distinct_chunks_fetched, 4);
    let labels = src.labels();
    assert!(labels[0].trusted && !labels[1].trusted);
    assert_eq!(s.tiers[&labels[1].label].chunks, 4);

    // A remount with the warm cache: everything from L1, nothing from the store.
    let (src, disk) = source(&store_dir, &cache_dir).await;
    let image = LazyImage::new(table.clone(), src.clone(), opts.clone()).unwrap();
    // Corrupt one cached chunk on disk: it never reaches a reader; the
    // store serves it again.
    let bad = image.chunk_name(3).unwrap().to_hex();
    let path = disk.path_of(&bad);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    for (off, len) in reads {
        let mut buf = vec![0u8; len];
        image.read_at(off as u64, &mut buf).await.unwrap();
        assert!(buf == data[off..off + len]);
    }
    let s = image.stats();
    // Three from L1; the corrupted copy is rejected (by the disk tier's own
    // checksum, else by AES-GCM) and the store serves that chunk again.
    let from_disk = s.tiers[&labels[0].label].chunks;
    let from_store = s.tiers.get(&labels[1].label).map_or(0, |t| t.chunks);
    assert_eq!((from_disk - s.verify_failures, from_store), (3, 1), "{s:?}");
    assert_eq!(s.read_errors, 0);
}
