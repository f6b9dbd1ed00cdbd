//! The composition: order, fills, errors, single flight, stats.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_tiers::testing::FaultyTier;
use cache_tiers::{FillPolicy, MemoryTier, ObjectStoreTier, Tier, Tiered};

struct Stack {
    l1: Arc<MemoryTier>,
    l2: Arc<MemoryTier>,
    l3: Arc<FaultyTier>,
    cache: Tiered<String, Bytes>,
}

async fn stack(fill: FillPolicy) -> Stack {
    let l1 = Arc::new(MemoryTier::new(1 << 20).with_name("l1"));
    let l2 = Arc::new(MemoryTier::new(1 << 20).with_name("l2"));
    let store: Arc<dyn Tier<String, Bytes>> = Arc::new(ObjectStoreTier::in_memory("c/"));
    for i in 0..10 {
        store
            .put(&format!("k{i}"), Bytes::from(format!("value {i}")))
            .await
            .unwrap();
    }
    let l3 = Arc::new(FaultyTier::new(store, "l3"));
    let cache = Tiered::builder()
        .tier_arc(l1.clone())
        .tier_arc(l2.clone())
        .tier_arc(l3.clone())
        .fill_policy(fill)
        .build()
        .unwrap();
    Stack { l1, l2, l3, cache }
}

#[tokio::test]
async fn fill_all_promotes_to_every_upper_tier() {
    let s = stack(FillPolicy::All).await;
    let k = "k1".to_string();
    let (v, tier) = s.cache.get(&k).await.unwrap().unwrap();
    assert_eq!((v.as_ref(), tier), (&b"value 1"[..], 2));
    assert!(s.l1.contains(&k) && s.l2.contains(&k));
    assert_eq!(s.cache.get(&k).await.unwrap().unwrap().1, 0);
    assert_eq!(s.l3.gets(), 1);
    // A miss everywhere is None.
    assert!(s.cache.get(&"nope".to_string()).await.unwrap().is_none());
    let st = s.cache.stats();
    assert_eq!((st[0].hits, st[0].misses), (1, 2));
    assert_eq!((st[1].hits, st[1].misses), (0, 2));
    assert_eq!((st[2].hits, st[2].misses), (1, 1));
    assert_eq!(st[2].bytes_read, 7);
    assert_eq!((st[0].fills, st[1].fills), (1, 1));
    assert_eq!(st[2].get_latency.count, 2);
    assert!(st[2].get_latency.p99 >= st[2].get_latency.p50);
}

#[tokio::test]
async fn fill_none_and_only_some() {
    let s = stack(FillPolicy::None).await;
    let k = "k2".to_string();
    s.cache.get(&k).await.unwrap().unwrap();
    assert!(!s.l1.contains(&k) && !s.l2.contains(&k));

    let s = stack(FillPolicy::Only(vec![1])).await;
    assert_eq!(s.cache.get(&k).await.unwrap().unwrap().1, 2);
    assert!(!s.l1.contains(&k) && s.l2.contains(&k));
    assert_eq!(s.cache.get(&k).await.unwrap().unwrap().1, 1);

    let bad = Tiered::<String, Bytes>::builder()
        .tier(MemoryTier::new(10))
        .fill_policy(FillPolicy::Only(vec![3]))
        .build();
    assert!(bad.is_err());
}

#[tokio::test]
async fn an_erroring_cache_tier_is_skipped_and_an_erroring_authority_is_reported() {
    let mem: Arc<dyn Tier<String, Bytes>> = Arc::new(MemoryTier::new(1 << 20));
    let broken_l1 = Arc::new(FaultyTier::new(mem, "l1"));
    broken_l1.set_fail(true);
    let store: Arc<dyn Tier<String, Bytes>> = Arc::new(ObjectStoreTier::in_memory(""));
    store
        .put(&"a".to_string(), Bytes::from_static(b"A"))
        .await
        .unwrap();
    let l3 = Arc::new(FaultyTier::new(store, "l3"));
    let cache = Tiered::builder()
        .tier_arc(broken_l1.clone())
        .tier_arc(l3.clone())
        .build()
        .unwrap();
    let (v, tier) = cache.get(&"a".to_string()).await.unwrap().unwrap();
    assert_eq!((v.as_ref(), tier), (&b"A"[..], 1));
    let st = cache.stats();
    assert_eq!((st[0].errors, st[0].fill_errors, st[1].hits), (1, 1, 1));

    l3.set_fail(true);
    let e = cache.get(&"a".to_string()).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("l3") && msg.contains("\"a\""), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_key_make_one_fetch() {
    let s = stack(FillPolicy::All).await;
    s.l3.set_delay(Duration::from_millis(300));
    let k = "k3".to_string();
    let gets: Vec<_> = (0..50)
        .map(|_| {
            let c = s.cache.clone();
            let k = k.clone();
            tokio::spawn(async move { c.get(&k).await })
        })
        .collect();
    for g in gets {
        let (v, _) = g.await.unwrap().unwrap().unwrap();
        assert_eq!(v.as_ref(), b"value 3");
    }
    assert_eq!(s.l3.gets(), 1, "50 concurrent misses must share one fetch");
    let st = s.cache.stats();
    // Every get either joined the one fetch or came after it and hit L1.
    assert_eq!(s.cache.coalesced() + st[0].hits, 49, "{st:?}");
    // The same without coalescing fetches many times.
    let l3 = s.l3.clone();
    let plain = Tiered::builder()
        .tier(MemoryTier::new(1 << 20))
        .tier_arc(l3.clone())
        .coalesce(false)
        .build()
        .unwrap();
    let gets: Vec<_> = (0..10)
        .map(|_| {
            let c = plain.clone();
            tokio::spawn(async move { c.get(&"k4".to_string()).await })
        })
        .collect();
    for g in gets {
        g.await.unwrap().unwrap().unwrap();
    }
    assert!(l3.gets() > 2, "without coalescing each miss fetches");
    let _ = s.l2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_coalesced_fetch_fails_every_waiter_and_the_next_get_retries() {
    let s = stack(FillPolicy::All).await;
    s.l3.set_delay(Duration::from_millis(50));
    s.l3.set_fail(true);
    let k = "k5".to_string();
    let gets: Vec<_> = (0..5)
        .map(|_| {
            let c = s.cache.clone();
            let k = k.clone();
            tokio::spawn(async move { c.get(&k).await })
        })
        .collect();
    for g in gets {
        assert!(g.await.unwrap().is_err());
    }
    s.l3.set_fail(false);
    assert_eq!(s.cache.get(&k).await.unwrap().unwrap().1, 2);
}

#[tokio::test]
async fn background_fill_eventually_fills() {
    let l1 = Arc::new(MemoryTier::new(1 << 20));
    let store = ObjectStoreTier::in_memory("");
    Tier::put(&store, &"x".to_string(), Bytes::from_static(b"X"))
        .await
        .unwrap();
    let cache = Tiered::builder()
        .tier_arc(l1.clone())
        .tier(store)
        .background_fill(true)
        .build()
        .unwrap();
    assert_eq!(cache.get(&"x".to_string()).await.unwrap().unwrap().1, 1);
    for _ in 0..100 {
        if l1.contains(&"x".to_string()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("background fill did not happen");
}

#[tokio::test]
async fn put_writes_through_and_remove_clears_all() {
    let l1 = Arc::new(MemoryTier::new(1 << 20));
    let store = Arc::new(ObjectStoreTier::in_memory(""));
    let cache = Tiered::builder()
        .tier_arc(l1.clone())
        .tier_arc(store.clone())
        .build()
        .unwrap();
    let k = "w".to_string();
    cache.put(&k, Bytes::from_static(b"W")).await.unwrap();
    assert!(l1.contains(&k) && store.exists(&k).await.unwrap());
    cache.remove(&k).await.unwrap();
    assert!(!l1.contains(&k) && !store.exists(&k).await.unwrap());
    cache.reset_stats();
    assert_eq!(cache.stats()[0].fills, 0);
}
